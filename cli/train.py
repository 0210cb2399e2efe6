"""``ttfs train`` and ``ttfs eval``: train TTFS networks (or their ReLU twins) and evaluate runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ttfs.contract.datasets import user_data_path
from ttfs.contract.paths import check_output
from ttfs.contract.reports import write_json
from ttfs.sw import distributed, finetune, models, training


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``ttfs train``."""
    file_config = training.read_config_file(args.config) if args.config else {}
    widths = [width for group in args.widths for width in group] if args.widths else None
    overrides = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "widths": widths,
        "mode": args.mode,
        "init": args.init,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "lr_decay": args.lr_decay,
        "lr_decay_steps": args.lr_decay_steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "dtype": args.dtype,
        "window_factor": args.window_factor,
        "activity_penalty": args.activity_penalty,
        "arch": args.arch,
        "layers": args.layers,
        "batch_norm": args.batch_norm,
        "noise": args.noise,
        "time_steps": args.time_steps,
        "weight_bits": args.weight_bits,
        "latency_quantile": args.latency_quantile,
        "image_size": args.image_size,
        "channels": args.channels,
        "device": args.device,
        "out": args.out,
    }
    config = training.resolve_config(file_config, overrides)
    if args.distributed or distributed.launched_by_torchrun():
        with distributed.processes(config["device"]) as processes:
            _, config, report = training.train_run(config, progress=not args.quiet, processes=processes)
        if report is None:
            return 0  # not process 0: it writes and prints
    else:
        _, config, report = training.train_run(config, progress=not args.quiet)
    print(f"run {config['out']}")
    for line in training.summary_lines(report):
        print(line)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``ttfs eval``."""
    check_sweep_values(args)
    # The run's own files are inputs; a new file beside them (the default plot) is not.
    read = [Path(args.run) / models.CONFIG_FILE, Path(args.run) / models.CHECKPOINT_FILE,
            user_data_path(args.dataset), args.data_dir]
    sweeping = bool(args.noise or args.time_steps or args.weight_bits)
    for option, path in (("--json", args.json), ("--plot", sweep_plot_path(args) if sweeping else None)):
        if path:
            check_output(path, option, inputs=read)
    device = distributed.resolve_device(args.device)
    model, config = models.load_run(args.run)
    dataset = training.load_split(config, args.split, dataset=args.dataset, data_dir=args.data_dir)
    model.to(device)
    images, labels = training.to_tensors(dataset, models.DTYPES[config["dtype"]], device)
    metrics = training.snn_and_relu_metrics(model, images, labels)
    report = {
        "run": str(args.run),
        "mode": config["mode"],
        "dtype": config["dtype"],
        "dataset": args.dataset or config["dataset"],
        "device": str(device),
        "split": args.split,
        "images": metrics["images"],
        "sizes": model.sizes,
        f"snn_{args.split}_accuracy": metrics["accuracy"],
        f"relu_{args.split}_accuracy": metrics["relu_accuracy"],
        f"snn_{args.split}_loss": metrics["loss"],
        f"relu_{args.split}_loss": metrics["relu_loss"],
        **{key: metrics[key] for key in training.ACTIVITY_KEYS},
    }
    for key in ("arch", "layers", "widths", "batch_norm"):
        report[key] = config.get(key, training.DEFAULTS[key])
    if config["mode"] == "convert":
        report["source"] = config["source"]
    print(f"run {args.run}: {report['dataset']} {args.split} split, {metrics['images']} images")
    for line in training.summary_lines(report, args.split):
        print(line)
    run_sweeps(args, model, config, images, labels, report)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return 0


def sweep_plot_path(args: argparse.Namespace) -> Path:
    """Where ``ttfs eval`` draws its sweeps: --plot, by default RUN/sweep-SPLIT.png."""
    return Path(args.plot) if args.plot else Path(args.run) / f"sweep-{args.split}.png"


def check_sweep_values(args: argparse.Namespace) -> None:
    """Refuse a bad sweep value before any work (FineTuneError names it)."""
    for kind in ("noise", "time_steps", "weight_bits"):
        for value in getattr(args, kind) or ():
            finetune.HardwareSettings(**{kind: value})


def run_sweeps(args: argparse.Namespace, model, config: dict, images, labels, report: dict) -> None:
    """The run's accuracy with its own hardware settings, and the sweeps asked for (tables and PNG)."""
    settings = training.hardware_settings({key: config.get(key, training.DEFAULTS[key]) for key in training.HARDWARE_KEYS})
    seed = config.get("seed", training.DEFAULTS["seed"])  # a converted run has no seed
    if settings.active:
        own = finetune.hardware_accuracy(model, images, labels, settings, seed=seed, repeats=args.repeats)
        report[f"hardware_{args.split}_accuracy"] = own["accuracy"]
        print(f"hardware         {100 * own['accuracy']:.2f} % with the run's settings ({settings.describe()})")
    requested = (("noise", args.noise), ("time_steps", args.time_steps), ("weight_bits", args.weight_bits))
    asked = [(kind, values) for kind, values in requested if values]
    if not asked:
        return
    base = finetune.HardwareSettings(noise=settings.noise, time_steps=settings.time_steps, weight_bits=settings.weight_bits)
    calibration = None
    results = []
    for kind, values in asked:
        # Windows the run never shrank are shrunk for time quantisation, as a time-step fine-tuning would.
        quantile = finetune.DEFAULT_TIME_QUANTILE if kind == "time_steps" and settings.window_quantile is None else None
        if quantile is not None and calibration is None:
            train_set = training.load_split(config, "train", dataset=args.dataset, data_dir=args.data_dir)
            calibration, _ = training.to_tensors(train_set, images.dtype, images.device)
        result = finetune.sweep(
            model, images, labels, kind, values, base=base, window_quantile=quantile, calibration_images=calibration,
            seed=seed, repeats=args.repeats,
        )  # fmt: skip
        results.append(result)
        print()
        for line in finetune.sweep_table(result):
            print(line)
    plot = sweep_plot_path(args)
    finetune.plot_sweeps(results, str(plot), title=f"{args.run} ({args.split})")
    report["sweeps"] = results
    print(f"wrote {plot}")

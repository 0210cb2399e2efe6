"""``ttfs train`` and ``ttfs eval``: train TTFS networks (or their ReLU twins) and evaluate runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.reports import write_json

TRAIN_DESCRIPTION = """\
Train a time-to-first-spike network with the B1 (identity) mapping, whose
spike times equal a ReLU network's activations, or its ReLU twin.

Modes: relu (the ReLU twin), snn (the spiking network, window rule of the
paper), snn-from-relu (fine-tune a trained run given by --init RUN as a
spiking network), finetune (fine-tune a trained run --init RUN for hardware:
--noise, --time-steps, --weight-bits, --latency-quantile; the report gives
accuracy and latency before and after).

Architectures: --arch fc (dense, --widths) or --arch vgg (convolutional:
--layers 16,P,32,P = 3x3 'same' convs and 2x2 max-pools, then --widths dense
hidden layers, none by default; vgg16-28 and vgg16-32 name the VGG16
layouts, whose dense layers default to 512 512).  --batch-norm before|after (mode relu) trains the ReLU twin with
batch norm, which the run folds into the spiking network exactly.

The run directory gets config.json (resolved settings),
checkpoint.pt (state_dict), report.json (accuracies of the network and its
twin, spikes per neuron, latency, epoch time) and curve.png.

Settings come from the defaults, then --config FILE.json (keys as the
flags, with underscores: "batch_size"), then the flags given.
"""

EVAL_DESCRIPTION = """\
Evaluate a run made by `ttfs train`: accuracy and loss of the spiking
network and of its ReLU twin, spikes per neuron per hidden layer, synaptic
events per image and latency.

Sweeps for hardware: --noise SIGMA... (Gaussian spike-time jitter, sigma in
units of each layer's window, mean over --repeats draws), --time-steps T...
(spike times on T steps per window) and --weight-bits B... (power-of-two
scaled B-bit weights) print accuracy tables and draw them into one PNG
(--plot).  A run fine-tuned with `ttfs train --mode finetune` is swept with
its own other settings held.
"""


def parse_widths(text: str) -> list[int]:
    """Hidden widths from one command-line word: "340" or "340,128"."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def positive_int(text: str) -> int:
    """An integer of at least 1 from one command-line word."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least 1")
    return value


def register(subparsers) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    train = subparsers.add_parser(
        "train",
        help="train a TTFS network or its ReLU twin",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--dataset", help="mnist-sample (embedded, default), mnist, fashion-mnist, cifar10, cifar100")
    train.add_argument("--data-dir", help="folder holding the data set's files (all but mnist-sample)")
    train.add_argument(
        "--widths", type=parse_widths, nargs="+",
        help="hidden layer widths, e.g. 340 (default: FC2 784-340-10) or 400 400 or 400,400",
    )  # fmt: skip
    train.add_argument("--mode", choices=("relu", "snn", "snn-from-relu", "finetune"), help="what to train (default snn)")
    train.add_argument("--init", metavar="RUN", help="run directory to start from (modes snn-from-relu, finetune)")
    train.add_argument("--arch", choices=("fc", "vgg"), help="fc: dense layers (default); vgg: conv layers from --layers")
    train.add_argument(
        "--layers", metavar="SPEC",
        help="arch vgg: conv channels and P (2x2 max-pool), e.g. 16,P,32,P, or vgg16-28 / vgg16-32",
    )  # fmt: skip
    train.add_argument(
        "--batch-norm", choices=("before", "after"),
        help="arch vgg, mode relu: batch norm before or after each ReLU, folded into the spiking network",
    )  # fmt: skip
    hardware = train.add_argument_group("hardware fine-tuning (mode finetune)")
    hardware.add_argument("--noise", type=float, metavar="SIGMA", help="spike-time jitter, sigma in units of each window")
    hardware.add_argument("--time-steps", type=int, metavar="T", help="spike times on T steps per window")
    hardware.add_argument("--weight-bits", type=int, metavar="B", help="B-bit weights with a power-of-two scale")
    hardware.add_argument(
        "--latency-quantile", type=float, metavar="Q",
        help="shrink each window to the Q-quantile of its activations (larger ones saturate), lowering the latency",
    )  # fmt: skip
    train.add_argument("--optimizer", choices=("adam", "sgd"), help="default adam")
    train.add_argument("--lr", type=float, help="learning rate (default 5e-4 for adam, 0.05 for sgd)")
    train.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    train.add_argument("--lr-decay", type=float, help="factor applied to the lr every --lr-decay-steps steps (default 0.9)")
    train.add_argument("--lr-decay-steps", type=int, help="optimiser steps between lr decays (default 5000)")
    train.add_argument("--epochs", type=int, help="default 40")
    train.add_argument("--batch-size", type=int, help="default 32")
    train.add_argument("--seed", type=int, help="fixes the initial weights and the batch order (default 0)")
    train.add_argument("--dtype", choices=("float32", "float64"), help="default float32; float64 for exact comparisons")
    train.add_argument("--window-factor", type=float, help="window rule: window >= factor x largest activation (default 10)")
    train.add_argument(
        "--activity-penalty", type=float,
        help="weight of an L1 term on hidden activations (earlier spikes cost more), lowering the spike count (default 0)",
    )  # fmt: skip
    train.add_argument("--config", metavar="FILE.json", help="settings file; flags override it")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<name>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a trained run (spiking network and ReLU twin)",
        description=EVAL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    evaluate.add_argument("--split", choices=("test", "train"), default="test", help="default test")
    evaluate.add_argument("--data-dir", help="folder of the data set's files, if not the one the run was trained with")
    evaluate.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file")
    sweeps = evaluate.add_argument_group("hardware sweeps")
    sweeps.add_argument("--noise", type=float, nargs="+", metavar="SIGMA", help="accuracy against spike-time noise")
    sweeps.add_argument("--time-steps", type=int, nargs="+", metavar="T", help="accuracy against time steps per window")
    sweeps.add_argument("--weight-bits", type=int, nargs="+", metavar="B", help="accuracy against weight bits")
    sweeps.add_argument("--repeats", type=positive_int, default=3, metavar="N", help="noise draws per sigma (default 3)")
    sweeps.add_argument("--plot", metavar="FILE.png", help="the sweeps' PNG (default RUN/sweep-SPLIT.png)")
    evaluate.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``ttfs train``."""
    from sw import training

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
        "out": args.out,
    }
    config = training.resolve_config(file_config, overrides)
    _, config, report = training.train_run(config, progress=not args.quiet)
    print(f"run {config['out']}")
    for line in training.summary_lines(report):
        print(line)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``ttfs eval``."""
    from sw import models, training
    from sw.datasets import load_dataset

    check_sweep_values(args)
    model, config = models.load_run(args.run)
    data_dir = args.data_dir if args.data_dir is not None else config.get("data_dir")
    dataset = load_dataset(config["dataset"], args.split, data_dir)
    if list(dataset.images.shape[1:]) != config["input_shape"]:
        raise models.ModelError(
            f"{config['dataset']} {args.split} images have shape {list(dataset.images.shape[1:])}, "
            f"the run expects {config['input_shape']}"
        )
    images, labels = training.to_tensors(dataset, models.DTYPES[config["dtype"]])
    metrics = training.snn_and_relu_metrics(model, images, labels)
    report = {
        "run": str(args.run),
        "mode": config["mode"],
        "dtype": config["dtype"],
        "dataset": config["dataset"],
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
    print(f"run {args.run}: {config['dataset']} {args.split} split, {metrics['images']} images")
    for line in training.summary_lines(report, args.split):
        print(line)
    run_sweeps(args, model, config, images, labels, report)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return 0


def check_sweep_values(args: argparse.Namespace) -> None:
    """Refuse a bad sweep value before any work (FineTuneError names it)."""
    from sw import finetune

    for kind in ("noise", "time_steps", "weight_bits"):
        for value in getattr(args, kind) or ():
            finetune.HardwareSettings(**{kind: value})


def run_sweeps(args: argparse.Namespace, model, config: dict, images, labels, report: dict) -> None:
    """The run's accuracy with its own hardware settings, and the sweeps asked for (tables and PNG)."""
    from sw import finetune, training
    from sw.datasets import load_dataset

    settings = training.hardware_settings({key: config.get(key, training.DEFAULTS[key]) for key in training.HARDWARE_KEYS})
    if settings.active:
        own = finetune.hardware_accuracy(model, images, labels, settings, seed=config["seed"], repeats=args.repeats)
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
            data_dir = args.data_dir if args.data_dir is not None else config.get("data_dir")
            calibration, _ = training.to_tensors(load_dataset(config["dataset"], "train", data_dir), images.dtype)
        result = finetune.sweep(
            model, images, labels, kind, values, base=base, window_quantile=quantile, calibration_images=calibration,
            seed=config["seed"], repeats=args.repeats,
        )  # fmt: skip
        results.append(result)
        print()
        for line in finetune.sweep_table(result):
            print(line)
    plot = Path(args.plot) if args.plot else Path(args.run) / f"sweep-{args.split}.png"
    finetune.plot_sweeps(results, str(plot), title=f"{args.run} ({args.split})")
    report["sweeps"] = results
    print(f"wrote {plot}")

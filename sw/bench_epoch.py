"""``ttfs bench epoch``: training-epoch time of the TTFS network against its ReLU twin.

Both networks start from the same parameters (one seed) and see the same
batches; their epochs are timed alternately (ReLU, TTFS, ReLU, ...) after
one warm-up epoch each, so a busy machine slows both alike.  The figure is
the ratio of the median epoch times, TTFS / ReLU, both in wall-clock and in
process CPU time (steadier on a shared machine).  Torch runs one thread
unless --threads says otherwise: on a small network and a busy machine extra
threads mostly add noise.

Registered as a ``ttfs bench`` sub-benchmark (``register_bench``) and also
runnable alone: ``python -m sw.bench_epoch``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sim.reports import write_json

DESCRIPTION = (
    "Training-epoch time of the TTFS network (B1) against its ReLU twin, FC2 (or --widths) "
    "on the embedded MNIST sample.  " + __doc__.split("\n\n")[1].replace("\n", " ")
)
DEFAULT_EPOCHS = 5
DEFAULT_WIDTHS = [340]
DEFAULT_BATCH_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options."""
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"timed epochs per network (default {DEFAULT_EPOCHS})")
    parser.add_argument("--widths", type=int, nargs="+", default=DEFAULT_WIDTHS, help="hidden widths (default 340: FC2)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32")
    parser.add_argument("--activity-penalty", type=float, default=0.0, help="as in `ttfs train` (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")


def register_bench(subparsers) -> None:
    """Add ``ttfs bench epoch`` to the ``ttfs bench`` subcommands."""
    parser = subparsers.add_parser(
        "epoch",
        help="TTFS / ReLU training-epoch time for FC2 on the embedded MNIST sample",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=handle_epoch)


def measure_epochs(
    epochs: int, widths: list[int], batch_size: int, dtype_name: str, activity_penalty: float, seed: int, progress: bool = True
) -> dict:
    """Median epoch seconds of the ReLU twin and the TTFS network, and their ratio."""
    import torch
    from tqdm import tqdm

    from sw import models, training
    from sw.datasets import load_dataset

    config = training.resolve_config(
        {"widths": widths, "batch_size": batch_size, "dtype": dtype_name, "activity_penalty": activity_penalty, "seed": seed, "epochs": epochs}
    )
    dtype = models.DTYPES[dtype_name]
    images, labels = training.to_tensors(load_dataset("mnist-sample", "train"), dtype)
    sizes = models.layer_sizes(images[0].numel(), widths, int(labels.max()) + 1)
    snn = models.build_network(sizes, seed=seed, dtype=dtype)
    networks = {"relu": models.snn_to_relu(snn), "snn": snn}
    state = {}
    for name, network in networks.items():
        optimizer, schedule = training.make_optimizer(network.parameters(), config)
        state[name] = (network, optimizer, schedule, torch.Generator().manual_seed(seed))
    seconds: dict[str, list[float]] = {"relu": [], "snn": []}
    cpu_seconds: dict[str, list[float]] = {"relu": [], "snn": []}
    rounds = tqdm(range(epochs + 1), desc="bench epoch", unit="round", disable=not progress)
    for round_index in rounds:
        for name in ("relu", "snn"):
            network, optimizer, schedule, generator = state[name]
            start, cpu_start = time.perf_counter(), time.process_time()
            training.train_epoch(network, images, labels, optimizer, schedule, batch_size, generator, activity_penalty)
            if round_index > 0:  # round 0 warms up both
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - cpu_start)
    relu_median = statistics.median(seconds["relu"])
    snn_median = statistics.median(seconds["snn"])
    relu_cpu_median = statistics.median(cpu_seconds["relu"])
    snn_cpu_median = statistics.median(cpu_seconds["snn"])
    return {
        "sizes": sizes,
        "images_per_epoch": len(labels),
        "batch_size": batch_size,
        "dtype": dtype_name,
        "activity_penalty": activity_penalty,
        "torch_threads": torch.get_num_threads(),
        "relu_epoch_seconds": seconds["relu"],
        "snn_epoch_seconds": seconds["snn"],
        "relu_median_seconds": relu_median,
        "snn_median_seconds": snn_median,
        "ratio": snn_median / relu_median,
        "relu_epoch_cpu_seconds": cpu_seconds["relu"],
        "snn_epoch_cpu_seconds": cpu_seconds["snn"],
        "relu_median_cpu_seconds": relu_cpu_median,
        "snn_median_cpu_seconds": snn_cpu_median,
        "cpu_ratio": snn_cpu_median / relu_cpu_median,
    }


def handle_epoch(args: argparse.Namespace) -> int:
    """Handler of ``ttfs bench epoch``."""
    import torch

    from sw.training import TrainingError

    if args.epochs < 1:
        raise TrainingError(f"--epochs: {args.epochs} must be at least 1")
    if args.threads < 1:
        raise TrainingError(f"--threads: {args.threads} must be at least 1")
    torch.set_num_threads(args.threads)
    figures = measure_epochs(args.epochs, args.widths, args.batch_size, args.dtype, args.activity_penalty, args.seed)
    network = "-".join(str(size) for size in figures["sizes"])
    print(
        f"epoch time, {network} on mnist-sample ({figures['images_per_epoch']} images, batch {figures['batch_size']}, "
        f"{figures['dtype']}, {figures['torch_threads']} threads), median of {args.epochs}:"
    )
    print("              wall       CPU")
    print(f"  ReLU twin  {figures['relu_median_seconds']:7.3f} s {figures['relu_median_cpu_seconds']:7.3f} s")
    print(f"  TTFS (B1)  {figures['snn_median_seconds']:7.3f} s {figures['snn_median_cpu_seconds']:7.3f} s")
    print(f"  ratio TTFS / ReLU  {figures['ratio']:.3f} (wall), {figures['cpu_ratio']:.3f} (CPU); target <= 1.15")
    if args.json:
        print(f"wrote {write_json(args.json, figures)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sw.bench_epoch``: the benchmark without the ``ttfs`` command."""
    from sim.errors import TTFSError

    parser = argparse.ArgumentParser(prog="python -m sw.bench_epoch", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return handle_epoch(args)
    except TTFSError as err:
        print(f"bench epoch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

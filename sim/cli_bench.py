"""``ttfs bench``: performance figures, one sub-benchmark per subcommand.

Sub-benchmarks live in the modules listed in :data:`BENCH_MODULES`; each
exposes ``register_bench(subparsers)`` which adds its parser (with
``set_defaults(func=handler)``) to the ``ttfs bench`` subparsers, exactly as
top-level commands do with ``register``.  To add one, append its module name
to :data:`BENCH_MODULES`.

``ttfs bench golden`` measures the golden model's throughput on ONE core:
the measurement runs in a child process whose BLAS/OpenMP thread counts are
set to 1 before numpy loads (they cannot be changed once it has) and which
is pinned to a single CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from sim.errors import TTFSError
from sim.reports import write_json

# Modules exposing ``register_bench(subparsers)``; ``ttfs bench --help`` lists them in this order.
BENCH_MODULES = [
    "sim.cli_bench",
    "hw.bench_cycles", "hw.bench_resources",
    "sw.bench_epoch",
]

GOLDEN_SIZES = (784, 340, 10)
GOLDEN_TIME_STEPS = 16
GOLDEN_WEIGHT_BITS = 5
DEFAULT_GOLDEN_IMAGES = 20000
_SINGLE_THREAD_ENV = {
    name: "1"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
}


class BenchError(TTFSError):
    """A benchmark could not run."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command and every sub-benchmark of BENCH_MODULES."""
    import importlib

    parser = subparsers.add_parser(
        "bench",
        help="print performance figures (golden-model throughput, ...)",
        description="Measure performance figures.  Each benchmark prints a summary and can write JSON.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(benches)


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ttfs bench golden``."""
    parser = subparsers.add_parser(
        "golden",
        help="golden-model images/s on one core (random 784-340-10, T=16, 5-bit weights)",
        description=(
            "Build a random 784-340-10 bundle (T=16, 5-bit weights) and measure how many "
            "images per second the golden model runs on ONE core (single-threaded BLAS, "
            "pinned to one CPU).  Prints the best of three timed runs after a warm-up."
        ),
    )
    parser.add_argument(
        "--images", type=int, metavar="N", default=DEFAULT_GOLDEN_IMAGES,
        help=f"images per timed run (default {DEFAULT_GOLDEN_IMAGES})",
    )
    parser.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")
    parser.set_defaults(func=handle_golden)


def measure_golden(images: int, repeats: int = 3, seed: int = 0) -> dict:
    """Time ``sim.golden.run`` on ``images`` random images; best of ``repeats``.

    Runs in the calling process: thread settings are the caller's business
    (``handle_golden`` uses a single-threaded child process).
    """
    import time

    import numpy as np

    from sim.golden import run
    from sim.random_bundle import random_bundle, random_images

    rng = np.random.default_rng(seed)
    bundle = random_bundle(
        rng, sizes=GOLDEN_SIZES, time_steps=GOLDEN_TIME_STEPS, weight_bits=GOLDEN_WEIGHT_BITS, lut="default"
    )
    batch = random_images(rng, bundle, images)
    run(bundle, batch[: min(images, 2048)])  # warm-up: BLAS initialisation, page faults
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run(bundle, batch)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    return {
        "benchmark": "golden",
        "network": "-".join(str(size) for size in GOLDEN_SIZES),
        "time_steps": GOLDEN_TIME_STEPS,
        "weight_bits": GOLDEN_WEIGHT_BITS,
        "images": images,
        "repeats": repeats,
        "seconds": best,
        "seconds_all": timings,
        "images_per_second": images / best,
        "spikes_per_neuron": result.spikes_per_neuron(),
        "numpy": np.__version__,
    }


def _child_main() -> None:
    """Entry of the single-core child: ``python -m sim.cli_bench golden-child N``."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    report = measure_golden(int(sys.argv[2]))
    report["threads"] = 1
    print(json.dumps(report))


def handle_golden(args: argparse.Namespace) -> int:
    """Run the measurement in a single-threaded child process and report it."""
    if args.images < 1:
        raise BenchError(f"--images: {args.images} must be at least 1")
    environment = {**os.environ, **_SINGLE_THREAD_ENV}
    print(f"ttfs bench golden: {args.images} images, one core ...", file=sys.stderr)
    child = subprocess.run(
        [sys.executable, "-m", "sim.cli_bench", "golden-child", str(args.images)],
        env=environment, capture_output=True, text=True, check=False,
    )
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"golden benchmark failed: {last}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    print(
        f"golden model, {report['network']} T={report['time_steps']} "
        f"{report['weight_bits']}-bit weights, one core: "
        f"{report['images_per_second']:,.0f} images/s "
        f"({report['images']} images in {report['seconds']:.3f} s, best of {report['repeats']})"
    )
    if args.json is not None:
        print(f"report: {write_json(args.json, report)}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["golden-child"] or len(sys.argv) != 3:
        sys.exit("usage: python -m sim.cli_bench golden-child N  (internal; run `ttfs bench golden`)")
    _child_main()

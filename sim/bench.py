"""The golden model's throughput on one core (``ttfs bench golden``).

The measurement must run single-threaded from the start: BLAS and OpenMP
thread counts are fixed when numpy loads, so ``ttfs bench golden`` runs it in
a child process (``python -m ttfs.sim.bench N [BUNDLE]``) whose environment
sets them to 1 and which pins itself to one CPU.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from ttfs.contract.bundle import Bundle, load_bundle, network_text
from ttfs.sim.golden import run
from ttfs.sim.random_bundle import random_bundle, random_images

GOLDEN_SIZES = (784, 340, 10)
GOLDEN_TIME_STEPS = 16
GOLDEN_WEIGHT_BITS = 5
SINGLE_THREAD_ENV = {
    name: "1"
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
}


def default_bench_bundle(rng: np.random.Generator) -> Bundle:
    """The default benchmark network: a random 784-340-10 bundle, T=16, 5-bit weights."""
    return random_bundle(
        rng, sizes=GOLDEN_SIZES, time_steps=GOLDEN_TIME_STEPS, weight_bits=GOLDEN_WEIGHT_BITS, lut="default"
    )


def measure_golden(images: int, repeats: int = 3, seed: int = 0, bundle: Bundle | None = None) -> dict:
    """Time ``ttfs.sim.golden.run`` on ``images`` random images; best of ``repeats``.

    ``bundle`` is the network to run (default: :func:`default_bench_bundle`).
    Runs in the calling process: thread settings are the caller's business.
    """
    rng = np.random.default_rng(seed)
    if bundle is None:
        bundle = default_bench_bundle(rng)
    batch = random_images(rng, bundle, images)
    run(bundle, batch[: min(images, 2048)])  # warm-up: BLAS initialisation, page faults
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run(bundle, batch)
        timings.append(time.perf_counter() - start)
    best = min(timings)
    bits = sorted({layer.weight_bits for layer in bundle.layers})
    return {
        "benchmark": "golden",
        "network": network_text(bundle),
        "time_steps": bundle.time_steps,
        # One number when every layer has the same width, else each width used.
        "weight_bits": bits[0] if len(bits) == 1 else bits,
        "images": images,
        "repeats": repeats,
        "seconds": best,
        "seconds_all": timings,
        "images_per_second": images / best,
        "spikes_per_neuron": result.spikes_per_neuron(),
        "numpy": np.__version__,
    }


def child_command(images: int, bundle_path: str | None = None) -> list[str]:
    """The command line of the single-core child process (``bundle_path``: a bundle directory, or None for the default)."""
    return [sys.executable, "-m", "ttfs.sim.bench", str(images)] + ([str(bundle_path)] if bundle_path else [])


def _child_main() -> None:
    """Entry of the single-core child: pin to one CPU, measure, print JSON."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    bundle = load_bundle(sys.argv[2]) if len(sys.argv) == 3 else None
    report = measure_golden(int(sys.argv[1]), bundle=bundle)
    report["threads"] = 1
    print(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not sys.argv[1].isdigit():
        sys.exit("usage: python -m ttfs.sim.bench N [BUNDLE]  (internal; run `ttfs bench golden`)")
    _child_main()

"""Training-epoch time of the TTFS network against its ReLU twin (``ttfs bench epoch``).

Both networks start from the same parameters (one seed) and see the same
batches; their epochs are timed alternately (ReLU, TTFS, ReLU, ...) after
one warm-up epoch each, so a busy machine slows both alike.  The figure is
the ratio of the median epoch times, TTFS / ReLU, both in wall-clock and in
process CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import statistics
import time

import torch
from tqdm import tqdm
from ttfs.contract.datasets import load_dataset
from ttfs.sw import models, training


def measure_epochs(
    epochs: int, widths: list[int], batch_size: int, dtype_name: str, activity_penalty: float, seed: int, progress: bool = True
) -> dict:
    """Median epoch seconds of the ReLU twin and the TTFS network, and their ratio."""
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

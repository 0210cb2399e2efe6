"""Spike raster of one image: every spiking layer, hardware spikes drawn over the golden ones.

Each panel is one spiking layer (layer 0 = the input encoder): x is the step
within the layer's window, y the neuron.  Golden spikes are hollow circles,
hardware spikes filled dots inside them; a hardware spike with no golden
spike at the same place is a red cross, a golden spike the hardware missed a
red circle.  matplotlib is imported when drawing (Agg, no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _event_set(trace) -> set[tuple[int, int]]:
    events = np.asarray(trace, dtype=np.int64).reshape(-1, 2)
    return {(int(s), int(n)) for s, n in events}


def save_raster(
    path: str | os.PathLike,
    golden_traces: list,
    hardware_traces: list,
    layer_names: list[str],
    widths: list[int],
    time_steps: int,
    title: str = "",
) -> Path:
    """Draw the raster of one image to ``path`` (PNG) and return the path.

    ``golden_traces`` and ``hardware_traces`` hold one (K, 2) array of
    (step, neuron) per spiking layer; ``layer_names`` and ``widths`` name and
    size those layers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = len(golden_traces)
    figure, axes = plt.subplots(layers, 1, figsize=(8, 2.2 * layers + 0.6), squeeze=False)
    for index, axis in enumerate(axes[:, 0]):
        golden = _event_set(golden_traces[index])
        hardware = _event_set(hardware_traces[index]) if index < len(hardware_traces) else set()
        matched = golden & hardware
        missed = golden - hardware
        extra = hardware - golden
        marker_size = max(4.0, min(30.0, 3000.0 / max(1, widths[index])))

        def draw(events, size=marker_size, **style):
            if events:
                steps, neurons = zip(*sorted(events))
                axis.scatter(steps, neurons, s=size, **style)

        draw(golden, facecolors="none", edgecolors="tab:blue", linewidths=0.8, label="golden")
        draw(matched, size=marker_size / 4, color="black", label="hardware")
        draw(missed, facecolors="none", edgecolors="red", linewidths=1.2, label="missed by hardware")
        draw(extra, color="red", marker="x", label="hardware only")
        axis.set_xlim(-0.5, time_steps - 0.5)
        axis.set_ylim(-0.5, widths[index] - 0.5)
        axis.invert_yaxis()
        axis.set_ylabel(f"{layer_names[index]}\nneuron")
        status = "identical" if not missed and not extra else f"{len(missed)} missed, {len(extra)} extra"
        axis.set_title(f"layer {index} ({layer_names[index]}): {len(golden)} golden spikes, "
                       f"{len(hardware)} hardware spikes, {status}", fontsize=9)
        if index == 0 and axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper right", fontsize=7, markerscale=1.5)
    axes[-1, 0].set_xlabel("step within the layer's window")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

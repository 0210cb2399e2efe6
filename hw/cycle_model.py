"""Predicted clock cycles of NetworkCore for one image, from spike counts.

Notation: T time steps; K pixels per beat; layer n (1 = first hidden layer,
L = readout) has N_n neurons on P_n = min(P, N_n) lanes in
G_n = ceil(N_n / P_n) groups; E_0 is the number of input spikes (encoder),
E_n the spikes of hidden layer n.  A window of E spikes is E + T beats.

Latency of one image crossing an empty core, from the cycle its first pixel
beat is accepted to the first cycle its result is valid (the core out of
reset for at least max_n G_n cycles: each integrator clears its slopes in
its first G_n cycles after reset, see :class:`ttfs.hw.layer.Integrator`)::

    B        = ceil(C*H*W / K)                       input beats
    W_0      = E_0 + T                               encoder window (1 beat/cycle)
    W_n      = E_n + T * G_n                         layer n firing its window
    I_n      = max(W_{n-1}, (E_{n-1} + T) * G_n)     layer n takes the previous
                                                     window, G_n cycles a beat
    cycles   = B + 3                                 look up, append, load step 0
             + sum_{n=1}^{L-1} (I_n + 8)             link, integrate, 7 to fire
             + 1 + I_L + G_L + 6 + D_L               link, readout: drain G_L
                                                     groups, argmax, result

where D_L = ceil(log2 P_L) is the readout's registered argmax tree
(:func:`ttfs.hw.readout.argmax_levels`; 0 with one lane) and each "link" is the
one-cycle :class:`ttfs.hw.register_slice.RegisterSlice` in front of a layer.

With G_n = 1 (P >= every layer's width) every term is exact; with G_n > 1
the firing term ``E_n + T * G_n`` is an upper bound (a group holding k
spikes costs k cycles, not k + 1) and a producer and a consumer that are
both slow in turns overlap less than ``max`` assumes; the tests bound the
error at 10 %.

Throughput with images back to back is bounded by the slowest stage::

    max(B, 1 + W_0, max_n ((E_{n-1} + T) * G_n + 4), max_n W_n)

and, with a trace port that is always ready, by the trace's one beat per
cycle: sum_n (E_n + T) over the spiking layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ttfs.contract.streams import beats_per_image
from ttfs.hw.errors import HardwareError
from ttfs.hw.readout import argmax_levels
from ttfs.hw.rom import LaneGeometry


@dataclass(frozen=True)
class CyclePrediction:
    """Predicted cycles of one image: ``latency`` alone in the core,
    ``interval`` between results when images stream back to back."""

    latency: int
    interval: int
    trace_interval: int


def predict_cycles(bundle, lanes: int, pixels_per_beat: int,
                   spike_counts: Sequence[int]) -> CyclePrediction:
    """Cycles for one image given the spike count of each spiking layer.

    ``spike_counts[0]`` is the encoder's (input spikes), then one per hidden
    layer, e.g. ``[np.count_nonzero(a[i]) for a in golden.run(...).activations]``.
    """
    widths = bundle.spiking_widths
    if len(spike_counts) != len(widths):
        raise HardwareError(
            f"spike_counts: {len(spike_counts)} values, the bundle has {len(widths)} spiking layers")
    for layer, (count, width) in enumerate(zip(spike_counts, widths)):
        if not 0 <= int(count) <= width:
            raise HardwareError(f"spike_counts[{layer}]: {count} is outside 0..{width}")
    steps = bundle.time_steps
    groups = [LaneGeometry.of(layer.outputs, lanes).groups for layer in bundle.layers]
    readout_lanes = LaneGeometry.of(bundle.readout.outputs, lanes).lanes
    spikes = [int(count) for count in spike_counts]
    beats = beats_per_image(bundle.input_size, pixels_per_beat)

    windows = [spikes[0] + steps]                               # W_0
    for n in range(1, len(widths)):
        windows.append(spikes[n] + steps * groups[n - 1])       # W_n, groups of layer n
    latency = beats + 3
    for n, layer_groups in enumerate(groups, start=1):
        take = max(windows[n - 1], (spikes[n - 1] + steps) * layer_groups)
        if n < len(groups):
            latency += 1 + take + 7
        else:
            latency += 1 + take + layer_groups + 6 + argmax_levels(readout_lanes)

    interval = max(
        [beats, 1 + windows[0]]
        + [(spikes[n - 1] + steps) * groups[n - 1] + 4 for n in range(1, len(groups) + 1)]
        + windows[1:])
    trace_interval = max(interval, sum(count + steps for count in spikes))
    return CyclePrediction(latency, interval, trace_interval)

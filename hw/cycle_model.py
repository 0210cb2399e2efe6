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

A conv2d layer n (:class:`ttfs.hw.conv.ConvEngine`, lanes over its O_n output
channels, G_n = ceil(O_n / P_n), NP_n = H_out * W_out positions, kernel k_n,
pooled map H_pool x W_pool of pool p_n) replaces the hidden-layer terms by::

    I_n      = E_{n-1} * (2 + k_n^2 * G_n) + T       accept + input ROM + taps per spike,
                                                     one cycle per tick
    F_n      = G_n * H_pool * W_pool * p_n^2         firing-pass reads
    W_n      = E_n + T                               its window (1 beat/cycle)
    latency += 1 + max(W_{n-1}, I_n) + 9 + F_n       link, integrate, close, pass, emit

(the first image after a reset can take longer: a conv engine's clearing pass
is NP_n * G_n cycles).  The tests check the conv terms cycle for cycle on
random bundles; where a producer is slow in turns (a window's ticks come
faster than its spikes) ``max`` is an approximation, as for dense layers.

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

with I_n + 4 in place of (E_{n-1} + T) * G_n + 4 for a conv2d layer, and its
firing pass F_n + 8 as one more stage.

and, with a trace port that is always ready, by the trace's one beat per
cycle: sum_n (E_n + T) over the spiking layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ttfs.contract.streams import beats_per_image
from ttfs.hw.errors import HardwareError
from ttfs.hw.readout import argmax_levels
from ttfs.hw.rom import LaneGeometry, lane_neurons


# Cycles a conv engine adds from its last input beat taken to its first output
# beat, besides the firing pass's reads: 4 until the closing tick is written,
# 1 to start the pass, 3 from its last read to its last append (read, sum,
# maximum), 1 to mark the step lists filled (then the emitter loads step 0
# with the first beat).
CONV_FIRE_DELAY = 9


def conv_integration(layer, groups: int, input_spikes: int, steps: int) -> int:
    """Cycles a ConvEngine takes to integrate a window of ``input_spikes``: each spike
    its accept and input-ROM cycles and k*k*G taps, each tick one cycle."""
    return input_spikes * (2 + layer.kernel_size ** 2 * groups) + steps


def firing_pass_reads(layer, groups: int) -> int:
    """Potential rows a ConvEngine's firing pass reads: p*p per pooled block and group."""
    _, pool_height, pool_width = layer.output_shape
    return groups * pool_height * pool_width * layer.pool_size ** 2


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
    groups = [LaneGeometry.of(lane_neurons(layer), lanes).groups for layer in bundle.layers]
    readout_lanes = LaneGeometry.of(bundle.readout.outputs, lanes).lanes
    spikes = [int(count) for count in spike_counts]
    beats = beats_per_image(bundle.input_size, pixels_per_beat)

    layers = bundle.layers
    windows = [spikes[0] + steps]                               # W_0
    for n in range(1, len(widths)):                             # W_n, groups of layer n
        windows.append(spikes[n] + steps if layers[n - 1].is_conv else spikes[n] + steps * groups[n - 1])
    integrations = [conv_integration(layer, layer_groups, spikes[n], steps) if layer.is_conv
                    else (spikes[n] + steps) * layer_groups
                    for n, (layer, layer_groups) in enumerate(zip(layers, groups))]
    latency = beats + 3
    for n, (layer, layer_groups) in enumerate(zip(layers, groups), start=1):
        take = max(windows[n - 1], integrations[n - 1])
        if layer.is_conv:
            latency += 1 + take + CONV_FIRE_DELAY + firing_pass_reads(layer, layer_groups)
        elif n < len(groups):
            latency += 1 + take + 7
        else:
            latency += 1 + take + layer_groups + 6 + argmax_levels(readout_lanes)

    interval = max(
        [beats, 1 + windows[0]]
        + [integration + 4 for integration in integrations]
        + [firing_pass_reads(layer, layer_groups) + CONV_FIRE_DELAY
           for layer, layer_groups in zip(layers, groups) if layer.is_conv]
        + windows[1:])
    trace_interval = max(interval, sum(count + steps for count in spikes))
    return CyclePrediction(latency, interval, trace_interval)

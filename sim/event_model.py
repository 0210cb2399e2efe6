"""The event model: the contract's pseudo-code executed literally, one image at a time.

It exists only to cross-check ``ttfs.sim.golden``: it shares none of the golden
model's arithmetic.  Spikes travel as (step, neuron) events; a layer
integrates them with the ramp integrator and fires with the time-counter
neuron, step by step (v1 sections 3-5); a conv2d layer (v2 section 4)
routes each input event to the neurons whose kernel window covers it, and
its pool passes the first event of each block.  The per-neuron state
(slope, V, fired) is held in int64 arrays so one statement updates many
neurons at once; the loops over steps and events are the pseudo-code's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ttfs.contract.bundle import Bundle, Layer
from ttfs.contract.errors import TTFSError


class EventModelError(TTFSError):
    """Bad input to the event model."""


def encode_events(bundle: Bundle, image: np.ndarray) -> list[tuple[int, int]]:
    """Layer 0's events for one uint8 image (C, H, W), or (H, W) when C = 1.

    Pixel j (C, H, W order) of channel c becomes activation a = lut[c][v];
    a >= 1 is a spike at step T - a.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise EventModelError(f"image: dtype {image.dtype}, expected uint8")
    if image.ndim == 2 and bundle.channels == 1:
        image = image[None]
    if image.shape != (bundle.channels, bundle.height, bundle.width):
        raise EventModelError(
            f"image: shape {image.shape} != ({bundle.channels}, {bundle.height}, {bundle.width})"
        )
    steps = bundle.time_steps
    events = []
    index = 0
    for channel in range(bundle.channels):
        for pixel in image[channel].reshape(-1):
            activation = int(bundle.lut[channel][int(pixel)])
            if activation >= 1:
                events.append((steps - activation, index))
            index += 1
    return _canonical(events)


def _canonical(events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted by step, then neuron (contract section 2)."""
    return sorted(events)


def _events_by_step(events: list[tuple[int, int]]) -> dict[int, list[int]]:
    by_step: dict[int, list[int]] = {}
    for step, neuron in events:
        by_step.setdefault(step, []).append(neuron)
    return by_step


def integrate(layer: Layer, events: list[tuple[int, int]], time_steps: int) -> np.ndarray:
    """The ramp integrator over the previous layer's window; returns V (int64).

    slope[i] = 0; V[i] = 0
    for k in 0..T-1: for every input event (k, j): slope[i] += W[i][j]
                     V[i] += slope[i]

    V is (outputs,) for dense, (out_channels, H_out, W_out) for conv2d,
    where input j = (c, y, x) feeds neuron (o, oy, ox) with the weight
    W[o, c, y + pad - oy, x + pad - ox] when that kernel tap exists.
    """
    if layer.is_conv:
        return _integrate_conv(layer, events, time_steps)
    weight = np.asarray(layer.weight, dtype=np.int64)
    slope = np.zeros(layer.outputs, dtype=np.int64)
    potential = np.zeros(layer.outputs, dtype=np.int64)
    by_step = _events_by_step(events)
    for k in range(time_steps):
        for j in by_step.get(k, ()):
            slope += weight[:, j]
        potential += slope
    return potential


def _integrate_conv(layer: Layer, events: list[tuple[int, int]], time_steps: int) -> np.ndarray:
    """The ramp integrator of a conv2d layer: each input event adds its kernel slice to the slopes it reaches."""
    _, height, width = layer.input_shape
    _, out_height, out_width = layer.conv_shape
    kernel = layer.kernel_size
    pad = (kernel - 1) // 2 if layer.padding == "same" else 0
    # Input (y, x) reaches output (oy, ox) through tap ky = y + pad - oy: as oy
    # rises the tap falls, so the slice it adds is the kernel flipped.  In
    # flipped coordinates the tap is oy - (y + pad - kernel + 1).
    flipped = np.ascontiguousarray(np.asarray(layer.weight, dtype=np.int64)[:, :, ::-1, ::-1])
    slope = np.zeros(layer.conv_shape, dtype=np.int64)
    potential = np.zeros(layer.conv_shape, dtype=np.int64)
    by_step = _events_by_step(events)
    for k in range(time_steps):
        for j in by_step.get(k, ()):
            channel, position = divmod(j, height * width)
            y, x = divmod(position, width)
            top, left = y + pad - kernel + 1, x + pad - kernel + 1
            # The outputs it reaches: rows top..y+pad and columns left..x+pad, inside the output.
            # (Never empty: with stride 1 every input lies under some window.)
            row_first, row_last = max(top, 0), min(y + pad, out_height - 1)
            column_first, column_last = max(left, 0), min(x + pad, out_width - 1)
            slope[:, row_first : row_last + 1, column_first : column_last + 1] += flipped[
                :, channel, row_first - top : row_last - top + 1, column_first - left : column_last - left + 1
            ]
        potential += slope
    return potential


def fire(layer: Layer, potential: np.ndarray, time_steps: int) -> list[tuple[int, int]]:
    """The time-counter neuron over this layer's own window; returns its events.

    theta[i] = (T+1)*R - Bias[i]
    for s in 0..T-1: U = V[i] + R*(s+1); fire once when U >= theta[i]

    ``potential`` has the layer's neuron shape (see :func:`integrate`); the
    events name neurons by their flattened index (o*H_out*W_out + y*W_out + x
    for conv2d).
    """
    ramp = 1 << layer.ramp_shift
    theta = ((time_steps + 1) * ramp - layer.neuron_bias()).reshape(-1)
    values = np.asarray(potential, dtype=np.int64).reshape(-1)
    fired = np.zeros(values.size, dtype=bool)
    events = []
    for s in range(time_steps):
        ramp_potential = values + ramp * (s + 1)
        newly = ~fired & (ramp_potential >= theta)
        # np.flatnonzero lists neurons in increasing order: within a step the
        # events leave in the canonical order.
        events.extend((s, int(i)) for i in np.flatnonzero(newly))
        fired |= newly
    return events


def pool(layer: Layer, events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A conv2d layer's p x p max-pool, stride p, on its neurons' events (in canonical order).

    The first event of each block passes - the earliest spike, the largest
    activation - and names the block (o*H_pool*W_pool + Y*W_pool + X);
    later events of the block, and events of the rows and columns beyond
    the last whole block, never leave the layer.
    """
    size = layer.pool_size
    if size == 1:
        return events
    _, out_height, out_width = layer.conv_shape
    _, rows, columns = layer.output_shape
    passed: set[int] = set()
    leaving = []
    for step, neuron in events:
        channel, position = divmod(neuron, out_height * out_width)
        y, x = divmod(position, out_width)
        row, column = y // size, x // size
        if row >= rows or column >= columns:
            continue
        block = (channel * rows + row) * columns + column
        if block not in passed:
            passed.add(block)
            leaving.append((step, block))
    return _canonical(leaving)


@dataclass
class EventRun:
    """One image's run: per spiking layer (layer 0 = encoder) the int64 (K, 2)
    traces of (step, neuron) of the events that leave it (``traces``) and of
    its firing neurons before pooling (``neuron_traces``; the same for
    layers without a pool), the readout ``logits`` and the ``label``."""

    traces: list[np.ndarray]
    neuron_traces: list[np.ndarray]
    logits: np.ndarray
    label: int


def simulate(bundle: Bundle, image: np.ndarray) -> EventRun:
    """Run one image event by event."""
    steps = bundle.time_steps
    events = encode_events(bundle, image)
    traces, neuron_traces = [events], [events]
    for layer in bundle.hidden_layers:
        fired = fire(layer, integrate(layer, events, steps), steps)
        events = pool(layer, fired) if layer.is_conv else fired
        traces.append(events)
        neuron_traces.append(fired)
    readout = bundle.readout
    logits = integrate(readout, events, steps) + np.asarray(readout.bias, dtype=np.int64)
    best = 0
    for index in range(1, len(logits)):
        if logits[index] > logits[best]:  # strictly greater: ties keep the lower index
            best = index

    def as_arrays(layers):
        return [np.array(trace, dtype=np.int64).reshape(-1, 2) for trace in layers]

    return EventRun(as_arrays(traces), as_arrays(neuron_traces), logits, best)


def run_events(bundle: Bundle, image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Run one image event by event.

    Returns (traces, logits, class): one int64 (K, 2) trace of (step,
    neuron) per spiking layer (layer 0 = encoder) of the events that leave
    it, the readout logits V + Bias as int64, and the smallest index of the
    largest logit.
    """
    result = simulate(bundle, image)
    return result.traces, result.logits, result.label


__all__ = ["EventModelError", "EventRun", "encode_events", "fire", "integrate", "pool", "run_events", "simulate"]

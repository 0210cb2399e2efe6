"""The event model: contract v1's pseudo-code executed literally, one image at a time.

It exists only to cross-check ``sim.golden``: it shares none of the golden
model's arithmetic.  Spikes travel as (step, neuron) events; a layer
integrates them with the ramp integrator and fires with the time-counter
neuron, step by step (contract sections 3-5).  The per-neuron state
(slope, V, fired) is held in int64 vectors so one statement updates every
neuron i at once; the loops over steps and events are the pseudo-code's.
"""

from __future__ import annotations

import numpy as np

from sim.bundle import Bundle, Layer
from sim.errors import TTFSError


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


def integrate(layer: Layer, events: list[tuple[int, int]], time_steps: int) -> np.ndarray:
    """The ramp integrator over the previous layer's window; returns V (int64).

    slope[i] = 0; V[i] = 0
    for k in 0..T-1: for every input event (k, j): slope[i] += W[i][j]
                     V[i] += slope[i]
    """
    weight = np.asarray(layer.weight, dtype=np.int64)
    slope = np.zeros(layer.outputs, dtype=np.int64)
    potential = np.zeros(layer.outputs, dtype=np.int64)
    by_step: dict[int, list[int]] = {}
    for step, neuron in events:
        by_step.setdefault(step, []).append(neuron)
    for k in range(time_steps):
        for j in by_step.get(k, ()):
            slope += weight[:, j]
        potential += slope
    return potential


def fire(layer: Layer, potential: np.ndarray, time_steps: int) -> list[tuple[int, int]]:
    """The time-counter neuron over this layer's own window; returns its events.

    theta[i] = (T+1)*R - Bias[i]
    for s in 0..T-1: U = V[i] + R*(s+1); fire once when U >= theta[i]
    """
    ramp = 1 << layer.ramp_shift
    theta = (time_steps + 1) * ramp - np.asarray(layer.bias, dtype=np.int64)
    fired = np.zeros(layer.outputs, dtype=bool)
    events = []
    for s in range(time_steps):
        ramp_potential = potential + ramp * (s + 1)
        newly = ~fired & (ramp_potential >= theta)
        # np.flatnonzero lists neurons in increasing order: within a step the
        # events leave in the canonical order.
        events.extend((s, int(i)) for i in np.flatnonzero(newly))
        fired |= newly
    return events


def run_events(bundle: Bundle, image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Run one image event by event.

    Returns (traces, logits, class): one int64 (K, 2) trace of (step,
    neuron) per spiking layer (layer 0 = encoder), the readout logits
    V + Bias as int64, and the smallest index of the largest logit.
    """
    steps = bundle.time_steps
    events = encode_events(bundle, image)
    traces = [events]
    for layer in bundle.hidden_layers:
        potential = integrate(layer, events, steps)
        events = fire(layer, potential, steps)
        traces.append(events)
    readout = bundle.readout
    logits = integrate(readout, events, steps) + np.asarray(readout.bias, dtype=np.int64)
    best = 0
    for index in range(1, len(logits)):
        if logits[index] > logits[best]:  # strictly greater: ties keep the lower index
            best = index
    arrays = [np.array(trace, dtype=np.int64).reshape(-1, 2) for trace in traces]
    return arrays, logits, best


__all__ = ["EventModelError", "encode_events", "fire", "integrate", "run_events"]

"""The core's stream formats in plain Python: event windows, tagged traces, pixel beats.

This module is the one codec of what travels on the core's streams; the
gateware (:mod:`ttfs.hw.events`, :mod:`ttfs.hw.trace`,
:mod:`ttfs.hw.encoder`) builds the same formats in hardware, and the
benches, the cocotb testbenches and the tests encode and decode them here.

Event windows
-------------
A layer window of T steps travels as one *window* on an event stream: for each
step s = 0 .. T-1, first the spikes of that step in ascending neuron order,
then one *tick* beat that closes step s.  A window is therefore exactly
``spikes + T`` beats, and the beats of a window are in the contract's
canonical order (sorted by step, then neuron).  The tick of step T-1 closes
the window; the next beat belongs to the next image.

Consumers need the ticks because the ramp integrator adds each neuron's slope
to its potential once per step, including steps with no input spike.

A beat has three fields (:class:`EventBeat`; in hardware a
``data.StructLayout``, :func:`ttfs.hw.events.event_layout`):

``tick``    1 = this beat closes step ``step`` (``neuron`` is 0 and meaningless);
            0 = a spike of neuron ``neuron`` at step ``step``.
``step``    0 .. T-1.
``neuron``  0 .. width-1, the index within the layer.

Streams follow ``amaranth.lib.stream`` rules: a beat moves when ``valid`` and
``ready`` are both high; a producer never withdraws ``valid`` or changes the
payload before the beat moves; nothing is dropped.

Tagged traces
-------------
The core's trace port interleaves the windows of every spiking layer (layer
0 = the encoder, then each hidden layer) into one stream, each beat tagged
with its ``layer``; within one layer the beats keep their window order.
:class:`TraceSplitter` cuts such a stream back into each layer's windows.

Pixel beats
-----------
An image of C x H x W uint8 pixels enters the core in contract order (channel,
row, column), ``K`` pixels per beat: pixel ``j`` is element ``j % K`` of beat
``j // K``, and the last beat of an image is padded with zeros, so an image is
``ceil(C*H*W / K)`` beats and the next image starts on a fresh beat.  Packed
into one integer (the Verilog port), element 0 is the lowest byte.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
from ttfs.contract.errors import TTFSError

PIXEL_BITS = 8


class StreamError(TTFSError):
    """Data that breaks a stream format: a beat out of protocol, a trace or image that cannot be encoded."""


def bits_for(value: int) -> int:
    """Unsigned width that holds 0 .. value (at least 1 bit)."""
    return max(1, int(value).bit_length())


class EventBeat(NamedTuple):
    """One beat of an event stream (see the module docstring)."""

    tick: int
    step: int
    neuron: int


def window_beats(trace, time_steps: int) -> list[EventBeat]:
    """One layer window as event beats: each step's spikes, then its tick.

    ``trace`` is an integer (K, 2) array of (step, neuron) in canonical
    order, as :func:`ttfs.sim.golden.trace_from_activations` makes it.
    """
    events = np.asarray(trace, dtype=np.int64).reshape(-1, 2)
    steps = events[:, 0]
    if len(events) and (steps.min() < 0 or steps.max() >= time_steps):
        raise StreamError(f"trace: steps must lie in 0..{time_steps - 1}")
    if np.any(np.diff(steps) < 0):
        raise StreamError("trace: events are not in step order")
    beats = []
    position = 0
    for step in range(time_steps):
        while position < len(events) and steps[position] == step:
            beats.append(EventBeat(0, step, int(events[position, 1])))
            position += 1
        beats.append(EventBeat(1, step, 0))
    return beats


class WindowSplitter:
    """Cuts one layer's event beats into windows, checking the window format.

    Feed beats with :meth:`beat`.  ``windows`` holds every closed window as
    an int64 (K, 2) array of (step, neuron) in arrival order, ``open`` the
    spikes of the window in progress and ``step`` its open step.
    """

    def __init__(self, time_steps: int):
        self.time_steps = time_steps
        self.windows: list[np.ndarray] = []
        self.open: list[tuple[int, int]] = []
        self.step = 0

    @property
    def in_window(self) -> bool:
        """True while a window has begun and not closed."""
        return bool(self.open) or self.step != 0

    def beat(self, tick: int, step: int, neuron: int) -> None:
        """Take one beat.  A beat outside its step is still taken as its ``tick``
        says (so one fault does not hide the rest), then :class:`StreamError` is raised."""
        current, window = self.step, len(self.windows)
        if tick:
            if current == self.time_steps - 1:
                self.windows.append(np.array(self.open, dtype=np.int64).reshape(-1, 2))
                self.open = []
                self.step = 0
            else:
                self.step = current + 1
            if step != current:
                raise StreamError(f"window {window}: tick for step {step}, "
                                  f"expected step {current}")
        else:
            self.open.append((step, neuron))
            if step != current:
                raise StreamError(f"window {window}: spike of neuron {neuron} carries "
                                  f"step {step} but arrives during step {current}")


def split_windows(beats: Iterable, time_steps: int) -> list[np.ndarray]:
    """Event beats (tick, step, neuron) of whole windows -> one (K, 2) trace per window.

    Raises :class:`StreamError` on a protocol violation or when the last
    window is not closed.
    """
    splitter = WindowSplitter(time_steps)
    for tick, step, neuron in beats:
        splitter.beat(tick, step, neuron)
    if splitter.in_window:
        raise StreamError(f"window {len(splitter.windows)}: incomplete, open at step {splitter.step}")
    return splitter.windows


class TraceSplitter:
    """Cuts a tagged trace stream (layer, tick, step, neuron) into each layer's windows.

    ``layers[k]`` is layer k's :class:`WindowSplitter`; window n of every
    layer belongs to image n.
    """

    def __init__(self, time_steps: int, layers: int):
        self.layers = [WindowSplitter(time_steps) for _ in range(layers)]

    def beat(self, layer: int, tick: int, step: int, neuron: int) -> None:
        """Take one beat; raises :class:`StreamError` on a bad tag or a protocol violation."""
        if not 0 <= layer < len(self.layers):
            raise StreamError(f"trace beat tagged layer {layer}, the core has "
                              f"{len(self.layers)} spiking layers")
        try:
            self.layers[layer].beat(tick, step, neuron)
        except StreamError as err:
            raise StreamError(f"layer {layer}, {err}") from None

    def windows(self, layer: int) -> list[np.ndarray]:
        """The closed windows of ``layer``."""
        return self.layers[layer].windows

    def complete(self, images: int) -> bool:
        """True when every layer has closed ``images`` windows."""
        return all(len(splitter.windows) >= images for splitter in self.layers)


def beats_per_image(input_size: int, pixels_per_beat: int) -> int:
    """Beats that carry one image of ``input_size`` pixels (the last one zero-padded)."""
    return -(-input_size // pixels_per_beat)


def pixel_beats(images, pixels_per_beat: int) -> list[list[int]]:
    """Images (N, ...) of uint8 pixels as beats of ``pixels_per_beat`` pixels each, contract order."""
    batch = np.asarray(images)
    if batch.dtype != np.uint8 or batch.ndim < 2:
        raise StreamError(f"images: expected uint8 images (N, ...), got {batch.dtype} {batch.shape}")
    if isinstance(pixels_per_beat, bool) or not isinstance(pixels_per_beat, int) or pixels_per_beat < 1:
        raise StreamError(f"pixels_per_beat: {pixels_per_beat!r} is not an integer >= 1")
    flat = batch.reshape(len(batch), -1)
    size = flat.shape[1]
    padded = np.zeros((len(batch), beats_per_image(size, pixels_per_beat) * pixels_per_beat), dtype=np.uint8)
    padded[:, :size] = flat
    return padded.reshape(-1, pixels_per_beat).tolist()


def packed_pixel_beats(images, pixels_per_beat: int) -> list[int]:
    """:func:`pixel_beats` packed into integers, element 0 in the lowest byte (the Verilog ``pixels`` port)."""
    return [sum(pixel << (PIXEL_BITS * lane) for lane, pixel in enumerate(beat))
            for beat in pixel_beats(images, pixels_per_beat)]

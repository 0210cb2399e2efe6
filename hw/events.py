"""Spike-event streams: the one interface between the encoder, the layers and the readout.

A layer window of T steps travels as one *window* on an event stream: for each
step s = 0 .. T-1, first the spikes of that step in ascending neuron order,
then one *tick* beat that closes step s.  A window is therefore exactly
``spikes + T`` beats, and the beats of a window are in the contract's
canonical order (sorted by step, then neuron).  The tick of step T-1 closes
the window; the next beat belongs to the next image.

Consumers need the ticks because the ramp integrator adds each neuron's slope
to its potential once per step, including steps with no input spike.

Payload fields (a ``data.StructLayout``):

``tick``    1 = this beat closes step ``step`` (``neuron`` is 0 and meaningless);
            0 = a spike of neuron ``neuron`` at step ``step``.
``step``    0 .. T-1.
``neuron``  0 .. width-1, the index within the layer.

Streams follow ``amaranth.lib.stream`` rules: a beat moves when ``valid`` and
``ready`` are both high; a producer never withdraws ``valid`` or changes the
payload before the beat moves; nothing is dropped.
"""

from __future__ import annotations

from amaranth.lib import data, stream


def bits_for(value: int) -> int:
    """Unsigned width that holds 0 .. value (at least 1 bit)."""
    return max(1, int(value).bit_length())


def event_layout(time_steps: int, width: int) -> data.StructLayout:
    """Payload layout of a spike-event stream for a layer of ``width`` neurons."""
    return data.StructLayout({
        "tick": 1,
        "step": bits_for(time_steps - 1),
        "neuron": bits_for(width - 1),
    })


def event_signature(time_steps: int, width: int) -> stream.Signature:
    """Stream signature (producer's view) carrying one layer window per image."""
    return stream.Signature(event_layout(time_steps, width))

"""Spike-event streams: the one interface between the encoder, the layers and the readout.

The window format (each step's spikes in ascending neuron order, then one
tick beat; T ticks per window; the ``tick``, ``step`` and ``neuron`` fields)
is described once, in :mod:`ttfs.contract.streams`, which also encodes and
decodes it in plain Python.  This module gives it its hardware shape: the
payload ``data.StructLayout`` and the ``amaranth.lib.stream`` signature.
"""

from __future__ import annotations

from amaranth.lib import data, stream
from ttfs.contract.streams import bits_for


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

"""RegisterSlice: a stream stage whose outputs, ``ready`` included, all come from registers.

Placed between two blocks it cuts every combinational path between them in
both directions: the producer's payload logic no longer runs into the
consumer's (say, a spike's neuron index into a weight ROM address), and the
consumer's ``ready`` no longer runs into the producer's advance logic.  That
is what lets the core close timing at 100 MHz on an ECP5.

It is the classic two-entry skid buffer: a beat goes straight into the
output register when that is free, and into the skid register when the
output is stalled; the skid drains first once the output moves.

- Latency: a beat accepted in cycle t is valid on ``out`` from cycle t + 1.
- Throughput: one beat per cycle while ``out`` is ready.  When ``out``
  stalls, the beat accepted in that cycle waits in the skid register and
  ``inp.ready`` falls the cycle after; nothing is lost or reordered.
- Reset: both registers empty.
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class RegisterSlice(wiring.Component):
    """One register stage on a stream, with a skid register so that ``inp.ready`` is registered too.

    Parameters
    ----------
    signature : amaranth.lib.stream.Signature
        The stream's signature (producer's view); ``inp`` and ``out`` both carry it.

    Ports
    -----
    inp : In(signature)
    out : Out(signature)
    """

    def __init__(self, signature: stream.Signature):
        super().__init__({"inp": In(signature), "out": Out(signature)})

    def elaborate(self, platform):
        m = Module()
        inp, out = self.inp, self.out
        skid_valid = Signal()
        skid_payload = Signal.like(inp.payload)
        m.d.comb += inp.ready.eq(~skid_valid)
        with m.If(~out.valid | out.ready):
            # The output register is free (or leaving): the skid drains first.
            with m.If(skid_valid):
                m.d.sync += [out.valid.eq(1), out.payload.eq(skid_payload), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [out.valid.eq(inp.valid), out.payload.eq(inp.payload)]
        with m.Elif(inp.valid & ~skid_valid):
            m.d.sync += [skid_valid.eq(1), skid_payload.eq(inp.payload)]
        return m

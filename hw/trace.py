"""Trace port: a copy of every spiking layer's window, merged into one stream.

``TraceTap`` sits on the event stream between two layers and copies every
beat to a trace output; a beat leaves the producer only once both the
consumer and the trace have taken it, so a stalled trace stalls the core and
nothing is dropped.  ``TraceMerge`` interleaves the taps of all layers into
one stream, tagging each beat with its layer, round-robin so that no layer
starves.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from ttfs.contract.streams import bits_for
from ttfs.hw.errors import HardwareError
from ttfs.hw.events import event_signature


def trace_layout(time_steps: int, layers: int, widest: int) -> data.StructLayout:
    """Payload of the trace stream: layer index, tick, step and neuron (of the widest layer)."""
    return data.StructLayout({
        "layer": bits_for(layers - 1),
        "tick": 1,
        "step": bits_for(time_steps - 1),
        "neuron": bits_for(widest - 1),
    })


class TraceTap(wiring.Component):
    """Passes an event stream through and copies every beat to ``trace``.

    An eager fork: ``out`` and ``trace`` each see the beat as soon as ``inp``
    offers it and each takes it once; ``inp`` moves on when both have taken
    it.  Neither output's ``valid`` depends on any ``ready``, so taps can be
    chained and merged without combinational loops.  No added latency.

    Ports: ``inp`` In(event_signature(T, width)), ``out`` and ``trace``
    Out(event_signature(T, width)).
    """

    def __init__(self, time_steps: int, width: int):
        self.time_steps = time_steps
        self.width = width
        signature = event_signature(time_steps, width)
        super().__init__({
            "inp": In(signature),
            "out": Out(signature),
            "trace": Out(signature),
        })

    def elaborate(self, platform):
        m = Module()
        # The current beat has already been taken by out / by trace.
        out_taken = Signal()
        trace_taken = Signal()
        out_done = Signal()
        trace_done = Signal()
        m.d.comb += [
            self.out.payload.eq(self.inp.payload),
            self.trace.payload.eq(self.inp.payload),
            self.out.valid.eq(self.inp.valid & ~out_taken),
            self.trace.valid.eq(self.inp.valid & ~trace_taken),
            out_done.eq(out_taken | self.out.ready),
            trace_done.eq(trace_taken | self.trace.ready),
            self.inp.ready.eq(out_done & trace_done),
        ]
        with m.If(self.inp.valid):
            with m.If(self.inp.ready):
                m.d.sync += [out_taken.eq(0), trace_taken.eq(0)]
            with m.Else():
                m.d.sync += [out_taken.eq(out_done), trace_taken.eq(trace_done)]
        return m


class TraceMerge(wiring.Component):
    """Round-robin merge of ``layers`` event streams into one tagged trace stream.

    Ports: ``taps`` In(event_signature(T, widest)) array of ``layers``;
    ``trace`` Out(stream of ``trace_layout``).  One registered output beat,
    one beat per cycle throughput; after a beat from tap ``i`` the taps after
    ``i`` have priority, so every waiting tap is served within ``layers``
    beats.  Latency: one cycle.
    """

    def __init__(self, time_steps: int, layers: int, widest: int):
        if layers < 1:
            raise HardwareError(f"trace: {layers} layers, at least 1 is needed")
        self.time_steps = time_steps
        self.layers = layers
        self.widest = widest
        super().__init__({
            "taps": In(event_signature(time_steps, widest)).array(layers),
            "trace": Out(stream.Signature(trace_layout(time_steps, layers, widest))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.layers
        # Tap served last; the search for the next one starts after it.
        previous = Signal(range(L), init=L - 1)
        can_load = Signal()
        m.d.comb += can_load.eq(~self.trace.valid | self.trace.ready)

        # grant[i]: tap i is the first valid tap after `previous` (cyclically).
        grant = [Signal(name=f"grant_{i}") for i in range(L)]
        for i in range(L):
            conditions = []
            for start in range(L):
                # Taps searched before i when the search starts after `start`.
                order = [(start + 1 + n) % L for n in range(L)]
                ahead = order[:order.index(i)]
                first = self.taps[i].valid
                for other in ahead:
                    first = first & ~self.taps[other].valid
                conditions.append((start, first))
            chosen = conditions[0][1]
            for start, first in conditions[1:]:
                chosen = Mux(previous == start, first, chosen)
            m.d.comb += grant[i].eq(chosen)

        for i in range(L):
            m.d.comb += self.taps[i].ready.eq(can_load & grant[i])

        with m.If(can_load):
            m.d.sync += self.trace.valid.eq(0)
            for i in range(L):
                with m.If(grant[i]):
                    tap = self.taps[i].payload
                    m.d.sync += [
                        self.trace.valid.eq(1),
                        self.trace.payload.layer.eq(i),
                        self.trace.payload.tick.eq(tap.tick),
                        self.trace.payload.step.eq(tap.step),
                        self.trace.payload.neuron.eq(tap.neuron),
                        previous.eq(i),
                    ]
        return m


"""NetworkCore: the whole network of a bundle as one streaming circuit.

```
pixels -> InputEncoder -> | -> [tap 0] -> engine 1 -> | -> [tap 1] -> ... -> Readout -> result
                                  |                               |
                                  +---------> TraceMerge <--------+         (trace=True)
                                          |
                                          +--> trace
```

Engine n is a :class:`ttfs.hw.conv.ConvEngine` for a conv2d layer (they come
first, contract v2) and a :class:`ttfs.hw.layer.LayerEngine` for a dense one.
Every block talks the event protocol of :mod:`ttfs.hw.events` over
``amaranth.lib.stream`` handshakes, each link through a
:class:`ttfs.hw.register_slice.RegisterSlice` (``|`` above; one cycle), so the
layers overlap by construction:
layer n+1 integrates layer n's window while layer n fires it, and the encoder
takes the next image in while the previous one's window leaves.

``result`` carries the class, the logits and ``cycles``: the number of clock
cycles from the cycle the image's first pixel beat was accepted to the first
cycle its result beat is valid.  A FIFO of start times follows the images in
flight (they leave in order); when it is full the input waits.

Reset: ``rst`` may rise at any cycle, in the middle of a frame too; every
image driven after it is exact.  All control state is registers, and the
state kept in memories is either rewritten before it is read (potentials,
list heads and tails, the start-time FIFO behind its reset pointers) or
cleared: the encoder's list flags are registers, and each integrator's
first G_n cycles (a conv engine's NP_n * G_n) after ``rst`` (and after
power-up) are a pass that zeroes its slope memory, with its input not ready.  The input is ready in the
first cycle after ``rst``; the clearing passes overlap the first image's
input and delay it only where a layer's G_n is longer than its first input
beat takes to reach it (at least B + 3 cycles for layer 1).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from ttfs.contract.bundle import validate
from ttfs.contract.errors import TTFSError
from ttfs.contract.streams import beats_per_image
from ttfs.hw.conv import ConvEngine
from ttfs.hw.encoder import InputEncoder, pixel_signature
from ttfs.hw.errors import HardwareError
from ttfs.hw.layer import LayerEngine
from ttfs.hw.readout import Readout, result_layout
from ttfs.hw.register_slice import RegisterSlice
from ttfs.hw.trace import TraceMerge, TraceTap, trace_layout
from ttfs.hw.unused import mark_unused

CYCLE_BITS = 32


def network_trace_layout(bundle) -> data.StructLayout:
    """Payload of the trace stream of a core built from ``bundle``."""
    widths = bundle.spiking_widths
    return trace_layout(bundle.time_steps, len(widths), max(widths))


class NetworkCore(wiring.Component):
    """Encoder, hidden ConvEngines and LayerEngines and Readout of a bundle, chained by event streams.

    Parameters
    ----------
    bundle : ttfs.contract.bundle.Bundle
        Any bundle the contract allows.
    lanes : int
        P: each dense layer integrates ``min(P, outputs)`` neurons in parallel,
        each conv2d layer ``min(P, out_channels)`` channels of one position.
    pixels_per_beat : int
        K pixels per input beat.
    trace : bool
        With a ``trace`` port that copies every spiking layer's window (a
        stalled trace stalls the core); without it nothing can stall there.

    Ports
    -----
    pixels : In(stream of ArrayLayout(8, K))
        Images in contract order, ``ceil(C*H*W / K)`` beats each.
    result : Out(stream of :func:`ttfs.hw.readout.result_layout` with ``cycles``)
        One beat per image, in image order: the readout's class and logits
        and the image's ``cycles`` (``CYCLE_BITS`` wide).
    trace : Out(stream of ``network_trace_layout(bundle)``), when ``trace``
        Layer windows tagged with the layer (0 = encoder); within one layer
        the canonical order, layers interleaved.
    """

    def __init__(self, bundle, lanes: int, pixels_per_beat: int = 1, trace: bool = True):
        try:
            self._configure(bundle, lanes, pixels_per_beat, trace)
        except TTFSError:
            # Refused: neither the core nor the blocks built before the refusal are elaborated.
            for block in [self, getattr(self, "encoder", None), *getattr(self, "engines", [])]:
                if block is not None:
                    mark_unused(block)
            raise
        result = result_layout(bundle.readout.outputs, self.readout.logit_bits, cycle_bits=CYCLE_BITS)
        members = {
            "pixels": In(pixel_signature(pixels_per_beat)),
            "result": Out(stream.Signature(result)),
        }
        if trace:
            members["trace"] = Out(stream.Signature(network_trace_layout(bundle)))
        super().__init__(members)

    def _configure(self, bundle, lanes, pixels_per_beat, trace):
        """Check the parameters and build the blocks (each checks its own)."""
        validate(bundle)
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise HardwareError(f"lanes: {lanes!r} is not an integer >= 1")
        self.bundle = bundle
        self.lanes = lanes
        self.pixels_per_beat = pixels_per_beat
        self.has_trace = bool(trace)
        self.encoder = InputEncoder(bundle, pixels_per_beat)
        self.engines = []
        for layer in bundle.hidden_layers:
            engine = ConvEngine if layer.is_conv else LayerEngine
            self.engines.append(engine(layer, bundle.time_steps, lanes))
        self.readout = Readout(bundle.readout, bundle.time_steps, lanes)
        # Images that can be between the first pixel beat and the result: two
        # in the encoder, up to two per dense layer (one integrating, one
        # firing) and four per conv2d layer (one integrating, one in its
        # second potential bank, two in its step lists), one in each link's
        # register slice (a window of T = 2 ticks fits there whole), one in
        # the result register.
        self.images_in_flight = 3 + sum(5 if layer.is_conv else 3 for layer in bundle.layers)

    def elaborate(self, platform):
        m = Module()
        bundle = self.bundle
        m.submodules.encoder = self.encoder
        for index, engine in enumerate(self.engines):
            m.submodules[f"layer{index + 1}"] = engine
        m.submodules.readout = self.readout

        # ---- Event chain, with a trace tap after every spiking layer.
        producers = [self.encoder.events] + [engine.out for engine in self.engines]
        consumers = [engine.inp for engine in self.engines] + [self.readout.inp]
        taps = []
        for index, (producer, consumer) in enumerate(zip(producers, consumers)):
            # A register slice on every link: no combinational path crosses
            # from one block into the next, in either direction.
            link = RegisterSlice(producer.signature)
            m.submodules[f"link{index}"] = link
            wiring.connect(m, producer, link.inp)
            producer = link.out
            if self.has_trace:
                width = bundle.spiking_widths[index]
                tap = TraceTap(bundle.time_steps, width)
                m.submodules[f"tap{index}"] = tap
                wiring.connect(m, producer, tap.inp)
                wiring.connect(m, tap.out, consumer)
                taps.append(tap)
            else:
                wiring.connect(m, producer, consumer)

        if self.has_trace:
            widths = bundle.spiking_widths
            merge = TraceMerge(bundle.time_steps, len(widths), max(widths))
            m.submodules.trace_merge = merge
            for index, tap in enumerate(taps):
                # The tap's neuron field is as wide as its layer; the merge's
                # as the widest layer.
                m.d.comb += [
                    merge.taps[index].valid.eq(tap.trace.valid),
                    merge.taps[index].payload.tick.eq(tap.trace.payload.tick),
                    merge.taps[index].payload.step.eq(tap.trace.payload.step),
                    merge.taps[index].payload.neuron.eq(tap.trace.payload.neuron),
                    tap.trace.ready.eq(merge.taps[index].ready),
                ]
            wiring.connect(m, merge.trace, wiring.flipped(self.trace))

        # ---- Cycle stamps: a free-running counter, a FIFO of start times.
        now = Signal(CYCLE_BITS)
        m.d.sync += now.eq(now + 1)
        starts = SyncFIFO(width=CYCLE_BITS, depth=self.images_in_flight)
        m.submodules.starts = starts

        beats = beats_per_image(bundle.input_size, self.pixels_per_beat)
        beat = Signal(range(beats))
        first_beat = Signal()
        input_open = Signal()
        m.d.comb += [
            first_beat.eq(beat == 0),
            # A new image starts only when its start time can be recorded.
            input_open.eq(~first_beat | starts.w_rdy),
            self.encoder.pixels.payload.eq(self.pixels.payload),
            self.encoder.pixels.valid.eq(self.pixels.valid & input_open),
            self.pixels.ready.eq(self.encoder.pixels.ready & input_open),
            starts.w_data.eq(now),
            starts.w_en.eq(self.pixels.valid & self.pixels.ready & first_beat),
        ]
        with m.If(self.pixels.valid & self.pixels.ready):
            with m.If(beat == beats - 1):
                m.d.sync += beat.eq(0)
            with m.Else():
                m.d.sync += beat.eq(beat + 1)

        # ---- Result register: class and logits from the readout, plus cycles.
        take = Signal()
        m.d.comb += [
            take.eq(self.readout.result.valid & (~self.result.valid | self.result.ready)),
            self.readout.result.ready.eq(take),
            starts.r_en.eq(take),
        ]
        with m.If(self.result.ready):
            m.d.sync += self.result.valid.eq(0)
        with m.If(take):
            m.d.sync += [
                self.result.valid.eq(1),
                self.result.payload.cls.eq(self.readout.result.payload.cls),
                self.result.payload.logits.eq(self.readout.result.payload.logits),
                # Valid from the next cycle on: one more than the cycles so far.
                self.result.payload.cycles.eq(now + 1 - starts.r_data),
            ]
        return m

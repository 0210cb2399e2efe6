"""InputEncoder: a pixel stream in, layer 0's canonical spike window out.

Contract section 3: pixel ``v`` of channel ``c`` becomes the activation
``a = lut[c][v]``; ``a >= 1`` is one spike at step ``T - a``.  Layer 0's
window must leave in canonical order (by step, then pixel index), but a spike
at step 0 may come from the last pixel, so the whole image is buffered first.

Buffering without scanning all pixels once per step (``T x C*H*W`` cycles):
the encoder builds, while the image streams in, one linked list per step.
Pixels arrive ``K = pixels_per_beat`` at a time, pixel ``j = b*K + k`` of beat
``b`` on *lane* ``k``; every lane owns its own lists (head, tail and a valid
flag per step, a next-pointer per beat), so each lane appends at most one
pixel per cycle and the K appends of a beat never collide.  Lists grow in
arrival order, so each lane's list for a step is in ascending pixel order.

Emission walks the steps in order: for step ``s`` it loads the K lanes' list
heads and, every cycle, emits the smallest pixel index among the lanes'
current nodes (a K-way merge of sorted lists), then advances that lane along
its next-pointer.  When every lane is exhausted it emits the tick of step
``s``.  One image therefore leaves in ``1 + spikes + T`` cycles after it is
in (the 1 loads step 0).

The lists are double-buffered: while buffer A is emitted, the next image
streams into buffer B.  Loading step ``s`` of a buffer clears that step's
valid flags, so a buffer is empty again when its window has left.

Reset: the valid flags (2 x K x T bits) are registers, so ``rst`` empties
every list at once, even in the middle of a frame; heads, tails and
next-pointers stay in memories, which ``rst`` does not touch, but they are
only read behind a set valid flag.  The encoder therefore needs no clearing
pass and accepts pixels in the first cycle after ``rst`` falls.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.errors import HardwareError
from hw.events import bits_for, event_signature

PIXEL_BITS = 8


def pixel_signature(pixels_per_beat: int) -> stream.Signature:
    """Stream signature (producer's view) of the pixel input: K uint8 pixels per beat."""
    return stream.Signature(data.ArrayLayout(PIXEL_BITS, pixels_per_beat))


def beats_per_image(input_size: int, pixels_per_beat: int) -> int:
    """Beats that carry one image of ``input_size`` pixels (the last one zero-padded)."""
    return -(-input_size // pixels_per_beat)


class InputEncoder(wiring.Component):
    """Pixels in contract order to layer 0's spike window (canonical order plus T ticks).

    Parameters
    ----------
    bundle : sim.bundle.Bundle
        Supplies ``time_steps``, the image shape and the per-channel LUT.
    pixels_per_beat : int
        Pixels per input beat (K >= 1).  Element 0 of a beat is the lowest
        pixel index; the last beat of an image is padded with zeros (ignored).

    Ports
    -----
    pixels : In(stream of ArrayLayout(8, K))
        One image is ``ceil(C*H*W / K)`` beats; images follow back to back.
    events : Out(event_signature(T, C*H*W))
        One window per image.

    Latency: the last beat of an image is appended one cycle after it is
    accepted; the window starts two cycles later (if the previous window has
    left) and takes ``1 + spikes + T`` cycles at full downstream speed.  The
    input accepts one beat per cycle while a list buffer is free.
    """

    def __init__(self, bundle, pixels_per_beat: int = 1):
        try:
            self._configure(bundle, pixels_per_beat)
        except HardwareError:
            # Never built: keep amaranth from warning that it was never elaborated.
            self._MustUse__used = True
            raise
        super().__init__({
            "pixels": In(pixel_signature(pixels_per_beat)),
            "events": Out(event_signature(self.time_steps, self.input_size)),
        })

    def _configure(self, bundle, pixels_per_beat):
        """Check the parameters and derive the geometry."""
        if not isinstance(pixels_per_beat, int) or isinstance(pixels_per_beat, bool) \
                or pixels_per_beat < 1:
            raise HardwareError(f"pixels_per_beat: {pixels_per_beat!r} is not an integer >= 1")
        self.time_steps = int(bundle.time_steps)
        self.channels = int(bundle.channels)
        self.channel_size = int(bundle.height) * int(bundle.width)
        self.input_size = self.channels * self.channel_size
        if self.input_size < 1:
            raise HardwareError(f"input: image size {self.input_size} is below 1")
        if pixels_per_beat > self.input_size:
            raise HardwareError(
                f"pixels_per_beat: {pixels_per_beat} exceeds the image size {self.input_size}")
        self.pixels_per_beat = pixels_per_beat
        self.beats = beats_per_image(self.input_size, pixels_per_beat)
        self.lut = [[int(v) for v in row] for row in bundle.lut]
        for c, row in enumerate(self.lut):
            for v, a in enumerate(row):
                if not 0 <= a <= self.time_steps:
                    raise HardwareError(
                        f"lut[{c}][{v}]: {a} is outside 0..{self.time_steps}")

    def elaborate(self, platform):
        m = Module()
        T = self.time_steps
        K = self.pixels_per_beat
        C = self.channels
        beat_width = bits_for(self.beats - 1)
        step_width = bits_for(T - 1)
        act_width = bits_for(T)
        # Lanes of the last beat that carry real pixels; the others are padding.
        last_beat_lanes = self.input_size - (self.beats - 1) * K

        # ---- LUT: one ROM row per (channel, pixel value), one read port per lane.
        lut_rom = Memory(shape=act_width, depth=C * 256,
                         init=[a for row in self.lut for a in row])
        m.submodules.lut_rom = lut_rom

        # ---- List buffers: per buffer and lane, a valid flag, head and tail per
        # step and a next-pointer per beat.  The valid flags are registers, not
        # a memory: `rst` must empty the lists (a memory keeps its contents),
        # and everything else is only read behind a set flag.
        def list_memory(name, shape, depth):
            mem = Memory(shape=shape, depth=depth, init=[])
            m.submodules[name] = mem
            return mem

        lists = [[{
            "valid": Signal(T, name=f"valid_{buf}_{k}"),
            "head": list_memory(f"head_{buf}_{k}", beat_width, T),
            "tail": list_memory(f"tail_{buf}_{k}", beat_width, T),
            "next": list_memory(f"next_{buf}_{k}", beat_width, self.beats),
        } for k in range(K)] for buf in range(2)]

        # Buffer handshake: `full[b]` from the last beat's append until the
        # window of buffer b has left.
        full = [Signal(name=f"full_{buf}") for buf in range(2)]
        fill_buf = Signal()      # buffer the next accepted beat goes to
        emit_buf = Signal()      # buffer the emitter reads

        # ---- Stage 1: accept a beat, look its pixels up.
        beat = Signal(beat_width)                 # index of the beat being accepted
        chan = [Signal(range(max(2, C + 1)), name=f"chan_{k}", init=k // self.channel_size)
                for k in range(K)]
        offset = [Signal(range(self.channel_size), name=f"offset_{k}",
                         init=k % self.channel_size) for k in range(K)]
        last_beat = Signal()
        m.d.comb += last_beat.eq(beat == self.beats - 1)
        accept = Signal()
        m.d.comb += [
            self.pixels.ready.eq(~Mux(fill_buf, full[1], full[0])),
            accept.eq(self.pixels.valid & self.pixels.ready),
        ]

        lut_ports = []
        for k in range(K):
            port = lut_rom.read_port()
            lut_ports.append(port)
            if C == 1:
                m.d.comb += port.addr.eq(self.pixels.payload[k])
            else:
                # Padding lanes of the last beat may have run past the last channel.
                lane_chan = Mux(chan[k] < C, chan[k], 0)
                m.d.comb += port.addr.eq(lane_chan * 256 + self.pixels.payload[k])
            m.d.comb += port.en.eq(accept)

        # Per-lane channel counters: pixel j = b*K + k is channel j // (H*W).
        # Each beat moves every lane K pixels on: q whole channels plus r pixels.
        q, r = divmod(K, self.channel_size)
        with m.If(accept):
            with m.If(last_beat):
                m.d.sync += beat.eq(0)
                m.d.sync += fill_buf.eq(~fill_buf)
                for k in range(K):
                    m.d.sync += [chan[k].eq(chan[k].init), offset[k].eq(offset[k].init)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
                for k in range(K):
                    moved = offset[k] + r
                    wraps = moved >= self.channel_size
                    m.d.sync += [
                        offset[k].eq(Mux(wraps, moved - self.channel_size, moved)),
                        chan[k].eq(chan[k] + q + wraps),
                    ]

        # ---- Stage 2: append each lane's spike to its step's list.
        append_valid = Signal()
        append_beat = Signal(beat_width)
        append_buf = Signal()
        append_last = Signal()
        m.d.sync += append_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [
                append_beat.eq(beat),
                append_buf.eq(fill_buf),
                append_last.eq(last_beat),
            ]
        window_in = append_valid & append_last

        lane_spike = []
        lane_step = []
        for k in range(K):
            activation = lut_ports[k].data
            real_pixel = Const(1) if k < last_beat_lanes else ~append_last
            spike = Signal(name=f"spike_{k}")
            step = Signal(step_width, name=f"step_{k}")
            m.d.comb += [
                spike.eq(append_valid & real_pixel & (activation != 0)),
                step.eq(T - activation),
            ]
            lane_spike.append(spike)
            lane_step.append(step)

        # ---- Emitter state.
        emitting = Signal()                       # a window is leaving
        step = Signal(step_width)                 # step being emitted
        load = Signal()                           # load the lists of `load_step` this cycle
        load_step = Signal(step_width)
        active = [Signal(name=f"active_{k}") for k in range(K)]
        current = [Signal(beat_width, name=f"current_{k}") for k in range(K)]
        last = [Signal(beat_width, name=f"last_{k}") for k in range(K)]
        advance = [Signal(name=f"advance_{k}") for k in range(K)]

        # ---- Memory ports (the fill side and the emit side never use one buffer at once).
        for buf in range(2):
            fill_here = append_buf == buf
            emit_here = emit_buf == buf
            for k in range(K):
                mems = lists[buf][k]
                valid_fill = mems["valid"].bit_select(lane_step[k], 1)
                tail_fill = mems["tail"].read_port(domain="comb")
                valid_emit = mems["valid"].bit_select(load_step, 1)
                head_emit = mems["head"].read_port(domain="comb")
                tail_emit = mems["tail"].read_port(domain="comb")
                next_emit = mems["next"].read_port(domain="comb")
                head_write = mems["head"].write_port()
                tail_write = mems["tail"].write_port()
                next_write = mems["next"].write_port()

                append = lane_spike[k] & fill_here
                m.d.comb += [
                    tail_fill.addr.eq(lane_step[k]),
                    # Appending: link the old tail to this beat, or start the list.
                    next_write.addr.eq(tail_fill.data),
                    next_write.data.eq(append_beat),
                    next_write.en.eq(append & valid_fill),
                    head_write.addr.eq(lane_step[k]),
                    head_write.data.eq(append_beat),
                    head_write.en.eq(append & ~valid_fill),
                    tail_write.addr.eq(lane_step[k]),
                    tail_write.data.eq(append_beat),
                    tail_write.en.eq(append),
                    # Emitting: read a step's list and clear it for the next image.
                    head_emit.addr.eq(load_step),
                    tail_emit.addr.eq(load_step),
                    next_emit.addr.eq(current[k]),
                ]
                with m.If(append):
                    m.d.sync += mems["valid"].bit_select(lane_step[k], 1).eq(1)
                with m.Elif(load & emit_here):
                    m.d.sync += mems["valid"].bit_select(load_step, 1).eq(0)
                with m.If(load & emit_here):
                    m.d.sync += [
                        active[k].eq(valid_emit),
                        current[k].eq(head_emit.data),
                        last[k].eq(tail_emit.data),
                    ]
                with m.Elif(advance[k] & emit_here):
                    with m.If(current[k] == last[k]):
                        m.d.sync += active[k].eq(0)
                    with m.Else():
                        m.d.sync += current[k].eq(next_emit.data)

        # ---- K-way merge: the smallest pixel index among the active lanes.
        neuron_width = bits_for(self.input_size - 1)
        candidates = []
        lane_index = []
        for k in range(K):
            index = Signal(neuron_width, name=f"index_{k}")
            m.d.comb += index.eq(current[k] * K + k)
            lane_index.append(index)
            candidates.append((active[k], index))
        while len(candidates) > 1:
            merged = []
            for pair in range(0, len(candidates) - 1, 2):
                (valid_a, index_a), (valid_b, index_b) = candidates[pair], candidates[pair + 1]
                take_b = valid_b & (~valid_a | (index_b < index_a))
                merged.append((valid_a | valid_b, Mux(take_b, index_b, index_a)))
            if len(candidates) % 2:
                merged.append(candidates[-1])
            candidates = merged
        any_active, smallest = candidates[0]

        fire = Signal()
        m.d.comb += [
            self.events.valid.eq(emitting),
            self.events.payload.step.eq(step),
            self.events.payload.tick.eq(~any_active),
            self.events.payload.neuron.eq(Mux(any_active, smallest, 0)),
            fire.eq(self.events.valid & self.events.ready),
        ]
        for k in range(K):
            m.d.comb += advance[k].eq(fire & active[k] & (lane_index[k] == smallest))

        window_out = Signal()
        with m.If(~emitting):
            with m.If(Mux(emit_buf, full[1], full[0])):
                m.d.comb += [load.eq(1), load_step.eq(0)]
                m.d.sync += [emitting.eq(1), step.eq(0)]
        with m.Elif(fire & ~any_active):
            with m.If(step == T - 1):
                m.d.comb += window_out.eq(1)
                m.d.sync += [emitting.eq(0), emit_buf.eq(~emit_buf)]
            with m.Else():
                m.d.comb += [load.eq(1), load_step.eq(step + 1)]
                m.d.sync += step.eq(step + 1)

        for buf in range(2):
            with m.If(window_in & (append_buf == buf)):
                m.d.sync += full[buf].eq(1)
            with m.Elif(window_out & (emit_buf == buf)):
                m.d.sync += full[buf].eq(0)

        return m

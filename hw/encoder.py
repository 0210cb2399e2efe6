"""InputEncoder: a pixel stream in, layer 0's canonical spike window out.

Contract section 3: pixel ``v`` of channel ``c`` becomes the activation
``a = lut[c][v]``; ``a >= 1`` is one spike at step ``T - a``.  Layer 0's
window must leave in canonical order (by step, then pixel index), but a spike
at step 0 may come from the last pixel, so the whole image is buffered first.

Buffering without scanning all pixels once per step (``T x C*H*W`` cycles):
the encoder builds, while the image streams in, one linked list per step.
Pixels arrive ``K = pixels_per_beat`` at a time, pixel ``j = b*K + k`` of beat
``b`` on *lane* ``k``; every lane owns its own lists (heads, tails and flags
per step, a next-pointer per beat), so each lane appends at most one pixel
per cycle and the K appends of a beat never collide.  Lists grow in arrival
order, so each lane's list for a step is in ascending pixel order.

Each list is kept as three interleaved sublists (``SUBLISTS``): a step's
1st, 4th, 7th ... append go to sublist 0, the 2nd, 5th ... to sublist 1, the
3rd, 6th ... to sublist 2.  Walking the list means taking the sublists in
turn, so a sublist moves on at most every third cycle, and its next-pointer
can be read from block RAM at a registered address into a register before
it is needed.  A plain list needs the next-pointer of the node emitted in
the same cycle: a read through a deep LUT-RAM in the loop, which limited the
clock to 87 MHz on an ECP5; two sublists still left a block RAM's slow
output in front of logic.

Emission walks the steps in order: for step ``s`` it loads the K lanes' list
heads and, every cycle, emits the smallest pixel index among the lanes'
current nodes (a K-way merge of sorted lists), then advances that lane along
its list.  When every lane is exhausted it emits the tick of step ``s``.
One image therefore leaves in ``1 + spikes + T`` cycles after it is in (the
1 loads step 0).

The lists are double-buffered: while buffer A is emitted, the next image
streams into buffer B.  Loading step ``s`` of a buffer clears that step's
valid flags and append counters, so a buffer is empty again when its window has left.

Reset: the valid flags and append counters (2 x K x 5T bits) are registers, so ``rst`` empties
every list at once, even in the middle of a frame; heads, tails and
next-pointers stay in memories, which ``rst`` does not touch, but they are
only read behind a set valid flag.  The encoder therefore needs no clearing
pass and accepts pixels in the first cycle after ``rst`` falls.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.errors import HardwareError
from hw.events import bits_for, event_signature

PIXEL_BITS = 8
# Interleaved sublists per step list: a sublist's next-pointer arrives three
# cycles after its node was emitted (address, block RAM read, register).
SUBLISTS = 3


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

    Latency: the last beat of an image is appended two cycles after it is
    accepted (LUT read, then spike and step registered); the window starts
    two cycles later (if the previous window has
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

        # ---- List buffers: per buffer and lane, every step's list is
        # SUBLISTS interleaved sublists (a step's appends go to sublists 0, 1,
        # 2, 0, 1, 2, ... in turn), each with a valid flag, head and tail; a
        # counter per step says which sublist takes the next append.  Valid
        # flags and counters are registers, not a memory: `rst` must empty the
        # lists (a memory keeps its contents), and everything else is only
        # read behind a set flag.
        def list_memory(name, shape, depth):
            mem = Memory(shape=shape, depth=depth, init=[])
            m.submodules[name] = mem
            return mem

        R = SUBLISTS
        turn_width = bits_for(R - 1)
        lists = [[{
            "valid": [Signal(T, name=f"valid_{buf}_{k}_{sub}") for sub in range(R)],
            "fill_turn": Signal(turn_width * T, name=f"fill_turn_{buf}_{k}"),
            # Row (sub, step) = sub * T + step: T is a power of two.
            "head": list_memory(f"head_{buf}_{k}", beat_width, R * T),
            "tail": list_memory(f"tail_{buf}_{k}", beat_width, R * T),
            "next": list_memory(f"next_{buf}_{k}", beat_width, self.beats),
        } for k in range(K)] for buf in range(2)]

        def list_row(step_index, sub):
            return Cat(step_index, Const(sub, turn_width) if isinstance(sub, int) else sub)

        # Buffer handshake: `full[b]` (no more input) from the cycle the last
        # beat is accepted, `filled[b]` (ready to emit) from the cycle it is
        # appended, both until the window of buffer b has left.  With a
        # one-beat image the next-but-one image must not enter b while its
        # appends are still in flight.
        full = [Signal(name=f"full_{buf}") for buf in range(2)]
        filled = [Signal(name=f"filled_{buf}") for buf in range(2)]
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

        # ---- Stage 2: the LUT's activations become each lane's spike and step,
        # registered (the LUT ROM's output, a subtraction and then the list
        # flags and write enables would not fit one 100 MHz cycle).
        lookup_valid = Signal()
        lookup_beat = Signal(beat_width)
        lookup_buf = Signal()
        lookup_last = Signal()
        m.d.sync += lookup_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [
                lookup_beat.eq(beat),
                lookup_buf.eq(fill_buf),
                lookup_last.eq(last_beat),
            ]

        # ---- Stage 3: append each lane's spike to its step's list.
        append_valid = Signal()
        append_beat = Signal(beat_width)
        append_buf = Signal()
        append_last = Signal()
        m.d.sync += [
            append_valid.eq(lookup_valid),
            append_beat.eq(lookup_beat),
            append_buf.eq(lookup_buf),
            append_last.eq(lookup_last),
        ]
        window_in = append_valid & append_last

        lane_spike = []
        lane_step = []
        for k in range(K):
            activation = lut_ports[k].data
            real_pixel = Const(1) if k < last_beat_lanes else ~lookup_last
            spike = Signal(name=f"spike_{k}")
            step = Signal(step_width, name=f"step_{k}")
            m.d.sync += [
                spike.eq(lookup_valid & real_pixel & (activation != 0)),
                step.eq(T - activation),
            ]
            lane_spike.append(spike)
            lane_step.append(step)

        # ---- Emitter state, per lane and sublist.  `current` is the node
        # emitted last (or the head, after a load) and `last` the sublist's
        # tail.  Each sublist's next-pointer read is addressed by `current`
        # and its data goes straight into `successor` every cycle (one
        # register per buffer, nothing in between: a block RAM's output is
        # slow, 5.8 ns on an ECP5, and may sit far from the logic).  After an
        # emission the successor is there three cycles later (address, read,
        # register), when `fresh` rises; the sublist's node is then
        # `successor`.  With three sublists taking turns, no sublist emits
        # again sooner.
        emitting = Signal()                       # a window is leaving
        step = Signal(step_width)                 # step being emitted
        load = Signal()                           # load the lists of `load_step` this cycle
        # The step the next load reads: a counter, one up per load, so that it
        # is a register when `load` is decided late in the cycle (after a
        # window's last load, step T-1, it wraps to 0: T is a power of two).
        load_step = Signal(step_width)

        def per_sublist(name, shape=1):
            return [[Signal(shape, name=f"{name}_{k}_{sub}") for sub in range(R)] for k in range(K)]

        sub_active = per_sublist("active")
        current = per_sublist("current", beat_width)
        last = per_sublist("last", beat_width)
        pending = per_sublist("pending", 2)       # cycles since an emission (while 1, 2)
        fresh = per_sublist("fresh")
        # Reset-less: only read behind `fresh`, which reset clears; a reset
        # would put a LUT between the block RAM and the register.
        successor = [[[Signal(beat_width, name=f"successor_{k}_{sub}_{buf}", reset_less=True)
                       for buf in range(2)] for sub in range(R)] for k in range(K)]
        sub_node = per_sublist("node", beat_width)
        turn = [Signal(range(R), name=f"turn_{k}") for k in range(K)]    # sublist whose node is next
        active = [Signal(name=f"active_{k}") for k in range(K)]
        node = [Signal(beat_width, name=f"node_{k}") for k in range(K)]
        advance = [Signal(name=f"advance_{k}") for k in range(K)]
        for k in range(K):
            for sub in range(R):
                m.d.comb += sub_node[k][sub].eq(
                    Mux(fresh[k][sub], Mux(emit_buf, successor[k][sub][1], successor[k][sub][0]),
                        current[k][sub]))
            with m.Switch(turn[k]):
                for sub in range(R):
                    # The last sublist as the default: a complete case for Verilator's lint.
                    with m.Case(sub) if sub < R - 1 else m.Default():
                        m.d.comb += [active[k].eq(sub_active[k][sub]), node[k].eq(sub_node[k][sub])]

        # ---- Memory ports (the fill side and the emit side never use one buffer at once).
        for buf in range(2):
            fill_here = append_buf == buf
            emit_here = emit_buf == buf
            for k in range(K):
                mems = lists[buf][k]
                fill_sub = mems["fill_turn"].word_select(lane_step[k], turn_width)
                valid_fill = Signal(name=f"valid_fill_{buf}_{k}")
                with m.Switch(fill_sub):
                    for sub in range(R):
                        with m.Case(sub) if sub < R - 1 else m.Default():
                            m.d.comb += valid_fill.eq(mems["valid"][sub].bit_select(lane_step[k], 1))
                tail_fill = mems["tail"].read_port(domain="comb")
                head_write = mems["head"].write_port()
                tail_write = mems["tail"].write_port()
                next_write = mems["next"].write_port()

                append = lane_spike[k] & fill_here
                m.d.comb += [
                    tail_fill.addr.eq(list_row(lane_step[k], fill_sub)),
                    # Appending: link the sublist's old tail to this beat, or start it.
                    next_write.addr.eq(tail_fill.data),
                    next_write.data.eq(append_beat),
                    next_write.en.eq(append & valid_fill),
                    head_write.addr.eq(list_row(lane_step[k], fill_sub)),
                    head_write.data.eq(append_beat),
                    head_write.en.eq(append & ~valid_fill),
                    tail_write.addr.eq(list_row(lane_step[k], fill_sub)),
                    tail_write.data.eq(append_beat),
                    tail_write.en.eq(append),
                ]
                with m.If(append):
                    for sub in range(R):
                        with m.If(fill_sub == sub):
                            m.d.sync += mems["valid"][sub].bit_select(lane_step[k], 1).eq(1)
                    m.d.sync += mems["fill_turn"].word_select(lane_step[k], turn_width).eq(
                        Mux(fill_sub == R - 1, 0, fill_sub + 1))
                with m.Elif(load & emit_here):
                    # Emitting: the step's lists are read and left empty for the next image.
                    for sub in range(R):
                        m.d.sync += mems["valid"][sub].bit_select(load_step, 1).eq(0)
                    m.d.sync += mems["fill_turn"].word_select(load_step, turn_width).eq(0)

                for sub in range(R):
                    head_emit = mems["head"].read_port(domain="comb")
                    tail_emit = mems["tail"].read_port(domain="comb")
                    next_emit = mems["next"].read_port()     # synchronous: data one cycle later
                    m.d.comb += [
                        head_emit.addr.eq(list_row(load_step, sub)),
                        tail_emit.addr.eq(list_row(load_step, sub)),
                        next_emit.addr.eq(current[k][sub]),
                    ]
                    m.d.sync += successor[k][sub][buf].eq(next_emit.data)
                    with m.If(load & emit_here):
                        m.d.sync += [
                            sub_active[k][sub].eq(mems["valid"][sub].bit_select(load_step, 1)),
                            current[k][sub].eq(head_emit.data),
                            last[k][sub].eq(tail_emit.data),
                        ]

        for k in range(K):
            for sub in range(R):
                with m.If(pending[k][sub] == 1):
                    m.d.sync += pending[k][sub].eq(2)
                with m.If(pending[k][sub] == 2):
                    m.d.sync += [pending[k][sub].eq(0), fresh[k][sub].eq(1)]
                with m.If(advance[k] & (turn[k] == sub)):
                    m.d.sync += [current[k][sub].eq(sub_node[k][sub]), fresh[k][sub].eq(0)]
                    with m.If(sub_node[k][sub] == last[k][sub]):
                        m.d.sync += sub_active[k][sub].eq(0)
                    with m.Else():
                        m.d.sync += pending[k][sub].eq(1)
            with m.If(advance[k]):
                m.d.sync += turn[k].eq(Mux(turn[k] == R - 1, 0, turn[k] + 1))
            with m.If(load):
                m.d.sync += turn[k].eq(0)
                for sub in range(R):
                    m.d.sync += [pending[k][sub].eq(0), fresh[k][sub].eq(0)]

        # ---- K-way merge: the smallest pixel index among the active lanes.
        neuron_width = bits_for(self.input_size - 1)
        candidates = []
        lane_index = []
        for k in range(K):
            index = Signal(neuron_width, name=f"index_{k}")
            m.d.comb += index.eq(node[k] * K + k)
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
            chosen = Const(1) if K == 1 else lane_index[k] == smallest
            m.d.comb += advance[k].eq(fire & active[k] & chosen)

        window_out = Signal()
        with m.If(~emitting):
            with m.If(Mux(emit_buf, filled[1], filled[0])):
                m.d.comb += load.eq(1)
                m.d.sync += [emitting.eq(1), step.eq(0)]
        with m.Elif(fire & ~any_active):
            with m.If(step == T - 1):
                m.d.comb += window_out.eq(1)
                m.d.sync += [emitting.eq(0), emit_buf.eq(~emit_buf)]
            with m.Else():
                m.d.comb += load.eq(1)
                m.d.sync += step.eq(step + 1)
        with m.If(load):
            m.d.sync += load_step.eq(load_step + 1)

        for buf in range(2):
            with m.If(accept & last_beat & (fill_buf == buf)):
                m.d.sync += full[buf].eq(1)
            with m.Elif(window_out & (emit_buf == buf)):
                m.d.sync += full[buf].eq(0)
            with m.If(window_in & (append_buf == buf)):
                m.d.sync += filled[buf].eq(1)
            with m.Elif(window_out & (emit_buf == buf)):
                m.d.sync += filled[buf].eq(0)

        return m

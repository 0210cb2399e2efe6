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

Parts: :class:`PixelLookup` (the LUT stages: beats in, each lane's spike and
step out), :class:`SortedWindowEmitter` (one :class:`StepLists` per lane, the
list builder and walker, :func:`smallest_index`, the K-way merge, and the
emission sequencer; the conv engine's firing path reuses it) and, in
:class:`InputEncoder`, the buffer handshake.  The pixel beat format is
described in :mod:`ttfs.contract.streams`.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from ttfs.contract.streams import PIXEL_BITS, beats_per_image, bits_for
from ttfs.hw.errors import HardwareError
from ttfs.hw.events import event_signature
from ttfs.hw.unused import mark_unused

# Interleaved sublists per step list: a sublist's next-pointer arrives three
# cycles after its node was emitted (address, block RAM read, register).
SUBLISTS = 3


def pixel_signature(pixels_per_beat: int) -> stream.Signature:
    """Stream signature (producer's view) of the pixel input: K uint8 pixels per beat."""
    return stream.Signature(data.ArrayLayout(PIXEL_BITS, pixels_per_beat))


def beat_layout(beats: int) -> data.StructLayout:
    """A pixel beat on its way through the encoder's input stages."""
    return data.StructLayout({
        "valid": 1,
        "index": bits_for(beats - 1),        # the beat's index within its image
        "buf": 1,                            # the list buffer it goes to
        "last": 1,                           # the image's last beat
    })


def append_layout(beats: int, time_steps: int, pixels_per_beat: int) -> data.StructLayout:
    """A looked-up beat: the beat, and each lane's spike and step (the list it is appended to)."""
    return data.StructLayout({
        "beat": beat_layout(beats),
        "spike": pixels_per_beat,
        "step": data.ArrayLayout(bits_for(time_steps - 1), pixels_per_beat),
    })


class PixelLookup(wiring.Component):
    """The encoder's input stages: pixel beats in, every lane's spike and step out.

    Stage 1 (accept): a beat is taken while ``open``; each lane's pixel
    addresses its channel's row of the LUT ROM (per-lane channel counters
    follow pixel j = b*K + k, channel j // (H*W)).  Stage 2: the LUT's
    activations arrive.  Stage 3, registered (the LUT ROM's output, a
    subtraction and then the list flags and write enables would not fit one
    100 MHz cycle): each lane's spike (activation >= 1 on a real pixel, not
    padding) and step T - activation.

    Ports
    -----
    pixels : In(pixel_signature(K))
        ``ready`` is ``open``.
    open : In(1)
        The list buffer the next beat goes to can take it.
    fill_buf : Out(1)
        The buffer the next accepted beat goes to (it changes after an image's last beat).
    last_accepted : Out(1)
        An image's last beat is accepted in this cycle.
    append : Out(:func:`append_layout`)
        The beat accepted two cycles earlier (``append.beat.valid`` for one cycle).
    """

    def __init__(self, encoder: "InputEncoder"):
        self._encoder = encoder
        self._append = append_layout(encoder.beats, encoder.time_steps, encoder.pixels_per_beat)
        super().__init__({
            "pixels": In(pixel_signature(encoder.pixels_per_beat)),
            "open": In(1),
            "fill_buf": Out(1),
            "last_accepted": Out(1),
            "append": Out(self._append),
        })

    def elaborate(self, platform):
        m = Module()
        encoder = self._encoder
        T, K, C = encoder.time_steps, encoder.pixels_per_beat, encoder.channels
        # The LUT: one ROM row per (channel, pixel value), one read port per lane.
        m.submodules.lut_rom = lut_rom = Memory(shape=bits_for(T), depth=C * 256,
                                                init=[a for row in encoder.lut for a in row])
        accepting = Signal(beat_layout(encoder.beats))
        m.d.comb += [
            self.pixels.ready.eq(self.open),
            accepting.valid.eq(self.pixels.valid & self.pixels.ready),
            accepting.buf.eq(self.fill_buf),
            self.last_accepted.eq(accepting.valid & accepting.last),
        ]
        lanes_chan = self._count_beats(m, accepting)
        lut_data = []
        for k in range(K):
            port = lut_rom.read_port()
            if C == 1:
                m.d.comb += port.addr.eq(self.pixels.payload[k])
            else:
                # Padding lanes of the last beat may have run past the last channel.
                lane_chan = Mux(lanes_chan[k] < C, lanes_chan[k], 0)
                m.d.comb += port.addr.eq(lane_chan * 256 + self.pixels.payload[k])
            m.d.comb += port.en.eq(accepting.valid)
            lut_data.append(port.data)

        # Stage 2: the beat waits beside the LUT read; stage 3: the spikes.
        lookup = Signal(beat_layout(encoder.beats))
        m.d.sync += lookup.valid.eq(accepting.valid)
        with m.If(accepting.valid):
            m.d.sync += [lookup.index.eq(accepting.index), lookup.buf.eq(accepting.buf),
                         lookup.last.eq(accepting.last)]
        m.d.sync += self.append.beat.eq(lookup)
        # Lanes of the last beat that carry real pixels; the others are padding.
        last_beat_lanes = encoder.input_size - (encoder.beats - 1) * K
        for k, activation in enumerate(lut_data):
            real_pixel = Const(1) if k < last_beat_lanes else ~lookup.last
            m.d.sync += [
                self.append.spike[k].eq(lookup.valid & real_pixel & (activation != 0)),
                self.append.step[k].eq(T - activation),
            ]
        return m

    def _count_beats(self, m, accepting):
        """The beat index and buffer of ``accepting``, and each lane's channel counter."""
        encoder = self._encoder
        K, C, channel_size = encoder.pixels_per_beat, encoder.channels, encoder.channel_size
        beat = Signal(bits_for(encoder.beats - 1))
        chan = [Signal(range(max(2, C + 1)), name=f"chan_{k}", init=k // channel_size) for k in range(K)]
        offset = [Signal(range(channel_size), name=f"offset_{k}", init=k % channel_size) for k in range(K)]
        m.d.comb += [accepting.index.eq(beat), accepting.last.eq(beat == encoder.beats - 1)]
        # Each beat moves every lane K pixels on: q whole channels plus r pixels.
        q, r = divmod(K, channel_size)
        with m.If(accepting.valid):
            with m.If(accepting.last):
                m.d.sync += beat.eq(0)
                m.d.sync += self.fill_buf.eq(~self.fill_buf)
                for k in range(K):
                    m.d.sync += [chan[k].eq(chan[k].init), offset[k].eq(offset[k].init)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
                for k in range(K):
                    moved = offset[k] + r
                    wraps = moved >= channel_size
                    m.d.sync += [
                        offset[k].eq(Mux(wraps, moved - channel_size, moved)),
                        chan[k].eq(chan[k] + q + wraps),
                    ]
        return chan


class StepLists(wiring.Component):
    """One lane's step lists in both buffers: appends in arrival order, then a walk of one step.

    Per buffer, every step's list is ``SUBLISTS`` interleaved sublists (a
    step's appends go to sublists 0, 1, 2, 0, 1, 2, ... in turn), each with
    a valid flag, a head and a tail; a counter per step says which sublist
    takes the next append.  Valid flags and counters are registers, not a
    memory: ``rst`` must empty the lists (a memory keeps its contents), and
    everything else is only read behind a set flag.  Heads, tails and
    next-pointers (one per beat) are memories.

    The walk: ``current`` is each sublist's node emitted last (or its head,
    after a load) and ``last`` its tail.  Each sublist's next-pointer read is
    addressed by ``current`` and its data goes straight into ``successor``
    every cycle (one register per buffer, nothing in between: a block RAM's
    output is slow, 5.8 ns on an ECP5, and may sit far from the logic).
    After an emission the successor is there three cycles later (address,
    read, register), when ``fresh`` rises; the sublist's node is then
    ``successor``.  With three sublists taking turns, no sublist emits again
    sooner, so the walk moves one node per cycle.

    Ports
    -----
    spike, step, beat, buf : In
        Append ``beat`` to list ``step`` of buffer ``buf`` when ``spike``;
        a load from the next cycle on sees it.
    load, load_step, emit_buf : In
        Load the lists of step ``load_step`` of buffer ``emit_buf`` for the
        walk (from the next cycle) and leave them empty in that buffer.  The
        fill side and the emit side never use one buffer at once.
    advance : In
        The current node leaves; the walk shows the next one in the next cycle.
    active, node : Out
        The walk's current node (the beat index, valid while ``active``),
        from registers and the successor registers.
    """

    def __init__(self, time_steps: int, beats: int):
        self._time_steps = time_steps
        self._beats = beats
        step_width, beat_width = bits_for(time_steps - 1), bits_for(beats - 1)
        super().__init__({
            "spike": In(1), "step": In(step_width), "beat": In(beat_width), "buf": In(1),
            "load": In(1), "load_step": In(step_width), "emit_buf": In(1),
            "advance": In(1),
            "active": Out(1), "node": Out(beat_width),
        })

    def elaborate(self, platform):
        m = Module()
        R, beat_width = SUBLISTS, bits_for(self._beats - 1)

        def per_sublist(name, shape=1):
            return [Signal(shape, name=f"{name}_{sub}") for sub in range(R)]

        walk = {
            "active": per_sublist("active"),
            "current": per_sublist("current", beat_width),
            "last": per_sublist("last", beat_width),
            "pending": per_sublist("pending", 2),     # cycles since an emission (while 1, 2)
            "fresh": per_sublist("fresh"),
            # Reset-less: only read behind `fresh`, which reset clears; a reset
            # would put a LUT between the block RAM and the register.
            "successor": [[Signal(beat_width, name=f"successor_{sub}_{buf}", reset_less=True)
                           for buf in range(2)] for sub in range(R)],
            "node": per_sublist("node", beat_width),
        }
        turn = Signal(range(R))               # sublist whose node is next
        for sub in range(R):
            successor = walk["successor"][sub]
            m.d.comb += walk["node"][sub].eq(Mux(walk["fresh"][sub],
                                                 Mux(self.emit_buf, successor[1], successor[0]),
                                                 walk["current"][sub]))
        with m.Switch(turn):
            for sub in range(R):
                # The last sublist as the default: a complete case for Verilator's lint.
                with m.Case(sub) if sub < R - 1 else m.Default():
                    m.d.comb += [self.active.eq(walk["active"][sub]), self.node.eq(walk["node"][sub])]
        for buf in range(2):
            self._buffer(m, buf, walk)
        self._walk(m, walk, turn)
        return m

    def _row(self, step, sub):
        """Row (sub, step) = sub * T + step of a head or tail memory: T is a power of two."""
        turn_width = bits_for(SUBLISTS - 1)
        return Cat(step, Const(sub, turn_width) if isinstance(sub, int) else sub)

    def _buffer(self, m, buf, walk):
        """The lists of buffer ``buf``: their flags, memories, appends and loads."""
        T, R = self._time_steps, SUBLISTS
        beat_width, turn_width = bits_for(self._beats - 1), bits_for(R - 1)
        valid = [Signal(T, name=f"valid_{buf}_{sub}") for sub in range(R)]
        fill_turn = Signal(turn_width * T, name=f"fill_turn_{buf}")
        memories = {}
        for kind, depth in (("head", R * T), ("tail", R * T), ("next", self._beats)):
            memories[kind] = m.submodules[f"{kind}_{buf}"] = Memory(shape=beat_width, depth=depth, init=[])
        emit_here = self.load & (self.emit_buf == buf)

        # Appending: link the sublist's old tail to this beat, or start it.
        fill_sub = fill_turn.word_select(self.step, turn_width)
        valid_fill = Signal(name=f"valid_fill_{buf}")
        with m.Switch(fill_sub):
            for sub in range(R):
                with m.Case(sub) if sub < R - 1 else m.Default():
                    m.d.comb += valid_fill.eq(valid[sub].bit_select(self.step, 1))
        tail_fill = memories["tail"].read_port(domain="comb")
        append = self.spike & (self.buf == buf)
        row = self._row(self.step, fill_sub)
        m.d.comb += tail_fill.addr.eq(row)
        for kind, address, enable in (("next", tail_fill.data, append & valid_fill),
                                      ("head", row, append & ~valid_fill),
                                      ("tail", row, append)):
            port = memories[kind].write_port()
            m.d.comb += [port.addr.eq(address), port.data.eq(self.beat), port.en.eq(enable)]
        with m.If(append):
            for sub in range(R):
                with m.If(fill_sub == sub):
                    m.d.sync += valid[sub].bit_select(self.step, 1).eq(1)
            m.d.sync += fill_turn.word_select(self.step, turn_width).eq(Mux(fill_sub == R - 1, 0, fill_sub + 1))
        with m.Elif(emit_here):
            # Emitting: the step's lists are read and left empty for the next image.
            for sub in range(R):
                m.d.sync += valid[sub].bit_select(self.load_step, 1).eq(0)
            m.d.sync += fill_turn.word_select(self.load_step, turn_width).eq(0)

        for sub in range(R):
            head_emit = memories["head"].read_port(domain="comb")
            tail_emit = memories["tail"].read_port(domain="comb")
            next_emit = memories["next"].read_port()     # synchronous: data one cycle later
            m.d.comb += [
                head_emit.addr.eq(self._row(self.load_step, sub)),
                tail_emit.addr.eq(self._row(self.load_step, sub)),
                next_emit.addr.eq(walk["current"][sub]),
            ]
            m.d.sync += walk["successor"][sub][buf].eq(next_emit.data)
            with m.If(emit_here):
                m.d.sync += [
                    walk["active"][sub].eq(valid[sub].bit_select(self.load_step, 1)),
                    walk["current"][sub].eq(head_emit.data),
                    walk["last"][sub].eq(tail_emit.data),
                ]

    def _walk(self, m, walk, turn):
        """Advance along the sublists in turn; a sublist's successor is fresh three cycles after it moved."""
        R = SUBLISTS
        for sub in range(R):
            pending, fresh, node = walk["pending"][sub], walk["fresh"][sub], walk["node"][sub]
            with m.If(pending == 1):
                m.d.sync += pending.eq(2)
            with m.If(pending == 2):
                m.d.sync += [pending.eq(0), fresh.eq(1)]
            with m.If(self.advance & (turn == sub)):
                m.d.sync += [walk["current"][sub].eq(node), fresh.eq(0)]
                with m.If(node == walk["last"][sub]):
                    m.d.sync += walk["active"][sub].eq(0)
                with m.Else():
                    m.d.sync += pending.eq(1)
        with m.If(self.advance):
            m.d.sync += turn.eq(Mux(turn == R - 1, 0, turn + 1))
        with m.If(self.load):
            m.d.sync += turn.eq(0)
            for sub in range(R):
                m.d.sync += [walk["pending"][sub].eq(0), walk["fresh"][sub].eq(0)]


def smallest_index(candidates):
    """(any valid, smallest index) of (valid, index) pairs: a balanced tree of compares, combinational."""
    while len(candidates) > 1:
        merged = []
        for pair in range(0, len(candidates) - 1, 2):
            (valid_a, index_a), (valid_b, index_b) = candidates[pair], candidates[pair + 1]
            take_b = valid_b & (~valid_a | (index_b < index_a))
            merged.append((valid_a | valid_b, Mux(take_b, index_b, index_a)))
        if len(candidates) % 2:
            merged.append(candidates[-1])
        candidates = merged
    return candidates[0]


class SortedWindowEmitter(wiring.Component):
    """Per-lane step lists (:class:`StepLists`, double-buffered) and their emission as one
    canonical window: for each step, a K-way merge of the lanes' lists (smallest
    neuron index first), then the step's tick.

    Shared by the :class:`InputEncoder` (lanes = pixels of a beat) and the conv
    engine's firing path (:class:`ttfs.hw.conv.ConvEngine`, lanes = output
    channels).  The owner appends to one buffer while the other is emitted,
    and says with ``filled`` which buffers hold a complete window.

    Parameters
    ----------
    time_steps, lanes : int
        T and K.
    nodes : int
        Nodes per lane (the depth of a lane's next-pointer memory).
    width : int
        Neurons of the window (the ``neuron`` field's range).
    neuron_of : callable (lane, node) -> Value
        The neuron index of lane ``lane``'s node; within a step, each lane's
        appends must come in ascending neuron order.

    Ports
    -----
    spike, step, node, buf : In
        Lane k appends ``node`` to its list of step ``step[k]`` in buffer
        ``buf`` when ``spike[k]``; nodes of one buffer are appended in
        ascending neuron order per lane.
    filled : In(2)
        Buffer b holds a complete window (its last append is in).
    emit_buf : Out(1)
        The buffer emitted next (or being emitted).
    window_out : Out(1)
        The window of ``emit_buf`` leaves (its last tick moves) in this cycle;
        ``emit_buf`` flips after it.
    events : Out(event_signature(T, width))
        ``1 + spikes + T`` cycles per window at full downstream speed (the 1
        loads step 0).
    """

    def __init__(self, time_steps: int, lanes: int, nodes: int, width: int, neuron_of):
        self._time_steps, self._lanes, self._nodes, self._width = time_steps, lanes, nodes, width
        self._neuron_of = neuron_of
        super().__init__({
            "spike": In(lanes),
            "step": In(data.ArrayLayout(bits_for(time_steps - 1), lanes)),
            "node": In(bits_for(nodes - 1)),
            "buf": In(1),
            "filled": In(2),
            "emit_buf": Out(1),
            "window_out": Out(1),
            "events": Out(event_signature(time_steps, width)),
        })

    def elaborate(self, platform):
        m = Module()
        T, K = self._time_steps, self._lanes
        emitting = Signal()                       # a window is leaving
        step = Signal(bits_for(T - 1))            # step being emitted
        load = Signal()                           # load the lists of `load_step` this cycle
        # The step the next load reads: a counter, one up per load, so that it
        # is a register when `load` is decided late in the cycle (after a
        # window's last load, step T-1, it wraps to 0: T is a power of two).
        load_step = Signal(bits_for(T - 1))

        lists = []
        for k in range(K):
            m.submodules[f"lists_{k}"] = lane = StepLists(T, self._nodes)
            m.d.comb += [
                lane.spike.eq(self.spike[k]), lane.step.eq(self.step[k]),
                lane.beat.eq(self.node), lane.buf.eq(self.buf),
                lane.load.eq(load), lane.load_step.eq(load_step), lane.emit_buf.eq(self.emit_buf),
            ]
            lists.append(lane)

        # K-way merge: the smallest neuron index among the lanes' current nodes.
        lane_index = []
        for k, lane in enumerate(lists):
            index = Signal(bits_for(self._width - 1), name=f"index_{k}")
            m.d.comb += index.eq(self._neuron_of(k, lane.node))
            lane_index.append(index)
        any_active, smallest = smallest_index([(lane.active, index) for lane, index in zip(lists, lane_index)])

        fire = Signal()
        m.d.comb += [
            self.events.valid.eq(emitting),
            self.events.payload.step.eq(step),
            self.events.payload.tick.eq(~any_active),
            self.events.payload.neuron.eq(Mux(any_active, smallest, 0)),
            fire.eq(self.events.valid & self.events.ready),
        ]
        for k, lane in enumerate(lists):
            chosen = Const(1) if K == 1 else lane_index[k] == smallest
            m.d.comb += lane.advance.eq(fire & lane.active & chosen)

        # Emission: load step 0 once a filled buffer waits, then a step per tick.
        with m.If(~emitting):
            with m.If(self.filled.bit_select(self.emit_buf, 1)):
                m.d.comb += load.eq(1)
                m.d.sync += [emitting.eq(1), step.eq(0)]
        with m.Elif(fire & ~any_active):
            with m.If(step == T - 1):
                m.d.comb += self.window_out.eq(1)
                m.d.sync += [emitting.eq(0), self.emit_buf.eq(~self.emit_buf)]
            with m.Else():
                m.d.comb += load.eq(1)
                m.d.sync += step.eq(step + 1)
        with m.If(load):
            m.d.sync += load_step.eq(load_step + 1)
        return m


class InputEncoder(wiring.Component):
    """Pixels in contract order to layer 0's spike window (canonical order plus T ticks).

    Parameters
    ----------
    bundle : ttfs.contract.bundle.Bundle
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
            mark_unused(self)
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
        T, K = self.time_steps, self.pixels_per_beat
        m.submodules.lookup = lookup = PixelLookup(self)
        wiring.connect(m, wiring.flipped(self.pixels), lookup.pixels)
        append = lookup.append

        # Buffer handshake: `full[b]` (no more input) from the cycle the last
        # beat is accepted, `filled[b]` (ready to emit) from the cycle it is
        # appended, both until the window of buffer b has left.  With a
        # one-beat image the next-but-one image must not enter b while its
        # appends are still in flight.
        full = [Signal(name=f"full_{buf}") for buf in range(2)]
        filled = [Signal(name=f"filled_{buf}") for buf in range(2)]
        m.d.comb += lookup.open.eq(~Mux(lookup.fill_buf, full[1], full[0]))

        m.submodules.emitter = emitter = SortedWindowEmitter(
            T, K, self.beats, self.input_size, lambda k, node: node * K + k)
        wiring.connect(m, emitter.events, wiring.flipped(self.events))
        m.d.comb += [
            emitter.spike.eq(append.spike), emitter.step.eq(append.step),
            emitter.node.eq(append.beat.index), emitter.buf.eq(append.beat.buf),
            emitter.filled.eq(Cat(*filled)),
        ]
        emit_buf, window_out = emitter.emit_buf, emitter.window_out

        window_in = append.beat.valid & append.beat.last
        for buf in range(2):
            with m.If(lookup.last_accepted & (lookup.fill_buf == buf)):
                m.d.sync += full[buf].eq(1)
            with m.Elif(window_out & (emit_buf == buf)):
                m.d.sync += full[buf].eq(0)
            with m.If(window_in & (append.beat.buf == buf)):
                m.d.sync += filled[buf].eq(1)
            with m.Elif(window_out & (emit_buf == buf)):
                m.d.sync += filled[buf].eq(0)

        return m

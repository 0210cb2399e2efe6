"""The event-driven conv engine: a conv2d hidden layer (contract v2 section 3) in gateware.

Lanes run over output channels: P = min(lanes, O) lanes, G = ceil(O / P)
lane groups (:mod:`ttfs.hw.rom`).  Every output position of the
convolution (before pooling; NP = H_out * W_out of them) owns G *state rows*,
row ``r = pos * G + g`` holding the integrators of channels
g*P .. g*P + P - 1 at that position.  Why channels: one input spike reaches
the same k x k positions in every output channel, so one weight-ROM word
(the P channels' weights for one tap) and one state row per tap and group
serve P neurons at once, with no two lanes ever wanting the same memory row;
lanes over taps or rows would need a crossbar between taps and positions.

Integration (:class:`ConvIntegrator`), during the previous layer's window:

- an input spike j = (c, yi, xi) takes its position from the *input ROM*
  (no division: the row of tap (0, 0), ``(y0 * W_out + x0) * G`` with
  y0 = yi + pad, x0 = xi + pad, and its weight row ``c*k*k*G``), then
  walks the k x k taps, G groups per tap: tap (ky, kx) reaches output
  (y0 - ky, x0 - kx), when inside the output, and adds the weight row
  ``(c*k*k + ky*k + kx) * G + g`` to state row ``((y0-ky)*W_out + x0-kx)*G + g``.
  Every address is a counter stepping by constants; nothing is multiplied.
  Silent inputs cost nothing.
- the integrators are *bit planes*, not a ramp swept at every tick: the
  window's end value of the ramp is ``V = sum of W * a`` over the input
  spikes (a = T - step), so each neuron keeps one accumulator per bit of a,
  a tap adds W to the planes of a's set bits, and ``V = sum_b plane_b << b``.
  A tick costs one cycle instead of a sweep of NP*G rows (T * NP*G cycles
  a window: 12,544 for the first layer of mnist-vgg at 16 lanes).

Firing (:class:`ConvEngine`), once a window is closed: one *firing pass*
reads each pooled block's p*p state rows (group by group, blocks in
(Y, X) order), sums ``V + Bias`` and computes
``a = clip((V + Bias) >> ramp_shift, 0, T)`` per lane
and the block's maximum, and appends the pooled neuron to the step list of
step T - a (when a >= 1) of its lane in a :class:`ttfs.hw.encoder.SortedWindowEmitter`,
which emits the canonical window (a P-way merge per step).  Rows and columns
that floor pooling drops are never read.

The bit planes are double-buffered (two banks; the firing pass clears the rows
it reads) and so are the step lists: image n+1 integrates while image n's
firing pass runs and image n's window leaves.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from ttfs.contract.bundle import MAX_TIME_STEPS, MIN_TIME_STEPS, Layer, potential_bits
from ttfs.contract.streams import bits_for
from ttfs.hw.encoder import SortedWindowEmitter
from ttfs.hw.errors import HardwareError
from ttfs.hw.events import event_signature
from ttfs.hw.layer import LaneMemory, WeightBanks, slope_bits, times_constant
from ttfs.hw.rom import LaneGeometry, pack_biases
from ttfs.hw.unused import mark_unused


def check_conv_layer(layer: Layer, time_steps: int) -> None:
    """Raise HardwareError unless ``layer`` can be built as a ConvEngine."""
    if not isinstance(layer, Layer):
        raise HardwareError(f"layer: expected a ttfs.contract.bundle.Layer, got {type(layer).__name__}")
    if not layer.is_conv:
        raise HardwareError(f"layer {layer.name!r}: kind {layer.kind!r} is not 'conv2d' (use LayerEngine)")
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)) \
            or not MIN_TIME_STEPS <= time_steps <= MAX_TIME_STEPS or time_steps & (time_steps - 1):
        raise HardwareError(
            f"time_steps: {time_steps!r} is not a power of two in {MIN_TIME_STEPS}..{MAX_TIME_STEPS}")
    if np.shape(layer.weight) != layer.weight_shape or np.shape(layer.bias) != layer.bias_shape(layer.bias_per):
        raise HardwareError(
            f"layer {layer.name!r}: weight {np.shape(layer.weight)} / bias {np.shape(layer.bias)} "
            f"do not match the layer's shapes")


class ConvShape:
    """The numbers a conv engine is built from: sizes, padding, pool and lane geometry."""

    def __init__(self, layer: Layer, time_steps: int, lanes: int):
        check_conv_layer(layer, time_steps)
        self.layer = layer
        self.time_steps = int(time_steps)
        self.channels, self.height, self.width = layer.input_shape
        self.out_channels, self.out_height, self.out_width = layer.conv_shape
        self.kernel = layer.kernel_size
        self.pad = (self.kernel - 1) // 2 if layer.padding == "same" else 0
        self.pool = layer.pool_size
        _, self.pool_height, self.pool_width = layer.output_shape
        self.geometry = LaneGeometry.of(self.out_channels, lanes)
        self.positions = self.out_height * self.out_width
        self.state_rows = self.positions * self.geometry.groups
        self.per_position = layer.bias_per == "position"

    @property
    def pooled_positions(self) -> int:
        return self.pool_height * self.pool_width


def input_layout(shape: ConvShape) -> data.StructLayout:
    """An input ROM word: where input spike j's taps start."""
    return data.StructLayout({
        "y": range(shape.height + 2 * shape.pad),                  # y0 = yi + pad
        "x": range(shape.width + 2 * shape.pad),                   # x0 = xi + pad
        "row": bits_for(shape.state_rows - 1),                     # (y0*W_out + x0)*G, modulo 2**width
        "weight_row": range(shape.channels * shape.kernel ** 2 * shape.geometry.groups),   # c*k*k*G
    })


def input_table(shape: ConvShape) -> list[dict]:
    """The input ROM: one word per input j = c*H*W + yi*W + xi (:func:`input_layout`)."""
    groups, row_mask = shape.geometry.groups, (1 << bits_for(shape.state_rows - 1)) - 1
    words = []
    for c in range(shape.channels):
        for yi in range(shape.height):
            for xi in range(shape.width):
                y0, x0 = yi + shape.pad, xi + shape.pad
                words.append({"y": y0, "x": x0, "row": ((y0 * shape.out_width + x0) * groups) & row_mask,
                              "weight_row": c * shape.kernel ** 2 * groups})
    return words


def activation_planes(time_steps: int) -> int:
    """Bit planes of an activation a in 0..T: bits_for(T) (T = 2**n takes n + 1 bits)."""
    return bits_for(time_steps)


def state_op_layout(shape: ConvShape) -> data.StructLayout:
    """One state-row operation of the integrator's pipeline."""
    return data.StructLayout({
        "valid": 1,
        "write": 1,          # a spike's tap that lands inside the output (else a bubble)
        "closes": 1,         # the tick of step T-1: the window closes
        "activation": range(shape.time_steps + 1),     # a = T - step of the spike
        "row": range(shape.state_rows),
        "bank": 1,
    })


class ConvIntegrator(wiring.Component):
    """Integrators of a conv2d layer (contract v2 section 3.2), two banks, no tick sweeps.

    What a window leaves is ``V = sum over input spikes of W * a`` with the
    spike's activation a = T - step.  Instead of the ramp's per-step sweep of
    every neuron (T * NP*G cycles a window), each neuron keeps one
    accumulator per bit plane b of a (``bits_for(T)`` of them): a tap adds W
    to the planes whose bit of a is set, in parallel, one cycle per tap and
    group; the firing pass reads ``V + Bias = Bias + sum_b plane_b << b``.
    Each plane holds a partial sum of the kernel's weights, as a slope does,
    so it has the slope's width; the sum is exact (every partial sum is
    within the contract's section-5 bound).  Ticks cost one cycle.

    Pipeline, one state-row operation per cycle: *issue* (the tap sequencer),
    *address*, *fetch*, *read* (the weight row's way through
    :class:`ttfs.hw.layer.WeightBanks`; the read stage also reads the planes'
    row) and *write* (the adders).  The integration read is transparent to
    the write of the same cycle, so back-to-back taps on one row see each other.

    Banks: the integration writes one bank while the firing pass reads the
    other through ``drain_row`` and writes zeros behind its reads (read-first),
    so a released bank is clean again; rows that floor pooling drops are never
    read, never cleared and never matter.  Reset: a clearing pass writes zeros
    to every row of both banks (NP*G cycles, ``inp.ready`` low).

    Ports
    -----
    inp : In(event_signature(T, C*H*W))
        ``ready`` is low while a spike is processed (1 + k*k*G cycles after
        the cycle it is taken: its input-ROM read, then every tap and group);
        a tick takes one cycle; ``ready`` is also low while the closing tick
        is in the pipeline, while both banks hold closed windows and while clearing.
    window_ready : Out(1)
        A closed window waits in the drain bank.
    drain_row : In(range(NP*G)), drain_group : In(range(G)), drain_en : In(1)
        With ``drain_en``, the firing pass reads (and clears) row ``drain_row``
        of the drain bank this cycle; ``drain_group`` is its group (the row
        is pos*G + g).
    drain_data : Out(ArrayLayout(signed(potential_bits), P))
        ``V + Bias`` of the P neurons of the row read two cycles earlier (the
        planes and the bias are read, then summed into a register).
    release : In(1)
        The drain bank has been read; it becomes free.
    """

    def __init__(self, shape: ConvShape):
        self._shape = shape
        self._planes = activation_planes(shape.time_steps)
        self.potential_layout = data.ArrayLayout(
            signed(potential_bits(shape.layer, shape.time_steps)), shape.geometry.lanes)
        super().__init__({
            "inp": In(event_signature(shape.time_steps, shape.layer.inputs)),
            "window_ready": Out(1),
            "drain_row": In(range(shape.state_rows)),
            "drain_group": In(range(shape.geometry.groups)),
            "drain_en": In(1),
            "drain_data": Out(self.potential_layout),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        shape, layer = self._shape, self._shape.layer
        lanes, rows = shape.geometry.lanes, shape.state_rows
        m.submodules.weights = weights = WeightBanks(layer, lanes)
        plane_layout = data.ArrayLayout(data.ArrayLayout(signed(slope_bits(layer)), self._planes), lanes)
        banks = [LaneMemory(m, f"planes{bank}", plane_layout, rows, transparent_reads=1, plain_reads=1)
                 for bank in range(2)]

        address, fetch, read, write = (Signal(state_op_layout(shape), name=name)
                                       for name in ("address", "fetch", "read", "write"))
        m.d.sync += [fetch.eq(address), read.eq(fetch), write.eq(read)]
        clearing = Signal(init=1)
        integrate_bank, drain_bank = Signal(), Signal()
        full = Signal(2)                     # bank holds a closed, not yet released window
        window_closing = Signal()
        m.d.comb += window_closing.eq(write.valid & write.closes)
        closing_pending = Signal()
        m.d.comb += closing_pending.eq(Cat(stage.valid & stage.closes for stage in (address, fetch, read)).any())
        open_for_input = ~clearing & ~full.bit_select(integrate_bank, 1) & ~closing_pending & ~window_closing
        issue = self._sequencer(m, address, weights.row, open_for_input, integrate_bank)
        with m.If(issue.closes):
            m.d.sync += integrate_bank.eq(~integrate_bank)

        clear_row = Signal(range(rows))
        with m.If(clearing):
            with m.If(clear_row == rows - 1):
                m.d.sync += clearing.eq(0)
            with m.Else():
                m.d.sync += clear_row.eq(clear_row + 1)
        for bank, memory in enumerate(banks):
            integrating = write.valid & write.write & (write.bank == bank)
            m.d.comb += memory.reads[0].addr.eq(read.row)
            with m.If(clearing):
                m.d.comb += [memory.write.addr.eq(clear_row), memory.write.en.eq(1)]   # data zero
            with m.Elif(integrating):
                m.d.comb += [memory.write.addr.eq(write.row), memory.write.en.eq(1)]
                for lane in range(lanes):
                    for plane in range(self._planes):
                        old = memory.reads[0].data[lane][plane]
                        added = Mux(write.activation[plane], weights.data[lane], 0)
                        m.d.comb += memory.write.data[lane][plane].eq(old + added)
            with m.Elif(self.drain_en & (drain_bank == bank)):
                # Read-first: the firing pass reads the row and leaves zeros behind.
                m.d.comb += [memory.write.addr.eq(self.drain_row), memory.write.en.eq(1)]
            m.d.comb += memory.reads[1].addr.eq(self.drain_row)
        for bank in range(2):
            with m.If(window_closing & (write.bank == bank)):
                m.d.sync += full[bank].eq(1)
            with m.Elif(self.release & (drain_bank == bank)):
                m.d.sync += full[bank].eq(0)
        with m.If(self.release):
            m.d.sync += drain_bank.eq(~drain_bank)
        m.d.comb += self.window_ready.eq(full.bit_select(drain_bank, 1))
        self._drain_sum(m, banks, drain_bank)
        return m

    def _drain_sum(self, m, banks, drain_bank):
        """``drain_data`` = Bias + sum_b plane_b << b of the row read, registered."""
        shape, layer = self._shape, self._shape.layer
        bias_words = pack_biases(layer, shape.geometry.lanes)
        bias_layout = data.ArrayLayout(signed(layer.bias_bits), shape.geometry.lanes)
        m.submodules.biases = biases = Memory(shape=unsigned(bias_layout.size), depth=len(bias_words),
                                              init=bias_words)
        bias_rd = biases.read_port()
        m.d.comb += bias_rd.addr.eq(self.drain_row if shape.per_position else self.drain_group)
        bias_row = bias_layout(bias_rd.data)
        for lane in range(shape.geometry.lanes):
            planes = [Mux(drain_bank, banks[1].reads[1].data[lane][plane], banks[0].reads[1].data[lane][plane])
                      for plane in range(self._planes)]
            total = bias_row[lane]
            for plane, value in enumerate(planes):
                total = total + (value << plane)
            m.d.sync += self.drain_data[lane].eq(total)

    def _sequencer(self, m, address, weight_row, open_for_input, integrate_bank):
        """Take beats from ``inp`` and issue their operations into ``address`` (and their
        weight rows to the weight banks), one per cycle: a tick is one operation (the
        closing one on step T-1), a spike its taps.  Returns the issued operation."""
        shape, inp = self._shape, self.inp
        m.submodules.input_rom = input_rom = Memory(shape=input_layout(shape), depth=shape.layer.inputs,
                                                    init=input_table(shape))
        rom_rd = input_rom.read_port()
        loading, tapping = Signal(), Signal()
        op = Signal(state_op_layout(shape), name="issue_op")
        m.d.comb += [
            inp.ready.eq(open_for_input & ~loading & ~tapping),
            rom_rd.addr.eq(inp.payload.neuron),
        ]
        activation = Signal(range(shape.time_steps + 1))
        with m.If(inp.valid & inp.ready):
            with m.If(inp.payload.tick):
                m.d.comb += [op.valid.eq(1), op.closes.eq(inp.payload.step == shape.time_steps - 1)]
            with m.Else():
                m.d.sync += [loading.eq(1), activation.eq(shape.time_steps - inp.payload.step)]
        m.d.comb += [op.activation.eq(activation), op.bank.eq(integrate_bank)]
        self._taps(m, op, weight_row, rom_rd.data, loading, tapping)
        m.d.sync += address.eq(op)
        return op

    def _taps(self, m, op, weight_row, start, loading, tapping):
        """A spike's taps: the loading cycle takes the input-ROM word ``start``; then each
        (ky, kx, g) issues one operation, ``write`` when the tap's output lies inside."""
        shape = self._shape
        groups, kernel = shape.geometry.groups, shape.kernel
        row_step, line_step = groups, shape.out_width * groups
        row, tap_row, line_row = (Signal(range(shape.state_rows), name=name)
                                  for name in ("tap_state_row", "tap_row", "tap_line_row"))
        group = Signal(range(groups))
        y, x, x_start = (Signal(signed(bits_for(max(shape.height, shape.width) + 2 * shape.pad) + 1),
                                name=name) for name in ("tap_y", "tap_x", "tap_x_start"))
        ky, kx = Signal(range(kernel)), Signal(range(kernel))
        tap_weight_row = Signal.like(weight_row)
        m.d.comb += [weight_row.eq(tap_weight_row), op.row.eq(row)]
        with m.If(loading):
            m.d.sync += [
                loading.eq(0), tapping.eq(1),
                y.eq(start.y), x.eq(start.x), x_start.eq(start.x),
                row.eq(start.row), tap_row.eq(start.row), line_row.eq(start.row),
                tap_weight_row.eq(start.weight_row), ky.eq(0), kx.eq(0), group.eq(0),
            ]
        with m.If(tapping):
            inside = (y >= 0) & (y < shape.out_height) & (x >= 0) & (x < shape.out_width)
            m.d.comb += [op.valid.eq(1), op.write.eq(inside)]
            m.d.sync += tap_weight_row.eq(tap_weight_row + 1)
            with m.If(group != groups - 1):
                m.d.sync += [group.eq(group + 1), row.eq(row + 1)]
            with m.Elif(kx != kernel - 1):
                m.d.sync += [group.eq(0), kx.eq(kx + 1), x.eq(x - 1),
                             tap_row.eq(tap_row - row_step), row.eq(tap_row - row_step)]
            with m.Elif(ky != kernel - 1):
                m.d.sync += [group.eq(0), kx.eq(0), ky.eq(ky + 1), x.eq(x_start), y.eq(y - 1),
                             line_row.eq(line_row - line_step), tap_row.eq(line_row - line_step),
                             row.eq(line_row - line_step)]
            with m.Else():
                m.d.sync += tapping.eq(0)


def fire_layout(shape: ConvShape) -> data.StructLayout:
    """A state row read by the firing pass, on its way to the block maximum."""
    return data.StructLayout({
        "valid": 1,
        "block_first": 1,    # the block's first row: the maximum starts afresh
        "block_last": 1,     # the block's last row: the maximum is complete
        "pass_last": 1,      # the pass's last row
        "node": pooled_node_bits(shape),
    })


def pooled_node_bits(shape: ConvShape) -> int:
    """Width of a pooled neuron's node in its lane's step lists: Cat(pooled position, group)."""
    return bits_for(shape.pooled_positions - 1) + bits_for(shape.geometry.groups - 1)


class ConvEngine(wiring.Component):
    """A conv2d hidden layer (contract v2 section 3): ramp integrators, time-counter
    neurons, max-pool, and its pooled events in canonical order.

    Parameters
    ----------
    layer : ttfs.contract.bundle.Layer
        A conv2d layer (per-channel or per-position bias, any pool).
    time_steps : int
        T, a power of two in 2..256.
    lanes : int
        P >= 1; the engine uses min(P, out_channels) lanes and G = ceil(O/P) groups.

    Ports
    -----
    inp : In(event_signature(T, C*H*W))
        The previous layer's windows (inputs flattened (c, y, x)).
    out : Out(event_signature(T, O*H_pool*W_pool))
        This layer's windows: the pooled neurons' spikes (flattened (o, Y, X))
        in canonical order, a tick after each step.

    Latency and throughput (cycles, ``out`` always ready)
    ------------------------------------------------------
    - Integration: 2 + k*k*G cycles per input spike (taking it, the input-ROM
      read, the taps), one per tick, so E_in * (2 + k*k*G) + T per window,
      plus four cycles when a window closes.
    - Firing pass: starts 5 cycles after the closing tick was issued (when
      the step lists have a free buffer), reads G * H_pool*W_pool * p*p
      rows, one per cycle, and its last append lands 3 cycles after its
      last read (read, sum, block maximum).
    - Emission: 1 + E_out + T cycles per window (:class:`ttfs.hw.encoder.SortedWindowEmitter`).
    - Bit planes and step lists are double-buffered: image n+1 integrates
      while image n fires and leaves.
    - After reset ``inp.ready`` is low for NP*G cycles (the clearing pass).

    Storage
    -------
    Input ROM: C*H*W words (:func:`input_layout`); weight ROM: C*k*k*G words of
    P * weight_bits; bias ROM: G words (per channel) or NP*G (per position);
    bit planes: 2 banks of NP*G rows of P lanes x bits_for(T) planes x
    slope_bits, one memory per bank and lane;
    step lists: per lane, 2 buffers of 3T heads and tails and 2**:func:`pooled_node_bits`
    next-pointers (a node is Cat(pooled position, group), each part rounded up to
    a power of two).
    """

    def __init__(self, layer: Layer, time_steps: int, lanes: int):
        try:
            self._shape = ConvShape(layer, time_steps, lanes)
        except HardwareError:
            mark_unused(self)
            raise
        super().__init__({
            "inp": In(event_signature(self._shape.time_steps, layer.inputs)),
            "out": Out(event_signature(self._shape.time_steps, layer.outputs)),
        })

    @property
    def geometry(self) -> LaneGeometry:
        """Lanes P and groups G this engine uses."""
        return self._shape.geometry

    def elaborate(self, platform):
        m = Module()
        shape, layer, steps = self._shape, self._shape.layer, self._shape.time_steps
        lanes = shape.geometry.lanes
        m.submodules.integrator = integrator = ConvIntegrator(shape)
        wiring.connect(m, wiring.flipped(self.inp), integrator.inp)
        m.submodules.emitter = emitter = SortedWindowEmitter(
            steps, lanes, 1 << pooled_node_bits(shape), layer.outputs, self._neuron_of)
        wiring.connect(m, emitter.events, wiring.flipped(self.out))

        listed = Signal(2)                   # a step-list buffer holds a window not yet emitted
        fill_buf = Signal()
        running = Signal()                   # a firing pass is under way
        start = Signal()
        m.d.comb += start.eq(integrator.window_ready & ~running & ~listed.bit_select(fill_buf, 1))
        fetched = Signal(fire_layout(shape))  # the row read last cycle (being summed)
        self._pass_sequencer(m, integrator, start, running, fetched)
        summed = Signal(fire_layout(shape))   # the row read two cycles ago (its V + Bias on drain_data)
        m.d.sync += summed.eq(fetched)

        # The block maximum of a = clip((V + Bias) >> ramp_shift, 0, T), lane by lane.
        activation_shape = range(steps + 1)
        maximum = Signal(data.ArrayLayout(activation_shape, lanes))
        append_valid, append_last = Signal(), Signal()
        append_spike = Signal(lanes)
        append_step = Signal(data.ArrayLayout(bits_for(steps - 1), lanes))
        append_node = Signal.like(summed.node)
        m.d.sync += [append_valid.eq(summed.valid & summed.block_last),
                     append_last.eq(summed.valid & summed.pass_last)]
        for lane in range(lanes):
            quotient = integrator.drain_data[lane] >> layer.ramp_shift
            activation = Signal(activation_shape, name=f"activation_{lane}")
            m.d.comb += activation.eq(Mux(quotient < 0, 0, Mux(quotient >= steps, steps, quotient)))
            larger = Signal(activation_shape, name=f"block_max_{lane}")
            m.d.comb += larger.eq(Mux(summed.block_first | (activation > maximum[lane]),
                                      activation, maximum[lane]))
            with m.If(summed.valid):
                m.d.sync += maximum[lane].eq(larger)
            with m.If(summed.valid & summed.block_last):
                m.d.sync += [append_spike[lane].eq(larger != 0), append_step[lane].eq(steps - larger)]
        with m.If(summed.valid & summed.block_last):
            m.d.sync += append_node.eq(summed.node)
        m.d.comb += [
            emitter.spike.eq(Mux(append_valid, append_spike, 0)),
            emitter.step.eq(append_step),
            emitter.node.eq(append_node),
            emitter.buf.eq(fill_buf),
            emitter.filled.eq(listed),
            integrator.release.eq(append_last),
        ]
        with m.If(append_last):
            m.d.sync += [running.eq(0), fill_buf.eq(~fill_buf)]
        for buf in range(2):
            with m.If(append_last & (fill_buf == buf)):
                m.d.sync += listed[buf].eq(1)
            with m.Elif(emitter.window_out & (emitter.emit_buf == buf)):
                m.d.sync += listed[buf].eq(0)
        return m

    def _neuron_of(self, lane: int, node):
        """The pooled neuron index of lane ``lane``'s node Cat(pooled position, group):
        (g*P + lane) * H_pool*W_pool + position, by shifts and adds."""
        shape = self._shape
        position_bits, pooled = bits_for(shape.pooled_positions - 1), shape.pooled_positions
        position = node[:position_bits]
        lane_base = Const(lane * pooled)
        if shape.geometry.groups == 1:
            return lane_base + position
        return times_constant(node[position_bits:], shape.geometry.lanes * pooled) + lane_base + position

    def _pass_sequencer(self, m, integrator, start, running, fetched):
        """The firing pass: for each group, pooled row Y, pooled column X, block row dy and
        column dx, read state row ((Y*p + dy)*W_out + X*p + dx)*G + g of the drain bank.
        Every address is a counter stepping by constants."""
        shape = self._shape
        groups, pool = shape.geometry.groups, shape.pool
        column_step, line_step = groups, shape.out_width * groups
        block_step, band_step = pool * groups, pool * shape.out_width * groups
        reading = Signal()
        row, line, block, band = (Signal(range(shape.state_rows), name=name)
                                  for name in ("fire_row", "fire_line", "fire_block", "fire_band"))
        group = Signal(range(groups))
        pooled_y, pooled_x = Signal(range(shape.pool_height)), Signal(range(shape.pool_width))
        dy, dx = Signal(range(pool)), Signal(range(pool))
        position = Signal(bits_for(shape.pooled_positions - 1))    # node bits, also when H_pool*W_pool = 1
        m.d.comb += [integrator.drain_row.eq(row), integrator.drain_group.eq(group),
                     integrator.drain_en.eq(reading)]
        with m.If(start):
            m.d.sync += [running.eq(1), reading.eq(1)]
        block_first = (dy == 0) & (dx == 0)
        block_last = (dy == pool - 1) & (dx == pool - 1)
        row_last = pooled_x == shape.pool_width - 1
        map_last = (pooled_y == shape.pool_height - 1) & row_last
        pass_last = block_last & map_last & (group == groups - 1)
        m.d.sync += [
            fetched.valid.eq(reading), fetched.block_first.eq(block_first), fetched.block_last.eq(block_last),
            fetched.pass_last.eq(pass_last),
            fetched.node.eq(Cat(position, group) if groups > 1 else position),
        ]
        with m.If(reading):
            with m.If(dx != pool - 1):
                m.d.sync += [dx.eq(dx + 1), row.eq(row + column_step)]
            with m.Elif(dy != pool - 1):
                m.d.sync += [dx.eq(0), dy.eq(dy + 1), line.eq(line + line_step), row.eq(line + line_step)]
            with m.Elif(~row_last):
                m.d.sync += [dx.eq(0), dy.eq(0), pooled_x.eq(pooled_x + 1), position.eq(position + 1),
                             block.eq(block + block_step), line.eq(block + block_step), row.eq(block + block_step)]
            with m.Elif(~map_last):
                m.d.sync += [dx.eq(0), dy.eq(0), pooled_x.eq(0), pooled_y.eq(pooled_y + 1),
                             position.eq(position + 1), band.eq(band + band_step), block.eq(band + band_step),
                             line.eq(band + band_step), row.eq(band + band_step)]
            with m.Elif(group != groups - 1):
                m.d.sync += [dx.eq(0), dy.eq(0), pooled_x.eq(0), pooled_y.eq(0), position.eq(0),
                             group.eq(group + 1), band.eq(group + 1), block.eq(group + 1),
                             line.eq(group + 1), row.eq(group + 1)]
            with m.Else():
                m.d.sync += [reading.eq(0), dx.eq(0), dy.eq(0), pooled_x.eq(0), pooled_y.eq(0),
                             position.eq(0), group.eq(0), band.eq(0), block.eq(0), line.eq(0), row.eq(0)]

"""The neuron datapath: the ramp integrator and the dense spiking layer (contract section 4).

A layer of N neurons runs on P = min(lanes, N) lanes: neurons are cut into
G = ceil(N / P) lane groups of P (see :mod:`ttfs.hw.rom`), and every operation on
"all neurons" takes G cycles, one group per cycle.

:class:`Integrator` is the ramp integrator shared by :class:`LayerEngine` and
:class:`ttfs.hw.readout.Readout`.  Its potentials start each window at the bias
(the step-0 tick writes ``Bias + slope`` instead of ``V + slope``), so at the
end of the window they hold ``V + Bias``, the one quantity both the firing
rule and the readout need.  Nothing is multiplied: the ROM address of input
j is ``j * G`` built from shifts and adds, and the firing rule compares
``(V + Bias) >> ramp_shift`` with a step counter.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from ttfs.contract.bundle import (
    MAX_TIME_STEPS,
    MIN_TIME_STEPS,
    Layer,
    potential_bits,
    signed_width,
)
from ttfs.hw.errors import HardwareError
from ttfs.hw.events import event_signature
from ttfs.hw.rom import LaneGeometry, lane_neurons, pack_biases, pack_weights
from ttfs.hw.unused import mark_unused

# Rows of one weight ROM bank: an ECP5 DP16KD's depth in its 2048 x 9 mode.
WEIGHT_BANK_ROWS = 2048


def check_layer(layer: Layer, time_steps: int, readout: bool) -> None:
    """Raise HardwareError unless ``layer`` can be built as a readout (or a hidden layer)."""
    if not isinstance(layer, Layer):
        raise HardwareError(f"layer: expected a ttfs.contract.bundle.Layer, got {type(layer).__name__}")
    if layer.kind != "dense":
        raise HardwareError(f"layer {layer.name!r}: kind {layer.kind!r} is not supported (only 'dense')")
    if bool(layer.readout) != readout:
        wanted = "a readout layer (use LayerEngine for hidden layers)" if readout else \
            "a hidden layer (use Readout for the readout layer)"
        raise HardwareError(f"layer {layer.name!r}: readout is {bool(layer.readout)}, expected {wanted}")
    if isinstance(time_steps, bool) or not isinstance(time_steps, (int, np.integer)) \
            or not MIN_TIME_STEPS <= time_steps <= MAX_TIME_STEPS or time_steps & (time_steps - 1):
        raise HardwareError(
            f"time_steps: {time_steps!r} is not a power of two in {MIN_TIME_STEPS}..{MAX_TIME_STEPS}")
    if np.shape(layer.weight) != (layer.outputs, layer.inputs) or np.shape(layer.bias) != (layer.outputs,):
        raise HardwareError(
            f"layer {layer.name!r}: weight {np.shape(layer.weight)} / bias {np.shape(layer.bias)} "
            f"do not match inputs={layer.inputs}, outputs={layer.outputs}")


def checked_geometry(component, layer: Layer, time_steps: int, lanes: int, readout: bool) -> LaneGeometry:
    """``check_layer`` and the lane geometry for a LayerEngine or Readout being built.

    On a HardwareError the half-built ``component`` is marked as deliberately
    unused (:func:`ttfs.hw.unused.mark_unused`).
    """
    try:
        check_layer(layer, time_steps, readout=readout)
        return LaneGeometry.of(layer.outputs, lanes)
    except HardwareError:
        mark_unused(component)
        raise


def slope_bits(layer: Layer) -> int:
    """Signed width of a slope: any partial sum of a neuron's (an output channel's)
    weights lies in -sum(W<0)..sum(W>0)."""
    weight = np.asarray(layer.weight, dtype=np.int64)
    weight = weight.reshape(weight.shape[0], -1)
    highest = int(np.where(weight > 0, weight, 0).sum(axis=1).max())
    lowest = int(np.where(weight < 0, weight, 0).sum(axis=1).min())
    return signed_width(lowest, highest)


def times_constant(value, constant: int):
    """``value * constant`` for a non-negative constant, as a sum of shifts (no multiplier)."""
    total = Const(0, 1)
    for bit in range(constant.bit_length()):
        if (constant >> bit) & 1:
            total = total + (value << bit)
    return total


class LanePort:
    """Shared address and enable, one data element per lane (``data`` is an ArrayLayout view)."""

    def __init__(self, name: str, layout: data.ArrayLayout, depth: int, enabled: bool):
        self.addr = Signal(range(depth), name=f"{name}_addr")
        # Like amaranth's ports: reads are enabled unless told otherwise, writes are not.
        self.en = Signal(init=enabled, name=f"{name}_en")
        self.data = Signal(layout, name=f"{name}_data")


class LaneMemory:
    """A memory of P-lane rows built as P narrow memories, one per lane, sharing addresses.

    One write port and synchronous read ports; the first ``transparent_reads``
    see a same-cycle write.  Per-lane memories map to per-lane RAMs (or
    registers when shallow) and keep every port narrow: amaranth.sim cannot
    compile a single write port thousands of bits wide (340 lanes of 16 bits).

    Transparency is built here, not asked of the memory: every read is
    read-first, so an FPGA LUT-RAM registers its *data* (a transparent read
    is mapped as a registered address in front of the RAM, which leaves the
    RAM's read and output mux in the next cycle's logic), and a read that
    collides with the write takes the written value from a forwarding
    register instead.
    """

    def __init__(self, m: Module, name: str, layout: data.ArrayLayout, depth: int,
                 transparent_reads: int = 0, plain_reads: int = 0):
        self.write = LanePort(f"{name}_wr", layout, depth, enabled=False)
        self.reads = [LanePort(f"{name}_rd{index}", layout, depth, enabled=True)
                      for index in range(transparent_reads + plain_reads)]
        memory_data = [Signal(layout, name=f"{name}_rd{index}_memory")
                       for index in range(transparent_reads + plain_reads)]
        for lane in range(layout.length):
            memory = Memory(shape=layout.elem_shape, depth=depth, init=[])
            m.submodules[f"{name}_{lane}"] = memory
            write_port = memory.write_port()
            m.d.comb += [
                write_port.addr.eq(self.write.addr),
                write_port.en.eq(self.write.en),
                write_port.data.eq(self.write.data[lane]),
            ]
            for read, data_out in zip(self.reads, memory_data):
                read_port = memory.read_port()
                m.d.comb += [
                    read_port.addr.eq(read.addr),
                    read_port.en.eq(read.en),
                    data_out[lane].eq(read_port.data),
                ]
        for index, (read, data_out) in enumerate(zip(self.reads, memory_data)):
            if index >= transparent_reads:
                m.d.comb += read.data.eq(data_out)
                continue
            collided = Signal(name=f"{name}_rd{index}_collided")
            forwarded = Signal(layout, name=f"{name}_rd{index}_forwarded")
            with m.If(read.en):
                m.d.sync += [
                    collided.eq(self.write.en & (self.write.addr == read.addr)),
                    forwarded.eq(self.write.data),
                ]
            m.d.comb += read.data.eq(Mux(collided, forwarded, data_out))


class WeightBanks(wiring.Component):
    """A layer's weight ROM (:func:`ttfs.hw.rom.pack_weights`, ``J * G`` rows of P weights)
    in banks of ``WEIGHT_BANK_ROWS`` rows, read every cycle through registers.

    The ROM is dozens of block RAMs spread over the die, so nothing reaches
    or leaves them in the same cycle as other logic.  Cycle by cycle after a
    row is presented on ``row``:

    1. *address*: the row is registered and drives every bank's address (a
       row computed from an input beat in the same cycle would not reach
       them at 100 MHz);
    2. *fetch*: every bank's word arrives and goes straight into its own
       register (a block RAM's output is slow, 5.8 ns on an ECP5, and may
       sit far from the logic);
    3. *read*: the bank of the row wanted is chosen from those registers
       into one more register (the mux over up to ~10 banks and its fan-out
       would otherwise sit in front of the slope adders);
    4. ``data`` holds the row's word.

    Ports
    -----
    row : In(range(J * G))
        The row to read (word ``j * G + g`` = group g's weights for input, or
        conv2d kernel tap, j).
    data : Out(ArrayLayout(signed(weight_bits), P))
        The word of the row presented four cycles earlier (latency 4, one
        row per cycle).
    """

    def __init__(self, layer: Layer, lanes: int):
        self._words = pack_weights(layer, lanes)
        self._layout = data.ArrayLayout(signed(layer.weight_bits), LaneGeometry.of(lane_neurons(layer), lanes).lanes)
        super().__init__({
            "row": In(range(len(self._words))),
            "data": Out(self._layout),
        })

    def elaborate(self, platform):
        m = Module()
        words = self._words
        starts = range(0, len(words), WEIGHT_BANK_ROWS)
        address_row = Signal.like(self.row)
        m.d.sync += address_row.eq(self.row)
        # Reset-less (only read behind a valid stage of the integrator): a
        # reset would put a LUT between each block RAM and its register.
        bank_rows = [Signal(self._layout.size, name=f"weight_bank{bank}_row", reset_less=True)
                     for bank in range(len(starts))]
        for bank, (start, row) in enumerate(zip(starts, bank_rows)):
            bank_words = words[start:start + WEIGHT_BANK_ROWS]
            name = "weights" if len(starts) == 1 else f"weights_{bank}"
            m.submodules[name] = memory = Memory(shape=unsigned(self._layout.size), depth=len(bank_words),
                                                 init=bank_words, attrs={"ram_style": "block"})
            port = memory.read_port()
            m.d.comb += port.addr.eq(address_row)    # truncated to the bank's rows
            m.d.sync += row.eq(port.data)
        bank_bits = max(0, (len(starts) - 1).bit_length())
        fetch_bank_select = Signal(max(1, bank_bits))
        read_bank_select = Signal.like(fetch_bank_select)
        if bank_bits:
            m.d.sync += [fetch_bank_select.eq(address_row >> WEIGHT_BANK_ROWS.bit_length() - 1),
                         read_bank_select.eq(fetch_bank_select)]
        chosen = Signal(self._layout)
        with m.Switch(read_bank_select):
            for bank, row in enumerate(bank_rows[:-1]):
                with m.Case(bank):
                    m.d.comb += chosen.eq(row)
            with m.Default():                        # the last bank (a complete case for lint)
                m.d.comb += chosen.eq(bank_rows[-1])
        m.d.sync += self.data.eq(chosen)
        return m


def group_op_layout(groups: int) -> data.StructLayout:
    """What the integrator does to one lane group: which group, for a tick or a spike, on which step."""
    return data.StructLayout({
        "group": range(groups),
        "tick": 1,
        "first": 1,          # step 0: a tick starts the potentials at the bias
        "last": 1,           # step T-1: a tick clears the slopes
    })


def stage_layout(groups: int) -> data.StructLayout:
    """One stage of the integrator's pipeline: a group operation on its way to the adders."""
    return data.StructLayout({
        "valid": 1,
        "op": group_op_layout(groups),
        "bank": 1,           # the potential bank integrated into
        "closes": 1,         # the last group of the tick of step T-1: the window closes
    })


class Integrator(wiring.Component):
    """Ramp integrator (contract section 4, integration) for all neurons of a layer.

    On an input spike (k, j) it adds W[:, j] to the slopes, group by group;
    on the tick of step k it adds every slope to its potential (on step 0:
    ``V = Bias + slope``), and the tick of step T-1 also clears the slopes
    and closes the window.  The potentials of a closed window are then read
    out by the owner through the ``drain_*`` port until it pulses
    ``release``.

    Pipeline, one group operation per cycle (from *address* on, each stage
    one :func:`stage_layout` record, copied whole from the one before):
    *issue* (a group of the current beat), *address*, *fetch* and *read* (the weight row's way
    through :class:`WeightBanks`; the read stage also issues the slope,
    potential and bias reads, so that they land one cycle before their
    write: the transparency the G = 1 case relies on), *write* (the adders).

    Parameters
    ----------
    layer : ttfs.contract.bundle.Layer
    time_steps : int
    lanes : int
        P = min(lanes, outputs) lanes are used.
    banks : int
        1 or 2 potential banks.  With 2, a new window integrates into one
        bank while the owner drains the other (double buffering).

    Reset: the slopes live in a memory, which ``rst`` leaves as it was (a
    reset in the middle of a window leaves partial sums there), so the
    reset state is a clearing pass that writes zeros to the G slope rows,
    one per cycle; ``inp.ready`` stays low for those G cycles after ``rst``
    falls (and after power-up).  The potentials need no pass: the step-0
    tick overwrites every one of them.  Everything else is registers.

    Ports
    -----
    inp : In(event_signature(T, inputs))
        Windows of input events.  Each beat (spike or tick) takes G cycles;
        ``ready`` is low while a beat's groups are issued, for four cycles
        when a window closes (its closing group in the address, fetch, read
        and write stages), while no free bank is left, and during the G-cycle clearing
        pass after reset.
    window_ready : Out(1)
        A closed window waits in the drain bank (from 5 cycles after the
        closing tick's last group was issued: the row is registered, the
        weight banks are read and registered, the bank wanted is chosen and
        registered, then added).
    drain_group : In(range(G)), drain_en : In(1)
        Synchronous read of a group of the drain bank (data the next cycle;
        with ``drain_en`` low the data holds).
    drain_data : Out(ArrayLayout(signed(potential_bits), P))
        ``V + Bias`` of the P neurons of the group read, lane 0 = neuron g*P.
    release : In(1)
        Pulse once the drain bank has been read; it becomes free for a new
        window.
    """

    def __init__(self, layer: Layer, time_steps: int, lanes: int, banks: int):
        if banks not in (1, 2):
            mark_unused(self)
            raise HardwareError(f"banks: {banks!r} must be 1 or 2")
        self._layer = layer
        self._time_steps = int(time_steps)
        self._geometry = LaneGeometry.of(layer.outputs, lanes)
        self._banks = banks
        self.potential_bits = potential_bits(layer, time_steps)
        self.potential_layout = data.ArrayLayout(signed(self.potential_bits), self._geometry.lanes)
        super().__init__({
            "inp": In(event_signature(self._time_steps, layer.inputs)),
            "window_ready": Out(1),
            "drain_group": In(range(self._geometry.groups)),
            "drain_en": In(1),
            "drain_data": Out(self.potential_layout),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        layer, lanes, groups = self._layer, self._geometry.lanes, self._geometry.groups
        m.submodules.weights = weights = WeightBanks(layer, lanes)
        bias_layout = data.ArrayLayout(signed(layer.bias_bits), lanes)
        m.submodules.biases = biases = Memory(
            shape=unsigned(bias_layout.size), depth=groups, init=pack_biases(layer, lanes))
        # The integrator's own reads are transparent: with G = 1 a beat reads
        # the row the previous beat writes in the same cycle, and must see the
        # new value.  The drain read is not (the drain bank is never written).
        slope_layout = data.ArrayLayout(signed(slope_bits(layer)), lanes)
        slopes = LaneMemory(m, "slopes", slope_layout, groups, transparent_reads=1)
        potentials = LaneMemory(m, "potentials", self.potential_layout, self._banks * groups,
                                transparent_reads=1, plain_reads=1)
        bias_rd = biases.read_port()

        address, fetch, read, write = (Signal(stage_layout(groups), name=name)
                                       for name in ("address", "fetch", "read", "write"))
        m.d.sync += [fetch.eq(address), read.eq(fetch), write.eq(read)]
        # Clearing pass, the reset state: the slopes are a memory, which `rst`
        # does not clear, and a reset in the middle of a window leaves partial
        # sums there.  Zeros go to one group per cycle (G cycles) before the
        # first beat is taken.  Nothing else needs it: the step-0 tick
        # overwrites every potential, and the bank flags are registers.
        clearing = Signal(init=1)
        integrate_bank, drain_bank = Signal(), Signal()
        full = Signal(self._banks)           # bank holds a closed, not yet released window
        window_closing = Signal()
        m.d.comb += window_closing.eq(write.valid & write.closes)
        closing_pending = Signal()           # the closing group is in the address, fetch or read stage
        m.d.comb += closing_pending.eq(Cat(stage.valid & stage.closes for stage in (address, fetch, read)).any())
        self._issue_stage(m, address, weights.row, ~clearing & ~full.bit_select(integrate_bank, 1)
                          & ~closing_pending & ~window_closing, integrate_bank)

        m.d.comb += [
            bias_rd.addr.eq(read.op.group),
            slopes.reads[0].addr.eq(read.op.group),
            potentials.reads[0].addr.eq(self._bank_row(read.op.group, read.bank)),
        ]
        self._write_stage(m, write, weights.data, bias_layout(bias_rd.data), slopes, potentials)
        self._clearing_pass(m, clearing, slopes.write)
        self._bank_flags(m, full, window_closing, write.bank, drain_bank)
        drain_rd = potentials.reads[1]
        m.d.comb += [
            self.window_ready.eq(full.bit_select(drain_bank, 1)),
            drain_rd.addr.eq(self._bank_row(self.drain_group, drain_bank)),
            drain_rd.en.eq(self.drain_en),
            self.drain_data.eq(drain_rd.data),
        ]
        return m

    def _bank_row(self, group, bank):
        """Row of ``group`` in potential bank ``bank``: bank b occupies rows b*G .. b*G + G-1."""
        return group + Mux(bank, self._geometry.groups, 0) if self._banks == 2 else group

    def _issue_stage(self, m, address, row, open_for_input, integrate_bank):
        """Issue one group of the current beat per cycle into the ``address`` stage: group 0
        straight from ``inp`` (taken while ``open_for_input``), groups 1.. from registers.

        The issued operation's parts are separate signals, not one record: a
        record whose ``closes`` field is computed from its own ``op`` field
        is a combinational loop to Verilator (UNOPTFLAT).
        """
        inp, steps, groups = self.inp, self._time_steps, self._geometry.groups
        busy = Signal()                      # groups 1.. of a beat remain to issue
        current = Signal(group_op_layout(groups))
        current_row = Signal.like(row)
        issue = Signal()
        op = Signal(group_op_layout(groups), name="issue_op")
        closes = Signal(name="issue_closes")
        m.d.comb += inp.ready.eq(open_for_input & ~busy)
        with m.If(busy):
            m.d.comb += [issue.eq(1), op.eq(current), row.eq(current_row)]
        with m.Else():
            m.d.comb += [
                issue.eq(inp.valid & inp.ready),
                op.group.eq(0),
                op.tick.eq(inp.payload.tick),
                op.first.eq(inp.payload.step == 0),
                op.last.eq(inp.payload.step == steps - 1),
                row.eq(times_constant(inp.payload.neuron, groups)),
            ]
        last_group = op.group == groups - 1
        m.d.comb += closes.eq(op.tick & op.last & last_group)
        m.d.sync += [address.valid.eq(issue), address.op.eq(op), address.bank.eq(integrate_bank),
                     address.closes.eq(closes)]
        with m.If(issue):
            m.d.sync += [
                busy.eq(~last_group),
                current.eq(op),
                current.group.eq(op.group + 1),
                current_row.eq(row + 1),
            ]
            if self._banks == 2:
                with m.If(closes):
                    m.d.sync += integrate_bank.eq(~integrate_bank)

    def _write_stage(self, m, write, weight_row, bias_row, slopes, potentials):
        """The adders: a tick adds each slope to its potential (to the bias on
        step 0), a spike adds the weight row to the slopes."""
        slope_wr, slope_rd = slopes.write, slopes.reads[0]
        potential_wr, potential_rd = potentials.write, potentials.reads[0]
        m.d.comb += [
            slope_wr.addr.eq(write.op.group),
            potential_wr.addr.eq(self._bank_row(write.op.group, write.bank)),
        ]
        with m.If(write.valid & write.op.tick):
            m.d.comb += potential_wr.en.eq(1)
            for lane in range(self._geometry.lanes):
                start = Mux(write.op.first, bias_row[lane], potential_rd.data[lane])
                m.d.comb += potential_wr.data[lane].eq(start + slope_rd.data[lane])
            # The window's last tick leaves zero slopes for the next window
            # (slope_wr.data defaults to zero).
            m.d.comb += slope_wr.en.eq(write.op.last)
        with m.If(write.valid & ~write.op.tick):
            m.d.comb += slope_wr.en.eq(1)
            for lane in range(self._geometry.lanes):
                m.d.comb += slope_wr.data[lane].eq(slope_rd.data[lane] + weight_row[lane])

    def _clearing_pass(self, m, clearing, slope_wr):
        """Zeros into the G slope rows, one per cycle, while ``clearing`` (the reset state).

        No beat is issued while clearing (``inp.ready`` is low), so the slope
        write port is free.
        """
        groups = self._geometry.groups
        clear_group = Signal(range(groups))
        with m.If(clearing):
            m.d.comb += [slope_wr.addr.eq(clear_group), slope_wr.en.eq(1)]   # data zero
            with m.If(clear_group == groups - 1):
                m.d.sync += clearing.eq(0)
            with m.Else():
                m.d.sync += clear_group.eq(clear_group + 1)

    def _bank_flags(self, m, full, window_closing, write_bank, drain_bank):
        """A bank is full from its window's closing write until the owner's ``release``."""
        for bank in range(self._banks):
            with m.If(window_closing & (write_bank == bank)):
                m.d.sync += full[bank].eq(1)
            with m.Elif(self.release & (drain_bank == bank)):
                m.d.sync += full[bank].eq(0)
        if self._banks == 2:
            with m.If(self.release):
                m.d.sync += drain_bank.eq(~drain_bank)


def lowest_set_bit(m: Module, mask: Signal) -> tuple[Signal, Signal]:
    """(index of the lowest set bit of ``mask``, ``mask`` with that bit cleared), combinational.

    ``mask & (mask - 1)`` clears the lowest bit; ``mask & ~(mask - 1)``
    isolates it and an OR tree per index bit encodes it: one carry chain,
    no priority mux chain.
    """
    width = len(mask)
    below = Signal(width)
    rest = Signal(width)
    lowest = Signal(width)
    index = Signal(range(width))
    m.d.comb += [
        below.eq(mask - 1),
        rest.eq(mask & below),
        lowest.eq(mask & ~below),
    ]
    for bit in range(len(index)):
        # Every index bit has members: position 2**bit < width.
        members = [lowest[position] for position in range(width) if (position >> bit) & 1]
        m.d.comb += index[bit].eq(Cat(*members).any())
    return index, rest


def at_most_one(mask):
    """1 when at most one bit of ``mask`` is set: a tree of (any, several) pairs,
    log2(width) small levels and no carry chain."""
    nodes = [(mask[lane], Const(0, 1)) for lane in range(len(mask))]
    while len(nodes) > 1:
        paired = [(a_any | b_any, a_many | b_many | (a_any & b_any))
                  for (a_any, a_many), (b_any, b_many) in zip(nodes[0::2], nodes[1::2])]
        nodes = paired + ([nodes[-1]] if len(nodes) % 2 else [])
    return ~nodes[0][1]


def fired_group_layout(lanes: int, groups: int, time_steps: int) -> data.StructLayout:
    """The firing decisions of one lane group at one step, on their way to the emitter."""
    return data.StructLayout({
        "mask": lanes,                      # lane l fires: neuron base + l spikes
        "tick": 1,                          # the group is the step's last: a tick follows
        "base": range(groups * lanes),      # the group's first neuron, g * P
        "step": range(time_steps),
    })


class FiringEmitter(wiring.Component):
    """One lane group's firing decisions to event beats: its spikes, lowest lane first, then
    the step's tick when the group is the step's last (a group with no spike and no
    tick emits nothing).

    Ports
    -----
    groups : In(stream of :func:`fired_group_layout`)
        A group is taken in the cycle the emitter frees up: when it holds
        nothing, or when ``out`` takes its last beat.
    out : Out(event_signature(T, N))
        Registered: a group taken in cycle t offers its first beat from t + 1;
        then one beat per cycle while ``out`` is ready.

    Whether the emitter frees up is decided from registers (any spike left,
    and at most one), not from the mask's carry chains, so the group read
    behind it moves in time.
    """

    def __init__(self, lanes: int, groups: int, time_steps: int, width: int):
        self._layout = fired_group_layout(lanes, groups, time_steps)
        super().__init__({
            "groups": In(stream.Signature(self._layout)),
            "out": Out(event_signature(time_steps, width)),
        })

    def elaborate(self, platform):
        m = Module()
        held = Signal(self._layout)          # the mask shrinks as its spikes leave
        has_spike = Signal()
        one_left = Signal()
        lane_index, mask_rest = lowest_set_bit(m, held.mask)
        out, incoming = self.out, self.groups.payload
        m.d.comb += [
            out.valid.eq(has_spike | held.tick),
            out.payload.tick.eq(~has_spike),
            out.payload.step.eq(held.step),
            out.payload.neuron.eq(Mux(has_spike, held.base + lane_index, 0)),
            self.groups.ready.eq(~out.valid | (out.ready & Mux(has_spike, one_left & ~held.tick, 1))),
        ]
        with m.If(out.valid & out.ready):
            with m.If(has_spike):
                m.d.sync += [held.mask.eq(mask_rest), has_spike.eq(~one_left),
                             one_left.eq(at_most_one(mask_rest))]
            with m.Else():
                m.d.sync += held.tick.eq(0)
        with m.If(self.groups.valid & self.groups.ready):
            m.d.sync += [
                held.eq(incoming),
                has_spike.eq(incoming.mask.any()),
                one_left.eq(at_most_one(incoming.mask)),
            ]
        return m


class LayerEngine(wiring.Component):
    """A dense hidden layer: ramp integrators then time-counter neurons (contract section 4).

    Integration: input spike (k, j) adds W[:, j] to the slopes; the tick of
    step k adds every slope to its potential.  Firing, in this layer's own
    window: neuron i spikes at step s = T - a_i with
    a_i = clip(floor((V_i + Bias_i) / R), 0, T) when a_i >= 1 - computed as
    ``q = (V + Bias) >> ramp_shift`` firing at s = 0 when q >= T and at
    s >= 1 when q == T - s (the first s where V + R*(s+1) >= (T+1)*R - Bias).

    Firing pipeline: a *read sequencer* walks (step, group) over the drain
    bank of the :class:`Integrator` while a closed window waits there (the
    *slot* holds the group read, its potentials on ``drain_data``); the
    *mask stage* registers the group's firing decisions; the
    :class:`FiringEmitter` turns them into beats.

    Parameters
    ----------
    layer : ttfs.contract.bundle.Layer
        A hidden (non-readout) dense layer.
    time_steps : int
        T, a power of two in 2..256.
    lanes : int
        P >= 1; the layer uses min(P, outputs) lanes and G = ceil(N/P) groups.

    Ports
    -----
    inp : In(event_signature(T, layer.inputs))
        The previous layer's windows.
    out : Out(event_signature(T, layer.outputs))
        This layer's windows: spikes in canonical order, a tick after each step.

    Latency and throughput (cycles, with ``out`` always ready)
    ----------------------------------------------------------
    - Integration: G cycles per input beat (spike or tick), so
      (E + T) * G for a window of E input spikes; four extra cycles of
      ``inp.ready`` low when a window closes.
    - Firing starts 5 cycles after the closing tick's last group was issued;
      the first output beat follows 3 cycles later (the group read, its
      spikes decided into the mask register, then emitted).
    - Firing a window: per step, each group takes max(1, spikes in it)
      cycles and the tick one more, i.e. E_out + T cycles when G = 1 and at
      most E_out + T * G in general.
    - Potentials are double-buffered: the next window integrates while the
      previous one fires; ``inp`` stalls only when a third window would
      close before the first has finished firing.  When ``out`` is not
      ready the engine waits; nothing is lost.
    - After reset (and power-up) ``inp.ready`` is low for G cycles while
      the integrator clears its slopes; the bank flags and the firing
      sequencer are registers and reset at once, so a window cut short by
      ``rst`` leaves nothing behind.

    Storage
    -------
    Weight ROM: ``inputs * G`` words of P * weight_bits (block RAM, in banks of
    ``WEIGHT_BANK_ROWS`` = 2048 rows, each bank's word registered); bias
    ROM: G words; slopes: G rows and potentials: 2 banks of G rows, in one
    narrow memory per lane (registers when G = 1).  Registers are sized from
    the contract's section 6 bound, so nothing can overflow.
    """

    def __init__(self, layer: Layer, time_steps: int, lanes: int):
        self._geometry = checked_geometry(self, layer, time_steps, lanes, readout=False)
        self._layer = layer
        self._time_steps = int(time_steps)
        super().__init__({
            "inp": In(event_signature(self._time_steps, layer.inputs)),
            "out": Out(event_signature(self._time_steps, layer.outputs)),
        })

    @property
    def geometry(self) -> LaneGeometry:
        """Lanes P and groups G this engine uses."""
        return self._geometry

    def elaborate(self, platform):
        m = Module()
        layer, steps = self._layer, self._time_steps
        lanes, groups = self._geometry.lanes, self._geometry.groups

        m.submodules.integrator = integrator = Integrator(layer, steps, lanes, banks=2)
        wiring.connect(m, wiring.flipped(self.inp), integrator.inp)
        m.submodules.emitter = emitter = FiringEmitter(lanes, groups, steps, layer.outputs)
        wiring.connect(m, emitter.out, wiring.flipped(self.out))

        # Slot: the group just read (its potentials are on drain_data).
        slot_valid = Signal()
        slot = Signal(data.StructLayout({
            "base": range(groups * lanes),
            "step": range(steps),
            "remaining": range(steps + 1),   # T - step
            "first": 1,
            "last_group": 1,
        }))

        # Mask stage: the group's firing decisions, registered (the compares
        # and then the emitter's own flags would not fit one 100 MHz cycle).
        fire_mask = Signal(lanes)
        for lane in range(lanes):
            quotient = integrator.drain_data[lane] >> layer.ramp_shift   # floor((V + Bias) / R)
            m.d.comb += fire_mask[lane].eq(
                Mux(slot.first, quotient >= steps, quotient == slot.remaining))
        mask_valid = Signal()
        mask = Signal(fired_group_layout(lanes, groups, steps))
        load = Signal()
        take = Signal()
        m.d.comb += [
            emitter.groups.valid.eq(mask_valid),
            emitter.groups.payload.eq(mask),
            load.eq(mask_valid & emitter.groups.ready),
            take.eq(slot_valid & (~mask_valid | load)),
        ]
        with m.If(~mask_valid | load):
            m.d.sync += mask_valid.eq(slot_valid)
        with m.If(take):
            m.d.sync += [
                mask.mask.eq(fire_mask),
                mask.tick.eq(slot.last_group),
                mask.base.eq(slot.base),
                mask.step.eq(slot.step),
            ]

        slot_free = Signal()
        read = Signal()
        m.d.comb += [
            slot_free.eq(~slot_valid | take),
            read.eq(integrator.window_ready & slot_free),
            integrator.drain_en.eq(slot_free),
        ]
        with m.If(slot_free):
            m.d.sync += slot_valid.eq(read)
        self._read_sequencer(m, integrator, read, slot)
        return m

    def _read_sequencer(self, m, integrator, read, slot):
        """Walk (step, group) over the drain bank, one group per ``read``, into ``slot``;
        release the bank after the window's last read."""
        steps, lanes, groups = self._time_steps, self._geometry.lanes, self._geometry.groups
        fire_group = Signal(range(groups))
        fire_base = Signal(range(groups * lanes))     # = fire_group * P, kept as a counter
        fire_step = Signal(range(steps))
        m.d.comb += integrator.drain_group.eq(fire_group)
        with m.If(read):
            m.d.sync += [
                slot.base.eq(fire_base),
                slot.step.eq(fire_step),
                slot.remaining.eq(steps - fire_step),
                slot.first.eq(fire_step == 0),
                slot.last_group.eq(fire_group == groups - 1),
            ]
            with m.If(fire_group == groups - 1):
                m.d.sync += [fire_group.eq(0), fire_base.eq(0), fire_step.eq(fire_step + 1)]
                with m.If(fire_step == steps - 1):
                    m.d.comb += integrator.release.eq(1)
            with m.Else():
                m.d.sync += [fire_group.eq(fire_group + 1), fire_base.eq(fire_base + lanes)]

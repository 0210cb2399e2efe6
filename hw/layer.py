"""The neuron datapath: the ramp integrator and the dense spiking layer (contract section 4).

A layer of N neurons runs on P = min(lanes, N) lanes: neurons are cut into
G = ceil(N / P) lane groups of P (see :mod:`hw.rom`), and every operation on
"all neurons" takes G cycles, one group per cycle.

:class:`Integrator` is the ramp integrator shared by :class:`LayerEngine` and
:class:`hw.readout.Readout`.  Its potentials start each window at the bias
(the step-0 tick writes ``Bias + slope`` instead of ``V + slope``), so at the
end of the window they hold ``V + Bias``, the one quantity both the firing
rule and the readout need.  Nothing is multiplied: the ROM address of input
j is ``j * G`` built from shifts and adds, and the firing rule compares
``(V + Bias) >> ramp_shift`` with a step counter.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

import numpy as np

from hw.errors import HardwareError
from hw.events import event_signature
from hw.rom import LaneGeometry, bias_bits, pack_biases, pack_weights, signed_width
from sim.bundle import MAX_TIME_STEPS, MIN_TIME_STEPS, Layer, layer_potential_bounds, signed_bits


# Rows of one weight ROM bank: an ECP5 DP16KD's depth in its 2048 x 9 mode.
WEIGHT_BANK_ROWS = 2048


def check_layer(layer: Layer, time_steps: int, readout: bool) -> None:
    """Raise HardwareError unless ``layer`` can be built as a readout (or a hidden layer)."""
    if not isinstance(layer, Layer):
        raise HardwareError(f"layer: expected a sim.bundle.Layer, got {type(layer).__name__}")
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
    unused, so Amaranth does not also warn that it was never elaborated.
    """
    try:
        check_layer(layer, time_steps, readout=readout)
        return LaneGeometry.of(layer.outputs, lanes)
    except HardwareError:
        component._MustUse__silence = True
        raise


def slope_bits(layer: Layer) -> int:
    """Signed width of a slope: any partial row sum of W lies in -sum(W<0)..sum(W>0)."""
    weight = np.asarray(layer.weight, dtype=np.int64)
    highest = int(np.where(weight > 0, weight, 0).sum(axis=1).max())
    lowest = int(np.where(weight < 0, weight, 0).sum(axis=1).min())
    return signed_width(lowest, highest)


def potential_bits(layer: Layer, time_steps: int) -> int:
    """Signed register width of the layer's potentials: contract section 6.

    The same bound ``sim.golden.potential_bounds`` reports for this layer.
    Every intermediate potential ``Bias + sum_j W[i][j] * a_j(k)`` with
    partial activations a_j(k) in 0..T stays within it.
    """
    return signed_bits(int(layer_potential_bounds(layer, time_steps).max()))


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


class Integrator(wiring.Component):
    """Ramp integrator (contract section 4, integration) for all neurons of a layer.

    On an input spike (k, j) it adds W[:, j] to the slopes, group by group;
    on the tick of step k it adds every slope to its potential (on step 0:
    ``V = Bias + slope``), and the tick of step T-1 also clears the slopes
    and closes the window.  The potentials of a closed window are then read
    out by the owner through the ``drain_*`` port until it pulses
    ``release``.

    Parameters
    ----------
    layer : sim.bundle.Layer
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
        layer, steps = self._layer, self._time_steps
        lanes, groups = self._geometry.lanes, self._geometry.groups
        banks = self._banks

        weight_layout = data.ArrayLayout(signed(layer.weight_bits), lanes)
        bias_layout = data.ArrayLayout(signed(bias_bits(layer)), lanes)
        slope_layout = data.ArrayLayout(signed(slope_bits(layer)), lanes)

        # The weight ROM in banks of WEIGHT_BANK_ROWS rows, each read every
        # cycle and its word registered; the bank of the row wanted is chosen
        # from those registers in the write stage, so the mux over the banks
        # no longer follows a block RAM's slow clock-to-output in one cycle.
        weight_words = pack_weights(layer, lanes)
        weight_banks = []
        for bank, start in enumerate(range(0, len(weight_words), WEIGHT_BANK_ROWS)):
            words = weight_words[start:start + WEIGHT_BANK_ROWS]
            name = "weights" if len(weight_words) <= WEIGHT_BANK_ROWS else f"weights_{bank}"
            m.submodules[name] = memory = Memory(shape=unsigned(weight_layout.size), depth=len(words),
                                                 init=words, attrs={"ram_style": "block"})
            weight_banks.append(memory.read_port())
        m.submodules.biases = biases = Memory(
            shape=unsigned(bias_layout.size), depth=groups, init=pack_biases(layer, lanes))
        # The integrator's own reads are transparent: with G = 1 a beat reads
        # the row the previous beat writes in the same cycle, and must see the
        # new value.  The drain read is not (the drain bank is never written).
        slopes = LaneMemory(m, "slopes", slope_layout, groups, transparent_reads=1)
        potentials = LaneMemory(m, "potentials", self.potential_layout, banks * groups,
                                transparent_reads=1, plain_reads=1)
        slope_wr, (slope_rd,) = slopes.write, slopes.reads
        potential_wr, (potential_rd, drain_rd) = potentials.write, potentials.reads
        bias_rd = biases.read_port()

        def bank_row(group, bank):
            # Bank b occupies rows b*G .. b*G + G-1.
            return group + Mux(bank, groups, 0) if banks == 2 else group

        # Issue stage: one group of the current beat per cycle.
        busy = Signal()                      # groups 1.. of a beat remain to issue
        current_group = Signal(range(groups))
        current_row = Signal(range(layer.inputs * groups))
        current_tick = Signal()
        current_first = Signal()             # step 0
        current_last = Signal()              # step T-1
        integrate_bank = Signal()
        drain_bank = Signal()
        full = Signal(banks)                 # bank holds a closed, not yet released window

        issue = Signal()
        issue_group = Signal(range(groups))
        issue_row = Signal(range(layer.inputs * groups))
        issue_tick = Signal()
        issue_first = Signal()
        issue_last = Signal()

        # Write stage: four cycles after an issue, when the reads have arrived.
        write_valid = Signal()
        write_group = Signal(range(groups))
        write_tick = Signal()
        write_first = Signal()
        write_last = Signal()
        write_bank = Signal()
        write_closes = Signal()              # last group of the tick of step T-1

        window_closing = Signal()
        m.d.comb += window_closing.eq(write_valid & write_closes)
        closing_pending = Signal()           # the closing group is in the address, fetch or read stage

        # Clearing pass, the reset state: the slopes are a memory, which `rst`
        # does not clear, and a reset in the middle of a window leaves partial
        # sums there.  Zeros go to one group per cycle (G cycles) before the
        # first beat is taken.  Nothing else needs it: the step-0 tick
        # overwrites every potential, and the bank flags are registers.
        clearing = Signal(init=1)
        clear_group = Signal(range(groups))

        inp = self.inp
        m.d.comb += inp.ready.eq(~clearing & ~busy & ~full.bit_select(integrate_bank, 1)
                                 & ~closing_pending & ~window_closing)
        with m.If(busy):
            m.d.comb += [
                issue.eq(1),
                issue_group.eq(current_group),
                issue_row.eq(current_row),
                issue_tick.eq(current_tick),
                issue_first.eq(current_first),
                issue_last.eq(current_last),
            ]
        with m.Else():
            m.d.comb += [
                issue.eq(inp.valid & inp.ready),
                issue_group.eq(0),
                issue_row.eq(times_constant(inp.payload.neuron, groups)),
                issue_tick.eq(inp.payload.tick),
                issue_first.eq(inp.payload.step == 0),
                issue_last.eq(inp.payload.step == steps - 1),
            ]
        closes = Signal()
        m.d.comb += closes.eq(issue_tick & issue_last & (issue_group == groups - 1))
        with m.If(issue):
            m.d.sync += [
                busy.eq(issue_group != groups - 1),
                current_group.eq(issue_group + 1),
                current_row.eq(issue_row + 1),
                current_tick.eq(issue_tick),
                current_first.eq(issue_first),
                current_last.eq(issue_last),
            ]
            if banks == 2:
                with m.If(closes):
                    m.d.sync += integrate_bank.eq(~integrate_bank)
        # Address stage, the cycle after an issue: the row is registered and
        # drives the weight ROM's address (the ROM is dozens of block RAMs
        # spread over the die; a row computed from the input beat in the same
        # cycle would not reach them at 100 MHz).  Fetch stage: the banks'
        # words arrive (a block RAM's output is slow, 5.8 ns on an ECP5, so
        # each bank's word goes straight into a register).  Read stage: the
        # bank of the row wanted is chosen from those registers into one
        # more register (the mux over up to ~10 banks and its fan-out would
        # otherwise sit in front of the slope adders), and the slope,
        # potential and bias reads are issued, so that they land one cycle
        # before their write (the transparency the G = 1 case relies on).
        # Write stage: the adders.
        def stage_signals(name):
            return {field: Signal(shape, name=f"{name}_{field}") for field, shape in (
                ("valid", 1), ("group", range(groups)), ("tick", 1), ("first", 1), ("last", 1),
                ("bank", 1), ("closes", 1))}

        address, fetch, read = stage_signals("address"), stage_signals("fetch"), stage_signals("read")
        m.d.sync += [
            address["valid"].eq(issue),
            address["group"].eq(issue_group),
            address["tick"].eq(issue_tick),
            address["first"].eq(issue_first),
            address["last"].eq(issue_last),
            address["bank"].eq(integrate_bank),
            address["closes"].eq(closes),
        ]
        m.d.sync += [fetch[field].eq(address[field]) for field in fetch]
        m.d.sync += [read[field].eq(fetch[field]) for field in read]
        address_row = Signal.like(issue_row)
        m.d.sync += address_row.eq(issue_row)
        bank_bits = max(0, (len(weight_banks) - 1).bit_length())
        # Reset-less (only read behind a valid stage): a reset would put a
        # LUT between each block RAM and its register.
        bank_rows = [Signal(weight_layout.size, name=f"weight_bank{bank}_row", reset_less=True)
                     for bank in range(len(weight_banks))]
        fetch_bank_select = Signal(max(1, bank_bits))
        read_bank_select = Signal.like(fetch_bank_select)
        for port, row in zip(weight_banks, bank_rows):
            m.d.comb += port.addr.eq(address_row)    # truncated to the bank's rows
            m.d.sync += row.eq(port.data)
        if bank_bits:
            m.d.sync += [fetch_bank_select.eq(address_row >> WEIGHT_BANK_ROWS.bit_length() - 1),
                         read_bank_select.eq(fetch_bank_select)]
        weight_chosen = Signal(weight_layout)
        with m.Switch(read_bank_select):
            for bank, row in enumerate(bank_rows[:-1]):
                with m.Case(bank):
                    m.d.comb += weight_chosen.eq(row)
            with m.Default():                        # the last bank (a complete case for lint)
                m.d.comb += weight_chosen.eq(bank_rows[-1])
        weight_row = Signal(weight_layout)
        m.d.sync += weight_row.eq(weight_chosen)
        m.d.comb += [
            bias_rd.addr.eq(read["group"]),
            slope_rd.addr.eq(read["group"]),
            potential_rd.addr.eq(bank_row(read["group"], read["bank"])),
        ]
        m.d.sync += [
            write_valid.eq(read["valid"]),
            write_group.eq(read["group"]),
            write_tick.eq(read["tick"]),
            write_first.eq(read["first"]),
            write_last.eq(read["last"]),
            write_bank.eq(read["bank"]),
            write_closes.eq(read["closes"]),
        ]
        m.d.comb += closing_pending.eq(Cat(stage["valid"] & stage["closes"]
                                           for stage in (address, fetch, read)).any())
        bias_row = bias_layout(bias_rd.data)
        m.d.comb += [
            slope_wr.addr.eq(write_group),
            potential_wr.addr.eq(bank_row(write_group, write_bank)),
        ]
        with m.If(write_valid & write_tick):
            m.d.comb += potential_wr.en.eq(1)
            for lane in range(lanes):
                start = Mux(write_first, bias_row[lane], potential_rd.data[lane])
                m.d.comb += potential_wr.data[lane].eq(start + slope_rd.data[lane])
            # The window's last tick leaves zero slopes for the next window
            # (slope_wr.data defaults to zero).
            m.d.comb += slope_wr.en.eq(write_last)
        with m.If(write_valid & ~write_tick):
            m.d.comb += slope_wr.en.eq(1)
            for lane in range(lanes):
                m.d.comb += slope_wr.data[lane].eq(slope_rd.data[lane] + weight_row[lane])
        # No beat is issued while clearing (inp.ready is low), so the slope
        # write port is free.
        with m.If(clearing):
            m.d.comb += [slope_wr.addr.eq(clear_group), slope_wr.en.eq(1)]   # data zero
            with m.If(clear_group == groups - 1):
                m.d.sync += clearing.eq(0)
            with m.Else():
                m.d.sync += clear_group.eq(clear_group + 1)

        for bank in range(banks):
            with m.If(window_closing & (write_bank == bank)):
                m.d.sync += full[bank].eq(1)
            with m.Elif(self.release & (drain_bank == bank)):
                m.d.sync += full[bank].eq(0)
        if banks == 2:
            with m.If(self.release):
                m.d.sync += drain_bank.eq(~drain_bank)
        m.d.comb += [
            self.window_ready.eq(full.bit_select(drain_bank, 1)),
            drain_rd.addr.eq(bank_row(self.drain_group, drain_bank)),
            drain_rd.en.eq(self.drain_en),
            self.drain_data.eq(drain_rd.data),
        ]
        return m


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


class LayerEngine(wiring.Component):
    """A dense hidden layer: ramp integrators then time-counter neurons (contract section 4).

    Integration: input spike (k, j) adds W[:, j] to the slopes; the tick of
    step k adds every slope to its potential.  Firing, in this layer's own
    window: neuron i spikes at step s = T - a_i with
    a_i = clip(floor((V_i + Bias_i) / R), 0, T) when a_i >= 1 - computed as
    ``q = (V + Bias) >> ramp_shift`` firing at s = 0 when q >= T and at
    s >= 1 when q == T - s (the first s where V + R*(s+1) >= (T+1)*R - Bias).

    Parameters
    ----------
    layer : sim.bundle.Layer
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

        # Read sequencer: walks (step, group) over the drain bank while a
        # closed window waits there; releases the bank after the last read.
        fire_group = Signal(range(groups))
        fire_base = Signal(range(groups * lanes))     # = fire_group * P, kept as a counter
        fire_step = Signal(range(steps))

        # Slot: the group just read (its potentials are on drain_data).
        slot_valid = Signal()
        slot_base = Signal.like(fire_base)
        slot_step = Signal.like(fire_step)
        slot_remaining = Signal(range(steps + 1))     # T - step
        slot_first = Signal()
        slot_last_group = Signal()

        # Emitter: the spikes (mask) of one group, then the step's tick when
        # the group is the last one.
        emit_mask = Signal(lanes)
        emit_tick = Signal()
        emit_base = Signal.like(fire_base)
        emit_step = Signal.like(fire_step)

        # Registered facts about emit_mask, so that whether the emitter frees
        # up (and the group read behind it moves) is decided from registers,
        # not from the mask's carry chains: any spike left, and at most one.
        has_spike = Signal()
        one_left = Signal()

        def at_most_one(mask):
            # A tree of (any, several) pairs: log2(P) small levels, no carry chain.
            nodes = [(mask[lane], Const(0, 1)) for lane in range(len(mask))]
            while len(nodes) > 1:
                paired = [(a_any | b_any, a_many | b_many | (a_any & b_any))
                          for (a_any, a_many), (b_any, b_many) in zip(nodes[0::2], nodes[1::2])]
                nodes = paired + ([nodes[-1]] if len(nodes) % 2 else [])
            return ~nodes[0][1]

        lane_index, mask_rest = lowest_set_bit(m, emit_mask)
        out = self.out
        m.d.comb += [
            out.valid.eq(has_spike | emit_tick),
            out.payload.tick.eq(~has_spike),
            out.payload.step.eq(emit_step),
            out.payload.neuron.eq(Mux(has_spike, emit_base + lane_index, 0)),
        ]
        emit_free = Signal()
        m.d.comb += emit_free.eq(~out.valid | (out.ready & Mux(has_spike, one_left & ~emit_tick, 1)))
        with m.If(out.valid & out.ready):
            with m.If(has_spike):
                m.d.sync += [emit_mask.eq(mask_rest), has_spike.eq(~one_left), one_left.eq(at_most_one(mask_rest))]
            with m.Else():
                m.d.sync += emit_tick.eq(0)

        # Mask stage: the group's firing decisions, registered (the compares
        # and then the mask's own flags would not fit one 100 MHz cycle).
        fire_mask = Signal(lanes)
        for lane in range(lanes):
            quotient = integrator.drain_data[lane] >> layer.ramp_shift   # floor((V + Bias) / R)
            m.d.comb += fire_mask[lane].eq(
                Mux(slot_first, quotient >= steps, quotient == slot_remaining))
        mask_valid = Signal()
        mask_bits = Signal(lanes)
        mask_tick = Signal()
        mask_base = Signal.like(fire_base)
        mask_step = Signal.like(fire_step)
        load = Signal()
        take = Signal()
        m.d.comb += [
            load.eq(mask_valid & emit_free),
            take.eq(slot_valid & (~mask_valid | load)),
        ]
        with m.If(~mask_valid | load):
            m.d.sync += mask_valid.eq(slot_valid)
        with m.If(take):
            m.d.sync += [
                mask_bits.eq(fire_mask),
                mask_tick.eq(slot_last_group),
                mask_base.eq(slot_base),
                mask_step.eq(slot_step),
            ]
        with m.If(load):
            m.d.sync += [
                emit_mask.eq(mask_bits),
                has_spike.eq(mask_bits.any()),
                one_left.eq(at_most_one(mask_bits)),
                emit_tick.eq(mask_tick),
                emit_base.eq(mask_base),
                emit_step.eq(mask_step),
            ]

        slot_free = Signal()
        read = Signal()
        m.d.comb += [
            slot_free.eq(~slot_valid | take),
            read.eq(integrator.window_ready & slot_free),
            integrator.drain_en.eq(slot_free),
            integrator.drain_group.eq(fire_group),
        ]
        with m.If(slot_free):
            m.d.sync += slot_valid.eq(read)
        with m.If(read):
            m.d.sync += [
                slot_base.eq(fire_base),
                slot_step.eq(fire_step),
                slot_remaining.eq(steps - fire_step),
                slot_first.eq(fire_step == 0),
                slot_last_group.eq(fire_group == groups - 1),
            ]
            with m.If(fire_group == groups - 1):
                m.d.sync += [fire_group.eq(0), fire_base.eq(0), fire_step.eq(fire_step + 1)]
                with m.If(fire_step == steps - 1):
                    m.d.comb += integrator.release.eq(1)
            with m.Else():
                m.d.sync += [fire_group.eq(fire_group + 1), fire_base.eq(fire_base + lanes)]
        return m

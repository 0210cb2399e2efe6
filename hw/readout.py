"""The readout layer (contract section 5): integrate, never fire, report logits and class."""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from ttfs.contract.bundle import Layer, potential_bits
from ttfs.contract.streams import bits_for
from ttfs.hw.events import event_signature
from ttfs.hw.layer import Integrator, checked_geometry
from ttfs.hw.rom import LaneGeometry


def argmax_levels(lanes: int) -> int:
    """Registered compare levels of the readout's argmax tree over ``lanes`` lanes: ceil(log2 P)."""
    return (int(lanes) - 1).bit_length()


def result_layout(outputs: int, logit_bits: int, cycle_bits: int = 0) -> data.StructLayout:
    """Payload of a result stream: the class, every logit and, when ``cycle_bits``
    is not 0, the image's cycle count (the core's result, :class:`ttfs.hw.core.NetworkCore`)."""
    fields = {
        "cls": bits_for(outputs - 1),
        "logits": data.ArrayLayout(signed(logit_bits), outputs),
    }
    if cycle_bits:
        fields["cycles"] = unsigned(cycle_bits)
    return data.StructLayout(fields)


def group_flags_layout() -> data.StructLayout:
    """A group on its way through the readout: ``valid``, the window's ``first`` and ``last`` group."""
    return data.StructLayout({"valid": 1, "first": 1, "last": 1})


class Readout(wiring.Component):
    """Readout: the shared ramp integrator, then one result beat per window.

    At the end of a window the potentials hold z = V + Bias (the integrator
    starts them at the bias); the readout reads them group by group into the
    result register and keeps a running argmax, so the class is the smallest
    index of the largest logit (a later lane or group replaces the best only
    when strictly larger).

    Parameters
    ----------
    layer : ttfs.contract.bundle.Layer
        The readout layer (``readout`` true); ``ramp_shift`` is ignored.
    time_steps : int
        T, a power of two in 2..256.
    lanes : int
        P >= 1; min(P, outputs) lanes, G = ceil(outputs / P) groups.

    Ports
    -----
    inp : In(event_signature(T, layer.inputs))
        The last hidden layer's windows.
    result : Out(stream of StructLayout{"cls", "logits"})
        One beat per window; logits are ``signed(W)`` with W = the layer's
        register width from ``ttfs.sim.golden.potential_bounds`` (:attr:`logit_bits`).

    Latency (cycles): integration takes G per input beat, (E + T) * G per
    window.  The result is valid G + 6 + :func:`argmax_levels` (P) cycles
    after the closing tick's last group was issued (the argmax compares one
    tree level per cycle).  A single potential bank is used: the next window's
    input is accepted once the G reads are done, and the result register is
    held until ``result`` is taken (a waiting result stalls the next
    window's end, not its integration).

    Reset: ``inp.ready`` is low for G cycles after ``rst`` falls (and after
    power-up) while the integrator clears its slope memory; the result
    register, the argmax and the read sequencer are registers and reset at
    once, so a window cut short by ``rst`` leaves nothing behind.
    """

    def __init__(self, layer: Layer, time_steps: int, lanes: int):
        self._geometry = checked_geometry(self, layer, time_steps, lanes, readout=True)
        self._layer = layer
        self._time_steps = int(time_steps)
        self.logit_bits = potential_bits(layer, time_steps)
        super().__init__({
            "inp": In(event_signature(self._time_steps, layer.inputs)),
            "result": Out(stream.Signature(result_layout(layer.outputs, self.logit_bits))),
        })

    @property
    def geometry(self) -> LaneGeometry:
        """Lanes P and groups G this readout uses."""
        return self._geometry

    def elaborate(self, platform):
        m = Module()
        layer = self._layer
        lanes, groups = self._geometry.lanes, self._geometry.groups
        outputs = layer.outputs
        # Lanes of the last group beyond the last neuron are padding.
        last_group_lanes = outputs - (groups - 1) * lanes

        m.submodules.integrator = integrator = Integrator(layer, self._time_steps, lanes, banks=1)
        wiring.connect(m, wiring.flipped(self.inp), integrator.inp)

        result = self.result
        read_group = Signal(range(groups))
        read_base = Signal(range(groups * lanes))     # = read_group * P, kept as a counter
        # Drained: the group read last cycle is on drain_data.
        drained = Signal(data.StructLayout({"flags": group_flags_layout(), "base": range(groups * lanes)}))

        # A window's last group is in the argmax pipeline: the next window's
        # reads wait until its result is set.
        pending = Signal()
        read = Signal()
        m.d.comb += [
            read.eq(integrator.window_ready & ~result.valid & ~pending),
            integrator.drain_en.eq(1),
            integrator.drain_group.eq(read_group),
        ]
        m.d.sync += [
            drained.flags.valid.eq(read),
            drained.flags.first.eq(read_group == 0),
            drained.flags.last.eq(read_group == groups - 1),
            drained.base.eq(read_base),
        ]
        with m.If(read):
            with m.If(read_group == groups - 1):
                m.d.sync += [read_group.eq(0), read_base.eq(0), pending.eq(1)]
                m.d.comb += integrator.release.eq(1)
            with m.Else():
                m.d.sync += [read_group.eq(read_group + 1), read_base.eq(read_base + lanes)]

        # Logits: a shift register of G groups; each group read enters at the
        # top and moves the earlier ones down, so after G reads group 0 sits
        # at the bottom and logit n at position n.
        values = integrator.drain_data
        group_bits = len(values.as_value())
        shift = Signal(groups * group_bits)
        with m.If(drained.flags.valid):
            m.d.sync += shift.eq(Cat(shift[group_bits:], values.as_value()))
        m.d.comb += result.payload.logits.eq(shift[:outputs * self.logit_bits])

        candidates = []
        for lane in range(lanes):
            valid = Const(1, 1) if lane < last_group_lanes else ~drained.flags.last
            candidates.append((values[lane], drained.base + lane, valid))
        (group_value, group_index), flags = self._argmax_tree(m, candidates, drained.flags)
        # The group's winner meets the running best on its way into best_value / best_index.
        best_value = Signal(signed(self.logit_bits))
        best_index = Signal(range(outputs))
        take_group = flags.first | (group_value > best_value)
        new_index = Mux(take_group, group_index, best_index)
        with m.If(flags.valid):
            m.d.sync += [best_value.eq(Mux(take_group, group_value, best_value)), best_index.eq(new_index)]

        with m.If(result.valid & result.ready):
            m.d.sync += result.valid.eq(0)
        with m.If(flags.valid & flags.last):
            m.d.sync += [result.valid.eq(1), result.payload.cls.eq(new_index), pending.eq(0)]
        return m

    def _argmax_tree(self, m, candidates, flags):
        """The argmax of a group's lanes as a registered tree, one compare level per cycle.

        ``candidates`` are (value, index, valid) per lane.  :func:`argmax_levels`
        (P) = ceil(log2 P) levels; one compare per path keeps the 100 MHz ECP5
        clock.  Pairs of neighbours, the left one holding the lower indices and
        winning ties; an odd one out passes to the next level unchanged.
        Returns the winner's (value, index) and ``flags`` delayed alongside.
        """
        level = 0
        while len(candidates) > 1:
            merged = []
            for pair in range(0, len(candidates), 2):
                if pair + 1 == len(candidates):
                    chosen = candidates[pair]
                else:
                    (left_value, left_index, left_valid) = candidates[pair]
                    (right_value, right_index, right_valid) = candidates[pair + 1]
                    take_right = right_valid & (~left_valid | (right_value > left_value))
                    chosen = (Mux(take_right, right_value, left_value),
                              Mux(take_right, right_index, left_index),
                              left_valid | right_valid)
                value = Signal(signed(self.logit_bits), name=f"tree{level}_{pair // 2}_value")
                index = Signal(range(self._layer.outputs), name=f"tree{level}_{pair // 2}_index")
                valid = Signal(name=f"tree{level}_{pair // 2}_valid")
                m.d.sync += [value.eq(chosen[0]), index.eq(chosen[1]), valid.eq(chosen[2])]
                merged.append((value, index, valid))
            candidates = merged
            delayed = Signal(group_flags_layout(), name=f"tree{level}_flags")
            m.d.sync += delayed.eq(flags)
            flags = delayed
            level += 1
        return candidates[0][:2], flags

"""Gateware side of the board link: frame parser and frame answerer.

The frame format, types and error codes are defined once, in
:mod:`ttfs.contract.wire` (docs/bring-up.md has the byte tables)::

    0xA5 | seq | type | length (u16 LE) | payload | CRC-16/CCITT-FALSE (high byte first)

:class:`FrameParser` turns received bytes into *requests*: every frame it
starts ends in exactly one request, good (``error`` = 0) or not (an error
code for the answerer to send back).  It resynchronises by itself:

- outside a frame it drops every byte that is not the start marker;
- the header is checked as soon as it is in (known type, the exact payload
  length that type needs), so a corrupt length never makes it wait for
  bytes that are not coming;
- a frame whose bytes stop for ``timeout_cycles`` ends with ``ERR_TIMEOUT``
  and the hunt for a start marker begins again;
- the CRC covers seq, type, length and payload.

Payload bytes go straight into the board's image buffer through the
``write`` port; the board locks that buffer (``buffer_locked``) from a good
classify request until the core has read the image, and a payload byte that
arrives while it is locked ends its frame with ``ERR_BUSY``.

:class:`FrameAnswerer` serialises one answer (seq, type, length, payload
bytes) into a frame with its CRC.
"""

from __future__ import annotations

from functools import reduce
from operator import xor
from types import SimpleNamespace

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from ttfs.contract.wire import (
    ERR_BAD_CRC,
    ERR_BAD_LENGTH,
    ERR_BAD_TYPE,
    ERR_BUSY,
    ERR_TIMEOUT,
    MAX_PAYLOAD,
    START,
)
from ttfs.hw.errors import HardwareError
from ttfs.hw.unused import mark_unused

CRC_POLY = 0x1021
CRC_INIT = 0xFFFF


def _crc16_matrix() -> list[frozenset]:
    """For each bit of the next CRC, the set of input bits it is the XOR of.

    Inputs 0..15 are the current CRC's bits, 16..23 the byte's.  Derived by
    running the bitwise CRC on symbols, so the circuit is one XOR level per
    output bit instead of eight chained conditional XORs.
    """
    state = [frozenset({k}) for k in range(16)]
    for k in range(8):
        state[8 + k] = state[8 + k] ^ frozenset({16 + k})
    for _ in range(8):
        top = state[15]
        shifted = [frozenset()] + state[:15]
        state = [shifted[k] ^ top if (CRC_POLY >> k) & 1 else shifted[k] for k in range(16)]
    return state


_CRC_MATRIX = _crc16_matrix()


def crc16_next(crc, byte):
    """Amaranth expression: CRC-16/CCITT-FALSE ``crc`` updated with one ``byte``."""
    inputs = [crc[k] for k in range(16)] + [byte[k] for k in range(8)]
    return Cat(*(reduce(xor, (inputs[k] for k in sorted(bits))) if bits else Const(0, 1)
                 for bits in _CRC_MATRIX))


def request_layout() -> data.StructLayout:
    """A parsed request: sequence number, type, error code (0 = a good frame)."""
    return data.StructLayout({"seq": 8, "type": 8, "error": 8})


def buffer_write_signature(buffer_size: int) -> wiring.Signature:
    """The write port of the board's image buffer (the writer's view): a byte and its address."""
    return wiring.Signature({
        "addr": Out(range(max(2, buffer_size))),
        "data": Out(8),
        "en": Out(1),
    })


class FrameParser(wiring.Component):
    """Received bytes to requests, with resynchronisation and timeouts.

    Parameters
    ----------
    lengths : dict[int, int]
        Request type -> the exact payload length it needs.
    buffer_size : int
        Size of the payload buffer (the largest length).
    timeout_cycles : int
        Clock cycles without a byte after which a partial frame is abandoned.

    Ports
    -----
    bytes_in : In(stream of 8 bits); always ready.
    request : Out(stream of ``request_layout()``); one beat per frame started.
        A request made while the previous one is still not taken is lost and
        pulses ``lost``.
    write : Out(buffer_write_signature(buffer_size)): payload bytes for the image buffer.
    buffer_locked : In(1)
    dropped : Out(1): pulses for every byte skipped while hunting for a frame.
    lost : Out(1)
    """

    def __init__(self, lengths: dict[int, int], buffer_size: int, timeout_cycles: int):
        problem = None
        if not lengths or any(not 0 <= n <= MAX_PAYLOAD for n in lengths.values()):
            problem = f"lengths: {lengths!r} must map types to 0..{MAX_PAYLOAD} bytes"
        elif max(lengths.values()) > buffer_size:
            problem = f"buffer_size: {buffer_size} is smaller than the longest payload"
        elif timeout_cycles < 2:
            problem = f"timeout_cycles: {timeout_cycles} is below 2"
        if problem is not None:
            mark_unused(self)
            raise HardwareError(problem)
        self.lengths = dict(lengths)
        self.buffer_size = buffer_size
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "bytes_in": In(stream.Signature(8)),
            "request": Out(stream.Signature(request_layout())),
            "write": Out(buffer_write_signature(buffer_size)),
            "buffer_locked": In(1),
            "dropped": Out(1),
            "lost": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        byte = self.bytes_in.payload
        got = Signal()
        m.d.comb += [self.bytes_in.ready.eq(1), got.eq(self.bytes_in.valid)]
        frame = SimpleNamespace(seq=Signal(8), kind=Signal(8), length=Signal(16))
        count = Signal(16)
        crc = Signal(16)
        crc_high_ok = Signal()
        busy_hit = Signal()
        issue = Signal()
        issue_error = Signal(8)
        self._request_register(m, frame, issue, issue_error)
        known, length_ok, new_length = self._header_check(m, frame, byte)
        idle, timed_out = self._idle_timer(m, got)
        m.d.comb += [
            self.write.addr.eq(count),
            self.write.data.eq(byte),
        ]

        def abandon_on_timeout():
            with m.If(timed_out):
                m.d.comb += [issue.eq(1), issue_error.eq(ERR_TIMEOUT)]
                m.next = "HUNT"

        with m.FSM():
            with m.State("HUNT"):
                m.d.sync += idle.eq(0)
                with m.If(got):
                    with m.If(byte == START):
                        m.d.sync += [count.eq(0), crc.eq(CRC_INIT), busy_hit.eq(0),
                                     frame.seq.eq(0), frame.kind.eq(0)]
                        m.next = "HEADER"
                    with m.Else():
                        m.d.sync += self.dropped.eq(1)
            with m.State("HEADER"):
                abandon_on_timeout()
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_next(crc, byte)), count.eq(count + 1)]
                    with m.Switch(count):
                        with m.Case(0):
                            m.d.sync += frame.seq.eq(byte)
                        with m.Case(1):
                            m.d.sync += frame.kind.eq(byte)
                        with m.Case(2):
                            m.d.sync += frame.length[:8].eq(byte)
                        with m.Case(3):
                            m.d.sync += [frame.length[8:].eq(byte), count.eq(0)]
                            with m.If(~known):
                                m.d.comb += [issue.eq(1), issue_error.eq(ERR_BAD_TYPE)]
                                m.next = "HUNT"
                            with m.Elif(~length_ok):
                                m.d.comb += [issue.eq(1), issue_error.eq(ERR_BAD_LENGTH)]
                                m.next = "HUNT"
                            with m.Elif(new_length == 0):
                                m.next = "CRC"
                            with m.Else():
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                abandon_on_timeout()
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_next(crc, byte)), count.eq(count + 1)]
                    with m.If(self.buffer_locked):
                        m.d.sync += busy_hit.eq(1)
                    with m.Else():
                        m.d.comb += self.write.en.eq(1)
                    with m.If(count == frame.length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                abandon_on_timeout()
                with m.If(got):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 0):
                        m.d.sync += crc_high_ok.eq(byte == crc[8:])
                    with m.Else():
                        m.d.comb += issue.eq(1)
                        with m.If(~crc_high_ok | (byte != crc[:8])):
                            m.d.comb += issue_error.eq(ERR_BAD_CRC)
                        with m.Elif(busy_hit):
                            m.d.comb += issue_error.eq(ERR_BUSY)
                        m.next = "HUNT"
        return m

    def _request_register(self, m, frame, issue, issue_error):
        """One pending request: ``issue`` loads it (or, while the last one is not taken, pulses ``lost``)."""
        with m.If(self.request.ready):
            m.d.sync += self.request.valid.eq(0)
        m.d.sync += [self.dropped.eq(0), self.lost.eq(0)]
        with m.If(issue):
            with m.If(self.request.valid & ~self.request.ready):
                m.d.sync += self.lost.eq(1)
            with m.Else():
                m.d.sync += [
                    self.request.valid.eq(1),
                    self.request.payload.seq.eq(frame.seq),
                    self.request.payload.type.eq(frame.kind),
                    self.request.payload.error.eq(issue_error),
                ]

    def _header_check(self, m, frame, byte):
        """(known type, exact length, the length) as the length's high byte ``byte`` arrives."""
        known = Signal()
        length_ok = Signal()
        new_length = Cat(frame.length[:8], byte)
        with m.Switch(frame.kind):
            for request_type, needed in self.lengths.items():
                with m.Case(request_type):
                    m.d.comb += [known.eq(1), length_ok.eq(new_length == needed)]
        return known, length_ok, new_length

    def _idle_timer(self, m, got):
        """(the timer, ``timed_out``): no byte for ``timeout_cycles``; the timer
        restarts with every byte (and, outside a frame, the parser holds it at 0)."""
        idle = Signal(range(self.timeout_cycles + 1))
        timed_out = Signal()
        m.d.comb += timed_out.eq(~got & (idle == self.timeout_cycles - 1))
        with m.If(got):
            m.d.sync += idle.eq(0)
        with m.Elif(~timed_out):
            m.d.sync += idle.eq(idle + 1)
        return idle, timed_out


def answer_layout(max_payload: int) -> data.StructLayout:
    """One answer for :class:`FrameAnswerer`: seq, type, payload length and bytes."""
    return data.StructLayout({
        "seq": 8,
        "type": 8,
        "length": range(max_payload + 1),
        "payload": data.ArrayLayout(8, max(1, max_payload)),
    })


class FrameAnswerer(wiring.Component):
    """Answers to framed bytes: start, seq, type, length, ``length`` payload bytes, CRC.

    Ports: ``answer`` In(stream of ``answer_layout(max_payload)``), taken
    when the previous frame has left; ``bytes_out`` Out(stream of 8 bits).
    """

    def __init__(self, max_payload: int):
        if not 0 <= max_payload <= MAX_PAYLOAD:
            mark_unused(self)
            raise HardwareError(f"max_payload: {max_payload} is outside 0..{MAX_PAYLOAD}")
        self.max_payload = max_payload
        super().__init__({
            "answer": In(stream.Signature(answer_layout(max_payload))),
            "bytes_out": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        payload_bits = 8 * max(1, self.max_payload)
        # The payload shifts right by one byte per payload byte sent.
        shift = Signal(payload_bits)
        seq = Signal(8)
        kind = Signal(8)
        length = Signal(16)
        left = Signal(16)
        crc = Signal(16)

        out = self.bytes_out
        sent = Signal()
        m.d.comb += sent.eq(out.valid & out.ready)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.answer.ready.eq(1)
                with m.If(self.answer.valid):
                    m.d.sync += [
                        shift.eq(self.answer.payload.payload.as_value()),
                        seq.eq(self.answer.payload.seq),
                        kind.eq(self.answer.payload.type),
                        length.eq(self.answer.payload.length),
                        left.eq(self.answer.payload.length),
                        crc.eq(CRC_INIT),
                    ]
                    m.next = "START"
            for state, value, following in (
                ("START", Const(START, 8), "SEQ"),
                ("SEQ", seq, "TYPE"),
                ("TYPE", kind, "LEN_LO"),
                ("LEN_LO", length[:8], "LEN_HI"),
            ):
                with m.State(state):
                    m.d.comb += [out.valid.eq(1), out.payload.eq(value)]
                    with m.If(sent):
                        if state != "START":
                            m.d.sync += crc.eq(crc16_next(crc, value))
                        m.next = following
            with m.State("LEN_HI"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(length[8:])]
                with m.If(sent):
                    m.d.sync += crc.eq(crc16_next(crc, length[8:]))
                    with m.If(left == 0):
                        m.next = "CRC_HI"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(shift[:8])]
                with m.If(sent):
                    m.d.sync += [crc.eq(crc16_next(crc, shift[:8])), shift.eq(shift >> 8),
                                 left.eq(left - 1)]
                    with m.If(left == 1):
                        m.next = "CRC_HI"
            with m.State("CRC_HI"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(crc[8:])]
                with m.If(sent):
                    m.next = "CRC_LO"
            with m.State("CRC_LO"):
                m.d.comb += [out.valid.eq(1), out.payload.eq(crc[:8])]
                with m.If(sent):
                    m.next = "IDLE"
        return m

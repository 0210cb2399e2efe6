"""Host side of the board link: frames, answers, transports and the board client.

The protocol (docs/bring-up.md has the byte tables) is shared by the
gateware (:mod:`ttfs.hw.board.protocol`, :mod:`ttfs.hw.board.top`), the host tool (``ttfs board``)
and the cocotb system test, so its constants live here, in plain Python.

Frame, both directions::

    0xA5 | seq | type | length (u16, little-endian) | payload | CRC-16 (high byte first)

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF) over
``seq, type, length, payload``.  An answer repeats the sequence number of
its request, so a host can tell a late answer from the one it waits for.

The client (:class:`BoardClient`) is written once, with ``async`` methods,
over a :class:`Transport`: :class:`SerialTransport` (pyserial, run with
``asyncio.run``) for a real board, :class:`CocotbUartTransport` (bit-level
UART on the simulated pins) for the cocotb system test.  Only the transports
differ; framing, matching and decoding are the same code.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from ttfs.contract.bundle import bundle_fingerprint, potential_bits
from ttfs.contract.errors import TTFSError

START = 0xA5
PROTOCOL_VERSION = 1
HEADER_BYTES = 5          # start, seq, type, length (2)
CRC_BYTES = 2
MAX_PAYLOAD = 0xFFFF

# Request types.
CLASSIFY = 0x01
STATUS = 0x02
VERSION = 0x03
SELFTEST = 0x04
# An answer's type is its request's type with the top bit set.
ANSWER_FLAG = 0x80
ERROR = 0xFF

# Error codes (payload byte 0 of an ERROR answer).
ERR_BAD_CRC = 1
ERR_BAD_TYPE = 2
ERR_BAD_LENGTH = 3
ERR_TIMEOUT = 4
ERR_BUSY = 5
ERROR_NAMES = {
    ERR_BAD_CRC: "bad checksum",
    ERR_BAD_TYPE: "unknown frame type",
    ERR_BAD_LENGTH: "wrong payload length for the frame type",
    ERR_TIMEOUT: "frame timed out (bytes stopped mid-frame)",
    ERR_BUSY: "image buffer busy (a request arrived before the previous one finished)",
}

# Status answer: u16 counters (saturating) in this order, then last class, self-test state.
STATUS_COUNTERS = ("frames_ok", "bad_crc", "bad_header", "timeouts", "busy",
                   "dropped_bytes", "uart_errors", "lost_requests")
SELFTEST_NEVER, SELFTEST_PASSED, SELFTEST_FAILED = 0, 1, 2
SELFTEST_STATES = {SELFTEST_NEVER: "not run", SELFTEST_PASSED: "passed", SELFTEST_FAILED: "failed"}
STATUS_BYTES = 2 * len(STATUS_COUNTERS) + 2
# Version answer fields: (name, bytes), little-endian unsigned.
VERSION_FIELDS = (("protocol", 1), ("input_size", 2), ("classes", 1), ("logit_bytes", 1),
                  ("time_steps", 2), ("lanes", 2), ("layers", 1), ("selftest_images", 1),
                  ("bundle_id", 4), ("clock_hz", 4), ("baud", 4))
VERSION_BYTES = sum(size for _, size in VERSION_FIELDS)
CYCLE_BYTES = 4


class LinkError(TTFSError):
    """The board link failed: no port, no answer, a malformed or unexpected answer."""


class LinkTimeout(LinkError):
    """No (complete) answer arrived in time."""


class BoardRejected(LinkError):
    """The board answered a request with an ERROR frame."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (poly 0x1021, init 0xFFFF; '123456789' -> 0x29B1)."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def encode_frame(seq: int, kind: int, payload: bytes = b"") -> bytes:
    """One frame: start marker, seq, type, length, payload, CRC."""
    payload = bytes(payload)
    if not 0 <= seq <= 0xFF:
        raise LinkError(f"seq: {seq} is outside 0..255")
    if not 0 <= kind <= 0xFF:
        raise LinkError(f"type: {kind} is outside 0..255")
    if len(payload) > MAX_PAYLOAD:
        raise LinkError(f"payload: {len(payload)} bytes is more than {MAX_PAYLOAD}")
    body = bytes([seq, kind]) + len(payload).to_bytes(2, "little") + payload
    return bytes([START]) + body + crc16(body).to_bytes(2, "big")


@dataclass(frozen=True)
class Frame:
    """A decoded frame (request or answer)."""

    seq: int
    kind: int
    payload: bytes


#: Every frame type of the protocol (requests, their answers, ERROR) with its longest payload.
FRAME_TYPES = {
    **{kind: MAX_PAYLOAD for kind in (CLASSIFY, STATUS, VERSION, SELFTEST)},
    **{kind | ANSWER_FLAG: MAX_PAYLOAD for kind in (CLASSIFY, STATUS, VERSION, SELFTEST)},
    ERROR: 2,
}


class FrameDecoder:
    """Bytes in, complete frames out; skips garbage and resynchronises.

    Hunts for the start marker; a header announcing more than
    ``max_payload`` bytes, or a frame whose CRC fails, is discarded and the
    hunt restarts at the byte after its start marker, so a marker inside
    garbage never swallows the real frame that follows.

    ``payload_limits`` (frame type -> most payload bytes) is the set of
    frames expected, by default every request and answer type of the
    protocol (:data:`FRAME_TYPES`; None: any type): a header of any other
    type, or longer than its type allows, is discarded as soon as it is in,
    without waiting for or checking a payload.  Each candidate start marker costs at most its
    type's limit in CRC work, so decoding is linear in the input with that
    limit as the constant: a client that knows its answers (the host's
    :class:`ttfs.hw.board.host.BoardClient` does) decodes any garbage in
    bounded time per byte.  After garbage, a valid frame comes out once at
    most the longest limit plus :data:`HEADER_BYTES` + :data:`CRC_BYTES`
    further bytes have arrived (a false header may announce that much).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, payload_limits: dict[int, int] | None = FRAME_TYPES):
        self.max_payload = max_payload
        self.payload_limits = payload_limits
        self.buffer = bytearray()
        self.discarded = 0

    def _limit(self, kind: int) -> int:
        """Most payload bytes a frame of type ``kind`` may have (-1: no such frame is expected)."""
        if self.payload_limits is None:
            return self.max_payload
        return min(self.max_payload, self.payload_limits.get(kind, -1))

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order."""
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(START)
            if start < 0:
                self.discarded += len(self.buffer)
                self.buffer.clear()
                return frames
            if start:
                self.discarded += start
                del self.buffer[:start]
            if len(self.buffer) < HEADER_BYTES:
                return frames
            length = int.from_bytes(self.buffer[3:5], "little")
            if length > self._limit(self.buffer[2]):
                self._skip_marker()
                continue
            total = HEADER_BYTES + length + CRC_BYTES
            if len(self.buffer) < total:
                return frames
            body = bytes(self.buffer[1:HEADER_BYTES + length])
            received = int.from_bytes(self.buffer[total - CRC_BYTES:total], "big")
            if crc16(body) != received:
                self._skip_marker()
                continue
            frames.append(Frame(body[0], body[1], body[4:]))
            del self.buffer[:total]

    def _skip_marker(self) -> None:
        self.discarded += 1
        del self.buffer[:1]


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class LinkInfo:
    """What the host must know about the board's network to decode its answers."""

    input_size: int
    classes: int
    logit_bytes: int


@dataclass(frozen=True)
class ClassifyAnswer:
    """A classification: predicted class, integer logits, core cycles for the image."""

    cls: int
    logits: tuple[int, ...]
    cycles: int


@dataclass(frozen=True)
class SelftestAnswer:
    """Self-test: how many ROM images passed and the class the core gave each."""

    images: int
    passed: int
    classes: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """True when every self-test image got its expected class."""
        return self.images > 0 and self.passed == self.images


def answer_payload_limits(info: LinkInfo) -> dict[int, int]:
    """The answers a host can receive, with their longest payloads (for :class:`FrameDecoder`)."""
    return {
        CLASSIFY | ANSWER_FLAG: classify_payload_bytes(info),
        STATUS | ANSWER_FLAG: STATUS_BYTES,
        VERSION | ANSWER_FLAG: VERSION_BYTES,
        SELFTEST | ANSWER_FLAG: 2 + 255,
        ERROR: 2,
    }


def logit_bytes_for(bits: int) -> int:
    """Bytes per logit in a classify answer for a readout register of ``bits`` bits."""
    return -(-bits // 8)


def link_info(bundle) -> LinkInfo:
    """The :class:`LinkInfo` of a board built from ``bundle``."""
    return LinkInfo(bundle.input_size, bundle.readout.outputs,
                    logit_bytes_for(potential_bits(bundle.readout, bundle.time_steps)))


def classify_payload_bytes(info: LinkInfo) -> int:
    """Payload length of a classify answer: class, cycles, logits."""
    return 1 + CYCLE_BYTES + info.classes * info.logit_bytes


def parse_classify(payload: bytes, info: LinkInfo) -> ClassifyAnswer:
    """Decode a classify answer's payload."""
    expected = classify_payload_bytes(info)
    if len(payload) != expected:
        raise LinkError(f"classify answer: {len(payload)} payload bytes, expected {expected} "
                        "(is the board built from the same bundle?)")
    cycles = int.from_bytes(payload[1:1 + CYCLE_BYTES], "little")
    start = 1 + CYCLE_BYTES
    width = info.logit_bytes
    logits = tuple(int.from_bytes(payload[start + k * width:start + (k + 1) * width], "little", signed=True)
                   for k in range(info.classes))
    if payload[0] >= info.classes:
        raise LinkError(f"classify answer: class {payload[0]} is outside 0..{info.classes - 1}")
    return ClassifyAnswer(payload[0], logits, cycles)


def parse_status(payload: bytes) -> dict:
    """Decode a status answer into a dict of counters, ``last_class`` and ``selftest``."""
    if len(payload) != STATUS_BYTES:
        raise LinkError(f"status answer: {len(payload)} payload bytes, expected {STATUS_BYTES}")
    status = {name: int.from_bytes(payload[2 * k:2 * k + 2], "little")
              for k, name in enumerate(STATUS_COUNTERS)}
    status["last_class"] = payload[-2]
    status["selftest"] = SELFTEST_STATES.get(payload[-1], f"unknown ({payload[-1]})")
    return status


def parse_version(payload: bytes) -> dict:
    """Decode a version answer into a dict (fields of ``VERSION_FIELDS``)."""
    if len(payload) != VERSION_BYTES:
        raise LinkError(f"version answer: {len(payload)} payload bytes, expected {VERSION_BYTES}")
    fields, offset = {}, 0
    for name, size in VERSION_FIELDS:
        fields[name] = int.from_bytes(payload[offset:offset + size], "little")
        offset += size
    return fields


def parse_selftest(payload: bytes) -> SelftestAnswer:
    """Decode a self-test answer."""
    if len(payload) < 2 or len(payload) != 2 + payload[0]:
        raise LinkError(f"self-test answer: {len(payload)} payload bytes do not match its image count")
    return SelftestAnswer(payload[0], payload[1], tuple(payload[2:]))


def parse_error(payload: bytes) -> tuple[int, int]:
    """Decode an ERROR answer: (error code, request type as the board read it)."""
    if len(payload) != 2:
        raise LinkError(f"error answer: {len(payload)} payload bytes, expected 2")
    return payload[0], payload[1]


def describe_error(payload: bytes) -> str:
    """One line for an ERROR answer."""
    code, kind = parse_error(payload)
    return f"board rejected the frame (type 0x{kind:02x}): {ERROR_NAMES.get(code, f'error code {code}')}"


def bundle_id(bundle) -> int:
    """32-bit identity of a bundle's hardware-relevant content (first bytes of its SHA-256)."""
    return int(bundle_fingerprint(bundle)[:8], 16)

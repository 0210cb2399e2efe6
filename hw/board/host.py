"""Host side of the board link: transports and the board client (``ttfs board``).

The wire format (frames, types, answers) is :mod:`ttfs.contract.wire`; the
gateware that answers is :mod:`ttfs.hw.board.protocol` and
:mod:`ttfs.hw.board.top`.  The client (:class:`BoardClient`) is written
once, with ``async`` methods, over a :class:`Transport`:
:class:`SerialTransport` (pyserial, run with ``asyncio.run``) for a real
board, and the cocotb testbench's UART transport
(:mod:`ttfs.sim.verify.tb_board`) for the simulated board.  Only the
transports differ; framing, matching and decoding are the same code.

Plain Python: nothing here imports amaranth; pyserial is imported only when a
serial port is opened (the ``board`` extra).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from ttfs.contract.wire import (
    ANSWER_FLAG,
    CLASSIFY,
    ERROR,
    SELFTEST,
    STATUS,
    VERSION,
    BoardRejected,
    ClassifyAnswer,
    Frame,
    FrameDecoder,
    LinkError,
    LinkInfo,
    LinkTimeout,
    SelftestAnswer,
    answer_payload_limits,
    describe_error,
    encode_frame,
    parse_classify,
    parse_error,
    parse_selftest,
    parse_status,
    parse_version,
)


class Transport(ABC):
    """Byte pipe to a board: ``write`` sends, ``read`` returns what arrived within ``timeout`` s."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Send ``data``."""

    @abstractmethod
    async def read(self, timeout: float) -> bytes:
        """Bytes received so far, waiting up to ``timeout`` seconds for the first (b"" when none)."""

    @abstractmethod
    def now(self) -> float:
        """Current time in seconds on the transport's clock (simulated time for a simulation)."""


class SerialTransport(Transport):
    """A serial port (pyserial): 8 data bits, no parity, 1 stop bit."""

    def __init__(self, port: str, baud: int):
        import serial

        try:
            self.serial = serial.Serial(port, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError, OSError) as err:
            raise LinkError(f"port {port}: cannot open it ({err})") from None
        self.serial.reset_input_buffer()

    async def write(self, data: bytes) -> None:
        import serial

        try:
            self.serial.write(data)
            self.serial.flush()
        except serial.SerialException as err:
            raise LinkError(f"port {self.serial.port}: write failed ({err})") from None

    async def read(self, timeout: float) -> bytes:
        import serial

        try:
            self.serial.timeout = timeout
            first = self.serial.read(1)
            if not first:
                return b""
            self.serial.timeout = 0
            return first + self.serial.read(self.serial.in_waiting or 0)
        except serial.SerialException as err:
            raise LinkError(f"port {self.serial.port}: read failed ({err})") from None

    def now(self) -> float:
        return time.monotonic()

    def close(self) -> None:
        """Close the port."""
        self.serial.close()



class BoardClient:
    """Requests and answers over a :class:`Transport`, matched by sequence number.

    ``timeout`` (seconds on the transport's clock) bounds the wait for an
    answer.  Frames that answer nothing this client waits for (a late answer,
    a duplicate, an ERROR for garbage) are kept in ``stray`` so that a test
    can check them; ERROR answers are also counted in ``errors``.
    """

    def __init__(self, transport: Transport, info: LinkInfo, timeout: float = 1.0):
        self.transport = transport
        self.info = info
        self.timeout = timeout
        # No answer is longer than this; a corrupt length beyond it is skipped at once.
        self.decoder = FrameDecoder(payload_limits=answer_payload_limits(info))
        self.seq = 0
        self.stray: list[Frame] = []
        self.errors: list[Frame] = []
        self.pending: list[Frame] = []

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    async def _receive(self, timeout: float) -> bool:
        """Read once; decode what arrived into ``pending``. False when nothing came."""
        data = await self.transport.read(timeout)
        if not data:
            return False
        self.pending += self.decoder.feed(data)
        return True

    async def request(self, kind: int, payload: bytes = b"") -> Frame:
        """Send one request and return its answer frame (raises on ERROR or timeout)."""
        seq = self._next_seq()
        await self.transport.write(encode_frame(seq, kind, payload))
        deadline = self.transport.now() + self.timeout
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                if frame.kind == ERROR:
                    self.errors.append(frame)
                    if frame.seq == seq:
                        code, _ = parse_error(frame.payload)
                        raise BoardRejected(code, describe_error(frame.payload))
                    self.stray.append(frame)
                elif frame.seq == seq and frame.kind == (kind | ANSWER_FLAG):
                    return frame
                else:
                    self.stray.append(frame)
            left = deadline - self.transport.now()
            if left <= 0 or not await self._receive(left):
                raise LinkTimeout(f"no answer to request type 0x{kind:02x} within {self.timeout:g} s "
                                  "(is the board programmed, the port right, the baud rate right?)")

    async def drain(self, quiet: float) -> list[Frame]:
        """Collect every frame until nothing arrives for ``quiet`` seconds; returns them."""
        while await self._receive(quiet):
            pass
        frames, self.pending = self.pending, []
        for frame in frames:
            if frame.kind == ERROR:
                self.errors.append(frame)
        return frames

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (for tests of malformed frames)."""
        await self.transport.write(data)

    async def classify(self, image: bytes) -> ClassifyAnswer:
        """Classify one image (``input_size`` uint8 pixels in contract order)."""
        image = bytes(image)
        if len(image) != self.info.input_size:
            raise LinkError(f"image: {len(image)} pixels, the board's network takes {self.info.input_size}")
        frame = await self.request(CLASSIFY, image)
        return parse_classify(frame.payload, self.info)

    async def status(self) -> dict:
        """The board's counters, last class and self-test state."""
        return parse_status((await self.request(STATUS)).payload)

    async def version(self) -> dict:
        """The board's protocol version and network description."""
        return parse_version((await self.request(VERSION)).payload)

    async def selftest(self) -> SelftestAnswer:
        """Run the board's self-test (ROM images against their expected classes)."""
        return parse_selftest((await self.request(SELFTEST)).payload)

"""BoardTop: the network core behind a UART host link, with LEDs and a self-test ROM.

```
rx -> UARTRx -> FrameParser --requests--> FIFO --> executor --> FrameAnswerer -> UARTTx -> tx
                     | payload                         |   ^
                     v                                 v   | result
                image buffer ---------------------> feeder -> NetworkCore (trace=False)
                self-test ROM ----------------------^
```

The executor takes one request at a time: an ERROR answer for a bad frame;
for a classify request it streams the image buffer into the core, waits for
the result and answers class, cycles and logits; status and version are
answered from registers; the self-test streams every ROM image through the
core and compares its class with the expected one (computed by the golden
model when the bitstream is generated).  The self-test also runs once after
reset, unanswered, so the LEDs tell right after configuration whether the
circuit works.

LEDs (as many as the board has, lowest first): the last class in binary,
then "self-test passed", "self-test failed", and a heartbeat (about 1 Hz).

Parts: :class:`ImageFeeder` (the image buffer, the self-test ROM and the
feeder), :class:`SelfTestTally` (the self-test's score) and, in
:class:`BoardTop`, the request FIFO and buffer lock, the executor, the
answers (with the status counters) and the LEDs.

The protocol is described in :mod:`ttfs.contract.wire` and docs/bring-up.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from ttfs.contract import wire
from ttfs.contract.streams import bits_for
from ttfs.contract.wire import (
    ANSWER_FLAG,
    CLASSIFY,
    CYCLE_BYTES,
    ERR_BAD_CRC,
    ERR_BAD_LENGTH,
    ERR_BAD_TYPE,
    ERR_BUSY,
    ERR_TIMEOUT,
    ERROR,
    PROTOCOL_VERSION,
    SELFTEST,
    SELFTEST_FAILED,
    SELFTEST_NEVER,
    SELFTEST_PASSED,
    STATUS,
    STATUS_COUNTERS,
    VERSION,
    VERSION_FIELDS,
)
from ttfs.hw.board.protocol import FrameAnswerer, FrameParser, buffer_write_signature, request_layout
from ttfs.hw.board.uart import UARTRx, UARTTx, uart_divisor
from ttfs.hw.encoder import pixel_signature
from ttfs.hw.errors import HardwareError
from ttfs.hw.register_slice import RegisterSlice
from ttfs.hw.unused import mark_unused

DEFAULT_BAUD = 1_000_000
DEFAULT_FRAME_TIMEOUT_S = 0.02
DEFAULT_SELFTEST_IMAGES = 4
MAX_SELFTEST_IMAGES = 32
REQUEST_FIFO_DEPTH = 4
PIXEL_FIFO_DEPTH = 4
COUNTER_BITS = 16


def selftest_images(bundle, count: int = DEFAULT_SELFTEST_IMAGES) -> np.ndarray:
    """The self-test images of a board built from ``bundle``: uint8 (count, C, H, W).

    A 1x28x28 network gets the first test images of the embedded MNIST
    sample; any other input shape gets seeded random images (the same ones
    every time, so the host tool can recompute them).
    """
    if not 1 <= count <= MAX_SELFTEST_IMAGES:
        raise HardwareError(f"selftest images: {count} is outside 1..{MAX_SELFTEST_IMAGES}")
    shape = (bundle.channels, bundle.height, bundle.width)
    if shape == (1, 28, 28):
        from ttfs.contract.datasets import load_dataset

        return np.ascontiguousarray(load_dataset("mnist-sample", "test").images[:count], dtype=np.uint8)
    rng = np.random.default_rng(2024)
    return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)


def _le_bytes(value: Signal, count: int) -> list:
    """The ``count`` little-endian bytes of a signal at least ``8 * count`` bits wide."""
    return [value[8 * k:8 * k + 8] for k in range(count)]


class ImageFeeder(wiring.Component):
    """The image buffer and the self-test ROM, and the feeder that streams one of their images into the core.

    The buffer is written by the frame parser (``write``); the ROM holds the
    self-test images back to back.  The memories are read without ever
    stalling: each memory's word goes straight into its own register (a
    block RAM's output is slow, 5.8 ns on an ECP5, and may sit far from the
    logic), then the two are chosen between into a small FIFO, and a read is
    issued only while the FIFO has room for it and for the reads still on
    their way.  The FIFO's output is a register, and a register slice keeps
    the core's ``ready`` out of it.

    Ports
    -----
    write : In(:func:`ttfs.hw.board.protocol.buffer_write_signature`)
        Bytes into the image buffer.
    start : In(1), rom : In(1), first : In(1)
        Pulse ``start`` (while no image is being fed) to feed an image: the
        buffer's (``rom`` low), self-test image 0 (``rom`` and ``first``) or
        the self-test image after the one fed last (``rom`` alone).
    buffer_free : Out(1)
        Pulses when every pixel of the buffer's image has been read: the
        buffer may take the next image.
    pixels : Out(pixel_signature(1))
        To the core.  A read issued in cycle t reaches the FIFO in t + 2, the
        register slice in t + 3 at the earliest, and the core in t + 4.
    """

    def __init__(self, images: np.ndarray):
        self._images = images
        self._size = int(images[0].size)
        super().__init__({
            "write": In(buffer_write_signature(self._size)),
            "start": In(1),
            "rom": In(1),
            "first": In(1),
            "buffer_free": Out(1),
            "pixels": Out(pixel_signature(1)),
        })

    def elaborate(self, platform):
        m = Module()
        size, count = self._size, len(self._images)
        m.submodules.buffer = buffer = Memory(shape=8, depth=size, init=[], attrs={"ram_style": "block"})
        buffer_write = buffer.write_port()
        buffer_read = buffer.read_port()
        m.submodules.rom = rom = Memory(shape=8, depth=count * size, init=self._images.reshape(-1).tolist(),
                                        attrs={"ram_style": "block"})
        rom_read = rom.read_port()
        m.d.comb += [
            buffer_write.addr.eq(self.write.addr),
            buffer_write.data.eq(self.write.data),
            buffer_write.en.eq(self.write.en),
        ]
        m.submodules.pixel_fifo = pixel_fifo = SyncFIFOBuffered(width=8, depth=PIXEL_FIFO_DEPTH)
        m.submodules.pixel_link = pixel_link = RegisterSlice(self.pixels.signature)
        wiring.connect(m, pixel_link.out, wiring.flipped(self.pixels))
        from_rom = Signal()
        base = Signal(range(max(2, count * size)))
        fed = Signal(range(size + 1))
        feeding = Signal()
        issue = Signal()
        read_valid = Signal()            # the memories' read data is a pixel
        held_valid = Signal()            # held_rom / held_buffer hold a pixel
        held_from_rom = Signal()
        held_rom = Signal(8, reset_less=True)        # only read behind held_valid; a reset
        held_buffer = Signal(8, reset_less=True)     # would put a LUT after the block RAM
        m.d.comb += [
            issue.eq(feeding & (fed != size)
                     & (pixel_fifo.level + read_valid + held_valid < PIXEL_FIFO_DEPTH)),
            buffer_read.addr.eq(fed),
            rom_read.addr.eq(base + fed),
            pixel_fifo.w_en.eq(held_valid),
            pixel_fifo.w_data.eq(Mux(held_from_rom, held_rom, held_buffer)),
            pixel_link.inp.valid.eq(pixel_fifo.r_rdy),
            pixel_link.inp.payload.as_value().eq(pixel_fifo.r_data),
            pixel_fifo.r_en.eq(pixel_link.inp.ready),
        ]
        m.d.sync += [
            read_valid.eq(issue),
            held_valid.eq(read_valid),
            held_from_rom.eq(from_rom),
            held_rom.eq(rom_read.data),
            held_buffer.eq(buffer_read.data),
        ]
        with m.If(issue):
            m.d.sync += fed.eq(fed + 1)
        with m.If(feeding & (fed == size)):
            # Every read is issued.
            m.d.sync += feeding.eq(0)
            m.d.comb += self.buffer_free.eq(~from_rom)
        with m.If(self.start):
            m.d.sync += [feeding.eq(1), fed.eq(0), from_rom.eq(self.rom)]
            with m.If(self.rom):
                m.d.sync += base.eq(Mux(self.first, 0, base + size))
        return m


class SelfTestTally(wiring.Component):
    """The self-test's score: each image's class against the one the golden model expects.

    Ports
    -----
    clear : In(1)
        Start a run: ``index`` and ``passed`` to 0 (the next cycle).
    score : In(1), cls : In(8)
        The class the core gave self-test image ``index``; recorded in
        ``got[index]``, counted in ``passed``, ``index`` moves on (the next cycle).
    index : Out(range(N + 1)), passed : Out(range(N + 1)), got : Out(ArrayLayout(8, N))
    last : Out(1)
        ``index`` is the run's last image.
    state : Out(2)
        ``SELFTEST_NEVER`` until a run's last image is scored, then
        ``SELFTEST_PASSED`` or ``SELFTEST_FAILED``.
    """

    def __init__(self, expected: list[int]):
        self._expected = expected
        count = len(expected)
        super().__init__({
            "clear": In(1), "score": In(1), "cls": In(8),
            "index": Out(range(count + 1)), "passed": Out(range(count + 1)),
            "got": Out(data.ArrayLayout(8, count)),
            "last": Out(1),
            "state": Out(2, init=SELFTEST_NEVER),
        })

    def elaborate(self, platform):
        m = Module()
        count = len(self._expected)
        expected_class = Signal(8)
        with m.Switch(self.index):
            for k, value in enumerate(self._expected):
                with m.Case(k):
                    m.d.comb += expected_class.eq(value)
        m.d.comb += self.last.eq(self.index == count - 1)
        with m.If(self.clear):
            m.d.sync += [self.index.eq(0), self.passed.eq(0)]
        with m.If(self.score):
            with m.Switch(self.index):
                for k in range(count):
                    with m.Case(k):
                        m.d.sync += self.got[k].eq(self.cls)
            passed_now = self.passed + (self.cls == expected_class)
            m.d.sync += [self.passed.eq(passed_now), self.index.eq(self.index + 1)]
            with m.If(self.last):
                m.d.sync += self.state.eq(Mux(passed_now == count, SELFTEST_PASSED, SELFTEST_FAILED))
        return m


class BoardTop(wiring.Component):
    """The network core of ``bundle`` behind a UART link; board-independent.

    Parameters
    ----------
    bundle : ttfs.contract.bundle.Bundle
    lanes : int
        P for the core.
    clock_hz : float
        The clock this circuit runs at (sets the UART divisor and the timeout).
    baud : int
        UART rate; ``uart_divisor`` refuses rates the clock cannot make.
    selftest : uint8 array (N, C, H, W) or None
        Self-test images (default :func:`selftest_images`).
    leds : int
        LED outputs.
    timeout_cycles : int or None
        Cycles without a byte that abandon a partial frame (default
        ``DEFAULT_FRAME_TIMEOUT_S`` of clock, at least 3 byte times).
    selftest_at_start : bool
        Run the self-test once after reset (unanswered).

    Ports
    -----
    rx : In(1), tx : Out(1): the UART lines (8N1).
    leds : Out(leds)
    """

    def __init__(self, bundle, lanes: int, clock_hz: float, baud: int = DEFAULT_BAUD,
                 selftest=None, leds: int = 4, timeout_cycles: int | None = None,
                 selftest_at_start: bool = True):
        try:
            self._configure(bundle, lanes, clock_hz, baud, selftest, leds, timeout_cycles)
        except HardwareError:
            mark_unused(self)
            raise
        self.selftest_at_start = selftest_at_start
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(leds)})

    def _configure(self, bundle, lanes, clock_hz, baud, selftest, leds, timeout_cycles):
        from ttfs.hw.core import NetworkCore
        from ttfs.sim.golden import run as golden_run

        self.bundle = bundle
        self.lanes = lanes
        self.clock_hz = int(clock_hz)
        self.baud = baud
        self.divisor = uart_divisor(clock_hz, baud)
        if bundle.input_size > wire.MAX_PAYLOAD:
            raise HardwareError(f"input size: {bundle.input_size} pixels do not fit one frame "
                                f"(at most {wire.MAX_PAYLOAD})")
        if bundle.readout.outputs > 256:
            raise HardwareError(f"classes: {bundle.readout.outputs} do not fit the one-byte class field")
        if isinstance(lanes, int) and lanes > 0xFFFF:
            raise HardwareError(f"lanes: {lanes} does not fit the version answer's 16-bit field")
        if leds < 1:
            raise HardwareError(f"leds: {leds} is below 1")
        self.led_count = leds
        self.info = wire.link_info(bundle)
        images = selftest_images(bundle) if selftest is None else np.asarray(selftest)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != bundle.input_shape \
                or not 1 <= len(images) <= MAX_SELFTEST_IMAGES:
            raise HardwareError(f"selftest: expected uint8 images (1..{MAX_SELFTEST_IMAGES}, "
                                f"{', '.join(map(str, bundle.input_shape))}), got {images.dtype} {images.shape}")
        self.selftest = images
        self.selftest_classes = [int(c) for c in golden_run(bundle, images).classes]
        minimum = 30 * self.divisor
        if timeout_cycles is None:
            timeout_cycles = max(minimum, round(DEFAULT_FRAME_TIMEOUT_S * clock_hz))
        if timeout_cycles < minimum:
            raise HardwareError(f"timeout_cycles: {timeout_cycles} is shorter than 3 byte times ({minimum})")
        self.timeout_cycles = timeout_cycles
        self.bundle_id = wire.bundle_id(bundle)
        self.max_payload = max(wire.classify_payload_bytes(self.info), wire.STATUS_BYTES,
                               wire.VERSION_BYTES, 2 + len(images))
        # Last: a core built and then refused would warn that it was never elaborated.
        self.core = NetworkCore(bundle, lanes=lanes, pixels_per_beat=1, trace=False)

    def elaborate(self, platform):
        m = Module()
        size = self.bundle.input_size
        m.submodules.uart_rx = uart_rx = UARTRx(self.divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(self.divisor)
        lengths = {CLASSIFY: size, STATUS: 0, VERSION: 0, SELFTEST: 0}
        m.submodules.parser = parser = FrameParser(lengths, size, self.timeout_cycles)
        m.submodules.answerer = answerer = FrameAnswerer(self.max_payload)
        # Buffered: its output is a register, so the executor's decode does not
        # start behind a LUT-RAM read.
        m.submodules.requests = requests = SyncFIFOBuffered(width=request_layout().size,
                                                            depth=REQUEST_FIFO_DEPTH)
        m.submodules.core = core = self.core
        m.submodules.feeder = feeder = ImageFeeder(self.selftest)
        m.submodules.selftest = tally = SelfTestTally(self.selftest_classes)
        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
        ]
        wiring.connect(m, uart_rx.data, parser.bytes_in)
        wiring.connect(m, answerer.bytes_out, uart_tx.data)
        wiring.connect(m, parser.write, feeder.write)
        wiring.connect(m, feeder.pixels, core.pixels)

        # Requests: parser -> FIFO; a good classify locks the buffer until it is read.
        locked = Signal()
        m.d.comb += [
            requests.w_data.eq(parser.request.payload.as_value()),
            requests.w_en.eq(parser.request.valid),
            parser.request.ready.eq(requests.w_rdy),
            parser.buffer_locked.eq(locked),
        ]
        with m.If(feeder.buffer_free):
            m.d.sync += locked.eq(0)
        with m.If(parser.request.valid & parser.request.ready
                  & (parser.request.payload.type == CLASSIFY) & (parser.request.payload.error == 0)):
            m.d.sync += locked.eq(1)

        state = SimpleNamespace(
            request=Signal(request_layout()),
            answer_kind=Signal(8),
            error_code=Signal(8),
            last_class=Signal(8),
            take_result=Signal(),
            got_result=Signal(),
            increments={name: Signal(name=f"inc_{name}") for name in STATUS_COUNTERS},
        )
        m.d.comb += [
            core.result.ready.eq(state.take_result),
            state.got_result.eq(core.result.valid & state.take_result),
            state.increments["dropped_bytes"].eq(parser.dropped),
            state.increments["uart_errors"].eq(uart_rx.frame_error | uart_rx.overrun),
            state.increments["lost_requests"].eq(parser.lost),
        ]
        self._answers(m, answerer.answer, state, core.result, tally)
        self._executor(m, requests, answerer.answer, feeder, tally, core.result.payload.cls, state)
        self._leds(m, state.last_class, tally.state)
        return m

    def _answers(self, m, answer, state, result, tally):
        """Drive ``answer``'s payload for ``state.answer_kind``: each kind's bytes from
        the registers (the last result, the status counters, the version, the self-test)."""
        info, count = self.info, len(self.selftest)
        # The last result, held at the core's widths; logits widened to the answer's bytes.
        result_class, result_cycles = Signal(8), Signal(32)
        logits = [Signal(signed(len(result.payload.logits[k])), name=f"logit{k}") for k in range(info.classes)]
        with m.If(state.got_result):
            m.d.sync += [result_class.eq(result.payload.cls), result_cycles.eq(result.payload.cycles)]
            m.d.sync += [logit.eq(result.payload.logits[k]) for k, logit in enumerate(logits)]
        classify_bytes = [result_class] + _le_bytes(result_cycles, CYCLE_BYTES)
        for k, logit in enumerate(logits):
            wide = Signal(signed(8 * info.logit_bytes), name=f"wide_logit{k}")
            m.d.comb += wide.eq(logit)
            classify_bytes += _le_bytes(wide, info.logit_bytes)

        status_bytes = []
        for name in STATUS_COUNTERS:
            counter = Signal(COUNTER_BITS, name=f"count_{name}")
            with m.If(state.increments[name] & (counter != (1 << COUNTER_BITS) - 1)):
                m.d.sync += counter.eq(counter + 1)
            status_bytes += _le_bytes(counter, 2)
        status_bytes += [state.last_class, Cat(tally.state, Const(0, 6))]

        version_values = {
            "protocol": PROTOCOL_VERSION, "input_size": self.bundle.input_size, "classes": info.classes,
            "logit_bytes": info.logit_bytes, "time_steps": self.bundle.time_steps, "lanes": self.lanes,
            "layers": len(self.bundle.layers), "selftest_images": count, "bundle_id": self.bundle_id,
            "clock_hz": self.clock_hz, "baud": self.baud,
        }
        version_bytes = []
        for name, width in VERSION_FIELDS:
            version_bytes += [Const(b, 8) for b in int(version_values[name]).to_bytes(width, "little")]
        selftest_bytes = [Const(count, 8), tally.passed] + [tally.got[k] for k in range(count)]
        error_bytes = [state.error_code, state.request.type]

        payload = answer.payload
        m.d.comb += [payload.seq.eq(state.request.seq), payload.type.eq(state.answer_kind)]
        with m.Switch(state.answer_kind):
            for kind, byte_list in ((CLASSIFY | ANSWER_FLAG, classify_bytes),
                                    (STATUS | ANSWER_FLAG, status_bytes),
                                    (VERSION | ANSWER_FLAG, version_bytes),
                                    (SELFTEST | ANSWER_FLAG, selftest_bytes),
                                    (ERROR, error_bytes)):
                with m.Case(kind):
                    m.d.comb += payload.length.eq(len(byte_list))
                    m.d.comb += [payload.payload[k].eq(byte) for k, byte in enumerate(byte_list)]

    def _executor(self, m, requests, answer, feeder, tally, result_class, state):
        """One request at a time: decode it, run it (classify, self-test), then send its answer."""
        answer_wanted = Signal()         # a self-test run was requested (not the one after reset)
        with m.FSM(init="SELFTEST_START" if self.selftest_at_start else "IDLE"):
            with m.State("IDLE"):
                with m.If(requests.r_rdy):
                    m.d.comb += requests.r_en.eq(1)
                    incoming = request_layout()(requests.r_data)
                    m.d.sync += state.request.eq(requests.r_data)
                    with m.If(incoming.error != 0):
                        m.d.sync += [state.answer_kind.eq(ERROR), state.error_code.eq(incoming.error)]
                        self._count_error(m, incoming.error, state.increments)
                        m.next = "SEND"
                    with m.Else():
                        m.d.comb += state.increments["frames_ok"].eq(1)
                        m.d.sync += state.answer_kind.eq(incoming.type | ANSWER_FLAG)
                        with m.Switch(incoming.type):
                            with m.Case(CLASSIFY):
                                m.d.comb += [feeder.start.eq(1), feeder.rom.eq(0)]
                                m.next = "CLASSIFY"
                            with m.Case(SELFTEST):
                                m.d.sync += answer_wanted.eq(1)
                                m.next = "SELFTEST_START"
                            with m.Default():
                                m.next = "SEND"
            with m.State("CLASSIFY"):
                m.d.comb += state.take_result.eq(1)
                with m.If(state.got_result):
                    m.d.sync += state.last_class.eq(result_class)
                    m.next = "SEND"
            with m.State("SELFTEST_START"):
                m.d.comb += [tally.clear.eq(1), feeder.start.eq(1), feeder.rom.eq(1), feeder.first.eq(1)]
                m.next = "SELFTEST_RUN"
            with m.State("SELFTEST_RUN"):
                m.d.comb += [state.take_result.eq(1), tally.cls.eq(result_class)]
                with m.If(state.got_result):
                    m.d.comb += tally.score.eq(1)
                    m.d.sync += state.last_class.eq(result_class)
                    with m.If(tally.last):
                        with m.If(answer_wanted):
                            m.next = "SEND"
                        with m.Else():
                            m.next = "IDLE"
                    with m.Else():
                        m.d.comb += [feeder.start.eq(1), feeder.rom.eq(1)]
            with m.State("SEND"):
                m.d.comb += answer.valid.eq(1)
                with m.If(answer.ready):
                    m.d.sync += answer_wanted.eq(0)
                    m.next = "IDLE"

    @staticmethod
    def _count_error(m, error, increments):
        """Count a rejected frame under its error code's status counter."""
        with m.Switch(error):
            with m.Case(ERR_BAD_CRC):
                m.d.comb += increments["bad_crc"].eq(1)
            with m.Case(ERR_BAD_TYPE, ERR_BAD_LENGTH):
                m.d.comb += increments["bad_header"].eq(1)
            with m.Case(ERR_TIMEOUT):
                m.d.comb += increments["timeouts"].eq(1)
            with m.Case(ERR_BUSY):
                m.d.comb += increments["busy"].eq(1)

    def _leds(self, m, last_class, selftest_state):
        """LEDs, lowest first: the last class in binary, self-test passed / failed, a heartbeat (about 1 Hz)."""
        class_bits = bits_for(self.info.classes - 1)
        lamps = [last_class[k] for k in range(min(class_bits, self.led_count))]
        lamps += [selftest_state == SELFTEST_PASSED, selftest_state == SELFTEST_FAILED]
        heartbeat = Signal(max(1, (self.clock_hz // 2).bit_length()))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        lamps.append(heartbeat[-1])
        m.d.comb += self.leds.eq(Cat(*lamps[:self.led_count]))

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

The protocol is described in :mod:`sw.host_link` and docs/bring-up.md.
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.errors import HardwareError
from hw.events import bits_for
from hw.protocol import FrameAnswerer, FrameParser, request_layout
from hw.register_slice import RegisterSlice
from hw.uart import UARTRx, UARTTx, uart_divisor
from sw import host_link
from sw.host_link import (
    ANSWER_FLAG, CLASSIFY, CYCLE_BYTES, ERR_BAD_CRC, ERR_BAD_LENGTH, ERR_BAD_TYPE, ERR_BUSY, ERR_TIMEOUT,
    ERROR, PROTOCOL_VERSION, SELFTEST, SELFTEST_FAILED, SELFTEST_NEVER, SELFTEST_PASSED, STATUS,
    STATUS_COUNTERS, VERSION, VERSION_FIELDS,
)

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
        from sw.datasets import load_dataset

        return np.ascontiguousarray(load_dataset("mnist-sample", "test").images[:count], dtype=np.uint8)
    rng = np.random.default_rng(2024)
    return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)


def _le_bytes(value: Signal, count: int) -> list:
    """The ``count`` little-endian bytes of a signal at least ``8 * count`` bits wide."""
    return [value[8 * k:8 * k + 8] for k in range(count)]


class BoardTop(wiring.Component):
    """The network core of ``bundle`` behind a UART link; board-independent.

    Parameters
    ----------
    bundle : sim.bundle.Bundle
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
            self._MustUse__used = True  # never built: no "never elaborated" warning
            raise
        self.selftest_at_start = selftest_at_start
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(leds)})

    def _configure(self, bundle, lanes, clock_hz, baud, selftest, leds, timeout_cycles):
        from hw.core import NetworkCore
        from sim.golden import run as golden_run

        self.bundle = bundle
        self.lanes = lanes
        self.clock_hz = int(clock_hz)
        self.baud = baud
        self.divisor = uart_divisor(clock_hz, baud)
        if bundle.input_size > host_link.MAX_PAYLOAD:
            raise HardwareError(f"input size: {bundle.input_size} pixels do not fit one frame "
                                f"(at most {host_link.MAX_PAYLOAD})")
        if bundle.readout.outputs > 256:
            raise HardwareError(f"classes: {bundle.readout.outputs} do not fit the one-byte class field")
        if isinstance(lanes, int) and lanes > 0xFFFF:
            raise HardwareError(f"lanes: {lanes} does not fit the version answer's 16-bit field")
        if leds < 1:
            raise HardwareError(f"leds: {leds} is below 1")
        self.led_count = leds
        self.info = host_link.link_info(bundle)
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
        self.bundle_id = host_link.bundle_id(bundle)
        self.max_payload = max(host_link.classify_payload_bytes(self.info), host_link.STATUS_BYTES,
                               host_link.VERSION_BYTES, 2 + len(images))
        # Last: a core built and then refused would warn that it was never elaborated.
        self.core = NetworkCore(bundle, lanes=lanes, pixels_per_beat=1, trace=False)

    def elaborate(self, platform):
        m = Module()
        bundle, info = self.bundle, self.info
        size = bundle.input_size
        count = len(self.selftest)

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
        m.d.comb += [
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
        ]
        wiring.connect(m, uart_rx.data, parser.bytes_in)
        wiring.connect(m, answerer.bytes_out, uart_tx.data)

        # ---- Memories: the image buffer (written by the parser) and the self-test ROM.
        m.submodules.buffer = buffer = Memory(shape=8, depth=size, init=[], attrs={"ram_style": "block"})
        buffer_write = buffer.write_port()
        buffer_read = buffer.read_port()
        m.submodules.rom = rom = Memory(shape=8, depth=count * size, init=self.selftest.reshape(-1).tolist(),
                                        attrs={"ram_style": "block"})
        rom_read = rom.read_port()
        m.d.comb += [
            buffer_write.addr.eq(parser.write.addr),
            buffer_write.data.eq(parser.write.data),
            buffer_write.en.eq(parser.write.en),
        ]

        # ---- Requests: parser -> FIFO; a good classify locks the buffer until it is read.
        locked = Signal()
        m.d.comb += [
            requests.w_data.eq(parser.request.payload.as_value()),
            requests.w_en.eq(parser.request.valid),
            parser.request.ready.eq(requests.w_rdy),
            parser.buffer_locked.eq(locked),
        ]
        request = Signal(request_layout())

        # ---- Feeder: one image from the buffer or the ROM into the core, one
        # pixel per beat.  The memories are read without ever stalling: each
        # memory's word goes straight into its own register (a block RAM's
        # output is slow, 5.8 ns on an ECP5, and may sit far from the logic),
        # then the two are chosen between into a small FIFO, and a read is
        # issued only while the FIFO has room for it and for the reads still
        # on their way.  The FIFO's output is a register, and a register
        # slice keeps the core's `ready` out of it.
        m.submodules.pixel_fifo = pixel_fifo = SyncFIFOBuffered(width=8, depth=PIXEL_FIFO_DEPTH)
        m.submodules.pixel_link = pixel_link = RegisterSlice(core.pixels.signature.flip())
        wiring.connect(m, pixel_link.out, core.pixels)
        feed_start = Signal()
        feed_from_rom = Signal()
        feed_base = Signal(range(max(2, count * size)))
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
            rom_read.addr.eq(feed_base + fed),
            pixel_fifo.w_en.eq(held_valid),
            pixel_fifo.w_data.eq(Mux(held_from_rom, held_rom, held_buffer)),
            pixel_link.inp.valid.eq(pixel_fifo.r_rdy),
            pixel_link.inp.payload.as_value().eq(pixel_fifo.r_data),
            pixel_fifo.r_en.eq(pixel_link.inp.ready),
        ]
        m.d.sync += [
            read_valid.eq(issue),
            held_valid.eq(read_valid),
            held_from_rom.eq(feed_from_rom),
            held_rom.eq(rom_read.data),
            held_buffer.eq(buffer_read.data),
        ]
        with m.If(issue):
            m.d.sync += fed.eq(fed + 1)
        with m.If(feeding & (fed == size)):
            # Every read is issued: the buffer may take the next image.
            m.d.sync += feeding.eq(0)
            with m.If(~feed_from_rom):
                m.d.sync += locked.eq(0)
        with m.If(feed_start):
            m.d.sync += [feeding.eq(1), fed.eq(0)]
        with m.If(parser.request.valid & parser.request.ready
                  & (parser.request.payload.type == CLASSIFY) & (parser.request.payload.error == 0)):
            m.d.sync += locked.eq(1)

        # ---- Result of the core.
        logit_bits = len(core.result.payload.logits[0])
        result_class = Signal(8)
        result_cycles = Signal(32)
        result_logits = [Signal(signed(logit_bits), name=f"logit{k}") for k in range(info.classes)]
        take_result = Signal()
        m.d.comb += core.result.ready.eq(take_result)
        got_result = Signal()
        m.d.comb += got_result.eq(core.result.valid & take_result)
        with m.If(got_result):
            m.d.sync += [
                result_class.eq(core.result.payload.cls),
                result_cycles.eq(core.result.payload.cycles),
            ]
            m.d.sync += [result_logits[k].eq(core.result.payload.logits[k]) for k in range(info.classes)]

        # ---- Status registers.
        counters = {name: Signal(COUNTER_BITS, name=f"count_{name}") for name in STATUS_COUNTERS}
        increments = {name: Signal(name=f"inc_{name}") for name in STATUS_COUNTERS}
        for name, counter in counters.items():
            with m.If(increments[name] & (counter != (1 << COUNTER_BITS) - 1)):
                m.d.sync += counter.eq(counter + 1)
        m.d.comb += [
            increments["dropped_bytes"].eq(parser.dropped),
            increments["uart_errors"].eq(uart_rx.frame_error | uart_rx.overrun),
            increments["lost_requests"].eq(parser.lost),
        ]
        last_class = Signal(8)
        selftest_state = Signal(2, init=SELFTEST_NEVER)
        selftest_index = Signal(range(count + 1))
        selftest_passed = Signal(range(count + 1))
        selftest_got = [Signal(8, name=f"selftest_class{k}") for k in range(count)]
        expected_class = Signal(8)
        with m.Switch(selftest_index):
            for k, value in enumerate(self.selftest_classes):
                with m.Case(k):
                    m.d.comb += expected_class.eq(value)
        answer_wanted = Signal()

        # ---- Answers: the payload of each kind as a list of byte expressions.
        logit_bytes = info.logit_bytes
        wide_logits = [Signal(signed(8 * logit_bytes), name=f"wide_logit{k}") for k in range(info.classes)]
        m.d.comb += [wide.eq(logit) for wide, logit in zip(wide_logits, result_logits)]
        classify_bytes = [result_class] + _le_bytes(result_cycles, CYCLE_BYTES)
        for wide in wide_logits:
            classify_bytes += _le_bytes(wide, logit_bytes)
        status_bytes = []
        for name in STATUS_COUNTERS:
            status_bytes += _le_bytes(counters[name], 2)
        status_bytes += [last_class, Cat(selftest_state, Const(0, 6))]
        version_values = {
            "protocol": PROTOCOL_VERSION, "input_size": size, "classes": info.classes,
            "logit_bytes": logit_bytes, "time_steps": bundle.time_steps, "lanes": self.lanes,
            "layers": len(bundle.layers), "selftest_images": count, "bundle_id": self.bundle_id,
            "clock_hz": self.clock_hz, "baud": self.baud,
        }
        version_bytes = []
        for name, width in VERSION_FIELDS:
            version_bytes += [Const(b, 8) for b in int(version_values[name]).to_bytes(width, "little")]
        selftest_bytes = [Const(count, 8), selftest_passed] + selftest_got
        error_code = Signal(8)
        error_bytes = [error_code, request.type]

        answer_kind = Signal(8)
        payload = answerer.answer.payload
        m.d.comb += [payload.seq.eq(request.seq), payload.type.eq(answer_kind)]
        with m.Switch(answer_kind):
            for kind, byte_list in ((CLASSIFY | ANSWER_FLAG, classify_bytes),
                                    (STATUS | ANSWER_FLAG, status_bytes),
                                    (VERSION | ANSWER_FLAG, version_bytes),
                                    (SELFTEST | ANSWER_FLAG, selftest_bytes),
                                    (ERROR, error_bytes)):
                with m.Case(kind):
                    m.d.comb += payload.length.eq(len(byte_list))
                    m.d.comb += [payload.payload[k].eq(byte) for k, byte in enumerate(byte_list)]

        # ---- Executor.
        def start_selftest_image(first: bool):
            m.d.comb += feed_start.eq(1)
            m.d.sync += [feed_from_rom.eq(1), feed_base.eq(0 if first else feed_base + size)]

        with m.FSM(init="SELFTEST_START" if self.selftest_at_start else "IDLE"):
            with m.State("IDLE"):
                with m.If(requests.r_rdy):
                    m.d.comb += requests.r_en.eq(1)
                    incoming = request_layout()(requests.r_data)
                    m.d.sync += request.eq(requests.r_data)
                    with m.If(incoming.error != 0):
                        m.d.sync += [answer_kind.eq(ERROR), error_code.eq(incoming.error)]
                        with m.Switch(incoming.error):
                            with m.Case(ERR_BAD_CRC):
                                m.d.comb += increments["bad_crc"].eq(1)
                            with m.Case(ERR_BAD_TYPE, ERR_BAD_LENGTH):
                                m.d.comb += increments["bad_header"].eq(1)
                            with m.Case(ERR_TIMEOUT):
                                m.d.comb += increments["timeouts"].eq(1)
                            with m.Case(ERR_BUSY):
                                m.d.comb += increments["busy"].eq(1)
                        m.next = "SEND"
                    with m.Else():
                        m.d.comb += increments["frames_ok"].eq(1)
                        m.d.sync += answer_kind.eq(incoming.type | ANSWER_FLAG)
                        with m.Switch(incoming.type):
                            with m.Case(CLASSIFY):
                                m.d.comb += feed_start.eq(1)
                                m.d.sync += feed_from_rom.eq(0)
                                m.next = "CLASSIFY"
                            with m.Case(SELFTEST):
                                m.d.sync += answer_wanted.eq(1)
                                m.next = "SELFTEST_START"
                            with m.Default():
                                m.next = "SEND"
            with m.State("CLASSIFY"):
                m.d.comb += take_result.eq(1)
                with m.If(got_result):
                    m.d.sync += last_class.eq(core.result.payload.cls)
                    m.next = "SEND"
            with m.State("SELFTEST_START"):
                m.d.sync += [selftest_index.eq(0), selftest_passed.eq(0)]
                start_selftest_image(first=True)
                m.next = "SELFTEST_RUN"
            with m.State("SELFTEST_RUN"):
                m.d.comb += take_result.eq(1)
                with m.If(got_result):
                    got_class = core.result.payload.cls
                    with m.Switch(selftest_index):
                        for k in range(count):
                            with m.Case(k):
                                m.d.sync += selftest_got[k].eq(got_class)
                    matched = got_class == expected_class
                    passed_now = selftest_passed + matched
                    m.d.sync += [selftest_passed.eq(passed_now), selftest_index.eq(selftest_index + 1),
                                 last_class.eq(got_class)]
                    with m.If(selftest_index == count - 1):
                        m.d.sync += selftest_state.eq(Mux(passed_now == count, SELFTEST_PASSED,
                                                          SELFTEST_FAILED))
                        with m.If(answer_wanted):
                            m.next = "SEND"
                        with m.Else():
                            m.next = "IDLE"
                    with m.Else():
                        start_selftest_image(first=False)
            with m.State("SEND"):
                m.d.comb += answerer.answer.valid.eq(1)
                with m.If(answerer.answer.ready):
                    m.d.sync += answer_wanted.eq(0)
                    m.next = "IDLE"

        # ---- LEDs: last class, self-test passed / failed, heartbeat.
        class_bits = bits_for(info.classes - 1)
        lamps = [last_class[k] for k in range(min(class_bits, self.led_count))]
        lamps += [selftest_state == SELFTEST_PASSED, selftest_state == SELFTEST_FAILED]
        heartbeat = Signal(max(1, (self.clock_hz // 2).bit_length()))
        m.d.sync += heartbeat.eq(heartbeat + 1)
        lamps.append(heartbeat[-1])
        m.d.comb += self.leds.eq(Cat(*lamps[:self.led_count]))
        return m

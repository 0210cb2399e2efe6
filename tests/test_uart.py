"""UART transmitter and receiver (ttfs.hw.board.uart) in amaranth.sim: exact bit timing, glitches, errors."""

from __future__ import annotations

import random

import pytest
from amaranth import Module
from amaranth.sim import Simulator
from streams import StreamSink, StreamSource, run_testbench, run_until
from ttfs.hw.board.uart import UARTRx, UARTTx, uart_divisor
from ttfs.hw.errors import HardwareError


def frame_bits(byte: int) -> list[int]:
    """8N1 line levels of one byte: start, data LSB first, stop."""
    return [0] + [(byte >> k) & 1 for k in range(8)] + [1]


def run(dut, *testbenches):
    """Simulate until every testbench has returned."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("clock_hz, baud, divisor", [
    (100e6, 3_000_000, 33),
    (100e6, 1_000_000, 100),
    (12e6, 3_000_000, 4),
    (25e6, 1_000_000, 25),
    (48e6, 115_200, 417),
])
def test_divisor_accepts_close_rates(clock_hz, baud, divisor):
    assert uart_divisor(clock_hz, baud) == divisor


@pytest.mark.parametrize("clock_hz, baud, message", [
    (25e6, 3_000_000, "off"),         # divisor 8 gives 3.125 Mbaud, 4.2 % off
    (12e6, 4_000_000, "too fast"),    # 3 cycles per bit
    (100e6, 0, "not positive"),
])
def test_divisor_refuses_bad_rates(clock_hz, baud, message):
    with pytest.raises(HardwareError, match=message):
        uart_divisor(clock_hz, baud)


@pytest.mark.parametrize("divisor", [3, 0, 4.5, True])
def test_components_refuse_bad_divisors(divisor):
    with pytest.raises(HardwareError, match="divisor"):
        UARTTx(divisor)
    with pytest.raises(HardwareError, match="divisor"):
        UARTRx(divisor)


@pytest.mark.parametrize("divisor", [4, 7])
def test_tx_waveform_is_exact(divisor):
    """Every bit lasts exactly ``divisor`` cycles; bytes follow back to back or after gaps."""
    rng = random.Random(divisor)
    payload = [rng.randrange(256) for _ in range(12)] + [0x00, 0xFF, 0xA5]
    dut = UARTTx(divisor)
    levels = []
    done = []

    async def drive(ctx):
        for byte in payload:
            if rng.random() < 0.3:
                await ctx.tick().repeat(rng.randrange(1, 3 * divisor))
            ctx.set(dut.data.payload, byte)
            ctx.set(dut.data.valid, 1)
            await ctx.tick().until(dut.data.ready)
            ctx.set(dut.data.valid, 0)
        await ctx.tick().repeat(12 * divisor)
        done.append(True)

    async def watch(ctx):
        while not done:
            levels.append(ctx.get(dut.tx))
            await ctx.tick()

    run(dut, drive, watch)
    # Decode the sampled line: every start bit must be followed by exact bit periods.
    decoded, position = [], 0
    while position < len(levels):
        if levels[position] == 1:
            position += 1
            continue
        bits = levels[position:position + 10 * divisor]
        assert len(bits) == 10 * divisor, "a frame was cut short"
        periods = [bits[k * divisor:(k + 1) * divisor] for k in range(10)]
        for period in periods:
            assert len(set(period)) == 1, f"a bit changed inside its period: {period}"
        values = [period[0] for period in periods]
        assert values[0] == 0 and values[9] == 1
        decoded.append(sum(bit << k for k, bit in enumerate(values[1:9])))
        position += 10 * divisor
    assert decoded == payload


async def _line(ctx, rx, levels_and_lengths):
    for level, cycles in levels_and_lengths:
        ctx.set(rx, level)
        await ctx.tick().repeat(cycles)


def _byte_waveform(byte: int, bit_cycles: float, phase: float = 0.0, stop: int = 1):
    """(level, cycles) pieces for one byte whose bit period is ``bit_cycles`` (may be fractional)."""
    bits = frame_bits(byte)
    bits[-1] = stop
    pieces, elapsed = [], phase
    for bit in bits:
        start = round(elapsed)
        elapsed += bit_cycles
        pieces.append((bit, round(elapsed) - start))
    return pieces


@pytest.mark.parametrize("divisor, skew", [(4, 0.0), (5, 0.03), (10, -0.04), (12, 0.04)])
def test_rx_receives_with_clock_skew_and_gaps(divisor, skew):
    """Bytes sent a few per cent fast or slow, with idle gaps, arrive intact and in order."""
    rng = random.Random(divisor * 100 + int(skew * 1000))
    payload = [rng.randrange(256) for _ in range(10)] + [0x00, 0xFF, 0x55, 0xA5]
    dut = UARTRx(divisor)
    received, errors = [], []

    async def drive(ctx):
        for byte in payload:
            gap = rng.choice([0, 0, 1, divisor, 3 * divisor])
            await _line(ctx, dut.rx, [(1, gap)] if gap else [])
            await _line(ctx, dut.rx, _byte_waveform(byte, divisor * (1 + skew), rng.random()))
        await _line(ctx, dut.rx, [(1, 4 * divisor)])
        received.append(None)

    async def take(ctx):
        ctx.set(dut.data.ready, 1)
        while not received or received[-1] is not None:
            await ctx.tick()
            if ctx.get(dut.data.valid):
                received.append(ctx.get(dut.data.payload))
            if ctx.get(dut.frame_error) or ctx.get(dut.overrun):
                errors.append(True)

    run(dut, drive, take)
    assert received[:-1] == payload
    assert not errors


def test_rx_ignores_glitches_and_recovers_from_framing_errors():
    divisor = 8
    dut = UARTRx(divisor)
    received, frame_errors = [], []
    finished = []

    async def drive(ctx):
        await _line(ctx, dut.rx, [(1, 20), (0, 2), (1, 20)])           # a 2-cycle glitch
        await _line(ctx, dut.rx, _byte_waveform(0x3C, divisor))
        await _line(ctx, dut.rx, _byte_waveform(0x81, divisor, stop=0))  # framing error ...
        await _line(ctx, dut.rx, [(0, 5 * divisor), (1, 3 * divisor)])  # ... and a break
        await _line(ctx, dut.rx, _byte_waveform(0xC3, divisor))
        await _line(ctx, dut.rx, [(1, 4 * divisor)])
        finished.append(True)

    async def take(ctx):
        ctx.set(dut.data.ready, 1)
        while not finished:
            await ctx.tick()
            if ctx.get(dut.data.valid):
                received.append(ctx.get(dut.data.payload))
            if ctx.get(dut.frame_error):
                frame_errors.append(True)

    run(dut, drive, take)
    assert received == [0x3C, 0xC3]
    assert len(frame_errors) == 1


def test_rx_overrun_keeps_the_first_byte():
    """With nobody taking bytes, the second byte is dropped (overrun) and the first stays."""
    divisor = 4
    dut = UARTRx(divisor)
    overruns, held = [], []

    async def drive(ctx):
        for byte in (0x11, 0x22):
            await _line(ctx, dut.rx, _byte_waveform(byte, divisor) + [(1, divisor)])
        held.append((ctx.get(dut.data.valid), ctx.get(dut.data.payload)))

    async def watch(ctx):
        while not held:
            await ctx.tick()
            if ctx.get(dut.overrun):
                overruns.append(True)

    run(dut, drive, watch)
    assert overruns == [True]
    assert held == [(1, 0x11)]


@pytest.mark.parametrize("divisor", [4, 6])
def test_loopback_under_back_pressure(divisor):
    """Tx into Rx: every byte arrives once and in order while the consumer stalls at random."""
    rng = random.Random(divisor)
    payload = [rng.randrange(256) for _ in range(16)]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    source = StreamSource(tx.data, payload)
    # A byte takes 10 * divisor cycles, so stalls of a few cycles never overrun.
    sink = StreamSink(rx.data, rng=rng, ready_probability=0.5)
    errors = []

    class ErrorWatch:
        """Notes every cycle with a framing error or an overrun."""

        def drive(self, ctx, cycle):
            pass

        def sample(self, ctx, cycle):
            if ctx.get(rx.frame_error) or ctx.get(rx.overrun):
                errors.append(cycle)

    async def testbench(ctx, _):
        await run_until(ctx, [source, sink, ErrorWatch()], lambda: len(sink.received) == len(payload))

    run_testbench(m, testbench)
    received = sink.beats
    assert received == payload
    assert not errors

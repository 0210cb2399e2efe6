"""UART receiver and transmitter (8 data bits, no parity, 1 stop bit) with stream interfaces.

Both run from the system clock with a fixed *divisor* (clock cycles per bit),
chosen by :func:`uart_divisor` from the clock frequency and the baud rate.
The receiver samples each bit in its middle, counted from the falling edge
of the start bit, so it needs no oversampling clock; a start bit that is gone
at its middle is a glitch and ignored, a stop bit that reads 0 is a framing
error (the byte is dropped and the receiver waits for the line to go idle).
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out
from ttfs.hw.errors import HardwareError
from ttfs.hw.unused import mark_unused

# Sampling in the middle of a bit needs a few cycles per bit.
MIN_DIVISOR = 4
# Each side may be off by this much; two sides together stay well inside the
# half-bit margin an 8N1 receiver has over 10 bits.
MAX_BAUD_ERROR = 0.02


def uart_divisor(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; refuses rates the clock cannot make."""
    if baud <= 0:
        raise HardwareError(f"baud: {baud} is not positive")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise HardwareError(f"baud: {baud} is too fast for a {clock_hz / 1e6:g} MHz clock "
                            f"(needs at least {MIN_DIVISOR} cycles per bit)")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise HardwareError(f"baud: {baud} is {100 * error:.1f}% off at {clock_hz / 1e6:g} MHz "
                            f"(divisor {divisor}); choose a rate within {100 * MAX_BAUD_ERROR:g}%")
    return divisor


def _check_divisor(component, divisor: int) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < MIN_DIVISOR:
        mark_unused(component)
        raise HardwareError(f"divisor: {divisor!r} is not an integer >= {MIN_DIVISOR}")
    return divisor


class UARTTx(wiring.Component):
    """Bytes from the ``data`` stream out on ``tx``, one 10-bit frame each, back to back.

    Ports: ``data`` In(stream of 8 bits); ``tx`` Out(1), idle high.
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        # Data bits then the stop bit, shifted out LSB first after the start bit.
        shift = Signal(9)
        bits_left = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += self.data.ready.eq(bits_left == 0)
        with m.If(bits_left == 0):
            with m.If(self.data.valid):
                m.d.sync += [
                    self.tx.eq(0),
                    shift.eq(Cat(self.data.payload, 1)),
                    bits_left.eq(10),
                    timer.eq(self.divisor - 1),
                ]
        with m.Elif(timer == 0):
            m.d.sync += [timer.eq(self.divisor - 1), bits_left.eq(bits_left - 1)]
            # The last period (stop bit) ends with the line already high.
            with m.If(bits_left != 1):
                m.d.sync += [self.tx.eq(shift[0]), shift.eq(shift >> 1)]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """Bytes received on ``rx`` to the ``data`` stream.

    Ports: ``rx`` In(1) (asynchronous, synchronised here); ``data`` Out(stream
    of 8 bits), one beat per byte, held until taken; ``frame_error`` and
    ``overrun`` Out(1), one-cycle pulses: a stop bit read 0 (byte dropped),
    or a byte arrived while the previous one was still not taken (the new
    one is dropped).
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__({
            "rx": In(1, init=1),
            "data": Out(stream.Signature(8)),
            "frame_error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shift = Signal(8)

        with m.If(self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        m.d.sync += [self.frame_error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # The synchroniser delays every sample alike, so counting
                    # from the delayed edge still lands in the middle of bits.
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    with m.If(line):
                        m.next = "IDLE"  # a glitch, not a start bit
                    with m.Else():
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), shift.eq(Cat(shift[1:], line)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        with m.If(self.data.valid & ~self.data.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.data.valid.eq(1), self.data.payload.eq(shift)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):
                # Wait for the line to be idle before hunting for a start bit.
                with m.If(line):
                    m.next = "IDLE"
        return m

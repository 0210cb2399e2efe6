"""The boards the toolkit targets: one table for the board builds and for the export's fit report.

Each entry holds what both sides need: the FPGA (family, device, LUT, FF,
block-RAM and DSP budgets), the clock, the UART rate, the LEDs and the default
bundle for ``ttfs bitstream`` (ttfs.hw.board.bitstream), and the block
memories the export's report checks the ROMs against (ttfs.sw.export).  It is
plain data: the amaranth-boards platform is named by module and class, and
imported only by :meth:`Board.platform`, which the hardware layer calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttfs.contract.errors import TTFSError


class BoardError(TTFSError):
    """A board name the table does not hold."""


@dataclass(frozen=True)
class BlockMemory:
    """``count`` on-chip memory blocks of ``bits`` bits each, called ``kind`` in reports (e.g. BRAM36)."""

    kind: str
    count: int
    bits: int


@dataclass(frozen=True)
class Board:
    """One supported board.

    ``clock_hz`` is the board's oscillator; ``pll_clock_hz``, when set, the
    clock an on-chip PLL makes from it for the circuit (:attr:`system_clock_hz`).
    ``budget``: the device's LUT, FF, block RAM and DSP counts, in the units
    ttfs.hw.board.bitstream reports (Xilinx: LUT6, FF, 36-kbit BRAM tiles,
    DSP48E1; ECP5: LUT4, FF, DP16KD (18 kbit), MULT18X18D; iCE40: logic
    cells, logic cells, 4-kbit EBR, SB_MAC16).  ``label`` is the short name
    the export's report uses; ``bram_kind`` and ``bram_bits`` name one block
    of ``budget["bram"]`` and give its size (Xilinx 36 Kbit blocks count their
    parity bits, usable with 9/18/36-bit words); ``overflow_memory`` is a
    second, larger memory the largest ROMs may move to when block RAM does not
    suffice (the iCE40UP5K's SPRAM: RAM, filled at start-up).
    """

    name: str
    label: str
    description: str
    platform_module: str
    platform_class: str
    family: str
    device: str
    clock_hz: int
    baud: int
    budget: dict
    bram_kind: str
    bram_bits: int
    overflow_memory: BlockMemory | None = None
    leds: tuple = ()          # (resource, number) or (resource, number, line) per LED, lowest first
    default_bundle: str = "mnist-fc2"
    default_lanes: int = 16
    extra_resources: str | None = None
    # The core's clock when a PLL makes it from ``clock_hz`` (ECP5 only); None: the board clock.
    pll_clock_hz: int | None = None

    @property
    def system_clock_hz(self) -> int:
        """The clock the circuit (core, UART, timeouts) runs at."""
        return self.pll_clock_hz or self.clock_hz

    @property
    def memories(self) -> tuple[BlockMemory, ...]:
        """The block RAM, then the overflow memory if the device has one."""
        block_ram = BlockMemory(self.bram_kind, self.budget["bram"], self.bram_bits)
        return (block_ram,) if self.overflow_memory is None else (block_ram, self.overflow_memory)


# Class bits on LD4-LD7, then pass (LD0 green), fail (LD0 red), heartbeat (LD1 blue).
ARTY_LEDS = (("led", 0), ("led", 1), ("led", 2), ("led", 3),
             ("rgb_led", 0, "g"), ("rgb_led", 0, "r"), ("rgb_led", 1, "b"))

KBIT = 1024

BOARDS = {
    "arty": Board(
        name="arty", label="Arty A7-35T", description="Digilent Arty A7-35T (XC7A35T)",
        platform_module="amaranth_boards.arty_a7", platform_class="ArtyA7_35Platform",
        family="xilinx7", device="xc7a35ticsg324-1L", clock_hz=100_000_000, baud=3_000_000,
        budget={"lut": 20_800, "ff": 41_600, "bram": 50, "dsp": 90}, bram_kind="BRAM36", bram_bits=36 * KBIT,
        leds=ARTY_LEDS),
    "arty-a7-100": Board(
        name="arty-a7-100", label="Arty A7-100T", description="Digilent Arty A7-100T (XC7A100T)",
        platform_module="amaranth_boards.arty_a7", platform_class="ArtyA7_100Platform",
        family="xilinx7", device="xc7a100ticsg324-1L", clock_hz=100_000_000, baud=3_000_000,
        budget={"lut": 63_400, "ff": 126_800, "bram": 135, "dsp": 240}, bram_kind="BRAM36", bram_bits=36 * KBIT,
        leds=ARTY_LEDS),
    "ulx3s": Board(
        name="ulx3s", label="ULX3S ECP5-85F", description="Radiona ULX3S with ECP5 LFE5U-85F",
        platform_module="amaranth_boards.ulx3s", platform_class="ULX3S_85F_Platform",
        family="ecp5", device="LFE5U-85F-6BG381C", clock_hz=25_000_000, baud=1_000_000,
        pll_clock_hz=100_000_000,  # EHXPLLL: 25 MHz x 4; 1 Mbaud is divisor 100, exact
        budget={"lut": 83_640, "ff": 83_640, "bram": 208, "dsp": 156}, bram_kind="EBR18", bram_bits=18 * KBIT,
        leds=tuple(("led", k) for k in range(8))),
    "icebreaker": Board(
        name="icebreaker", label="iCEBreaker iCE40UP5K",
        description="1BitSquared iCEBreaker (iCE40UP5K) with its break-off PMOD",
        platform_module="amaranth_boards.icebreaker", platform_class="ICEBreakerPlatform",
        family="ice40", device="iCE40UP5K-SG48", clock_hz=12_000_000, baud=1_000_000,
        budget={"lut": 5_280, "ff": 5_280, "bram": 30, "dsp": 8}, bram_kind="EBR4", bram_bits=4 * KBIT,
        overflow_memory=BlockMemory("SPRAM256", 4, 256 * KBIT),
        # Class bits on the break-off PMOD's green LEDs, then pass (green), fail (red), heartbeat.
        leds=(("led_g", 1), ("led_g", 2), ("led_g", 3), ("led_g", 4), ("led_g", 0), ("led_r", 0),
              ("led_r", 1)),
        # 5,280 logic cells and 120 kbit of block RAM: MNIST networks do not fit, nor does
        # edge-deep (5,789 cells at one lane); edge-t2 (1x4x4 -> 8 -> 4, T = 2) does.
        default_bundle="edge-t2", default_lanes=1, extra_resources="break_off_pmod"),
}


def get_board(name: str) -> Board:
    """The board called ``name`` (one clear error naming the choices otherwise)."""
    try:
        return BOARDS[name]
    except KeyError:
        raise BoardError(f"board: {name!r} is not one of {', '.join(BOARDS)}") from None

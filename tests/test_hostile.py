"""Hostile input (issue 13): every attack ends in exit status 0 with correct output, or in exactly
one line on stderr and exit status 2; never a traceback, never a file written outside the output,
never an input changed, never unbounded memory or time.

The first half reproduces, one test each, the failures the issue lists; the second half is a
property-based (hypothesis) suite that mutates bundles, input files, run directories, options and
the host link's byte stream.  It runs a fixed, small number of derandomised examples in `make test`;
`make fuzz` sets TTFS_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ttfs.cli.main import main
from ttfs.cli.parser import UsageError, build_parser
from ttfs.contract import paths
from ttfs.contract.bundle import BundleError, load_bundle, save_bundle
from ttfs.contract.jsonfile import MAX_JSON_DEPTH
from ttfs.contract.wire import (
    ANSWER_FLAG,
    CLASSIFY,
    CRC_BYTES,
    HEADER_BYTES,
    START,
    STATUS,
    Frame,
    FrameDecoder,
    LinkInfo,
    answer_payload_limits,
    encode_frame,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "fixtures" / "bundles"
#: Peak memory allowed for any command on an input file under 10 MB (resident in a subprocess,
#: allocated as tracemalloc counts it in process).
MEMORY_LIMIT_BYTES = 1 << 30
EXAMPLES = int(os.environ.get("TTFS_FUZZ_EXAMPLES", "0")) or None


def fuzz_settings(examples: int):
    """``examples`` derandomised cases in `make test`; TTFS_FUZZ_EXAMPLES of them under `make fuzz`."""
    return settings(max_examples=EXAMPLES or examples, derandomize=EXAMPLES is None, deadline=None,
                    database=None, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- helpers


def tree_state(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symbolic links as their targets) with a digest of its bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "link:" + os.readlink(path)
        elif path.is_file():
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[key] = "dir"
    return state


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    """(status, stdout, stderr) of ``ttfs argv`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def assert_clean_refusal(status: int, err: str, mentions: str = "") -> None:
    """Exit status 2 and exactly one line on stderr, naming ``mentions``, no traceback."""
    assert status == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert mentions in err, err


def assert_ok_or_refused(status: int, err: str) -> None:
    """The standard for any input: success, or one clean line with exit status 2."""
    assert "Traceback" not in err
    if status != 0:
        assert_clean_refusal(status, err)


# The child reports its own peak: VmHWM of its address space after exec.  The
# rusage that wait4 returns would not do: Linux carries the forking pytest
# worker's resident size (torch and all) over into the child's ru_maxrss.
MEASURED_CHILD = """
import sys
from ttfs.cli.main import main
try:
    status = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status_file:
        peak = next(line.split()[1] for line in status_file if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as peak_file:
        peak_file.write(peak)
sys.exit(status)
"""


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str, int]:
    """(status, stderr, peak resident bytes) of ``ttfs argv`` in a child process."""
    stderr_path, peak_path = cwd / ".stderr", cwd / ".peak"
    with open(stderr_path, "wb") as stderr, open(os.devnull, "wb") as stdout:
        child = subprocess.Popen([sys.executable, "-c", MEASURED_CHILD, str(peak_path), *argv], cwd=cwd,
                                 stdout=stdout, stderr=stderr)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            pytest.fail(f"ttfs {' '.join(argv)} ran over {timeout} s")
    err = stderr_path.read_text()
    stderr_path.unlink()
    assert peak_path.exists(), f"ttfs {' '.join(argv)} died before reporting its memory: {err}"
    peak = int(peak_path.read_text()) * 1024
    peak_path.unlink()
    return child.returncode, err, peak


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the small trained fixture (784-32-10)."""
    return Path(shutil.copytree(BUNDLES / "mnist-small", tmp_path / "bundle"))


def rename_layer(bundle_dir: Path, name: str) -> None:
    document = json.loads((bundle_dir / "network.json").read_text())
    document["layers"][0]["name"] = name
    (bundle_dir / "network.json").write_text(json.dumps(document))


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """An .npy header (magic included) declaring ``shape`` and ``dtype``, without data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


def zip_bomb(path: Path, members: dict[str, tuple[bytes, int]]) -> None:
    """An .npz whose members are a header then ``count`` zero bytes, deflated (tiny on disk)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, (header, count) in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                member.write(header)
                for _ in range(count // len(chunk)):
                    member.write(chunk)
                member.write(bytes(count % len(chunk)))


# ---------------------------------------------------------------- the failures, one test each


def test_traversal_layer_name_is_refused_and_nothing_is_written_outside(bundle, tmp_path):
    rename_layer(bundle, "../../somewhere/pwn")
    before = tree_state(tmp_path)
    for argv in (["hw", "verilog", str(bundle), "--lanes", "4", "--out", str(tmp_path / "out")],
                 ["golden", str(bundle), "--images", "2"]):
        status, _, err = run_in_process(argv)
        assert_clean_refusal(status, err, "not a valid name")
    assert tree_state(tmp_path) == before


def test_layer_name_with_a_slash_is_refused(bundle, tmp_path):
    rename_layer(bundle, "a/b")
    status, _, err = run_in_process(["hw", "verilog", str(bundle), "--lanes", "4", "--out", str(tmp_path / "out")])
    assert_clean_refusal(status, err, "not a valid name")
    assert not (tmp_path / "out").exists()


def test_files_from_names_stay_inside_their_directory(tmp_path):
    assert paths.inside(tmp_path, "fc1.weight.hex") == tmp_path / "fc1.weight.hex"
    for name in ("../pwn.hex", "/etc/pwn", "a/../../b", ".."):
        with pytest.raises(paths.OutputPathError, match="outside"):
            paths.inside(tmp_path, name)


def test_golden_json_onto_its_own_bundle_is_refused(bundle, tmp_path):
    images = tmp_path / "in.npz"
    np.savez(images, images=np.zeros((2, 28, 28), np.uint8))
    before = tree_state(tmp_path)
    status, _, err = run_in_process(["golden", str(bundle), "--input", str(images),
                                     "--json", str(bundle / "network.json")])
    assert_clean_refusal(status, err, "input")
    assert tree_state(tmp_path) == before
    load_bundle(bundle)


def test_golden_json_onto_its_input_file_is_refused(bundle, tmp_path):
    images = tmp_path / "in.npz"
    np.savez(images, images=np.zeros((2, 28, 28), np.uint8))
    before = images.read_bytes()
    status, _, err = run_in_process(["golden", str(bundle), "--input", str(images), "--json", str(images)])
    assert_clean_refusal(status, err, "input")
    assert images.read_bytes() == before


#: The tests that train share one worker, so the run is trained once.
uses_run = pytest.mark.xdist_group("hostile-run")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 784-10-10 run trained for one epoch (a few seconds)."""
    from ttfs.sw import training

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    training.train_run({"widths": [10], "epochs": 1, "batch_size": 64, "seed": 1, "out": str(run_dir)},
                       progress=False)
    return run_dir


@uses_run
def test_train_out_onto_a_bundle_is_refused_before_training(bundle):
    before = tree_state(bundle)
    status, _, err = run_in_process(["train", "--widths", "10", "--epochs", "1", "--out", str(bundle), "--quiet"])
    assert_clean_refusal(status, err, "not a run directory")
    assert tree_state(bundle) == before


@uses_run
def test_export_out_onto_its_run_or_a_run_is_refused(tiny_run, tmp_path):
    before = tree_state(tiny_run)
    for out in (tiny_run, tiny_run / "bundle"):
        status, _, err = run_in_process(["export", str(tiny_run), "--weight-bits", "4", "--time-steps", "8",
                                         "--out", str(out), "--quiet"])
        assert_clean_refusal(status, err, "--out")
    assert tree_state(tiny_run) == before


@uses_run
def test_sweep_and_eval_outputs_onto_the_run_are_refused(tiny_run):
    before = tree_state(tiny_run)
    for argv in (["sweep", str(tiny_run), "--json", str(tiny_run / "config.json"), "--quiet"],
                 ["eval", str(tiny_run), "--json", str(tiny_run / "checkpoint.pt")]):
        status, _, err = run_in_process(argv)
        assert_clean_refusal(status, err, "input")
    assert tree_state(tiny_run) == before


def test_inflating_params_npz_is_refused_in_bounded_memory_and_time(bundle, tmp_path):
    # 300 MB of zeros deflate to ~300 kB: the shape is refused from the header, the data never read.
    document = json.loads((bundle / "network.json").read_text())
    layer = document["layers"][0]
    zip_bomb(bundle / "params.npz", {"input.lut": (npy_header((1, 256), "<i8"), 256 * 8),
                                     layer["weight"]: (npy_header((300_000, 1000), "|u1"), 300_000_000)})
    assert (bundle / "params.npz").stat().st_size < 10 << 20
    start = time.monotonic()
    status, err, peak = run_subprocess(["golden", str(bundle), "--images", "2"], tmp_path)
    assert_clean_refusal(status, err, "params.npz")
    assert peak < MEMORY_LIMIT_BYTES and time.monotonic() - start < 60


def test_network_json_declaring_huge_layers_is_refused_before_params(bundle, tmp_path):
    document = json.loads((bundle / "network.json").read_text())
    document["layers"][0]["outputs"] = document["layers"][1]["inputs"] = 10**7
    (bundle / "network.json").write_text(json.dumps(document))
    status, err, peak = run_subprocess(["golden", str(bundle), "--images", "2"], tmp_path)
    assert_clean_refusal(status, err, "parameters")
    assert peak < MEMORY_LIMIT_BYTES


@pytest.mark.parametrize("shape, dtype", [((10**6, 10**6), "<i8"), ((2**40 * 9 // 784, 28, 28), "|u1")])
def test_input_header_declaring_terabytes_is_refused(bundle, tmp_path, shape, dtype):
    data = tmp_path / "in.npz"
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr("images.npy", npy_header(shape, dtype) + bytes(64))
    status, err, peak = run_subprocess(["golden", str(bundle), "--input", str(data)], tmp_path)
    assert_clean_refusal(status, err, "images")
    assert peak < MEMORY_LIMIT_BYTES


def test_bare_npy_header_declaring_terabytes_is_refused(bundle, tmp_path):
    data = tmp_path / "in.npy"
    data.write_bytes(npy_header((10**6, 10**6), "<i8") + bytes(64))
    status, err, peak = run_subprocess(["golden", str(bundle), "--input", str(data)], tmp_path)
    assert_clean_refusal(status, err, "in.npy")
    assert peak < MEMORY_LIMIT_BYTES


@pytest.mark.parametrize("method", [99, 12])  # an unknown compression method, and bzip2 over plain bytes
def test_input_with_a_corrupt_compression_method_is_one_line(bundle, tmp_path, method):
    # Found by the fuzz run: zipfile raises NotImplementedError for a method it does not know.
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 28, 28), np.uint8))
    data = bytearray(buffer.getvalue())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = data.index(signature) + offset
        data[at:at + 2] = method.to_bytes(2, "little")
    (tmp_path / "in.npz").write_bytes(bytes(data))
    status, _, err = run_in_process(["golden", str(bundle), "--input", str(tmp_path / "in.npz")])
    assert_clean_refusal(status, err, "in.npz")


def test_network_json_linked_to_dev_zero_is_refused(bundle, tmp_path):
    (bundle / "network.json").unlink()
    (bundle / "network.json").symlink_to("/dev/zero")
    status, err, peak = run_subprocess(["golden", str(bundle), "--images", "2"], tmp_path, timeout=60)
    assert_clean_refusal(status, err, "not a regular file")
    assert peak < MEMORY_LIMIT_BYTES


def test_deeply_nested_network_json_is_refused(bundle, tmp_path):
    (bundle / "network.json").write_text("[" * 100_000 + "]" * 100_000)
    for argv in (["golden", str(bundle), "--images", "2"],
                 ["board", "run", "--port", str(tmp_path / "no-port"), "--bundle", str(bundle)]):
        status, _, err = run_in_process(argv)
        assert_clean_refusal(status, err, "nested")
    (bundle / "network.json").write_text("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))
    status, _, err = run_in_process(["golden", str(bundle), "--images", "2"])
    assert_clean_refusal(status, err, "JSON object")


def test_sweep_range_is_bounded_before_the_list_is_built(tmp_path):
    start = time.monotonic()
    status, _, err = run_in_process(["sweep", str(tmp_path / "run"), "--weight-bits", "2..300000000"])
    assert_clean_refusal(status, err, "--weight-bits")
    assert time.monotonic() - start < 1


@pytest.mark.parametrize("argv_of", [
    lambda out, bundle: ["hw", "verilog", str(bundle), "--lanes", "4", "--out", out],
    lambda out, bundle: ["golden", str(bundle), "--images", "2", "--json", out],
    lambda out, bundle: ["sim", "--bundle", str(bundle), "--images", "1", "--out", out],
    lambda out, bundle: ["bitstream", "icebreaker", "--bundle", str(bundle), "--out", out],
    lambda out, bundle: ["export", str(bundle), "--weight-bits", "4", "--time-steps", "8", "--out", out],
    lambda out, bundle: ["train", "--epochs", "1", "--widths", "4", "--out", out],
    lambda out, bundle: ["sweep", str(bundle), "--json", out],
    lambda out, bundle: ["sweep", str(bundle), "--png", out],
    lambda out, bundle: ["eval", str(bundle), "--noise", "0", "--plot", out],
    lambda out, bundle: ["eval", str(bundle), "--json", out],
], ids=["hw-verilog", "golden", "sim", "bitstream", "export", "train", "sweep-json", "sweep-png", "eval-plot",
        "eval-json"])
@pytest.mark.parametrize("place", ["proc", "under-a-file", "dangling-link"])
def test_unwritable_output_is_one_line_before_any_work(argv_of, place, bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    out = {"proc": "/proc/ttfs-out/x", "under-a-file": str(blocker / "x"),
           "dangling-link": str(tmp_path / "link" / "x")}[place]
    before = tree_state(tmp_path)
    start = time.monotonic()
    status, _, err = run_in_process(argv_of(out, bundle))
    assert_clean_refusal(status, err, "cannot write")
    assert time.monotonic() - start < 30
    assert tree_state(tmp_path) == before


def test_output_through_a_symlinked_directory_is_written_there(bundle, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    status, _, err = run_in_process(["golden", str(bundle), "--images", "2", "--json", str(tmp_path / "link" / "r.json")])
    assert status == 0, err
    assert json.loads((tmp_path / "real" / "r.json").read_text())["images"] == 2


def test_save_bundle_swaps_in_one_step_and_recovers_an_interrupted_fallback(bundle, tmp_path, monkeypatch):
    loaded = load_bundle(bundle)
    target = tmp_path / "saved"
    save_bundle(loaded, target)
    first = tree_state(target)
    save_bundle(loaded, target, extra_files={"note.txt": b"second"})
    assert (target / "note.txt").read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")] == []
    # Where the file system cannot exchange, an interruption between the two renames leaves the
    # old bundle beside the target; the next save puts it back before replacing it.
    monkeypatch.setattr(paths, "_rename_exchange", lambda first, second: False)
    renames = []
    real_rename = os.rename

    def interrupted(source, destination):
        renames.append(destination)
        if len(renames) == 2:
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(loaded, target)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not target.exists()
    paths.recover_leftovers(target)
    assert (target / "note.txt").read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")] == []
    save_bundle(loaded, target)
    assert set(tree_state(target)) == set(first)


def test_save_bundle_onto_a_symlink_is_refused_without_debris(bundle, tmp_path):
    loaded = load_bundle(bundle)
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    before = tree_state(tmp_path)
    with pytest.raises(BundleError, match="symbolic link"):
        save_bundle(loaded, link)
    assert tree_state(tmp_path) == before and link.is_symlink()


def test_truncated_build_stamp_is_rebuilt_not_fatal(tmp_path):
    from ttfs.sim.verify.flow import _read_stamp

    stamp = tmp_path / "fingerprint.json"
    stamp.write_text('{"fingerprint": "ab')
    assert _read_stamp(stamp) is None
    stamp.write_text('{"fingerprint": "ab"}')
    assert _read_stamp(stamp) is None
    stamp.write_text('{"fingerprint": "ab", "result_fields": {}, "trace_fields": {}}')
    assert _read_stamp(stamp)["fingerprint"] == "ab"


def test_sim_with_zero_lanes_leaves_nothing(tmp_path):
    status, _, err = run_in_process(["sim", "--lanes", "0", "--images", "1", "--out", str(tmp_path / "out")])
    assert_clean_refusal(status, err, "--lanes")
    assert not (tmp_path / "out").exists()


def test_build_core_refuses_zero_lanes_before_the_lock(tmp_path):
    from ttfs.sim.verify.flow import SimulationError, build_core

    with pytest.raises(SimulationError, match="lanes"):
        build_core(load_bundle(BUNDLES / "edge-t2"), "edge-t2", 0, "icarus", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_garbage_vectors_npz_is_one_line(tmp_path):
    bundle = Path(shutil.copytree(BUNDLES / "edge-t2", tmp_path / "bundle"))
    (bundle / "vectors.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    status, _, err = run_in_process(["sim", "--bundle", str(bundle), "--images", "2", "--out", str(tmp_path / "out")])
    assert_clean_refusal(status, err, "vectors.npz")


@uses_run
def test_garbage_checkpoint_is_one_line(tiny_run, tmp_path):
    import torch

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    # A numpy array inside: weights_only refuses it (nothing is unpickled) and torch explains at length.
    torch.save({"w": np.zeros(3)}, run / "checkpoint.pt")
    status, _, err = run_in_process(["eval", str(run)])
    assert_clean_refusal(status, err, "checkpoint.pt")
    assert "weights_only=False" not in err


def test_make_sim_quotes_an_input_with_a_space():
    dry = subprocess.run(["make", "-n", "sim", "INPUT=a b/x.npz"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.replace("\\\n", " ")
    line = next(line for line in dry.splitlines() if "ttfs sim" in line)
    words = shlex.split(line)
    assert words[words.index("--input") + 1] == "a b/x.npz"


def test_host_decoder_is_fast_on_marker_garbage():
    info = LinkInfo(input_size=784, classes=10, logit_bytes=2)
    frame = encode_frame(3, CLASSIFY | ANSWER_FLAG, bytes(1 + 4 + 20))
    start = time.monotonic()
    decoder = FrameDecoder(payload_limits=answer_payload_limits(info))
    frames = decoder.feed(bytes([START]) * 200_000 + frame)
    # Linear: about a second here on a busy machine; the quadratic decoder took 23 s.
    assert time.monotonic() - start < 10
    assert frames == [Frame(3, CLASSIFY | ANSWER_FLAG, bytes(25))]
    start = time.monotonic()
    # The last garbage marker reads as a CLASSIFY header of length 2: two more bytes release the frame.
    stream = bytes([START]) * 200_000 + encode_frame(1, STATUS) + bytes(2)
    assert FrameDecoder().feed(stream) == [Frame(1, STATUS, b"")]
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------- the property-based suite


def _mutate_json(document, draw):
    """``document`` with one value somewhere replaced, removed or made hostile."""
    hostile = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
        st.text(max_size=20), st.sampled_from(["../../x/pwn", "a/b", "..", "", "x" * 80, "fc1", "\n"]),
        st.lists(st.integers(min_value=-3, max_value=10**9), max_size=4), st.just({}),
    )
    if isinstance(document, dict) and document:
        key = draw(st.sampled_from(sorted(document)))
        action = draw(st.sampled_from(["replace", "delete", "descend"]))
        if action == "delete":
            return {k: v for k, v in document.items() if k != key}
        value = _mutate_json(document[key], draw) if action == "descend" else draw(hostile)
        return {**document, key: value}
    if isinstance(document, list) and document:
        index = draw(st.integers(min_value=0, max_value=len(document) - 1))
        action = draw(st.sampled_from(["replace", "delete", "descend", "duplicate"]))
        if action == "delete":
            return document[:index] + document[index + 1:]
        if action == "duplicate":
            return document + [document[index]]
        value = _mutate_json(document[index], draw) if action == "descend" else draw(hostile)
        return document[:index] + [value] + document[index + 1:]
    return draw(hostile)


def _mutate_bytes(data: bytes, draw) -> bytes:
    """``data`` truncated, with bytes flipped, inserted or replaced by garbage."""
    action = draw(st.sampled_from(["truncate", "flip", "insert", "garbage", "nest"]))
    if action == "truncate":
        return data[:draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))]
    if action == "garbage":
        return draw(st.binary(max_size=512))
    if action == "nest":
        depth = draw(st.integers(min_value=1, max_value=5000))
        return b"[" * depth + data + b"]" * depth
    position = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
    if action == "insert":
        return data[:position] + draw(st.binary(min_size=1, max_size=16)) + data[position:]
    changed = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        changed[draw(st.integers(min_value=0, max_value=len(changed) - 1))] ^= draw(st.integers(1, 255))
    return bytes(changed)


def _check_command(root: Path, inputs: list[Path], out: Path, argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv``; assert the standard, inputs byte-identical and nothing changed outside ``out``."""
    outside = {k: v for k, v in tree_state(root).items() if not (root / k).is_relative_to(out)}
    # In process, the peak is what tracemalloc sees: every Python and numpy allocation.
    tracemalloc.start()
    try:
        status, stdout, err = run_in_process(argv)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT_BYTES, f"{argv}: {peak / 2**20:.0f} MiB allocated at the peak"
    assert_ok_or_refused(status, err)
    after = {k: v for k, v in tree_state(root).items() if not (root / k).is_relative_to(out)}
    assert after == outside, "a file outside the output changed"
    for path in inputs:
        assert path.exists() or path.is_symlink()
    return status, stdout, err


@fuzz_settings(15)
@given(data=st.data())
def test_property_mutated_bundle(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz-bundle")
    bundle = Path(shutil.copytree(BUNDLES / "edge-t2", root / "bundle"))
    target = data.draw(st.sampled_from(["network.json", "network.json-bytes", "params.npz"]))
    if target == "network.json":
        document = json.loads((bundle / "network.json").read_text())
        (bundle / "network.json").write_text(json.dumps(_mutate_json(document, data.draw)))
    else:
        name = target.removesuffix("-bytes")
        (bundle / name).write_bytes(_mutate_bytes((bundle / name).read_bytes(), data.draw))
    out = root / "out"
    command = data.draw(st.sampled_from(["golden", "hw"]))
    argv = (["golden", str(bundle), "--images", "3", "--json", str(out / "r.json")] if command == "golden"
            else ["hw", "verilog", str(bundle), "--lanes", "2", "--out", str(out / "v")])
    status, _, _ = _check_command(root, [bundle], out, argv)
    if status == 0 and command == "golden":
        assert json.loads((out / "r.json").read_text())["images"] >= 1


@fuzz_settings(25)
@given(data=st.data())
def test_property_mutated_input_file(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz-input")
    arrays = {"images": np.arange(3 * 16, dtype=np.uint8).reshape(3, 1, 4, 4), "labels": np.array([0, 1, 1])}
    buffer = io.BytesIO()
    save = np.savez_compressed if data.draw(st.booleans()) else np.savez
    save(buffer, **arrays)
    source = root / "in.npz"
    source.write_bytes(_mutate_bytes(buffer.getvalue(), data.draw) if data.draw(st.booleans()) else buffer.getvalue())
    before = source.read_bytes()
    out = root / "out"
    status, _, _ = _check_command(root, [source], out, ["golden", str(BUNDLES / "edge-t2"), "--input", str(source),
                                                        "--json", str(out / "r.json")])
    assert source.read_bytes() == before
    if status == 0:
        assert json.loads((out / "r.json").read_text())["images"] >= 1


@uses_run
@fuzz_settings(12)
@given(data=st.data())
def test_property_mutated_run_directory(tiny_run, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fuzz-run")
    run = Path(shutil.copytree(tiny_run, root / "run"))
    target = data.draw(st.sampled_from(["config.json", "config.json-bytes", "checkpoint.pt"]))
    if target == "config.json":
        document = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(_mutate_json(document, data.draw)))
    else:
        name = target.removesuffix("-bytes")
        (run / name).write_bytes(_mutate_bytes((run / name).read_bytes(), data.draw))
    before = tree_state(run)
    out = root / "out"
    _check_command(root, [run], out, ["eval", str(run), "--json", str(out / "e.json")])
    assert tree_state(run) == before


NUMERIC_OPTIONS = {
    ("golden", "B"): ["--images"],
    ("sim",): ["--images", "--lanes", "--pixels-per-beat", "--seed", "--stall"],
    ("hw", "verilog", "B", "--out", "O"): ["--lanes", "--pixels-per-beat"],
    ("export", "R", "--out", "O", "--weight-bits", "4", "--time-steps", "8"):
        ["--calibrate", "--qat-epochs", "--qat-batch-size", "--vectors", "--seed", "--qat-lr", "--clip-percentile"],
    ("sweep", "R"): ["--weight-bits", "--time-steps", "--calibrate", "--seed"],
    ("train",): ["--epochs", "--batch-size", "--lr", "--seed", "--noise", "--time-steps", "--weight-bits",
                 "--window-factor", "--lr-decay-steps", "--latency-quantile"],
    ("board", "run", "--port", "P"): ["--baud", "--timeout", "--images"],
    ("bench", "golden"): ["--images"],
}


PARSER = build_parser("test")


@fuzz_settings(100)
@given(command=st.sampled_from(sorted(NUMERIC_OPTIONS)), data=st.data())
def test_property_numeric_options_are_checked_by_the_parser(command, data):
    option = data.draw(st.sampled_from(NUMERIC_OPTIONS[command]))
    value = data.draw(st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str), st.floats().map(str),
        st.sampled_from(["nan", "inf", "-0", "0", "1", "2..300000000", "1e400", "", "0x10", "9" * 400]),
    ))
    try:
        args = PARSER.parse_args([*command, option, value])
    except UsageError as err:
        assert "\n" not in str(err) and str(err)
        return
    parsed = getattr(args, option.lstrip("-").replace("-", "_"))
    for number in parsed if isinstance(parsed, list) else [parsed]:
        assert np.isfinite(number) and 0 <= number < 2**33


def _frames(draw) -> list[Frame]:
    kinds = st.sampled_from([CLASSIFY | ANSWER_FLAG, STATUS | ANSWER_FLAG])
    return draw(st.lists(st.builds(Frame, st.integers(0, 255), kinds, st.binary(max_size=25)).map(
        lambda f: Frame(f.seq, f.kind, f.payload if f.kind == CLASSIFY | ANSWER_FLAG else f.payload[:18])),
        min_size=1, max_size=4))


@fuzz_settings(100)
@given(data=st.data())
def test_property_host_decoder_resynchronises_after_any_garbage(data):
    info = LinkInfo(input_size=16, classes=10, logit_bytes=2)
    limits = answer_payload_limits(info)
    frames = _frames(data.draw)
    stream = bytearray()
    for frame in frames:
        garbage = data.draw(st.binary(max_size=120))
        truncated = encode_frame(frame.seq, frame.kind, frame.payload)[:data.draw(st.integers(0, 8))]
        lying = bytes([START, 0, frame.kind]) + data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
        stream += garbage + data.draw(st.sampled_from([b"", truncated, lying])) + encode_frame(
            frame.seq, frame.kind, frame.payload)
    # A false header in the garbage may hold back the frames after it, by at most this many bytes.
    stream += bytes(HEADER_BYTES + max(limits.values()) + CRC_BYTES)
    decoder = FrameDecoder(payload_limits=limits)
    decoded, position, start = [], 0, time.monotonic()
    while position < len(stream):
        size = data.draw(st.integers(1, 64))
        decoded += decoder.feed(bytes(stream[position:position + size]))
        position += size
    assert time.monotonic() - start < 5
    # Every real frame comes out, in order; garbage may add frames only with a valid CRC.
    found = iter(decoded)
    assert all(any(frame == candidate for candidate in found) for frame in frames)

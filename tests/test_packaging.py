"""The toolkit as a user installs it: the wheel and sdist, installed outside the checkout.

Builds the sdist and, from it, the wheel (what `python -m build` does) from a
copy of the tracked files, checks what the wheel holds, then installs it
twice into fresh virtual environments in a folder outside the checkout and
runs the commands a new user would:

- every extra (at the versions constraints.txt pins): train one epoch, export,
  run the golden model, simulate the exported bundle and the packaged default
  bundle (0 mismatches);
- the base install only (numpy, amaranth): the golden model and `ttfs hw
  verilog` work, `ttfs train` names the extra it needs in one line.

Neither environment can import the checkout: the commands run from another
folder, and `import hw` must fail there (the distribution's only top-level
name is `ttfs`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("packaging")  # one worker builds the wheel once for all three

REPO = Path(__file__).resolve().parent.parent
PACKAGED = [
    "ttfs/fixtures/data/mnist-sample.npz",
    "ttfs/fixtures/data/README.md",
    "ttfs/fixtures/bundles/README.md",
    *(f"ttfs/fixtures/bundles/{name}/{file}" for name in ("mnist-fc2", "mnist-small")
      for file in ("network.json", "params.npz", "report.json", "vectors.npz")),
    "ttfs/fixtures/bundles/edge-t2/network.json",
    "ttfs/sim/verify/tb_core.py",
    "ttfs/sim/verify/tb_board.py",
    "ttfs/cli/main.py",
]


def _run(command: list[str], cwd: Path, env: dict | None = None, check: bool = True,
         timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _source_copy(target: Path) -> Path:
    """The tracked files of the checkout (what a clean clone holds), copied to ``target``."""
    listed = _run(["git", "ls-files", "-z"], REPO).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the packaging test needs git and a git checkout (it builds from the tracked files)")
    work = tmp_path_factory.mktemp("packaging")
    source = _source_copy(work / "source")
    _run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)], work)
    wheels = sorted((work / "dist").glob("*.whl"))
    sdists = sorted((work / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted((work / "dist").iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0], "work": work}


def _environment(path: Path) -> dict:
    """A child environment that sees only the virtual environment at ``path``."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _install(path: Path, requirement: str) -> dict:
    venv.EnvBuilder(with_pip=True).create(path)
    env = _environment(path)
    _run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(REPO / "constraints.txt"),
          requirement], path, env)
    return env


def test_the_wheel_holds_the_data_and_only_the_ttfs_name(distributions):
    with zipfile.ZipFile(distributions["wheel"]) as wheel:
        names = set(wheel.namelist())
    missing = [name for name in PACKAGED if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"ttfs"}
    assert not any(name.startswith("ttfs/__init__") for name in names), "ttfs must stay a namespace package"


def test_installed_wheel_trains_exports_runs_and_simulates_outside_the_checkout(distributions):
    work = distributions["work"]
    env = _install(work / "full", f"{distributions['wheel']}[all]")
    run_dir = work / "elsewhere"
    run_dir.mkdir()
    ttfs = str(work / "full" / "bin" / "ttfs")
    python = str(work / "full" / "bin" / "python")

    assert _run([ttfs, "--version"], run_dir, env).stdout.startswith("ttfs-toolkit ")
    bare = _run([python, "-c", "import hw"], run_dir, env, check=False)
    assert bare.returncode != 0 and "No module named 'hw'" in bare.stderr
    _run([ttfs, "golden", "mnist-fc2", "--images", "100"], run_dir, env)
    _run([ttfs, "train", "--epochs", "1", "--out", "r", "--quiet"], run_dir, env)
    _run([ttfs, "export", "r", "--weight-bits", "5", "--time-steps", "16", "--out", "b", "--quiet"], run_dir, env)
    _run([ttfs, "golden", "b"], run_dir, env)
    _run([ttfs, "sim", "--bundle", "b", "--images", "5", "--out", "sim-b"], run_dir, env)
    _run([ttfs, "sim", "--images", "5", "--out", "sim-default"], run_dir, env)
    report = json.loads((run_dir / "sim-default" / "report.json").read_text())
    assert report["mismatched_images"] == 0 and report["spike_mismatches"] == 0
    assert report["images"] == 5 and report["bundle"].endswith("mnist-fc2")
    assert not (run_dir / "fixtures").exists()


def test_base_install_runs_the_golden_model_and_verilog_without_torch(distributions):
    work = distributions["work"]
    env = _install(work / "base", str(distributions["wheel"]))
    run_dir = work / "base-run"
    run_dir.mkdir()
    ttfs = str(work / "base" / "bin" / "ttfs")
    python = str(work / "base" / "bin" / "python")

    no_torch = _run([python, "-c", "import torch"], run_dir, env, check=False)
    assert no_torch.returncode != 0
    golden = _run([ttfs, "golden", "mnist-fc2", "--images", "200"], run_dir, env)
    assert "accuracy:" in golden.stdout
    _run([ttfs, "hw", "verilog", "mnist-small", "--lanes", "4", "--out", "verilog"], run_dir, env)
    assert (run_dir / "verilog" / "ttfs_core.v").is_file()
    train = _run([ttfs, "train", "--epochs", "1"], run_dir, env, check=False)
    assert train.returncode == 2
    assert train.stderr.count("\n") == 1 and "'train' extra" in train.stderr and "Traceback" not in train.stderr

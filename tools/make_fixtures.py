"""Regenerate the trained bundle fixtures: train from a seed, then export.

    .venv/bin/python tools/make_fixtures.py              # every fixture
    .venv/bin/python tools/make_fixtures.py --only mnist-vgg

For each fixture below, trains a TTFS network on the embedded MNIST sample
(ttfs.sw.training.train_run, spiking mode, fixed seed, modest epochs) into
build/fixture-runs/<name>, then exports it (ttfs.sw.export.export_run: calibration
on 1,000 training images, a few quantisation-aware epochs) into
fixtures/bundles/<name> with ROM images, report.json and vectors.npz.
Everything is seeded and torch runs on one thread, so a rerun with the same
torch build reproduces the same bytes.  The dense fixtures take about two
minutes on 2 cores, the conv fixture mnist-vgg three to five more (measured
on 2 cores shared with other work: 160 to 241 s of training, 21 to 44 s of
export).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ttfs.cli.tool_parsers import make_fixtures_parser

REPO_ROOT = Path(__file__).resolve().parent.parent

#: name -> training settings and export settings.  FC2 is the paper's 784-340-10.
#: The activity penalty (docs/ttfs-training.md) gives the paper's sparse
#: activity (well under 0.3 spikes per hidden neuron), which is what makes the
#: event-driven core fast: its cycles grow with spikes, not neurons.
FIXTURES = {
    "mnist-fc2": {
        "train": {"widths": [340], "epochs": 50, "seed": 0, "activity_penalty": 0.5},
        "export": {"weight_bits": 5, "time_steps": 16, "calibrate": 1000, "qat_epochs": 5, "seed": 0},
    },
    "mnist-small": {
        "train": {"widths": [32], "epochs": 50, "seed": 0, "activity_penalty": 0.5},
        "export": {"weight_bits": 5, "time_steps": 16, "calibrate": 1000, "qat_epochs": 5, "seed": 0},
    },
    # The conv fixture (contract v2): 1x28x28 -> conv 16 (3x3 same) -> pool 2 -> conv 32 -> pool 2 -> 10.
    # A strong activity penalty keeps it sparse (a few % of conv neurons fire) and
    # also regularises: it generalises better from the 4,000 training images.
    "mnist-vgg": {
        "train": {"arch": "vgg", "layers": "16,P,32,P", "epochs": 40, "seed": 0, "activity_penalty": 10.0},
        "export": {"weight_bits": 5, "time_steps": 16, "calibrate": 1000, "qat_epochs": 2, "seed": 0},
    },
}


def make_fixture(name: str, runs_dir: Path, out_dir: Path, progress: bool) -> None:
    """Train and export one fixture; print its export summary."""
    from ttfs.sw import export, training
    from ttfs.sw.quantize import single_thread

    settings = FIXTURES[name]
    run_dir = runs_dir / name
    start = time.perf_counter()
    config = {"dataset": "mnist-sample", "mode": "snn", "out": str(run_dir), **settings["train"]}
    # One thread: float sums in a fixed order, so the training repeats bit for bit
    # whatever the machine's load (MKL otherwise varies its thread count).
    with single_thread():
        training.train_run(config, progress=progress)
    trained = time.perf_counter()
    parameters = dict(settings["export"])
    result = export.export_run(
        run_dir, parameters.pop("weight_bits"), parameters.pop("time_steps"), progress=progress, **parameters
    )
    path = export.write_export(result, out_dir / name)
    print(f"{name}: trained in {trained - start:.0f} s, exported in {time.perf_counter() - trained:.0f} s -> {path}")
    for line in export.summary_lines(result.report):
        print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = make_fixtures_parser(__doc__, sorted(FIXTURES), REPO_ROOT / "build" / "fixture-runs",
                                  REPO_ROOT / "fixtures" / "bundles")
    args = parser.parse_args(argv)
    for name in args.only or list(FIXTURES):
        make_fixture(name, args.runs_dir, args.out_dir, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``ttfs golden`` and ``ttfs bench golden``, run in-process through ttfs.cli.main.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ttfs.cli.main import main
from ttfs.contract.bundle import load_bundle, save_bundle
from ttfs.contract.datasets import load_dataset
from ttfs.sim.golden import run
from ttfs.sim.random_bundle import random_bundle, random_images


def _one_line_error(capsys, field: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ttfs golden: error:")
    assert "Traceback" not in err
    assert field in err
    return err


def test_input_file_with_labels(tmp_path, bundle_dir, small_bundle, rng, capsys):
    images = random_images(rng, small_bundle, 30)
    expected = run(small_bundle, images)
    labels = expected.classes.copy()
    labels[:10] = (labels[:10] + 1) % 3  # exactly 10 wrong
    np.savez(tmp_path / "in.npz", images=images[:, 0], labels=labels)
    report_path = tmp_path / "out" / "report.json"
    status = main(["golden", str(bundle_dir), "--input", str(tmp_path / "in.npz"), "--json", str(report_path)])
    assert status == 0
    report = json.loads(report_path.read_text())
    assert set(report) == {"images", "accuracy", "classes", "spikes_per_neuron"}
    assert report["images"] == 30
    assert report["accuracy"] == pytest.approx(20 / 30)
    assert report["classes"] == expected.classes.tolist()
    assert report["spikes_per_neuron"] == pytest.approx(expected.spikes_per_neuron())
    out = capsys.readouterr().out
    assert "accuracy: 66.67%" in out and "fc1" in out and "input" in out


def test_input_file_without_labels_and_image_limit(tmp_path, bundle_dir, small_bundle, rng):
    images = random_images(rng, small_bundle, 12)
    np.savez(tmp_path / "in.npz", images=images)
    status = main(["golden", str(bundle_dir), "--input", str(tmp_path / "in.npz"),
                   "--images", "5", "--json", str(tmp_path / "r.json")])
    assert status == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accuracy"] is None
    assert report["images"] == 5
    assert report["classes"] == run(small_bundle, images[:5]).classes.tolist()


def test_default_data_is_the_mnist_sample_test_split(tmp_path, rng):
    bundle = random_bundle(rng, sizes=(784, 24, 10), time_steps=8, weight_bits=4, lut="default")
    path = save_bundle(bundle, tmp_path / "mnist-bundle")
    assert main(["golden", str(path), "--images", "40", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    dataset = load_dataset("mnist-sample", split="test")
    expected = run(load_bundle(path), dataset.images[:40])
    assert report["classes"] == expected.classes.tolist()
    assert report["accuracy"] == pytest.approx(float(np.mean(expected.classes == dataset.labels[:40])))


def test_broken_bundle_is_one_line(bundle_dir, capsys):
    document = json.loads((bundle_dir / "network.json").read_text())
    document["layers"][0]["weight_bits"] = 17
    (bundle_dir / "network.json").write_text(json.dumps(document))
    assert main(["golden", str(bundle_dir)]) == 2
    _one_line_error(capsys, "layers[0].weight_bits")


def test_missing_bundle_is_one_line(tmp_path, capsys):
    assert main(["golden", str(tmp_path / "absent")]) == 2
    _one_line_error(capsys, "absent")


def test_missing_input_file_is_one_line(tmp_path, bundle_dir, capsys):
    assert main(["golden", str(bundle_dir), "--input", str(tmp_path / "nope.npz")]) == 2
    _one_line_error(capsys, "nope.npz")


def test_shape_mismatch_is_one_line(bundle_dir, capsys):
    # The 1x4x4 bundle cannot take the 28x28 MNIST sample.
    assert main(["golden", str(bundle_dir), "--images", "3"]) == 2
    err = _one_line_error(capsys, "(3, 1, 28, 28)")
    assert "(N, 1, 4, 4)" in err


def test_bad_image_count_is_one_line(bundle_dir, capsys):
    assert main(["golden", str(bundle_dir), "--images", "0"]) == 2
    _one_line_error(capsys, "--images")


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "golden" in out and "bench" in out


def test_bench_golden_reports_throughput(tmp_path, capsys):
    assert main(["bench", "golden", "--images", "500", "--json", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["network"] == "784-340-10" and report["time_steps"] == 16 and report["weight_bits"] == 5
    assert report["images"] == 500 and report["threads"] == 1
    assert report["images_per_second"] == pytest.approx(500 / report["seconds"])
    assert "images/s" in capsys.readouterr().out


def test_bench_rejects_bad_count(capsys):
    assert main(["bench", "golden", "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err

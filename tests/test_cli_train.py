"""``ttfs train`` and ``ttfs eval`` through the command-line entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ttfs.cli import main as cli


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """One torch thread for tiny networks."""


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def trained_run(tmp_path, capsys):
    """A run trained by the CLI: settings from a config file, one overridden by a flag."""
    config_file = tmp_path / "settings.json"
    config_file.write_text(json.dumps({"widths": [8], "epochs": 3, "batch_size": 200, "lr": 0.005}))
    run_dir = tmp_path / "run"
    status, out, err = run_cli(capsys, "train", "--config", config_file, "--epochs", 1, "--out", run_dir, "--quiet")
    assert status == 0, err
    return run_dir, out


def test_train_resolves_config_file_and_flags(trained_run):
    run_dir, out = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 1 and config["widths"] == [8] and config["batch_size"] == 200
    assert config["mode"] == "snn" and config["dataset"] == "mnist-sample"
    report = json.loads((run_dir / "report.json").read_text())
    assert f"run {run_dir}" in out
    assert f"{100 * report['snn_test_accuracy']:.2f} % spiking" in out
    assert "spikes/neuron" in out and "latency" in out


def test_eval_reports_the_same_metrics_and_writes_json(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    out_json = tmp_path / "eval.json"
    status, out, err = run_cli(capsys, "eval", run_dir, "--json", out_json)
    assert status == 0, err
    evaluation = json.loads(out_json.read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert evaluation["split"] == "test" and evaluation["images"] == 1000
    for key in ("snn_test_accuracy", "relu_test_accuracy", "spikes_per_neuron", "synaptic_events_per_image", "latency"):
        assert evaluation[key] == report[key], key
    status, out, err = run_cli(capsys, "eval", run_dir, "--split", "train")
    assert status == 0, err
    assert "train accuracy" in out and f"{100 * report['snn_train_accuracy']:.2f} % spiking" in out


def test_widths_accept_lists(tmp_path, capsys):
    status, _, err = run_cli(capsys, "train", "--widths", "6,5", "4", "--epochs", 1, "--batch-size", 500, "--out", tmp_path / "r", "--quiet")
    assert status == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["widths"] == [6, 5, 4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--widths", "0"], "ttfs train: error: widths: 0 is not an integer in 1..65536"),
        (["train", "--dataset", "imagenet"], "ttfs train: error: dataset: unknown data set 'imagenet'"),
        (["train", "--dataset", "mnist"], "ttfs train: error: mnist is read from local files"),
        (["train", "--mode", "snn-from-relu"], "ttfs train: error: mode snn-from-relu needs init"),
        (["train", "--mode", "snn-from-relu", "--init", "no/such/run"], "ttfs train: error: no/such/run: no such run directory"),
        (["eval", "no/such/run"], "ttfs eval: error: no/such/run: no such run directory"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1


def test_missing_data_files_are_named(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    status, _, err = run_cli(capsys, "train", "--dataset", "fashion-mnist", "--data-dir", data, "--out", tmp_path / "r")
    assert status == 2 and err.count("\n") == 1
    assert "train-images-idx3-ubyte" in err and str(data) in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_bad_widths_syntax_is_refused_by_the_parser(capsys):
    assert cli.main(["train", "--widths", "3x"]) == 2
    err = capsys.readouterr().err
    assert "'3x' is not a comma-separated list of integers" in err and err.count("\n") == 1


def test_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--dataset", "--widths", "--mode", "--init", "--optimizer", "--config", "--out", "--dtype"):
        assert flag in help_text


# --- your own data: npz:FILE and folder:DIR, end to end to the golden model ------------------------


def pattern_images(count: int, side: int, seed: int) -> tuple:
    """uint8 (count, side, side) images of three classes (top half, left half or centre bright) and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 60, (count, side, side))
    half, quarter = side // 2, side // 4
    for image, label in zip(images, labels):
        region = {0: (slice(0, half), slice(None)), 1: (slice(None), slice(0, half)),
                  2: (slice(quarter, side - quarter), slice(quarter, side - quarter))}[int(label)]  # fmt: skip
        image[region] += 150
    return images.astype(np.uint8), labels


def train_export_and_run_golden(capsys, tmp_path, dataset: str, *train_options) -> tuple[dict, dict, dict]:
    """ttfs train -> export -> golden on ``dataset``; (run config, export report, golden report)."""
    run_dir, bundle_dir = tmp_path / "run", tmp_path / "bundle"
    status, _, err = run_cli(capsys, "train", "--dataset", dataset, *train_options, "--widths", 16, "--epochs", 15,
                             "--batch-size", 16, "--lr", "0.01", "--out", run_dir, "--quiet")  # fmt: skip
    assert status == 0, err
    status, _, err = run_cli(capsys, "export", run_dir, "--weight-bits", 8, "--time-steps", 32, "--out", bundle_dir, "--quiet")
    assert status == 0, err
    status, out, err = run_cli(capsys, "golden", bundle_dir, "--dataset", dataset, "--json", tmp_path / "golden.json")
    assert status == 0, err
    assert f"from {dataset} (test split)" in out
    config = json.loads((run_dir / "config.json").read_text())
    return config, json.loads((bundle_dir / "report.json").read_text()), json.loads((tmp_path / "golden.json").read_text())


def test_npz_data_trains_exports_and_runs_in_the_golden_model(tmp_path, capsys):
    images, labels = pattern_images(150, 8, seed=1)
    path = tmp_path / "mine.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["top", "left", "centre"]))
    config, exported, golden = train_export_and_run_golden(capsys, tmp_path, f"npz:{path}")
    assert config["input_shape"] == [1, 8, 8] and config["classes"] == ["top", "left", "centre"]
    assert config["image_size"] is None and config["channels"] is None
    assert exported["float_accuracy"] > 0.9
    assert golden["images"] == exported["test_images"] == 30 and golden["accuracy"] == exported["integer_accuracy"]
    status, _, err = run_cli(capsys, "eval", tmp_path / "run", "--dataset", f"npz:{path}", "--split", "train")
    assert status == 0, err


def test_png_class_folders_train_resized_and_run_in_the_golden_model(tmp_path, capsys):
    from PIL import Image

    images, labels = pattern_images(120, 10, seed=2)
    root = tmp_path / "pictures"
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / ["top", "left", "centre"][label]
        folder.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        # Some images in colour: --channels 1 reads every one as grey.
        (picture.convert("RGB") if index % 7 == 0 else picture).save(folder / f"{index:03d}.png")
    dataset = f"folder:{root}"
    config, exported, golden = train_export_and_run_golden(capsys, tmp_path, dataset, "--image-size", "8,8", "--channels", 1)
    assert config["input_shape"] == [1, 8, 8] and config["image_size"] == [8, 8] and config["channels"] == 1
    assert config["classes"] == ["centre", "left", "top"]  # sorted folder names
    assert exported["float_accuracy"] > 0.9 and golden["accuracy"] == exported["integer_accuracy"]
    # Eval reads the same images (at the run's size and channels) and finds the run's own accuracy.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    status, _, err = run_cli(capsys, "eval", tmp_path / "run", "--json", tmp_path / "eval.json")
    assert status == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["snn_test_accuracy"] == report["snn_test_accuracy"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "npz:"], "dataset: data set 'npz:': give the file after 'npz:'"),
        (["train", "--dataset", "npz:no/such.npz"], "no/such.npz"),
        (["train", "--image-size", "8,8"], "image_size and channels resize a folder of images (folder:DIR); mnist-sample"),
        (["train", "--dataset", "folder:no/such", "--channels", "3"], "folder:no/such: no such folder"),
        (["golden", "mnist-small", "--dataset", "cifar"], "unknown data set 'cifar'"),
        (["eval", "no/such/run", "--dataset", "npz:x.npz"], "no/such/run: no such run directory"),
    ],
)
def test_data_errors_are_one_line(capsys, argv, message):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and message in err and err.count("\n") == 1, err


def test_image_size_must_be_two_sides(capsys):
    assert cli.main(["train", "--image-size", "8"]) == 2
    assert "'8' is not H,W" in capsys.readouterr().err

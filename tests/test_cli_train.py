"""``ttfs train`` and ``ttfs eval`` through the command-line entry point."""

from __future__ import annotations

import json

import pytest

from sw import cli


@pytest.fixture(autouse=True)
def train_commands_only(monkeypatch, one_torch_thread):
    """Build the ``ttfs`` parser from this issue's module only, so these tests
    do not depend on the other subcommands; one torch thread for tiny networks."""
    assert "sw.cli_train" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("sw.cli_train",))


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
    status, _, err = run_cli(capsys, "train", "--dataset", "fashion-mnist", "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert status == 2 and err.count("\n") == 1
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_bad_widths_syntax_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--widths", "3x"])
    assert exit_info.value.code == 2
    assert "'3x' is not a comma-separated list of integers" in capsys.readouterr().err


def test_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--dataset", "--widths", "--mode", "--init", "--optimizer", "--config", "--out", "--dtype"):
        assert flag in help_text

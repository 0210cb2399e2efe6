"""Training loop, configuration, activity metrics and run directories (ttfs.sw.training, ttfs.sw.models)."""

from __future__ import annotations

import json

import pytest
import torch
from ttfs.contract.errors import TTFSError
from ttfs.sw import bench_epoch, models, training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class UntrustedPayload:
    """Not a tensor: a weights-only load must refuse to rebuild it."""


def tiny_config(tmp_path, **settings) -> dict:
    """One quick epoch of a narrow network on the embedded MNIST sample."""
    config = {"widths": [8], "epochs": 1, "batch_size": 100, "lr": 5e-3, "out": str(tmp_path / "run")}
    config.update(settings)
    return config


def test_resolve_config_layers_defaults_file_and_flags():
    config = training.resolve_config({"epochs": 7, "optimizer": "sgd"}, {"epochs": 3, "seed": None})
    assert config["epochs"] == 3  # a flag overrides the file
    assert config["optimizer"] == "sgd" and config["lr"] == training.DEFAULT_LR["sgd"]
    assert config["seed"] == 0  # None means "not given"
    assert config["widths"] == [340] and config["mode"] == "snn"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "ann"}, "mode: 'ann'"),
        ({"widths": [340, 0]}, r"widths: 0 is not an integer"),
        ({"widths": []}, "widths: expected a non-empty list"),
        ({"lr": -1.0}, "lr: -1.0 must be a number above 0"),
        ({"epochs": 0}, "epochs: 0 is not an integer"),
        ({"batch_size": 2.5}, "batch_size: 2.5"),
        ({"dataset": "imagenet"}, "dataset: unknown data set 'imagenet'"),
        ({"mode": "snn-from-relu"}, "needs init"),
        ({"init": "runs/x"}, "init is only used by mode snn-from-relu"),
        ({"colour": "red"}, "unknown setting"),
    ],
)
def test_resolve_config_rejects_bad_settings(settings, message):
    with pytest.raises(TTFSError, match=message):
        training.resolve_config(settings)


def test_read_config_file_errors(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(training.TrainingError, match="no such config file"):
        training.read_config_file(path)
    path.write_text("{not json")
    with pytest.raises(training.TrainingError, match="invalid JSON"):
        training.read_config_file(path)
    path.write_text(json.dumps({"epochs": 2, "learning_rate": 1}))
    with pytest.raises(training.TrainingError, match="unknown setting.*learning_rate"):
        training.read_config_file(path)


def hand_built_network() -> models.TTFSNetwork:
    """4 inputs -> 3 hidden -> 2 outputs; hidden neuron k is driven by input k only, biases -0.5."""
    snn = models.TTFSNetwork([4, 3, 2], dtype=torch.float64)
    with torch.no_grad():
        snn.layers[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        snn.layers[0].bias.fill_(-0.5)
        snn.layers[1].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
        snn.layers[1].bias.zero_()
    snn.set_windows([(1.0, 3.0), (3.0, 3.0)])
    return snn


def test_activity_metrics_count_spikes_and_synaptic_events():
    snn = hand_built_network()
    images = torch.tensor(
        [[0.9, 0.0, 0.7, 0.2],  # input spikes: 3; hidden: neurons 0 (0.4) and 2 (0.2) fire
         [0.0, 0.6, 0.0, 0.0]],  # input spikes: 1; hidden: neuron 1 (0.1) fires
        dtype=torch.float64,
    )  # fmt: skip
    labels = torch.tensor([0, 1])
    metrics = training.evaluate(snn, images, labels)
    assert metrics["input_spikes_per_neuron"] == pytest.approx(4 / 8)
    assert metrics["spikes_per_neuron"] == [pytest.approx(3 / 6)]
    # Input spikes reach 3 hidden neurons each, hidden spikes 2 outputs each.
    assert metrics["synaptic_events_per_image"] == pytest.approx((4 * 3 + 3 * 2) / 2)
    assert metrics["saturated_spikes"] == 0
    assert metrics["latency"] == 3.0
    # Image 0: logits (0.4, 0.2) -> class 0; image 1: logits (0, 0) -> class 0, wrong.
    assert metrics["accuracy"] == 0.5
    saturating = training.evaluate(snn, images * 4, labels)  # activation 3.1 > window 2
    assert saturating["saturated_spikes"] == 2


def test_activity_penalty_lowers_spike_count():
    sizes = [16, 24, 3]
    images = torch.rand(64, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(64) % 3
    spikes = {}
    for penalty in (0.0, 1.0):
        snn = models.build_network(sizes, seed=2, dtype=torch.float64)
        config = training.resolve_config({"lr": 1e-2, "activity_penalty": penalty})
        optimizer, schedule = training.make_optimizer(snn.parameters(), config)
        generator = torch.Generator().manual_seed(3)
        for _ in range(20):
            training.train_epoch(snn, images, labels, optimizer, schedule, 16, generator, penalty)
        spikes[penalty] = training.evaluate(snn, images, labels)["spikes_per_neuron"][0]
    assert spikes[1.0] < 0.5 * spikes[0.0]


def test_train_run_writes_a_complete_deterministic_run(tmp_path):
    snn, config, report = training.train_run(tiny_config(tmp_path), progress=False)
    run_dir = tmp_path / "run"
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoint.pt", "config.json", "curve.png", "report.json"]
    assert (run_dir / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run_dir / "report.json").read_text())
    for key in ("mode", "test_accuracy", "train_accuracy", "spikes_per_neuron", "latency", "epoch_seconds"):
        assert key in saved
    assert saved["mode"] == "snn" and len(saved["spikes_per_neuron"]) == 1
    assert saved["test_accuracy"] == saved["snn_test_accuracy"] > 0.5  # 1 epoch of a 784-8-10 net learns
    assert saved["latency"] == snn.latency == snn.windows()[-1][0]
    assert json.loads((run_dir / "config.json").read_text()) == config
    assert config["input_shape"] == [1, 28, 28] and config["lr"] == 5e-3
    # Same seed, same everything: an identical checkpoint.
    training.train_run(tiny_config(tmp_path, out=str(tmp_path / "again")), progress=False)
    first = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(first[key], second[key]) for key in first)
    # A different seed gives different weights.
    training.train_run(tiny_config(tmp_path, seed=1, out=str(tmp_path / "other")), progress=False)
    third = torch.load(tmp_path / "other" / "checkpoint.pt", weights_only=True)
    assert not torch.equal(first["layers.0.weight"], third["layers.0.weight"])


def test_relu_and_snn_runs_of_one_seed_agree_in_float64(tmp_path):
    _, _, relu_report = training.train_run(tiny_config(tmp_path, mode="relu", dtype="float64", out=str(tmp_path / "r")), progress=False)
    _, _, snn_report = training.train_run(tiny_config(tmp_path, dtype="float64", out=str(tmp_path / "s")), progress=False)
    assert relu_report["test_accuracy"] == snn_report["test_accuracy"]
    assert relu_report["history"]["train_loss"] == pytest.approx(snn_report["history"]["train_loss"], abs=1e-9)
    relu_state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    snn_state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)
    for key in ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"):
        assert torch.max(torch.abs(relu_state[key] - snn_state[key])) <= 1e-8
    # The ReLU run was stored as its TTFS network with calibrated windows.
    assert relu_report["relu_test_accuracy"] == relu_report["snn_test_accuracy"]
    assert relu_report["saturated_spikes"] == 0 and relu_report["windows"][0][1] > 2.0


def test_snn_from_relu_starts_from_the_init_run(tmp_path):
    init, _, _ = training.train_run(tiny_config(tmp_path, mode="relu", out=str(tmp_path / "relu")), progress=False)
    tuned, config, report = training.train_run(
        tiny_config(tmp_path, mode="snn-from-relu", init=str(tmp_path / "relu"), lr=1e-9, out=str(tmp_path / "tuned")),
        progress=False,
    )
    assert report["mode"] == "snn-from-relu" and config["init"] == str(tmp_path / "relu")
    # With a vanishing learning rate the fine-tuned network is the initial one.
    assert torch.max(torch.abs(tuned.layers[0].weight - init.layers[0].weight)) < 1e-6
    with pytest.raises(training.TrainingError, match="widths"):
        training.train_run(tiny_config(tmp_path, mode="snn-from-relu", init=str(tmp_path / "relu"), widths=[9]), progress=False)


def test_load_run_round_trip_and_exposed_layers(tmp_path):
    trained, config, _ = training.train_run(tiny_config(tmp_path, widths=[8, 6]), progress=False)
    model, loaded_config = models.load_run(tmp_path / "run")
    assert loaded_config == config and not model.training
    assert [(layer.weight.shape, layer.bias.shape, layer.readout) for layer in model.layers] == [
        ((8, 784), (8,), False),
        ((6, 8), (6,), False),
        ((10, 6), (10,), True),
    ]
    assert model.windows() == trained.windows()
    for ours, theirs in zip(model.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(ours, theirs)


def test_load_run_rejects_bad_runs(tmp_path):
    with pytest.raises(models.ModelError, match="no such run directory"):
        models.load_run(tmp_path / "missing")
    training.train_run(tiny_config(tmp_path), progress=False)
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoint.pt"
    good = checkpoint.read_bytes()
    config_text = (run_dir / "config.json").read_text()

    checkpoint.write_bytes(b"garbage")
    with pytest.raises(models.ModelError, match="checkpoint.pt: not a readable weights-only checkpoint"):
        models.load_run(run_dir)

    torch.save({"layers.0.weight": UntrustedPayload()}, checkpoint)
    with pytest.raises(models.ModelError, match="not a readable weights-only checkpoint"):
        models.load_run(run_dir)

    checkpoint.write_bytes(good)
    (run_dir / "config.json").write_text(config_text.replace('"widths": [\n    8\n  ]', '"widths": [\n    9\n  ]'))
    with pytest.raises(models.ModelError, match=r"layers.0.weight has shape \(8, 784\), config.json implies \(9, 784\)"):
        models.load_run(run_dir)
    (run_dir / "config.json").write_text(config_text.replace('"dtype": "float32"', '"dtype": "int8"'))
    with pytest.raises(models.ModelError, match="dtype 'int8'"):
        models.load_run(run_dir)

    (run_dir / "config.json").write_text(config_text)
    state = torch.load(checkpoint, weights_only=True)
    state["layers.1.t_min"] = state["layers.1.t_min"] + 1
    torch.save(state, checkpoint)
    with pytest.raises(models.ModelError, match=r"layers\[1\]\.t_min"):
        models.load_run(run_dir)
    checkpoint.unlink()
    with pytest.raises(models.ModelError, match="missing checkpoint"):
        models.load_run(run_dir)


def test_bench_epoch_times_both_networks():
    figures = bench_epoch.measure_epochs(1, [4], 1000, "float32", 0.0, seed=0, progress=False)
    assert figures["sizes"] == [784, 4, 10] and figures["images_per_epoch"] == 4000
    assert len(figures["relu_epoch_seconds"]) == len(figures["snn_epoch_seconds"]) == 1
    assert figures["ratio"] == figures["snn_median_seconds"] / figures["relu_median_seconds"] > 0


def test_failed_write_leaves_no_half_written_run(tmp_path, monkeypatch):
    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(training, "plot_curve", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        training.train_run(tiny_config(tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_run_from_an_init_run_takes_its_data_and_architecture(tmp_path):
    training.train_run(tiny_config(tmp_path, widths=[7, 5], mode="relu", out=str(tmp_path / "relu")), progress=False)
    config = training.resolve_config({"mode": "snn-from-relu", "init": str(tmp_path / "relu")})
    assert config["widths"] == [7, 5] and config["arch"] == "fc" and config["dataset"] == "mnist-sample"
    given = training.resolve_config({"mode": "snn-from-relu", "init": str(tmp_path / "relu"), "widths": [3]})
    assert given["widths"] == [3]  # given settings win (and train_run refuses the mismatch)
    config_file = json.loads((tmp_path / "relu" / "config.json").read_text())
    config_file.update(dataset="folder:pictures", image_size=[28, 28], channels=1)
    (tmp_path / "relu" / "config.json").write_text(json.dumps(config_file))
    # A run naming its own data set takes none of the init run's data settings (a folder's size among them).
    other = training.resolve_config({"mode": "finetune", "init": str(tmp_path / "relu"), "noise": 0.1, "dataset": "mnist-sample"})
    assert other["dataset"] == "mnist-sample" and other["image_size"] is None and other["widths"] == [7, 5]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dataset": "folder:x", "image_size": [8]}, r"image_size: \[8\] is not \[height, width\]"),
        ({"dataset": "folder:x", "image_size": [0, 8]}, "image_size"),
        ({"dataset": "folder:x", "channels": 2}, "channels: 2 is not 1 or 3"),
        ({"dataset": "npz:x.npz", "channels": 1}, "image_size and channels resize a folder"),
        ({"device": "tpu"}, "device: 'tpu' is not one of auto, cpu, cuda"),
        ({"dataset": "npz:"}, "dataset: data set 'npz:'"),
    ],
)
def test_data_and_device_settings_are_checked(settings, message):
    with pytest.raises(training.TrainingError, match=message):
        training.resolve_config(settings)


def test_load_split_reads_the_run_data_and_checks_its_shape(tmp_path):
    import numpy as np

    config = {"dataset": "mnist-sample", "input_shape": [1, 28, 28]}
    assert training.load_split(config, "test").images.shape == (1000, 1, 28, 28)
    path = tmp_path / "small.npz"
    np.savez(path, images=np.zeros((10, 1, 5, 5), np.uint8), labels=np.arange(10) % 2)
    with pytest.raises(training.TrainingError, match=r"images have shape \[1, 5, 5\], the run expects \[1, 28, 28\]"):
        training.load_split(config, "train", dataset=f"npz:{path}")

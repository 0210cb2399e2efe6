"""Devices and several processes (ttfs.sw.distributed): torchrun with gloo on the CPU against one process.

A 2-process torchrun run (float64) must end in the same weights and windows
as the one-process run with the same global batch, to 1e-10, and its spiking
network must equal its ReLU twin (the window rule takes the GLOBAL batch
maximum).  The global batch does not divide evenly here: the last one holds
one image, so one process trains on none of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ttfs.cli import main as cli
from ttfs.contract.datasets import load_dataset
from ttfs.sw import distributed, training, vgg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN_SETTINGS = ["--widths", "12", "--epochs", "2", "--batch-size", "40", "--lr", "0.005", "--dtype", "float64",
                  "--activity-penalty", "0.05", "--device", "cpu", "--quiet"]  # fmt: skip


def small_digits(path) -> str:
    """401 training and 200 test images of the MNIST sample, 7x7 (every fourth pixel), as npz:FILE."""
    splits = {split: load_dataset("mnist-sample", split) for split in ("train", "test")}
    shrink = lambda images: np.ascontiguousarray(images[:, :, ::4, ::4])  # noqa: E731
    np.savez(path, train_images=shrink(splits["train"].images[:401]), train_labels=splits["train"].labels[:401],
             test_images=shrink(splits["test"].images[:200]), test_labels=splits["test"].labels[:200])  # fmt: skip
    return f"npz:{path}"


def test_two_processes_train_what_one_process_trains(tmp_path, capsys):
    dataset = small_digits(tmp_path / "digits.npz")
    assert cli.main(["train", "--dataset", dataset, *TRAIN_SETTINGS, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "ttfs.cli.main", "train", "--dataset", dataset, *TRAIN_SETTINGS, "--out", str(tmp_path / "two")]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("run ") == 1  # process 0 alone writes and prints

    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert one.keys() == two.keys()
    assert max(float((one[key] - two[key]).abs().max()) for key in one) <= 1e-10  # weights, biases and windows
    one_report = json.loads((tmp_path / "one" / "report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two_report["processes"] == 2 and one_report["processes"] == 1 and two_report["device"] == "cpu"
    assert two_report["history"]["train_loss"] == pytest.approx(one_report["history"]["train_loss"], abs=1e-12)
    assert two_report["snn_test_accuracy"] == two_report["relu_test_accuracy"] == one_report["snn_test_accuracy"]
    assert two_report["train_saturated_spikes"] == 0  # the global window rule: no training spike saturates


def test_a_process_takes_its_part_of_every_global_batch():
    index = torch.arange(11)
    parts = [distributed.Processes(rank, 3, torch.device("cpu")).part(index) for rank in range(3)]
    assert torch.equal(torch.cat(parts), index) and [len(part) for part in parts] == [4, 4, 3]
    assert len(distributed.Processes(1, 2, torch.device("cpu")).part(torch.arange(1))) == 0  # a short last batch


def test_batch_norm_over_several_cpu_processes_is_refused():
    spec = vgg.VGGSpec.create("2,P", [], (1, 4, 4), 2, batch_norm="after")
    with pytest.raises(distributed.DistributedError, match="batch norm over several processes needs GPUs"):
        distributed.Processes(0, 2, torch.device("cpu")).wrap(vgg.build_relu(spec))


def test_devices_resolve_and_cuda_without_cuda_is_one_clear_error(capsys, monkeypatch):
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(distributed.DistributedError, match="device: 'tpu' is not one of auto, cpu, cuda"):
        distributed.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(distributed.DistributedError, match="device cuda: CUDA is not available"):
        distributed.resolve_device("cuda")
    export = ["export", "no/run", "--weight-bits", "5", "--time-steps", "16", "--out", "unused", "--device", "cuda"]
    for argv in (["train", "--device", "cuda", "--epochs", "1"], ["eval", "no/run", "--device", "cuda"], export):
        assert cli.main(argv) == 2
        error = capsys.readouterr().err
        assert "device cuda: CUDA is not available" in error and error.count("\n") == 1, error


def test_distributed_outside_torchrun_and_finetune_under_it_are_refused(capsys, monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["train", "--distributed", "--epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert "not started by torchrun" in error and "torchrun --nproc-per-node N" in error and error.count("\n") == 1
    processes = distributed.Processes(0, 2, torch.device("cpu"))
    with pytest.raises(training.TrainingError, match="mode finetune runs in one process"):
        training.train_run({"mode": "finetune", "init": "x", "noise": 0.1}, progress=False, processes=processes)


def test_window_rule_takes_the_reduced_batch_maximum():
    """The hook every process's network uses: windows grow from the maximum it returns, not the local one."""
    from ttfs.sw import models

    snn = models.TTFSNetwork([4, 3, 2], dtype=torch.float64)
    with torch.no_grad():
        snn.layers[0].weight.copy_(torch.eye(3, 4, dtype=torch.float64))
        snn.layers[0].bias.zero_()
    snn.reduce_batch_max = lambda largest: torch.maximum(largest, torch.tensor(7.0, dtype=torch.float64))
    snn.train()
    snn(torch.full((2, 4), 0.5, dtype=torch.float64))  # local maximum 0.5; another process saw 7
    assert snn.windows()[0] == (1.0, 1.0 + 10.0 * 7.0)
    snn.layers[0].weight.data.zero_()
    snn(torch.zeros(0, 4, dtype=torch.float64))  # an empty part of a batch applies the rule too
    assert distributed.unwrap(snn) is snn and snn.reduce_batch_max is None


def test_device_generic_training_on_cpu_matches_the_default(tmp_path):
    """--device cpu and auto (cpu here) give the same run as the default placement."""
    config = {"dataset": small_digits(tmp_path / "digits.npz"), "widths": [6], "epochs": 1, "batch_size": 50, "lr": 5e-3,
              "dtype": "float64"}  # fmt: skip
    reports = {}
    for device in ("cpu", "auto"):
        _, _, reports[device] = training.train_run({**config, "device": device, "out": str(tmp_path / device)}, progress=False)
    assert reports["cpu"]["snn_test_accuracy"] == reports["auto"]["snn_test_accuracy"]
    assert reports["cpu"]["device"] == "cpu"

"""Export of conv runs (ttfs export / sweep on --arch vgg runs): contract-v2 bundles, their
report, ROM images and vectors, determinism, per-position biases of folded batch norm, the
min-pool refusal; and the committed trained conv fixture mnist-vgg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ttfs.cli import main as cli
from ttfs.contract.bundle import load_bundle
from ttfs.contract.datasets import load_dataset
from ttfs.contract.readmemh import read_readmemh
from ttfs.sim import golden
from ttfs.sw import export, models, training
from ttfs.sw.conv import TTFSMaxPool2d
from ttfs.sw.quantize import IntegerNetwork

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "fixtures" / "bundles" / "mnist-vgg"

# One worker trains and exports the module's runs once for all its tests.
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.xdist_group("export-conv")]


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("mnist-sample", "test")


def _train(tmp_path_factory, name: str, **settings) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / name
    config = {"arch": "vgg", "epochs": 1, "batch_size": 100, "seed": 1, "lr": 5e-3, "out": str(run_dir), **settings}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        training.train_run(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory) -> Path:
    """conv 4 -> pool -> conv 6 -> pool -> readout, trained as an SNN for one epoch."""
    return _train(tmp_path_factory, "conv", layers="4,P,6,P")


@pytest.fixture(scope="module")
def folded_run(tmp_path_factory) -> Path:
    """A ReLU twin with batch norm after every ReLU, folded: the second conv gets a border bias."""
    return _train(tmp_path_factory, "folded", layers="3,4,P", mode="relu", batch_norm="after")


EXPORT = dict(calibrate=200, qat_epochs=1, qat_batch_size=100, seed=2, vectors=8)


@pytest.fixture(scope="module")
def exported(conv_run, tmp_path_factory):
    result = export.export_run(conv_run, 6, 8, **EXPORT)
    return result, export.write_export(result, tmp_path_factory.mktemp("bundles") / "conv")


def test_conv_export_writes_a_v2_bundle_with_report_roms_and_vectors(exported, test_split):
    result, out = exported
    bundle = load_bundle(out)
    assert json.loads((out / "network.json").read_text())["version"] == 2
    assert [(layer.name, layer.kind) for layer in bundle.layers] == [("conv1", "conv2d"), ("conv2", "conv2d"), ("out", "dense")]
    assert [layer.output_shape for layer in bundle.hidden_layers] == [(4, 14, 14), (6, 7, 7)]
    assert [layer.bias_per for layer in bundle.hidden_layers] == ["channel", "channel"]
    report = json.loads((out / "report.json").read_text())
    outcome = golden.run(bundle, test_split.images, pre_pool=True)
    assert report["integer_accuracy"] == pytest.approx(np.mean(outcome.classes == test_split.labels))
    assert report["integer_torch_equals_golden"] and report["bundle"].startswith("1x28x28-4x14x14-6x7x7-10, T=8")
    rows = report["layers"]
    assert rows[0]["input_shape"] == [1, 28, 28] and rows[0]["conv_shape"] == [4, 28, 28]
    assert rows[1]["input_shape"] == [4, 14, 14] and rows[1]["output_shape"] == [6, 7, 7]
    assert [row.get("kind") for row in rows] == ["conv2d", "conv2d", None]
    assert all(row["kernel_size"] == 3 and row["padding"] == "same" and row["pool_size"] == 2 for row in rows[:2])
    assert [row["neurons"] for row in rows[:2]] == [4 * 28 * 28, 6 * 14 * 14]
    spikes, events = outcome.spikes_per_neuron(), outcome.events_per_output()
    for index, (row, bound) in enumerate(zip(rows, golden.potential_bounds(bundle))):
        assert row["potential_bound"] == bound.bound and row["register_bits"] == bound.bits
        if index < 2:
            # Neurons before the pool, and the events that leave the layer after it.
            assert row["spikes_per_neuron"] == pytest.approx(spikes[index + 1])
            assert row["events_per_output"] == pytest.approx(events[index + 1])
            assert row["events_per_output"] > row["spikes_per_neuron"] > 0
            at_t = np.mean(outcome.pre_pool_activations[index + 1] == 8)
            assert row["at_T_fraction"] == pytest.approx(at_t)
            assert 0 <= row["clipped_fraction"] <= row["at_T_fraction"]
    assert report["weight_rom_bits"] == 6 * (4 * 1 * 9 + 6 * 4 * 9 + 10 * 6 * 7 * 7)
    roms = {rom["array"]: rom for rom in report["roms"]}
    for layer in bundle.layers:
        weight_rom, bias_rom = roms[f"{layer.name}.weight"], roms[f"{layer.name}.bias"]
        words = read_readmemh(out / weight_rom["file"], weight_rom["width"])
        np.testing.assert_array_equal(words.reshape(layer.weight.shape), layer.weight)  # row-major
        np.testing.assert_array_equal(read_readmemh(out / bias_rom["file"], bias_rom["width"]), layer.bias)
    assert roms["conv1.weight"]["layout"] == "row-major: word ((o*C + c)*k + ky)*k + kx = W[o][c][ky][kx]"
    assert roms["conv1.bias"]["depth"] == 4 and roms["conv1.bias"]["layout"] == "word o = Bias[o]"
    with np.load(out / "vectors.npz", allow_pickle=False) as vectors:
        assert list(vectors["layers"]) == ["input", "conv1", "conv2"]
        first = golden.run(bundle, vectors["images"])
        np.testing.assert_array_equal(vectors["logits"], first.logits)
        for index, activations in enumerate(first.activations):
            np.testing.assert_array_equal(vectors[f"activations_{index}"], activations)
            assert vectors[f"trace_{index}"].shape == (np.count_nonzero(activations), 3)
    lines = export.summary_lines(report)
    assert any(line.startswith("conv2   4x14x14 -> 3x3 same -> 6x14x14 -> pool 2 -> 6x7x7") for line in lines)


def test_conv_export_is_byte_for_byte_deterministic(conv_run, exported, tmp_path):
    result, out = exported
    again = export.write_export(export.export_run(conv_run, 6, 8, **EXPORT), tmp_path / "again")
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(path.name for path in again.iterdir()) and "conv2.weight.hex" in names
    for name in names:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_folded_batch_norm_exports_per_position_biases(folded_run, tmp_path, test_split):
    model, _ = models.load_run(folded_run)
    conv2 = model.layers[1]
    assert bool(conv2.border_bias.any())  # the fold left a border bias on the 'same' conv after the BN
    result = export.export_run(folded_run, 8, 16, calibrate=200, seed=0, vectors=4)
    out = export.write_export(result, tmp_path / "folded")
    bundle = load_bundle(out)
    conv1, conv2 = bundle.hidden_layers
    assert conv1.bias_per == "channel" and conv2.bias_per == "position" and conv2.bias.shape == (4, 28, 28)
    # Interior positions share their channel's bias; the border differs.
    assert np.all(conv2.bias[:, 1:-1, 1:-1] == conv2.bias[:, 1:2, 1:2])
    assert np.any(conv2.bias[:, 0, :] != conv2.bias[:, 1:2, 1])
    rom = next(rom for rom in result.report["roms"] if rom["array"] == "conv2.bias")
    assert rom["depth"] == 4 * 28 * 28 and rom["layout"] == "row-major: word (o*H_out + y)*W_out + x = Bias[o][y][x]"
    words = read_readmemh(out / rom["file"], rom["width"])
    np.testing.assert_array_equal(words.reshape(4, 28, 28), conv2.bias)
    assert result.report["layers"][1]["bias_per"] == "position"
    # What the exporter checked, checked again: the integer forward is the golden model.
    expected = golden.run(bundle, test_split.images[:300])
    logits, activations = IntegerNetwork.from_bundle(bundle).predict(test_split.images[:300])
    np.testing.assert_array_equal(logits, expected.logits)
    for mine, theirs in zip(activations, expected.activations):
        np.testing.assert_array_equal(mine, theirs)
    assert abs(result.report["integer_accuracy"] - result.report["float_accuracy"]) < 0.05


def test_min_pool_run_is_refused_in_one_line_naming_the_layer(folded_run, tmp_path, capsys):
    model, config = models.load_run(folded_run)
    pool = next(layer for layer in model.layers if isinstance(layer, TTFSMaxPool2d))
    pool.min_channels[2] = True  # as a negative batch-norm scale folded across the pool leaves it
    min_pool_run = tmp_path / "min-pool"
    models.save_run_model(min_pool_run, model, config)
    status = cli.main(["export", str(min_pool_run), "--weight-bits", "5", "--time-steps", "16", "--calibrate", "50",
                       "--out", str(tmp_path / "never"), "--quiet"])  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1
    assert "conv2: its pool" in error and "channel(s) [2]" in error and "no min-pool" in error
    assert not (tmp_path / "never").exists()


def test_cli_exports_and_sweeps_a_conv_run(conv_run, tmp_path, capsys):
    status = cli.main(["export", str(conv_run), "--weight-bits", "4", "--time-steps", "4", "--calibrate", "100",
                       "--vectors", "2", "--out", str(tmp_path / "b"), "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and "1x28x28-4x14x14-6x7x7-10" in printed and "bias per channel" in printed
    status = cli.main(["sweep", str(conv_run), "--weight-bits", "3..4", "--time-steps", "4", "--calibrate", "100",
                       "--json", str(tmp_path / "sweep.json"), "--quiet"])  # fmt: skip
    assert status == 0 and "T=4" in capsys.readouterr().out
    rows = json.loads((tmp_path / "sweep.json").read_text())["results"]
    assert [(row["weight_bits"], len(row["ramp_shifts"])) for row in rows] == [(3, 2), (4, 2)]
    assert all(0.1 < row["integer_accuracy"] <= 1 for row in rows)


# ---------------------------------------------------------------------------
# the committed trained conv fixture


def test_committed_conv_fixture_meets_its_acceptance_and_equals_golden(test_split):
    bundle = load_bundle(FIXTURE)
    assert bundle.version == 2 and bundle.time_steps == 16
    assert [layer.kind for layer in bundle.layers] == ["conv2d", "conv2d", "dense"]
    expected = golden.run(bundle, test_split.images, pre_pool=True)
    logits, activations = IntegerNetwork.from_bundle(bundle).predict(test_split.images)
    np.testing.assert_array_equal(logits, expected.logits)
    for mine, theirs in zip(activations, expected.activations):
        np.testing.assert_array_equal(mine, theirs)
    report = json.loads((FIXTURE / "report.json").read_text())
    accuracy = float(np.mean(expected.classes == test_split.labels))
    assert report["test_images"] == 1000 and report["integer_accuracy"] == pytest.approx(accuracy)
    assert accuracy >= 0.975 and report["float_accuracy"] - accuracy <= 0.003
    # Fewer than 0.3 spikes per neuron in every spiking layer, the input encoder included,
    # and fewer than 0.3 events per output leaving each conv layer after its pool.
    spikes = expected.spikes_per_neuron()
    assert max(spikes) < 0.3 and max(expected.events_per_output()) < 0.3
    assert report["input"]["spikes_per_neuron"] == pytest.approx(spikes[0])
    assert [row["spikes_per_neuron"] for row in report["layers"][:-1]] == pytest.approx(spikes[1:])
    with np.load(FIXTURE / "vectors.npz", allow_pickle=False) as vectors:
        assert len(vectors["images"]) >= 64
        first = golden.run(bundle, vectors["images"])
        np.testing.assert_array_equal(vectors["logits"], first.logits)
        for index, activations in enumerate(first.activations):
            np.testing.assert_array_equal(vectors[f"activations_{index}"], activations)

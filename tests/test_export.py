"""Export (ttfs.sw.export, ttfs export / sweep) and the committed trained fixtures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ttfs.cli import main as cli
from ttfs.cli.parser import int_list
from ttfs.contract.bundle import load_bundle
from ttfs.contract.datasets import load_dataset
from ttfs.contract.errors import TTFSError
from ttfs.contract.readmemh import read_readmemh
from ttfs.sim import golden
from ttfs.sw import export, models, training
from ttfs.sw.quantize import IntegerNetwork, QuantizeError

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures" / "bundles"


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("mnist-sample", "test")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 784-10-10 run trained for one epoch (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = {"widths": [10], "epochs": 1, "batch_size": 64, "seed": 1, "lr": 3e-3, "out": str(run_dir)}
    training.train_run(config, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported at 4 bits, T = 8, with one QAT epoch, written to disk."""
    result = export.export_run(tiny_run, 4, 8, calibrate=300, qat_epochs=1, seed=2, vectors=16)
    out = export.write_export(result, tmp_path_factory.mktemp("bundles") / "tiny")
    return result, out


def test_export_writes_a_valid_bundle_with_report_roms_and_vectors(exported, test_split):
    result, out = exported
    bundle = load_bundle(out)
    assert bundle.time_steps == 8 and [layer.weight_bits for layer in bundle.layers] == [4, 4]
    assert [layer.name for layer in bundle.layers] == ["fc1", "out"]
    report = json.loads((out / "report.json").read_text())
    outcome = golden.run(bundle, test_split.images)
    assert report["integer_accuracy"] == pytest.approx(np.mean(outcome.classes == test_split.labels))
    assert 0.3 < report["float_accuracy"] <= 1
    assert report["qat"]["epochs"] == 1 and len(report["qat"]["history"]) == 1
    bounds = golden.potential_bounds(bundle)
    for row, layer, bound in zip(report["layers"], bundle.layers, bounds):
        assert row["potential_bound"] == bound.bound and row["register_bits"] == bound.bits
        assert row["weight_bits"] == layer.weight_bits
    assert report["layers"][0]["ramp_shift"] == bundle.layers[0].ramp_shift
    assert report["layers"][0]["spikes_per_neuron"] == pytest.approx(outcome.spikes_per_neuron()[1])
    assert report["weight_rom_bits"] == 4 * (784 * 10 + 10 * 10)
    # ROM images read back to the bundle's arrays.
    roms = {rom["array"]: rom for rom in report["roms"]}
    for layer in bundle.layers:
        weight_rom = roms[f"{layer.name}.weight"]
        words = read_readmemh(out / weight_rom["file"], weight_rom["width"])
        np.testing.assert_array_equal(words.reshape(layer.outputs, layer.inputs), layer.weight)
        bias_rom = roms[f"{layer.name}.bias"]
        np.testing.assert_array_equal(read_readmemh(out / bias_rom["file"], bias_rom["width"]), layer.bias)
    lut = read_readmemh(out / "input.lut.hex", roms["input.lut"]["width"], signed=False)
    np.testing.assert_array_equal(lut.reshape(1, 256), bundle.lut)
    # Vectors are the golden model's results on the first test images.
    with np.load(out / "vectors.npz", allow_pickle=False) as vectors:
        images = vectors["images"]
        assert images.dtype == np.uint8 and images.shape == (16, 1, 28, 28)
        np.testing.assert_array_equal(images, test_split.images[:16])
        np.testing.assert_array_equal(vectors["labels"], test_split.labels[:16])
        first = golden.run(bundle, images)
        np.testing.assert_array_equal(vectors["logits"], first.logits)
        np.testing.assert_array_equal(vectors["classes"], first.classes)
        assert list(vectors["layers"]) == ["input", "fc1"]
        for index, activations in enumerate(first.activations):
            np.testing.assert_array_equal(vectors[f"activations_{index}"], activations)
            trace = vectors[f"trace_{index}"]
            assert trace.shape == (np.count_nonzero(activations), 3)
            for image in (0, 7, 15):
                np.testing.assert_array_equal(trace[trace[:, 0] == image, 1:], first.traces(image)[index])


def test_export_is_byte_for_byte_deterministic(tiny_run, exported, tmp_path):
    result, out = exported
    # The fixture fine-tunes on the default device (auto); this one names the CPU: the same bytes
    # wherever auto is the CPU.  On a GPU float64 agrees to rounding, not to the bit, so there the
    # reference is a second CPU export.
    again = export.export_run(tiny_run, 4, 8, calibrate=300, qat_epochs=1, seed=2, vectors=16, device="cpu")
    second = export.write_export(again, tmp_path / "again")
    if torch.cuda.is_available():
        reference = export.export_run(tiny_run, 4, 8, calibrate=300, qat_epochs=1, seed=2, vectors=16, device="cpu")
        out = export.write_export(reference, tmp_path / "reference")
    for name in ["params.npz", "network.json", "vectors.npz", "report.json", "fc1.weight.hex", "out.bias.hex"]:
        assert (second / name).read_bytes() == (out / name).read_bytes(), name
    other_seed = export.write_export(export.export_run(tiny_run, 4, 8, calibrate=300, seed=9, vectors=4), tmp_path / "seed9")
    assert (other_seed / "params.npz").read_bytes() != (out / "params.npz").read_bytes()


@pytest.mark.parametrize(
    "bits, steps, message",
    [(17, 16, "weight bits: 17"), (1, 16, "weight bits: 1"), (5, 24, "time steps: 24"), (5, 512, "time steps: 512")],
)
def test_export_refuses_bits_and_steps_out_of_range(tiny_run, tmp_path, bits, steps, message):
    with pytest.raises(QuantizeError, match=message):
        export.export_run(tiny_run, bits, steps)


def test_run_without_checkpoint_is_refused(tiny_run, tmp_path):
    run_dir = tmp_path / "no-checkpoint"
    run_dir.mkdir()
    (run_dir / "config.json").write_bytes((tiny_run / "config.json").read_bytes())
    with pytest.raises(models.ModelError, match="missing checkpoint"):
        export.export_run(run_dir, 5, 16)


def test_potential_bound_beyond_48_bits_is_refused(tiny_run, tmp_path):
    model, config = models.load_run(tiny_run)
    with torch.no_grad():
        model.layers[-1].bias[3] = 1e13
    bad_run = tmp_path / "huge-bias"
    models.save_run_model(bad_run, model, config)
    with pytest.raises(export.ExportError, match=r"out: .*48"):
        export.export_run(bad_run, 5, 16)
    status = cli.main(["export", str(bad_run), "--weight-bits", "5", "--time-steps", "16", "--calibrate", "100",
                       "--out", str(tmp_path / "never"), "--quiet"])  # fmt: skip
    assert status == 2 and not (tmp_path / "never").exists()  # nothing half-written


def test_cli_export_prints_a_table_and_reports_errors_in_one_line(tiny_run, tmp_path, capsys):
    out = tmp_path / "cli-bundle"
    status = cli.main(["export", str(tiny_run), "--weight-bits", "3", "--time-steps", "4", "--calibrate", "100",
                       "--vectors", "8", "--out", str(out), "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and "integer (golden)" in printed and "Arty A7-35T" in printed
    assert load_bundle(out).time_steps == 4
    status = cli.main(["export", str(tiny_run), "--weight-bits", "20", "--time-steps", "4", "--out", str(tmp_path / "x")])
    error = capsys.readouterr().err
    assert status == 2 and "--weight-bits: 20 is outside 2..16" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_sweep_writes_json_and_png(tiny_run, tmp_path, capsys):
    status = cli.main(["sweep", str(tiny_run), "--weight-bits", "2..3", "--time-steps", "4,8", "--calibrate", "100",
                       "--json", str(tmp_path / "sweep.json"), "--png", str(tmp_path / "sweep.png"), "--quiet"])  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted((r["weight_bits"], r["time_steps"]) for r in report["results"]) == [(2, 4), (2, 8), (3, 4), (3, 8)]
    assert all(0 <= r["integer_accuracy"] <= 1 for r in report["results"])
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "T=8" in capsys.readouterr().out


def test_int_list_option():
    parse = int_list(2, 16)
    assert parse("2..8") == [2, 3, 4, 5, 6, 7, 8]
    assert parse("4,8,16") == [4, 8, 16]
    assert parse("2..3,8") == [2, 3, 8]
    # Bounds are checked before a range is expanded: a huge range is refused at once.
    for bad in ("", "a", "8..2", "2..x", "2..300000000", "1..4", "2..16,2..16"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert issubclass(export.ExportError, TTFSError)


def test_board_fit_counts_whole_blocks_per_rom():
    roms = [{"bits": 36 * 1024 * 49 + 1}, {"bits": 10}]  # 50 blocks + 1 block on Xilinx
    fits = {entry["board"]: entry for entry in export.board_fit(roms)}
    assert fits["Arty A7-35T"]["blocks_needed"] == {"BRAM36": 51} and not fits["Arty A7-35T"]["fits"]
    assert fits["Arty A7-100T"]["fits"]
    assert fits["ULX3S ECP5-85F"]["blocks_needed"] == {"EBR18": 99 + 1}
    ice = fits["iCEBreaker iCE40UP5K"]
    assert not ice["fits"]  # 1.8 Mbit exceed even the four SPRAMs
    small = {entry["board"]: entry for entry in export.board_fit([{"bits": 300 * 1024}, {"bits": 20 * 1024}])}
    assert small["iCEBreaker iCE40UP5K"]["blocks_needed"] == {"EBR4": 5, "SPRAM256": 2}
    assert small["iCEBreaker iCE40UP5K"]["fits"]


# ---------------------------------------------------------------------------
# the committed trained fixtures


@pytest.mark.parametrize("name, hidden", [("mnist-fc2", 340), ("mnist-small", 32)])
def test_committed_fixture_integer_torch_equals_golden_on_the_test_split(name, hidden, test_split):
    path = FIXTURES / name
    bundle = load_bundle(path)
    assert [layer.outputs for layer in bundle.layers] == [hidden, 10]
    assert bundle.time_steps == 16 and all(layer.weight_bits <= 5 for layer in bundle.layers)
    expected = golden.run(bundle, test_split.images)
    logits, activations = IntegerNetwork.from_bundle(bundle).predict(test_split.images)
    np.testing.assert_array_equal(logits, expected.logits)
    for mine, theirs in zip(activations, expected.activations):
        np.testing.assert_array_equal(mine, theirs)
    report = json.loads((path / "report.json").read_text())
    assert report["test_images"] == 1000
    assert report["integer_accuracy"] == pytest.approx(np.mean(expected.classes == test_split.labels))
    assert abs(report["integer_accuracy"] - report["float_accuracy"]) <= 0.005
    with np.load(path / "vectors.npz", allow_pickle=False) as vectors:
        first = golden.run(bundle, vectors["images"])
        assert len(vectors["images"]) >= 64
        np.testing.assert_array_equal(vectors["logits"], first.logits)
        np.testing.assert_array_equal(vectors["activations_1"], first.activations[1])


def test_fc2_fixture_roms_fit_the_arty_a7_35t():
    report = json.loads((FIXTURES / "mnist-fc2" / "report.json").read_text())
    arty = next(entry for entry in report["boards"] if entry["board"] == "Arty A7-35T")
    assert arty["fits"] and arty["blocks_needed"]["BRAM36"] <= 50
    assert report["weight_rom_bits"] == 5 * (784 * 340 + 340 * 10)

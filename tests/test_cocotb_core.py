"""The NetworkCore Verilog, simulated with cocotb (Verilator and Icarus), equals the golden model.

Every run drives images with random input gaps, takes the result and trace
streams under random back-pressure, and checks every layer's spike trace,
the logits and the class (contract section 9).  The reset in the middle of a
frame has tests of its own, so that a reset fault does not hide the others.  Builds are cached in
build/sim-tests/ (one per bundle, lanes and simulator, locked for pytest-xdist
workers), so a second session reuses them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ttfs.contract.bundle import Layer, load_bundle
from ttfs.sim.golden import run as golden_run
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images
from ttfs.sim.verify.flow import (
    SimulatorMissing,
    StimulusSettings,
    build_core,
    check_run,
    run_core,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_CACHE = REPO_ROOT / "build" / "sim"
FIXTURES = REPO_ROOT / "fixtures" / "bundles"
EDGE_FIXTURES = sorted(p.name for p in FIXTURES.glob("edge-*") if (p / "vectors.npz").is_file())
STRESS = StimulusSettings(seed=5, input_gap=0.3, result_stall=0.3, trace_stall=0.3, reset_mid_frame=False)
# The agreement bundle: every layer spikes, three hidden layers' worth of state to reset.
AGREE_BUNDLE = dict(rng=11, sizes=(16, 7, 5, 3), time_steps=8, weight_bits=6, lut="default")


def simulate(bundle, name, images, tmp_path, simulator, lanes, pixels_per_beat=1,
             settings=STRESS, reference=None):
    """Build (cached) and run; return (run, scoreboard against ``reference``, default ``bundle``)."""
    reference = bundle if reference is None else reference
    build = build_core(bundle, name, lanes, simulator, BUILD_CACHE, pixels_per_beat)
    run = run_core(build, reference, images, tmp_path / f"run-{simulator}", settings)
    return run, check_run(reference, images, run)


def assert_exact(run, scoreboard):
    if run.protocol_errors:
        pytest.fail("trace protocol errors: " + "; ".join(run.protocol_errors[:5]))
    if not scoreboard.passed:
        pytest.fail(scoreboard.summary())
    assert run.cocotb_passed, f"the testbench's own check failed; see {run.log}"


def test_verilator_and_icarus_agree_with_the_golden_model_and_each_other(tmp_path):
    bundle = random_bundle(**AGREE_BUNDLE)
    images = random_images(12, bundle, 12)
    runs = {}
    for simulator in ("verilator", "icarus"):
        run, scoreboard = simulate(bundle, "agree", images, tmp_path / simulator, simulator, lanes=3)
        assert_exact(run, scoreboard)
        runs[simulator] = run
    # Same seed, same stalls: the two simulators must agree cycle for cycle.
    cycles = {sim: [h.cycles for h in run.hardware] for sim, run in runs.items()}
    assert cycles["verilator"] == cycles["icarus"]
    assert runs["verilator"].simulated_cycles == runs["icarus"].simulated_cycles


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_reset_in_the_middle_of_a_frame_then_exact_results(simulator, tmp_path):
    """rst while the encoder emits half of a window and layer 1 integrates it, the next image
    streaming in; every image driven after the reset must be exact."""
    bundle = random_bundle(**AGREE_BUNDLE)
    images = random_images(12, bundle, 12)
    settings = StimulusSettings(seed=6, input_gap=0.2, result_stall=0.2, trace_stall=0.2, reset_mid_frame=True)
    run, scoreboard = simulate(bundle, "agree", images, tmp_path, simulator, lanes=3, settings=settings)
    assert_exact(run, scoreboard)


@pytest.mark.parametrize("seed", [21, 22, 23, 24])
def test_seeded_random_bundles_on_icarus(seed, tmp_path):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(2, 4))
    sizes = [int(rng.integers(4, 20))] + [int(rng.integers(1, 12)) for _ in range(depth)]
    bundle = random_bundle(rng, sizes=sizes, time_steps=int(rng.choice([2, 4, 8, 16, 32])))
    lanes = int(rng.choice([1, 2, 3, 8, max(sizes[1:])]))
    pixels_per_beat = int(rng.integers(1, 4))
    images = random_images(rng, bundle, 8)
    run, scoreboard = simulate(bundle, f"random{seed}", images, tmp_path, "icarus", lanes, pixels_per_beat,
                               settings=StimulusSettings(seed=seed, input_gap=0.25, result_stall=0.25,
                                                         trace_stall=0.25, reset_mid_frame=False))
    assert_exact(run, scoreboard)


# (seed, simulator, reset in the middle of a frame): small version-2 bundles
# (1-2 conv2d layers of 1-8 channels, k in {1, 3, 5}, 'same'/'valid', pools,
# per-channel or per-position biases, then dense layers and the readout).
CONV_RUNS = [(31, "icarus", False), (32, "icarus", True), (33, "verilator", True)]


@pytest.mark.parametrize("seed, simulator, reset_mid_frame", CONV_RUNS)
def test_seeded_random_conv_bundles(seed, simulator, reset_mid_frame, tmp_path):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(3, 9)), int(rng.integers(3, 9)))
    bundle = random_conv_bundle(rng, input_shape=shape, time_steps=int(rng.choice([2, 4, 8, 16])))
    assert bundle.layers[0].is_conv
    lanes = int(rng.choice([1, 2, 3, 8]))
    images = random_images(rng, bundle, 6)
    settings = StimulusSettings(seed=seed, input_gap=0.25, result_stall=0.25, trace_stall=0.25,
                                reset_mid_frame=reset_mid_frame)
    run, scoreboard = simulate(bundle, f"conv{seed}", images, tmp_path, simulator, lanes, 2, settings=settings)
    assert_exact(run, scoreboard)


@pytest.mark.slow
def test_trained_mnist_vgg_on_10_images(tmp_path):
    """The conv fixture (conv16 k3 pool2, conv32 k3 pool2, readout) on Verilator, with stalls
    and the reset in the middle of a frame (the Verilator build alone takes minutes)."""
    from ttfs.contract.datasets import load_dataset

    images = load_dataset("mnist-sample", "test").images[:10]
    bundle = load_bundle(FIXTURES / "mnist-vgg")
    run, scoreboard = simulate(bundle, "mnist-vgg", images, tmp_path, "verilator", lanes=16,
                               pixels_per_beat=8,
                               settings=StimulusSettings(seed=7, input_gap=0.1, result_stall=0.1,
                                                         trace_stall=0.1, reset_mid_frame=True))
    assert_exact(run, scoreboard)


@pytest.mark.parametrize("name", EDGE_FIXTURES)
def test_edge_fixtures_match_their_vectors(name, tmp_path):
    bundle_dir = FIXTURES / name
    bundle = load_bundle(bundle_dir)
    with np.load(bundle_dir / "vectors.npz", allow_pickle=False) as vectors:
        images = vectors["images"]
        logits, classes = vectors["logits"], vectors["classes"]
        activations = [vectors[f"activations_{k}"] for k in range(1 + len(bundle.hidden_layers))]
    run, scoreboard = simulate(bundle, name, images, tmp_path, "icarus", lanes=3, pixels_per_beat=2)
    assert_exact(run, scoreboard)
    # Independently of ttfs.sim.golden: the fixture's stored numbers.
    from ttfs.sim.golden import activations_from_trace
    for image, hardware in enumerate(run.hardware):
        assert hardware.logits.tolist() == logits[image].tolist()
        assert hardware.cls == classes[image]
        for layer, trace in enumerate(hardware.traces):
            width = activations[layer].shape[1]
            assert activations_from_trace(trace, width, bundle.time_steps).tolist() == \
                activations[layer][image].tolist()


def _flip_weight_bit(bundle, layer_index, row, column, bit):
    """A copy of ``bundle`` with one bit of one weight flipped (two's complement, weight_bits wide)."""
    layer = bundle.layers[layer_index]
    weight = layer.weight.copy()
    width = layer.weight_bits
    raw = (int(weight[row, column]) & ((1 << width) - 1)) ^ (1 << bit)
    weight[row, column] = raw - (1 << width) if raw >> (width - 1) else raw
    layers = list(bundle.layers)
    layers[layer_index] = Layer(**{**layer.__dict__, "weight": weight})
    return type(bundle)(**{**bundle.__dict__, "layers": tuple(layers)})


def _visible_fault(bundle, images, layer_index):
    """(row, column, bit) of a sign-bit flip in ``layer_index`` that changes some image's results."""
    golden = golden_run(bundle, images)
    layer = bundle.layers[layer_index]
    bit = layer.weight_bits - 1                     # the sign bit: the largest change
    for row in range(layer.outputs):
        for column in range(layer.inputs):
            faulty = golden_run(_flip_weight_bit(bundle, layer_index, row, column, bit), images)
            if layer.readout:
                changed = not np.array_equal(faulty.logits, golden.logits)
            else:
                changed = not np.array_equal(faulty.activations[layer_index + 1],
                                             golden.activations[layer_index + 1])
            if changed:
                return row, column, bit
    raise AssertionError("no visible single-bit fault found")


def _expected_first_divergence(bundle, faulty, images):
    """(image, layer) where the golden models of the two bundles first part."""
    good, bad = golden_run(bundle, images), golden_run(faulty, images)
    for image in range(len(images)):
        for layer in range(len(good.activations)):
            if not np.array_equal(good.activations[layer][image], bad.activations[layer][image]):
                return image, layer
        if not np.array_equal(good.logits[image], bad.logits[image]):
            return image, len(good.activations)
    raise AssertionError("the fault changes nothing")


@pytest.mark.parametrize("layer_index", [0, 1])
def test_a_flipped_weight_bit_is_caught_in_the_right_layer(layer_index, tmp_path):
    """Fault injection: the core is built from a bundle with one weight bit flipped,
    the testbench checks it against the original bundle's golden model."""
    # R = 2 in fc1, so most weight changes move a spike.
    bundle = random_bundle(31, sizes=(16, 8, 4), time_steps=8, weight_bits=5, ramp_shifts=(1, 0), lut="default")
    images = random_images(32, bundle, 4, zero_fraction=0.1)
    row, column, bit = _visible_fault(bundle, images, layer_index)
    faulty = _flip_weight_bit(bundle, layer_index, row, column, bit)
    image, layer = _expected_first_divergence(bundle, faulty, images)
    # fc1's fault shows first in fc1 (layer 1), never in the encoder; the readout's in its logits.
    assert layer == layer_index + 1
    run, scoreboard = simulate(faulty, f"fault{layer_index}-{row}-{column}", images, tmp_path, "icarus",
                               lanes=3, reference=bundle)
    assert not run.cocotb_passed, "the testbench did not fail on a faulty core"
    first = scoreboard.first_divergence
    assert first is not None
    assert (first.image, first.layer, first.neuron) == (image, layer, row)
    if layer_index == 0:
        assert first.layer_name == "fc1" and first.kind in ("missing spike", "extra spike", "wrong step")
    else:
        assert first.layer_name == "out" and first.kind == "logit"
    assert f"first divergence: image {image}, layer {layer}" in str(first)


def test_trained_mnist_small_on_200_images(tmp_path):
    bundle_dir = FIXTURES / "mnist-small"
    if not (bundle_dir / "network.json").is_file():
        pytest.skip("fixtures/bundles/mnist-small is not exported yet")
    from ttfs.contract.datasets import load_dataset

    images = load_dataset("mnist-sample", "test").images[:200]
    bundle = load_bundle(bundle_dir)
    run, scoreboard = simulate(bundle, "mnist-small", images, tmp_path, "verilator", lanes=16,
                               pixels_per_beat=8,
                               settings=StimulusSettings(seed=3, input_gap=0.1, result_stall=0.1,
                                                         trace_stall=0.1, reset_mid_frame=False))
    assert_exact(run, scoreboard)


def test_default_mnist_fc2_on_50_images(tmp_path):
    bundle_dir = FIXTURES / "mnist-fc2"
    if not (bundle_dir / "network.json").is_file():
        pytest.skip("fixtures/bundles/mnist-fc2 is not exported yet")
    from ttfs.contract.datasets import load_dataset

    images = load_dataset("mnist-sample", "test").images[:50]
    bundle = load_bundle(bundle_dir)
    run, scoreboard = simulate(bundle, "mnist-fc2", images, tmp_path, "verilator", lanes=16,
                               pixels_per_beat=8,
                               settings=StimulusSettings(seed=4, input_gap=0.1, result_stall=0.1,
                                                         trace_stall=0.1, reset_mid_frame=False))
    assert_exact(run, scoreboard)


# ---------------------------------------------------------------- ttfs sim


def _ttfs(*argv):
    from ttfs.cli.main import main

    return main(list(argv))


def test_ttfs_sim_reports_and_draws(tmp_path, capsys):
    out = tmp_path / "out"
    status = _ttfs("sim", "--bundle", str(FIXTURES / "edge-silent"), "--images", "9", "--sim", "icarus",
                   "--lanes", "2", "--pixels-per-beat", "4", "--no-reset-test", "--out", str(out))
    printed = capsys.readouterr().out
    assert status == 0, printed
    report = json.loads((out / "report.json").read_text())
    for key in ("images", "hw_accuracy", "golden_accuracy", "mismatched_images", "spike_mismatches",
                "cycles_per_image", "spikes_per_neuron", "simulator", "lanes", "bundle"):
        assert key in report
    assert report["images"] == 9 and report["mismatched_images"] == 0 and report["spike_mismatches"] == 0
    assert report["simulator"] == "icarus" and report["lanes"] == 2
    assert report["hw_accuracy"] is None  # vectors and random images carry no labels
    cycles = report["cycles_per_image"]
    assert 0 < cycles["min"] <= cycles["median"] <= cycles["max"]
    assert list(report["spikes_per_neuron"]) == ["input", "fc1", "fc2"]
    assert (out / "raster.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<testsuite" in (out / "results.xml").read_bytes()
    assert "PASS" in printed and "cycles per image" in printed


def test_ttfs_sim_rejects_a_bad_bundle_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURES / "edge-t2", bad)
    document = json.loads((bad / "network.json").read_text())
    document["time_steps"] = 512                 # over the contract's 256
    (bad / "network.json").write_text(json.dumps(document))
    status = _ttfs("sim", "--bundle", str(bad), "--sim", "icarus", "--out", str(tmp_path / "out"))
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert len(error.splitlines()) == 1 and "time_steps" in error


def test_ttfs_sim_names_a_missing_simulator(tmp_path, capsys, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool, *a, **k: None if tool == "iverilog" else real_which(tool))
    status = _ttfs("sim", "--bundle", str(FIXTURES / "edge-t2"), "--sim", "icarus",
                   "--out", str(tmp_path / "out"))
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert len(error.splitlines()) == 1 and "iverilog" in error
    with pytest.raises(SimulatorMissing):
        build_core(load_bundle(FIXTURES / "edge-t2"), "edge-t2", 1, "icarus", tmp_path)

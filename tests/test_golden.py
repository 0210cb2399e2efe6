"""The golden model: exact closed form, encoder, traces, bounds, and cross-checks."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import ttfs.sim.golden as golden_module
from ttfs.contract.bundle import Bundle, BundleError, Layer, default_lut, load_bundle
from ttfs.sim.event_model import run_events
from ttfs.sim.golden import (
    GoldenError,
    activations_from_trace,
    encode,
    potential_bounds,
    run,
    trace_from_activations,
)
from ttfs.sim.random_bundle import random_bundle, random_images


def worked_example() -> Bundle:
    """The 3-input, 2-neuron layer at T=4 of docs/fixed-point.md, plus a 2-class readout."""
    hidden = Layer(
        name="fc1", kind="dense", inputs=3, outputs=2, weight_bits=3, ramp_shift=1, readout=False,
        weight=np.array([[2, 1, -3], [-1, 2, 1]]), bias=np.array([-1, -4]),
    )
    readout = Layer(
        name="out", kind="dense", inputs=2, outputs=2, weight_bits=2, ramp_shift=0, readout=True,
        weight=np.array([[1, -1], [-1, 1]]), bias=np.array([0, 0]),
    )
    return Bundle(
        time_steps=4, channels=1, height=1, width=3, lut=default_lut(4)[None, :],
        layers=(hidden, readout), classes=("a", "b"),
    )


def float_reference(bundle: Bundle, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The contract evaluated as a float64 ReLU network on the same integers."""
    batch = images.reshape(images.shape[0], bundle.channels, -1)
    current = np.concatenate(
        [bundle.lut[c].astype(np.float64)[batch[:, c]] for c in range(bundle.channels)], axis=1
    )
    activations = [current]
    for layer in bundle.hidden_layers:
        pre = current @ layer.weight.T.astype(np.float64) + layer.bias
        current = np.clip(np.floor(pre / 2.0**layer.ramp_shift), 0, bundle.time_steps)
        activations.append(current)
    logits = current @ bundle.readout.weight.T.astype(np.float64) + bundle.readout.bias
    return activations, logits


def integer_reference(bundle: Bundle, images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The closed form in pure int64 (no BLAS): right shift is floor toward -inf."""
    current = encode(bundle, images)
    activations = [current]
    for layer in bundle.hidden_layers:
        potential = (current[:, :, None] * layer.weight.T[None, :, :]).sum(axis=1) + layer.bias
        current = np.clip(potential >> layer.ramp_shift, 0, bundle.time_steps)
        activations.append(current)
    logits = (current[:, :, None] * bundle.readout.weight.T[None, :, :]).sum(axis=1) + bundle.readout.bias
    return activations, logits


def test_worked_example():
    bundle = worked_example()
    images = np.array([[[[160, 128, 0]]]], dtype=np.uint8)
    result = run(bundle, images)
    assert result.activations[0].tolist() == [[3, 2, 0]]
    # V = [2*3 + 1*2, -3 + 4] = [8, 1]; (V + Bias) / 2 = [3.5, -1.5] -> floor [3, -2] -> clip [3, 0]
    assert result.activations[1].tolist() == [[3, 0]]
    assert result.logits.tolist() == [[3, -3]]
    assert result.classes.tolist() == [0]
    traces = result.traces(0)
    assert traces[0].tolist() == [[1, 0], [2, 1]]
    assert traces[1].tolist() == [[1, 0]]
    events, logits, label = run_events(bundle, images[0])
    assert [t.tolist() for t in events] == [t.tolist() for t in traces]
    assert logits.tolist() == [3, -3] and label == 0


def test_random_networks_agree_with_event_model_and_float_reference():
    """Over 600 random networks (depth 1-4, T 2..256, weight_bits 2..16, any
    ramp_shift, negative/zero biases, three kinds of LUT), the golden model
    equals the literal event model and a float64 ReLU reference exactly."""
    rng = np.random.default_rng(7)
    networks = 600
    depths, steps_seen, bits_seen = set(), set(), set()
    fired_partly = 0
    for _ in range(networks):
        bundle = random_bundle(rng)
        depths.add(len(bundle.layers))
        steps_seen.add(bundle.time_steps)
        bits_seen.update(layer.weight_bits for layer in bundle.layers)
        images = random_images(rng, bundle, 4)
        result = run(bundle, images)

        reference, reference_logits = float_reference(bundle, images)
        for ours, theirs in zip(result.activations, reference, strict=True):
            assert np.array_equal(ours, theirs)
        assert np.array_equal(result.logits, reference_logits)

        for image in range(len(images)):
            traces, logits, label = run_events(bundle, images[image])
            golden_traces = result.traces(image)
            assert len(traces) == len(golden_traces)
            for event_trace, golden_trace in zip(traces, golden_traces):
                assert np.array_equal(event_trace, golden_trace)
            assert np.array_equal(logits, result.logits[image])
            assert label == result.classes[image]
        if any(0 < (a > 0).mean() < 1 for a in result.activations[1:]):
            fired_partly += 1
    assert depths == {1, 2, 3, 4}
    assert steps_seen == {2, 4, 8, 16, 32, 64, 128, 256}
    assert bits_seen == set(range(2, 17))
    # The sweep is only meaningful if hidden layers neither all fire nor all stay silent.
    assert fired_partly > networks // 3


@pytest.mark.parametrize("time_steps, weight_bits, inputs", [(256, 16, 300), (16, 5, 784), (256, 16, 2)])
def test_extreme_values_are_exact(time_steps, weight_bits, inputs):
    """Largest weights and activations: float32 and float64 paths stay exact."""
    rng = np.random.default_rng(inputs)
    limit = 1 << (weight_bits - 1)
    bundle = random_bundle(
        rng, sizes=(inputs, 7, 3), time_steps=time_steps, weight_bits=weight_bits, lut="threshold"
    )
    extreme = np.where(rng.random((7, inputs)) < 0.5, -limit, limit - 1)
    extreme[0] = limit - 1
    extreme[1] = -limit
    hidden = dataclasses.replace(bundle.layers[0], weight=extreme, ramp_shift=0)
    bundle = dataclasses.replace(bundle, layers=(hidden, bundle.layers[1]))
    images = np.full((3,) + bundle.input_shape, 255, dtype=np.uint8)
    images[1] = rng.integers(0, 256, size=images.shape[1:], dtype=np.uint8)
    images[2] = 0
    result = run(bundle, images)
    reference, reference_logits = integer_reference(bundle, images)
    for ours, theirs in zip(result.activations, reference, strict=True):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(result.logits, reference_logits)


def _wide_readout(inputs: int, time_steps: int) -> Bundle:
    """One readout layer of 16-bit weights 32767; pixel 0 encodes to 1, the rest to T."""
    weight = np.full((1, inputs), 2**15 - 1, dtype=np.int64)
    readout = Layer("out", "dense", inputs, 1, 16, 0, True, weight, np.array([2]))
    lut = np.full((1, 256), time_steps, dtype=np.int64)
    lut[0, 0] = 1
    return Bundle(time_steps=time_steps, channels=1, height=1, width=inputs, lut=lut, layers=(readout,))


@pytest.mark.parametrize("inputs, time_steps, dtype", [(255, 2, np.float32), (130, 4, np.float64)])
def test_float_precision_follows_the_bound(inputs, time_steps, dtype):
    """Odd logits just below 2**24 are exact in float32; just above, float64 is used
    (float32 would round 32767 * 517 + 2 to an even number)."""
    bundle = _wide_readout(inputs, time_steps)
    images = np.full((1, 1, 1, inputs), 255, dtype=np.uint8)
    images[0, 0, 0, 0] = 0
    expected = (2**15 - 1) * (time_steps * (inputs - 1) + 1) + 2
    assert expected % 2 == 1 and (expected < 2**24) == (dtype is np.float32)
    assert golden_module._compile(bundle)[0].weight.dtype == dtype
    assert run(bundle, images).logits.tolist() == [[expected]]


def test_batch_size_does_not_change_results(small_bundle, small_images):
    whole = run(small_bundle, small_images)
    pieces = run(small_bundle, small_images, batch_size=3)
    for a, b in zip(whole.activations, pieces.activations):
        assert np.array_equal(a, b)
    assert np.array_equal(whole.logits, pieces.logits)


def test_readout_ties_go_to_the_lowest_class():
    bundle = random_bundle(np.random.default_rng(3), sizes=(4, 3, 4), time_steps=8, weight_bits=4)
    readout = bundle.readout
    weight = np.repeat(readout.weight[:1], 4, axis=0)
    tied = dataclasses.replace(readout, weight=weight, bias=np.array([5, 7, 7, 7]))
    bundle = dataclasses.replace(bundle, layers=(bundle.layers[0], tied))
    images = random_images(np.random.default_rng(4), bundle, 20)
    result = run(bundle, images)
    assert (result.classes == 1).all()
    assert (result.logits[:, 1] == result.logits[:, 3]).all()


def test_encoder_uses_channel_lut_and_chw_order():
    lut = np.zeros((2, 256), dtype=np.int64)
    lut[0, :] = np.arange(256) % 5
    lut[1, :] = 4 - np.arange(256) % 5
    readout = Layer("out", "dense", 12, 1, 2, 0, True, np.zeros((1, 12), dtype=np.int64), np.zeros(1, dtype=np.int64))
    bundle = Bundle(time_steps=4, channels=2, height=2, width=3, lut=lut, layers=(readout,))
    images = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    encoded = encode(bundle, images)
    pixels = np.arange(12)
    expected = np.where(pixels < 6, pixels % 5, 4 - pixels % 5)
    assert encoded.tolist() == [expected.tolist()]
    assert encoded.dtype == np.int64


def test_images_without_channel_axis_when_single_channel(small_bundle, small_images):
    with_axis = run(small_bundle, small_images)
    without = run(small_bundle, small_images[:, 0])
    assert np.array_equal(with_axis.logits, without.logits)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 1, 4, 4), dtype=np.float32), r"dtype float32, expected uint8 of shape \(N, 1, 4, 4\)"),
        (np.zeros((2, 1, 4, 5), dtype=np.uint8), r"shape \(2, 1, 4, 5\) does not match"),
        (np.zeros((2, 16), dtype=np.uint8), r"expected uint8 of shape \(N, 1, 4, 4\) or \(N, 4, 4\)"),
        (np.zeros((2, 1, 4, 4), dtype=np.int64), "dtype int64"),
        (np.zeros((0, 1, 4, 4), dtype=np.uint8), "empty"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_images_are_one_clear_error(small_bundle, images, message):
    with pytest.raises(GoldenError, match=message):
        run(small_bundle, images)


def test_trace_round_trip_and_canonical_order(rng):
    for steps in (2, 16, 256):
        activations = rng.integers(0, steps + 1, size=50)
        trace = trace_from_activations(activations, steps)
        assert trace.shape == (np.count_nonzero(activations), 2)
        keys = [tuple(event) for event in trace.tolist()]
        assert keys == sorted(keys)
        assert (trace[:, 0] == steps - activations[trace[:, 1]]).all()
        assert np.array_equal(activations_from_trace(trace, 50, steps), activations)
        assert np.array_equal(activations_from_trace(trace[::-1], 50, steps), activations)
    assert trace_from_activations(np.zeros(4, dtype=np.int64), 8).shape == (0, 2)
    assert activations_from_trace(np.zeros((0, 2), dtype=np.int64), 3, 8).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "trace, message",
    [
        ([[8, 0]], "steps"),
        ([[-1, 0]], "steps"),
        ([[0, 3]], "neurons"),
        ([[0, 1], [2, 1]], "more than once"),
        ([[0.5, 1.0]], "integer"),
    ],
)
def test_bad_traces_are_rejected(trace, message):
    with pytest.raises(GoldenError, match=message):
        activations_from_trace(np.array(trace), 3, 8)


def test_bad_activations_are_rejected():
    with pytest.raises(GoldenError, match="0..8"):
        trace_from_activations(np.array([9]), 8)


def test_spikes_per_neuron_counts_firing_fraction(small_bundle, small_images):
    result = run(small_bundle, small_images)
    fractions = result.spikes_per_neuron()
    assert len(fractions) == len(small_bundle.layers)
    for fraction, layer_activations in zip(fractions, result.activations):
        firing = sum(len(trace) for trace in [trace_from_activations(row, 8) for row in layer_activations])
        assert fraction == pytest.approx(firing / layer_activations.size)


def test_potential_bounds_hand_computed():
    bounds = potential_bounds(worked_example())
    # fc1: T*max(|2|+|1|+|-3|, |-1|+|2|+|1|) -> neuron 0: 4*6 + 1 + 5*2 = 35, neuron 1: 4*4 + 4 + 10 = 30
    assert bounds[0].per_neuron.tolist() == [35, 30]
    assert bounds[0].bound == 35 and bounds[0].bits == 7  # -64..63 holds +-35
    # section 6 keeps the ramp term for the readout too (ramp_shift 0): 4*2 + 0 + 5*1
    assert bounds[1].bound == 13 and bounds[1].bits == 5
    assert [b.name for b in bounds] == ["fc1", "out"]


def test_potential_bounds_are_reached(rng):
    """The bound is tight: all inputs at T and weights of one sign reach T*sum|W|."""
    weight = np.full((1, 5), 3, dtype=np.int64)
    readout = Layer("out", "dense", 5, 1, 3, 0, True, weight, np.array([-2]))
    bundle = Bundle(time_steps=8, channels=1, height=1, width=5, lut=np.full((1, 256), 8), layers=(readout,))
    result = run(bundle, np.zeros((1, 1, 5), dtype=np.uint8))
    assert result.logits.tolist() == [[8 * 15 - 2]]
    assert potential_bounds(bundle)[0].bound == 8 * 15 + 2 + (8 + 1) * 1


def test_run_checks_the_bound(small_bundle, small_images, monkeypatch):
    """A potential beyond the section-6 bound stops the run instead of passing silently."""
    real = golden_module.layer_potential_bounds
    monkeypatch.setattr(golden_module, "layer_potential_bounds", lambda layer, steps: real(layer, steps) * 0)
    with pytest.raises(GoldenError, match="exceeds its bound"):
        run(small_bundle, small_images)


def test_run_rejects_invalid_bundle(small_bundle, small_images):
    broken = dataclasses.replace(small_bundle, time_steps=6)
    with pytest.raises(BundleError, match="time_steps"):
        run(broken, small_images)


# ---------------------------------------------------------------------------
# committed edge-case fixtures (fixtures/bundles/edge-*, tools/make_edge_fixtures.py)

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = REPO_ROOT / "fixtures" / "bundles"
FIXTURE_NAMES = (
    "edge-bias", "edge-deep", "edge-saturated", "edge-silent", "edge-t2",
    "edge-t256", "edge-ties", "edge-wb16", "edge-wb2",
)


def _fixture_tool():
    spec = importlib.util.spec_from_file_location("make_edge_fixtures", REPO_ROOT / "tools" / "make_edge_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fixture_set_is_complete():
    assert tuple(sorted(p.name for p in FIXTURE_DIR.glob("edge-*"))) == FIXTURE_NAMES


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_committed_fixture_matches_golden_and_event_model(name):
    bundle = load_bundle(FIXTURE_DIR / name)
    with np.load(FIXTURE_DIR / name / "vectors.npz", allow_pickle=False) as vectors:
        stored = {key: vectors[key] for key in vectors.files}
    images = stored["images"]
    assert images.dtype == np.uint8 and images.shape[1:] == bundle.input_shape
    result = run(bundle, images)
    assert len(result.activations) == len(bundle.layers)
    for index, activations in enumerate(result.activations):
        assert np.array_equal(stored[f"activations_{index}"], activations)
    assert np.array_equal(stored["logits"], result.logits)
    assert np.array_equal(stored["classes"], result.classes)
    for image in range(len(images)):
        traces, logits, label = run_events(bundle, images[image])
        assert all(np.array_equal(a, b) for a, b in zip(traces, result.traces(image), strict=True))
        assert np.array_equal(logits, result.logits[image]) and label == result.classes[image]
    assert sum(p.stat().st_size for p in (FIXTURE_DIR / name).iterdir()) < 8192


def test_fixtures_show_their_edges():
    loaded = {name: load_bundle(FIXTURE_DIR / name) for name in FIXTURE_NAMES}
    assert loaded["edge-t2"].time_steps == 2 and loaded["edge-t256"].time_steps == 256
    assert {layer.weight_bits for layer in loaded["edge-wb2"].layers} == {2}
    assert {layer.weight_bits for layer in loaded["edge-wb16"].layers} == {16}
    assert loaded["edge-wb16"].layers[0].weight.min() == -(2**15)
    assert loaded["edge-wb16"].layers[0].weight.max() == 2**15 - 1
    bias = loaded["edge-bias"].layers[0].bias
    assert (bias < 0).any() and (bias == 0).any()
    assert loaded["edge-deep"].channels == 3 and len(loaded["edge-deep"].layers) == 4
    for name in FIXTURE_NAMES:
        with np.load(FIXTURE_DIR / name / "vectors.npz") as vectors:
            assert not vectors["images"][0].any()  # every fixture has the all-silent input
            if name == "edge-ties":
                assert (vectors["classes"] == 1).all()
                assert (vectors["logits"][:, 1] == vectors["logits"][:, 3]).all()
            if name == "edge-saturated":
                assert (vectors["activations_1"][:, :6] == 16).all()
            if name == "edge-silent":
                assert not vectors["activations_2"].any()


def test_fixtures_are_reproducible(tmp_path):
    _fixture_tool().write_fixtures(tmp_path)
    for name in FIXTURE_NAMES:
        committed = sorted(p.name for p in (FIXTURE_DIR / name).iterdir())
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == committed
        for file_name in committed:
            assert (tmp_path / name / file_name).read_bytes() == (FIXTURE_DIR / name / file_name).read_bytes()

"""Quantisation (ttfs.sw.quantize): scale rules, integer conversion, the integer torch forward, QAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from ttfs.contract.datasets import load_dataset
from ttfs.contract.errors import TTFSError
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_images
from ttfs.sw import models
from ttfs.sw.export import build_bundle
from ttfs.sw.quantize import (
    IntegerNetwork,
    QuantizeError,
    calibrate,
    check_expressible,
    check_time_steps,
    check_weight_bits,
    finetune,
    round_half_up,
)
from ttfs.sw.ttfs import Alpha1Dense


@pytest.fixture(scope="module")
def sample():
    """The embedded MNIST sample: (train, test)."""
    return load_dataset("mnist-sample", "train"), load_dataset("mnist-sample", "test")


@pytest.fixture(scope="module")
def float_model(sample):
    """A tiny 784-12-10 TTFS network, float64, trained for one short epoch."""
    train, _ = sample
    torch.manual_seed(3)
    model = models.build_network([784, 12, 10], seed=3, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images = torch.from_numpy(train.images[:1000].astype(np.float64) / 255)
    labels = torch.from_numpy(train.labels[:1000])
    model.train()
    for index in torch.arange(1000).split(50):
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.mark.parametrize("bits", [1, 17, 0, -3, True, 4.0])
def test_weight_bits_out_of_range_are_refused(bits):
    with pytest.raises(QuantizeError, match="weight bits"):
        check_weight_bits(bits)


@pytest.mark.parametrize("steps", [1, 3, 24, 512, 0, 100])
def test_time_steps_not_power_of_two_in_range_are_refused(steps):
    with pytest.raises(QuantizeError, match="time steps"):
        check_time_steps(steps)


def test_quantize_error_is_a_ttfs_error():
    assert issubclass(QuantizeError, TTFSError)
    assert check_weight_bits(2) == 2 and check_weight_bits(16) == 16
    assert check_time_steps(2) == 2 and check_time_steps(256) == 256


def test_conv_and_alpha1_layers_are_not_expressible():
    model = models.TTFSNetwork([16, 4, 3])
    model.layers[0] = nn.Conv2d(1, 4, 3)
    with pytest.raises(QuantizeError, match=r"layers\[0\] \(Conv2d\)"):
        check_expressible(model)
    alpha = models.TTFSNetwork([16, 4, 3])
    alpha.layers[0] = Alpha1Dense(16, 4, t_min=1.0, t_max=2.0)
    with pytest.raises(QuantizeError, match=r"layers\[0\] \(Alpha1Dense\)"):
        check_expressible(alpha)


@pytest.mark.parametrize("bits, steps", [(2, 4), (5, 16), (8, 32), (16, 256)])
def test_calibration_ties_scales_by_a_power_of_two_ramp(float_model, sample, bits, steps):
    train, _ = sample
    plan = calibrate(float_model, train.images[:200], bits, steps)
    assert plan.lut.shape == (1, 256) and plan.lut[0, 255] == steps and plan.lut[0, 0] == 0
    hidden, readout = plan.layers
    assert hidden.input_step == 1 / steps
    # Section 7: R = Delta(n) / (S(n) Delta(n-1)).
    assert hidden.ramp == pytest.approx(hidden.activation_step / (hidden.weight_scale * hidden.input_step), rel=1e-12)
    assert hidden.bias_offset == hidden.ramp // 2
    assert readout.input_step == hidden.activation_step
    network = IntegerNetwork.from_float(float_model, plan)
    weight = network.integer_arrays()[0][0]
    low, high = hidden.weight_range
    assert low <= weight.min() and weight.max() <= high
    unclamped = round_half_up(float_model.layers[0].weight.detach() / hidden.weight_scale)
    assert unclamped.min() >= low and unclamped.max() <= high  # no overflow at the chosen shift
    if hidden.ramp_shift < 30:
        # One more shift would overflow: the chosen one uses the range best.
        doubled = round_half_up(float_model.layers[0].weight.detach() * 2 / hidden.weight_scale)
        assert doubled.min() < low or doubled.max() > high
    readout_weight = network.integer_arrays()[1][0]
    assert np.abs(readout_weight).max() == high


def test_integer_forward_equals_golden_on_random_bundles():
    for seed in range(12):
        rng = np.random.default_rng(seed)
        bundle = random_bundle(rng, sizes=(20, 9, 7, 4), input_shape=(1, 4, 5))
        images = random_images(rng, bundle, 40)
        expected = golden.run(bundle, images)
        logits, activations = IntegerNetwork.from_bundle(bundle).predict(images)
        np.testing.assert_array_equal(logits, expected.logits)
        assert len(activations) == len(expected.activations)
        for mine, theirs in zip(activations, expected.activations):
            np.testing.assert_array_equal(mine, theirs)


def test_integer_forward_is_the_float_layer_quantised_when_weights_lie_on_the_grid(float_model, sample):
    """Section 7: with W = W_int S and b = Bias_int S Delta(0), hidden activations are round(x / Delta(1))."""
    train, test = sample
    steps = 16
    plan = calibrate(float_model, train.images[:200], 6, steps)
    hidden = plan.layers[0]
    on_grid = models.build_network([784, 12, 10], seed=3, dtype=torch.float64)
    on_grid.load_state_dict(float_model.state_dict())
    with torch.no_grad():
        layer = on_grid.layers[0]
        layer.weight.copy_(round_half_up(layer.weight / hidden.weight_scale).clamp(*hidden.weight_range) * hidden.weight_scale)
        layer.bias.copy_(round_half_up(layer.bias / hidden.bias_scale) * hidden.bias_scale)
        layer.t_max.copy_(layer.t_min + 1e6)  # no saturation in the float network
        on_grid.layers[1].t_min.copy_(layer.t_max)
        on_grid.layers[1].t_max.copy_(layer.t_max)
    # Binary images: pixels 0 and 255 are exactly 0 and T steps of Delta(0) = 1/T.
    images = np.where(test.images[:300] > 127, 255, 0).astype(np.uint8)
    _, times = on_grid(torch.from_numpy(images / 255.0), return_times=True)
    float_hidden = on_grid.activations(times)[1].detach().numpy()
    _, activations = IntegerNetwork.from_float(on_grid, plan).predict(images)
    expected = np.clip(np.floor(float_hidden / hidden.activation_step + 0.5 + 1e-9), 0, steps)
    assert np.count_nonzero(activations[1]) > 0
    np.testing.assert_array_equal(activations[1], expected.astype(np.int64))


def test_straight_through_gradients_reach_the_float_parameters(float_model, sample):
    train, _ = sample
    plan = calibrate(float_model, train.images[:200], 5, 16)
    network = IntegerNetwork.from_float(float_model, plan)
    logits, _ = network(torch.from_numpy(train.images[:64]))
    loss = nn.functional.cross_entropy(network.float_logits(logits), torch.from_numpy(train.labels[:64]))
    loss.backward()
    for parameter in network.parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) > 0


def test_finetuned_integer_network_is_what_the_golden_model_runs(float_model, sample):
    train, test = sample
    plan = calibrate(float_model, train.images[:200], 4, 8)
    network = IntegerNetwork.from_float(float_model, plan)
    before = network.integer_arrays()
    history = finetune(network, train.images[:800], train.labels[:800], 2, lr=1e-3, seed=5)
    assert [record["epoch"] for record in history] == [1, 2]
    after = network.integer_arrays()
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(before, after))  # QAT changed integer weights
    bundle = build_bundle(plan, after, (1, 28, 28), [str(k) for k in range(10)], {})
    expected = golden.run(bundle, test.images)
    logits, activations = network.predict(test.images)
    np.testing.assert_array_equal(logits, expected.logits)
    for mine, theirs in zip(activations, expected.activations):
        np.testing.assert_array_equal(mine, theirs)
    assert network.accuracy(test.images, test.labels) == pytest.approx(np.mean(expected.classes == test.labels))


def test_finetune_refuses_bad_settings(float_model, sample):
    train, _ = sample
    network = IntegerNetwork.from_float(float_model, calibrate(float_model, train.images[:50], 5, 16))
    with pytest.raises(QuantizeError, match="qat epochs"):
        finetune(network, train.images[:10], train.labels[:10], -1)
    with pytest.raises(QuantizeError, match="qat lr"):
        finetune(network, train.images[:10], train.labels[:10], 1, lr=0)

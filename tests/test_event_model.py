"""The event model: the contract's pseudo-code, checked on hand-traced cases."""

from __future__ import annotations

import numpy as np
import pytest
from ttfs.contract.bundle import Bundle, Layer, conv2d_layer
from ttfs.sim.event_model import (
    EventModelError,
    encode_events,
    fire,
    integrate,
    pool,
    run_events,
    simulate,
)
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images


def _layer(weight, bias, ramp_shift=0, readout=False):
    weight = np.asarray(weight, dtype=np.int64)
    return Layer("l", "dense", weight.shape[1], weight.shape[0], 8, ramp_shift, readout, weight, np.asarray(bias))


def test_ramp_integrator_by_hand():
    # Events: neuron 0 at step 1 (a = 3), neuron 1 at step 2 (a = 2), T = 4.
    layer = _layer([[2, 1, -3], [-1, 2, 1]], [0, 0])
    potential = integrate(layer, [(1, 0), (2, 1)], 4)
    # k=0: V=[0,0]; k=1: slope=[2,-1], V=[2,-1]; k=2: slope=[3,1], V=[5,0]; k=3: V=[8,1]
    assert potential.tolist() == [8, 1]


def test_integrator_equals_weighted_sum_of_activations(rng):
    for steps in (2, 8, 256):
        layer = _layer(rng.integers(-128, 128, size=(5, 9)), np.zeros(5))
        activations = rng.integers(0, steps + 1, size=9)
        events = [(steps - int(a), j) for j, a in enumerate(activations) if a > 0]
        assert integrate(layer, sorted(events), steps).tolist() == (layer.weight @ activations).tolist()


def test_time_counter_neuron_by_hand():
    # R = 2, T = 4: theta = 10 - Bias.  V + Bias = 7 -> fires at s = 1 (a = 3);
    # V + Bias = -3 -> never; V + Bias = 10 (above T*R) -> fires at s = 0 (a = 4, saturated);
    # V + Bias = 2 -> floor(2/2) = 1 -> s = 3; V + Bias = 1 -> floor(1/2) = 0 -> silent.
    layer = _layer(np.zeros((5, 1)), [-1, -4, 0, 0, 0], ramp_shift=1)
    events = fire(layer, np.array([8, 1, 10, 2, 1]), 4)
    assert events == [(0, 2), (1, 0), (3, 3)]


def test_each_neuron_fires_at_most_once():
    layer = _layer(np.zeros((3, 1)), [100, 100, 100])
    events = fire(layer, np.array([0, 5, 9]), 8)
    assert events == [(0, 0), (0, 1), (0, 2)]


def test_encoder_events_are_canonical():
    lut = np.zeros((1, 256), dtype=np.int64)
    lut[0, 10], lut[0, 20], lut[0, 30] = 1, 4, 4
    readout = _layer(np.zeros((1, 4)), [0], readout=True)
    bundle = Bundle(time_steps=4, channels=1, height=2, width=2, lut=lut, layers=(readout,))
    events = encode_events(bundle, np.array([[30, 10], [20, 0]], dtype=np.uint8))
    assert events == [(0, 0), (0, 2), (3, 1)]


def test_readout_ties_keep_lowest_index():
    readout = Layer("out", "dense", 1, 3, 4, 0, True, np.array([[1], [2], [2]]), np.array([0, 0, 0]))
    bundle = Bundle(time_steps=2, channels=1, height=1, width=1, lut=np.full((1, 256), 2), layers=(readout,))
    traces, logits, label = run_events(bundle, np.zeros((1, 1), dtype=np.uint8))
    assert logits.tolist() == [2, 4, 4] and label == 1
    assert traces[0].tolist() == [[0, 0]]


def test_run_events_shapes(rng):
    bundle = random_bundle(rng, sizes=(9, 5, 4, 3), time_steps=16)
    image = random_images(rng, bundle, 1)[0]
    traces, logits, label = run_events(bundle, image)
    assert len(traces) == 3 and all(t.dtype == np.int64 and t.shape[1] == 2 for t in traces)
    assert logits.shape == (3,) and 0 <= label < 3


@pytest.mark.parametrize(
    "image, message",
    [(np.zeros((1, 3, 4), dtype=np.uint8), "shape"), (np.zeros((1, 3, 3), dtype=np.float64), "uint8")],
)
def test_bad_image_is_rejected(rng, image, message):
    bundle = random_bundle(rng, sizes=(9, 2), time_steps=4)
    with pytest.raises(EventModelError, match=message):
        run_events(bundle, image)


# ---------------------------------------------------------------------------
# conv2d layers (contract v2)


def _conv(weight, bias, input_shape, padding="same", pool_size=1, ramp_shift=0):
    return conv2d_layer("c", input_shape, np.asarray(weight, dtype=np.int64), np.asarray(bias, dtype=np.int64),
                        weight_bits=8, ramp_shift=ramp_shift, padding=padding, pool_size=pool_size)


def test_conv_integrator_by_hand():
    # Neuron (0, 1, 0) of docs/fixed-point.md section 11: inputs a(0,0) = 4 (step 0),
    # a(1,1) = 3 (step 1), a(2,0) = 2 (step 2) reach it through taps 1, 1, 1.
    layer = _conv([[[[0, 1, 0], [1, -2, 1], [0, 1, 0]]]], [0], (1, 3, 4))
    potential = integrate(layer, [(0, 0), (1, 5), (2, 8)], 4)
    # slope 1, 2, 3, 3 over steps 0..3, so V = 1, 3, 6, 9
    assert potential[0, 1, 0] == 9
    assert potential.shape == (1, 3, 4)
    # Input (1, 1) = index 5 feeds (0, 1) and (1, 0), (1, 2), (2, 1) with 1 and itself with -2, a = 3 times.
    only = integrate(layer, [(1, 5)], 4)
    assert only.tolist() == [[[0, 3, 0, 0], [3, -6, 3, 0], [0, 3, 0, 0]]]


def test_conv_integrator_is_a_cross_correlation(rng):
    """No flipping: an asymmetric kernel's weight W[ky, kx] meets input (y + ky - pad, x + kx - pad)."""
    weight = np.arange(9).reshape(1, 1, 3, 3) - 4
    layer = _conv(weight, [0], (1, 4, 5), padding="valid")
    activations = rng.integers(0, 9, size=(4, 5))
    events = sorted((8 - int(a), j) for j, a in enumerate(activations.reshape(-1)) if a > 0)
    potential = integrate(layer, events, 8)
    expected = [[int((weight[0, 0] * activations[y:y + 3, x:x + 3]).sum()) for x in range(3)] for y in range(2)]
    assert potential[0].tolist() == expected


def test_conv_neurons_fire_with_their_channel_or_position_bias():
    per_channel = _conv(np.zeros((2, 1, 1, 1)), [3, -1], (1, 1, 2), ramp_shift=0)
    events = fire(per_channel, np.array([[[0, 1]], [[2, 0]]]), 4)
    # a = clip(V + B): (3, 4) for channel 0, (1, 0) for channel 1 -> steps 4 - a
    assert events == [(0, 1), (1, 0), (3, 2)]
    per_position = _conv(np.zeros((1, 1, 1, 1)), [[[4, 0]]], (1, 1, 2), ramp_shift=0)
    assert fire(per_position, np.array([[[0, 2]]]), 4) == [(0, 0), (2, 1)]


def test_pool_passes_the_first_event_of_each_block_and_drops_the_remainder():
    # 1 channel, 3x5 conv output, pool 2 -> 1x2 blocks: rows 0-1, columns 0-1 and 2-3.
    layer = _conv(np.zeros((1, 1, 1, 1)), [0], (1, 3, 5), pool_size=2)
    assert layer.output_shape == (1, 1, 2)
    events = [
        (0, 10),  # row 2: dropped (floor(3/2) = 1 block row)
        (0, 4),   # column 4: dropped (floor(5/2) = 2 block columns)
        (1, 6),   # (1, 1): block 0, first -> passes at step 1
        (1, 7),   # (1, 2): block 1, first -> passes
        (2, 0),   # block 0 again: later, dropped
        (2, 2),   # block 1 again: dropped
    ]
    assert pool(layer, events) == [(1, 0), (1, 1)]
    assert pool(_conv(np.zeros((1, 1, 1, 1)), [0], (1, 3, 5)), events) == events


def test_pool_names_blocks_channel_major():
    layer = _conv(np.zeros((2, 1, 1, 1)), [0, 0], (1, 4, 4), pool_size=2)
    # neuron 16 + 15 = channel 1, (3, 3) -> block (1, 1, 1) = 1*4 + 3
    assert pool(layer, [(0, 31), (3, 0)]) == [(0, 7), (3, 0)]


def test_simulate_conv_network_shapes(rng):
    bundle = random_conv_bundle(rng, input_shape=(2, 6, 6), convs=[(3, 3, "same", 2)], dense=[4, 3], time_steps=8)
    run = simulate(bundle, random_images(rng, bundle, 1)[0])
    assert len(run.traces) == len(run.neuron_traces) == 3
    assert run.traces[1].shape[1] == 2 and (run.traces[1][:, 1] < 3 * 3 * 3).all()
    assert (run.neuron_traces[1][:, 1] < 3 * 6 * 6).all()
    assert np.array_equal(run.traces[2], run.neuron_traces[2])  # a dense layer has no pool
    assert run.logits.shape == (3,) and 0 <= run.label < 3

"""The event model: the contract's pseudo-code, checked on hand-traced cases."""

from __future__ import annotations

import numpy as np
import pytest

from sim.bundle import Bundle, Layer
from sim.event_model import EventModelError, encode_events, fire, integrate, run_events
from sim.random_bundle import random_bundle, random_images


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

"""ConvEngine (hw/conv.py) against the golden model, spike for spike.

Every case builds a random version-2 bundle (or the contract's worked
example), runs a few images through ``ttfs.sim.golden``, feeds the conv
layer's input windows (the encoder traces) to a ConvEngine in amaranth.sim
with random gaps on the input and random back-pressure on the output, and
requires the output windows to equal the golden trace of the layer (the
pooled events), window for window.
"""

from __future__ import annotations

import pytest
from streams import event_beats, simulate, simulate_with_reset
from worked_examples import WORKED_IMAGE, conv_worked_example
from ttfs.contract.streams import split_windows, window_beats
from ttfs.hw.conv import ConvEngine, ConvShape, input_table
from ttfs.hw.errors import HardwareError
from ttfs.hw.rom import pack_biases, pack_weights
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images

IMAGES = 3


def conv_case(seed, input_shape, conv, steps, bias_per, weight_bits=4):
    """A random bundle whose first layer is ``conv`` = (out_channels, k, padding, pool)."""
    return random_conv_bundle(seed, input_shape=input_shape, convs=[conv], dense=[2], time_steps=steps,
                              weight_bits=weight_bits, bias_per=bias_per, lut="random")


def run_conv(bundle, images, lanes, **stream_options):
    """The conv layer's output windows for ``images`` and the golden traces they must equal."""
    steps = bundle.time_steps
    result = golden.run(bundle, images)
    inputs = [result.traces(image)[0] for image in range(len(images))]
    expected = [result.traces(image)[1] for image in range(len(images))]
    beats = [beat for trace in inputs for beat in window_beats(trace, steps)]
    dut = ConvEngine(bundle.layers[0], steps, lanes)
    run = simulate(dut, dut.inp, dut.out, beats, sum(len(trace) + steps for trace in expected),
                   **stream_options)
    windows = split_windows(event_beats(payload for _, payload in run.received), steps)
    return windows, expected


# (seed, input shape, (out_channels, k, padding, pool), T, bias_per, weight_bits, lanes)
CONV_CASES = [
    (5, (1, 3, 3), (1, 1, "valid", 1), 2, "channel", 4, 1),      # k=1, one neuron per position
    (2, (2, 5, 4), (3, 3, "same", 2), 4, "position", 4, 2),      # G = 2, ragged 5-row pool
    (3, (1, 6, 6), (4, 3, "valid", 2), 8, "channel", 4, 4),      # G = 1
    (4, (3, 5, 5), (2, 5, "same", 1), 4, "position", 4, 1),      # k=5 'same', G = 2
    (5, (1, 7, 6), (5, 5, "valid", 1), 16, "channel", 4, 2),     # k=5 'valid', G = 3
    (6, (2, 4, 7), (8, 1, "same", 2), 4, "position", 4, 3),      # k=1, G = 3 with a padded lane
    (7, (1, 6, 5), (2, 3, "same", 3), 8, "channel", 4, 8),       # pool 3, P = O
    (8, (2, 4, 4), (3, 3, "same", 2), 32, "channel", 12, 2),     # wide weights, long window
]


@pytest.mark.parametrize("seed, input_shape, conv, steps, bias_per, weight_bits, lanes", CONV_CASES)
def test_conv_engine_matches_golden(seed, input_shape, conv, steps, bias_per, weight_bits, lanes):
    bundle = conv_case(seed, input_shape, conv, steps, bias_per, weight_bits)
    images = random_images(seed, bundle, IMAGES)
    windows, expected = run_conv(bundle, images, lanes, seed=seed, gap_probability=0.3,
                                 ready_probability=0.5)
    assert len(windows) == len(expected)
    for image, (window, trace) in enumerate(zip(windows, expected)):
        assert window.tolist() == trace.tolist(), f"image {image}"
    assert any(len(trace) for trace in expected), "the case fires nothing: it checks too little"


def test_conv_engine_worked_example():
    bundle = conv_worked_example()
    windows, expected = run_conv(bundle, WORKED_IMAGE[None], lanes=1, ready_probability=0.7)
    assert [window.tolist() for window in windows] == [[[0, 0], [1, 1], [3, 2], [3, 3]]]
    assert expected[0].tolist() == [[0, 0], [1, 1], [3, 2], [3, 3]]


def test_conv_engine_full_speed_and_reset():
    """Full speed both sides, then a reset in the middle of a window: after it the engine
    starts clean (slopes cleared, no stale window) and matches the golden model again."""
    bundle = conv_case(11, (2, 5, 5), (3, 3, "same", 2), 8, "position")
    images = random_images(11, bundle, 4)
    windows, expected = run_conv(bundle, images, lanes=2)
    assert [w.tolist() for w in windows] == [t.tolist() for t in expected]

    steps = bundle.time_steps
    result = golden.run(bundle, images)
    before = [beat for image in range(2) for beat in window_beats(result.traces(image)[0], steps)]
    after_traces = [result.traces(image) for image in (2, 3)]
    after = [beat for traces in after_traces for beat in window_beats(traces[0], steps)]
    dut = ConvEngine(bundle.layers[0], steps, 2)
    run = simulate_with_reset(dut, dut.inp, dut.out, before, len(before) - 5, after,
                              sum(len(traces[1]) + steps for traces in after_traces))
    windows = split_windows(event_beats(payload for _, payload in run.received), steps)
    assert [w.tolist() for w in windows] == [traces[1].tolist() for traces in after_traces]
    rows = 5 * 5 * 2                     # NP * G slope rows to clear
    assert run.first_ready >= rows


def test_conv_rom_packing():
    bundle = conv_case(12, (2, 4, 4), (3, 3, "same", 1), 4, "position", weight_bits=5)
    layer = bundle.layers[0]
    weights = pack_weights(layer, 2)
    assert len(weights) == 2 * 9 * 2
    # Word (tap * G + g), lane l: W[g*P + l] at tap (c, ky, kx) = (1, 2, 0) -> tap 1*9 + 6.
    word = weights[(9 + 6) * 2 + 1]
    assert ((word & 31) ^ 16) - 16 == layer.weight[2, 1, 2, 0]
    assert word >> 5 == 0                                # lane 1 of group 1 is padding
    biases = pack_biases(layer, 2)
    bits = layer.bias_bits
    assert len(biases) == 16 * 2
    lane1 = ((biases[(2 * 4 + 3) * 2] >> bits) & ((1 << bits) - 1))
    assert lane1 - ((lane1 >> (bits - 1)) << bits) == layer.bias[1, 2, 3]
    table = input_table(ConvShape(layer, 4, 2))
    # Input (c, y, x) = (1, 2, 3): y0 = 3, x0 = 4, tap (0, 0) row (3*4 + 4) * 2, weight row 1*9*2.
    assert table[16 + 2 * 4 + 3] == {"y": 3, "x": 4, "row": 32 & 31, "weight_row": 18}


def test_conv_engine_refuses_a_dense_layer():
    bundle = random_bundle(1, sizes=(4, 3, 2), time_steps=4)
    with pytest.raises(HardwareError, match="not 'conv2d'"):
        ConvEngine(bundle.layers[0], 4, 1)
    conv = conv_case(1, (1, 3, 3), (1, 1, "valid", 1), 2, "channel").layers[0]
    with pytest.raises(HardwareError, match="time_steps"):
        ConvEngine(conv, 3, 1)
    with pytest.raises(HardwareError, match="lanes"):
        ConvEngine(conv, 2, 0)

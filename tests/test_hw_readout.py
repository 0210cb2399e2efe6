"""Readout (hw/readout.py) against the golden model: logits, class (ties), widths, errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth import Fragment, signed, unsigned
from streams import simulate, simulate_with_reset
from ttfs.contract.bundle import Bundle, validate
from ttfs.contract.streams import window_beats
from ttfs.hw.errors import HardwareError
from ttfs.hw.readout import Readout, argmax_levels
from ttfs.hw.rom import LaneGeometry
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_images

IMAGES = 4


def readout_case(seed, inputs, outputs, time_steps, weight_bits):
    """A one-layer bundle (inputs -> readout of ``outputs``) and its golden result."""
    bundle = random_bundle(seed, sizes=(inputs, outputs), time_steps=time_steps,
                           weight_bits=weight_bits, lut="random")
    return bundle, golden.run(bundle, random_images(seed, bundle, IMAGES))


def run_readout(bundle, result, lanes, **stream_options):
    """Feed each image's encoder window to a Readout; returns ([(class, logits)], StreamRun)."""
    steps = bundle.time_steps
    images = result.logits.shape[0]
    beats = [beat for image in range(images) for beat in window_beats(result.traces(image)[0], steps)]
    dut = Readout(bundle.readout, steps, lanes)
    run = simulate(dut, dut.inp, dut.result, beats, images, **stream_options)
    outputs = bundle.readout.outputs
    got = [(beat.cls, [beat.logits[i] for i in range(outputs)]) for _, beat in run.received]
    return got, run


def expected_results(result):
    return [(int(result.classes[i]), result.logits[i].tolist()) for i in range(result.logits.shape[0])]


# (seed, inputs, outputs, T, weight_bits, lanes); lanes None = P = N.
READOUT_CASES = [
    (1, 1, 1, 2, 2, 1),
    (2, 5, 7, 4, 3, 1),
    (3, 12, 10, 16, 8, 3),
    (4, 20, 10, 16, 16, None),
    (5, 9, 25, 8, 5, 8),
    (6, 3, 4, 256, 4, 2),
    (7, 40, 13, 32, 11, 2),
]


@pytest.mark.parametrize("seed, inputs, outputs, steps, weight_bits, lanes", READOUT_CASES)
def test_readout_matches_golden(seed, inputs, outputs, steps, weight_bits, lanes):
    bundle, result = readout_case(seed, inputs, outputs, steps, weight_bits)
    got, _ = run_readout(bundle, result, lanes or outputs, seed=seed,
                         gap_probability=0.3, ready_probability=0.4)
    assert got == expected_results(result)


def tied_bundle(bundle: Bundle, rows: list[int], source: int) -> Bundle:
    """``bundle`` with readout rows ``rows`` (and their biases) copied from row ``source``."""
    layer = bundle.readout
    weight, bias = layer.weight.copy(), layer.bias.copy()
    weight[rows] = weight[source]
    bias[rows] = bias[source]
    tied = replace(bundle, layers=(replace(layer, weight=weight, bias=bias),))
    validate(tied)
    return tied


@pytest.mark.parametrize("lanes", [1, 2, 3, 6])
def test_readout_ties_go_to_the_smallest_index(lanes):
    """Rows 1..5 are equal and the largest: class 1, whether the ties fall within a lane group
    (P = 3, 6) or across groups (P = 1, 2)."""
    bundle, _ = readout_case(11, 8, 6, 8, 6)
    layer = bundle.readout
    # Make row 3 win clearly before copying it: positive weights, large bias.
    weight, bias = layer.weight.copy(), layer.bias.copy()
    weight[3] = np.abs(weight[3])
    bias[3] = int(np.abs(bias).max()) + 1
    bundle = tied_bundle(replace(bundle, layers=(replace(layer, weight=weight, bias=bias),)), [1, 2, 4, 5], 3)
    result = golden.run(bundle, random_images(12, bundle, IMAGES))
    top = result.logits.max(axis=1)
    assert all((result.logits[i] == top[i]).sum() == 5 for i in range(IMAGES)), "the case has no ties"
    got, _ = run_readout(bundle, result, lanes, seed=lanes, gap_probability=0.2, ready_probability=0.5)
    assert got == expected_results(result)
    assert [cls for cls, _ in got] == [1] * IMAGES


def test_readout_all_equal_logits_pick_class_zero():
    bundle, _ = readout_case(13, 4, 5, 4, 3)
    bundle = tied_bundle(bundle, [1, 2, 3, 4], 0)
    result = golden.run(bundle, random_images(14, bundle, IMAGES))
    got, _ = run_readout(bundle, result, 2)
    assert [cls for cls, _ in got] == [0] * IMAGES
    assert got == expected_results(result)


def test_readout_logit_width_is_the_golden_register_width():
    bundle, _ = readout_case(15, 10, 10, 16, 7)
    dut = Readout(bundle.readout, 16, 4)
    Fragment.get(dut, None)   # it elaborates
    logits = dut.result.payload.logits.shape()
    assert logits.elem_shape == signed(golden.potential_bounds(bundle)[-1].bits)
    assert logits.length == 10
    assert dut.result.payload.cls.shape() == unsigned(4)


@pytest.mark.parametrize("lanes", [1, 4, 10])
def test_readout_latency(lanes):
    """Integration (E + T) * G cycles; the result beat at most G + 6 + ceil(log2 P) cycles after it."""
    bundle, result = readout_case(16, 12, 10, 16, 6)
    steps = bundle.time_steps
    groups = LaneGeometry.of(10, lanes).groups
    got, run = run_readout(bundle, result, lanes)
    assert got == expected_results(result)
    first_beat = 0
    for image in range(IMAGES):
        spikes = len(result.traces(image)[0])
        accepted = run.accepted_at[first_beat:first_beat + spikes + steps]
        first_beat += spikes + steps
        integration_end = accepted[-1] + groups
        assert integration_end - accepted[0] == (spikes + steps) * groups
        assert run.received[image][0] - integration_end <= groups + 6 + argmax_levels(min(lanes, 10))


@pytest.mark.parametrize("seed, lanes", [(71, 1), (72, 3), (73, 10)])
def test_readout_reset_in_the_middle_of_a_window(seed, lanes):
    """rst while the busiest window is half integrated and the previous window's result
    may still wait in the result register: only the results of the windows driven
    afterwards come out, exact, the first from a silent input (the biases)."""
    bundle, result = readout_case(seed, 12, 10, 8, 6)
    steps = bundle.time_steps
    inputs = [result.traces(image)[0] for image in range(IMAGES)]
    busiest = int(np.argmax([len(trace) for trace in inputs]))
    first = window_beats(inputs[(busiest + 1) % IMAGES], steps)
    cut = window_beats(inputs[busiest], steps)
    half = len(cut) // 2
    assert sum(1 for beat in cut[:half] if not beat.tick) >= 3
    assert len(inputs[0]) == 0
    after = [beat for trace in inputs for beat in window_beats(trace, steps)]
    dut = Readout(bundle.readout, steps, lanes)
    run = simulate_with_reset(dut, dut.inp, dut.result, first + cut, len(first) + half, after, IMAGES,
                              seed=seed, ready_probability=0.3)
    outputs = bundle.readout.outputs
    got = [(beat.cls, [beat.logits[i] for i in range(outputs)]) for _, beat in run.received]
    assert got == expected_results(result)
    assert run.first_ready == LaneGeometry.of(outputs, lanes).groups


def test_readout_rejects_bad_parameters():
    bundle = random_bundle(17, sizes=(4, 3, 2), time_steps=4)
    hidden, readout = bundle.layers
    with pytest.raises(HardwareError, match="readout is False"):
        Readout(hidden, 4, 1)
    with pytest.raises(HardwareError, match="lanes: 0 is below 1"):
        Readout(readout, 4, 0)
    with pytest.raises(HardwareError, match="time_steps: 3 is not a power of two"):
        Readout(readout, 3, 1)

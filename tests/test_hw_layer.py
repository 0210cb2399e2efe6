"""LayerEngine (hw/layer.py) and the ROM packing (hw/rom.py) against the golden model.

Every case builds a random bundle, runs a few random images through
``ttfs.sim.golden``, feeds the hidden layer's input windows (the encoder traces)
to a LayerEngine in amaranth.sim with random gaps on the input and random
back-pressure on the output, and requires the output windows to equal the
golden traces of the layer, spike for spike (the stream drivers are
tests/streams.py's).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import ttfs.hw.layer
from streams import event_beats, simulate, simulate_with_reset
from ttfs.contract.readmemh import read_readmemh
from ttfs.contract.streams import split_windows, window_beats
from ttfs.hw.errors import HardwareError
from ttfs.hw.layer import LayerEngine
from ttfs.hw.rom import LaneGeometry, pack_biases, pack_weights, write_rom_images
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_images

IMAGES = 4


def golden_case(seed, inputs, outputs, time_steps, weight_bits, ramp_shift, images=IMAGES):
    """A random bundle (inputs -> outputs hidden -> 2 readout) and its golden result.

    ``ramp_shift`` None lets the generator pick one that spreads the
    activations over 0..T; the first image is all zeros (no input spikes).
    """
    shifts = None if ramp_shift is None else (ramp_shift, 0)
    bundle = random_bundle(seed, sizes=(inputs, outputs, 2), time_steps=time_steps,
                           weight_bits=weight_bits, ramp_shifts=shifts, lut="random")
    result = golden.run(bundle, random_images(seed, bundle, images))
    return bundle, result


def output_windows(run, time_steps) -> list[np.ndarray]:
    """The windows of a run's output beats (each window complete, ticks in step order)."""
    return split_windows(event_beats(payload for _, payload in run.received), time_steps)


def run_layer(bundle, result, lanes, **stream_options):
    """Run the first hidden layer on the images' encoder traces; returns (windows, StreamRun, expected)."""
    steps = bundle.time_steps
    inputs = [result.traces(image)[0] for image in range(result.logits.shape[0])]
    expected = [result.traces(image)[1] for image in range(result.logits.shape[0])]
    beats = [beat for trace in inputs for beat in window_beats(trace, steps)]
    dut = LayerEngine(bundle.layers[0], steps, lanes)
    expected_beats = sum(len(trace) + steps for trace in expected)
    run = simulate(dut, dut.inp, dut.out, beats, expected_beats, **stream_options)
    return output_windows(run, steps), run, expected


# (seed, inputs, outputs, T, weight_bits, ramp_shift, lanes); lanes None = P = N,
# ramp_shift None = the generator's choice (large weights need large ramps).
LAYER_CASES = [
    (1, 1, 1, 2, 2, 0, 1),
    (2, 5, 7, 4, 3, 0, 1),
    (3, 12, 9, 16, 2, 1, 2),
    (4, 20, 13, 16, 3, 4, 3),
    (5, 9, 25, 8, 5, 3, 8),
    (6, 40, 40, 16, 16, None, None),
    (7, 3, 4, 256, 4, 1, None),
    (8, 6, 5, 256, 2, 0, 2),
    (9, 33, 17, 2, 12, None, 8),
    (10, 24, 11, 16, 4, 2, None),
    (11, 31, 23, 32, 9, None, 3),
    (12, 16, 2, 4, 7, 4, 1),
]


@pytest.mark.parametrize("seed, inputs, outputs, steps, weight_bits, ramp_shift, lanes", LAYER_CASES)
def test_layer_matches_golden(seed, inputs, outputs, steps, weight_bits, ramp_shift, lanes):
    bundle, result = golden_case(seed, inputs, outputs, steps, weight_bits, ramp_shift)
    windows, _, expected = run_layer(bundle, result, lanes or outputs, seed=seed,
                                     gap_probability=0.3, ready_probability=0.6)
    assert len(windows) == len(expected)
    for image, (got, want) in enumerate(zip(windows, expected)):
        assert got.tolist() == want.tolist(), f"image {image}"


@pytest.mark.parametrize("seed, lanes", [(13, 2), (14, 5)])
def test_layer_with_a_banked_weight_rom_matches_golden(monkeypatch, seed, lanes):
    """A weight ROM deeper than one bank (here 8 rows instead of 2048): the
    bank registers and the bank select in the write stage stay exact."""
    monkeypatch.setattr(ttfs.hw.layer, "WEIGHT_BANK_ROWS", 8)
    bundle, result = golden_case(seed, 11, 9, 8, 4, 2)   # 11 inputs x 5 or 2 groups: 7 or 3 banks
    windows, _, expected = run_layer(bundle, result, lanes, seed=seed,
                                     gap_probability=0.3, ready_probability=0.6)
    assert len(windows) == len(expected)
    for image, (got, want) in enumerate(zip(windows, expected)):
        assert got.tolist() == want.tolist(), f"image {image}"


def test_layer_cases_exercise_the_firing_rule():
    """The cases above are only meaningful if neurons fire at many steps and some stay silent."""
    activations = []
    for seed, inputs, outputs, steps, weight_bits, ramp_shift, _ in LAYER_CASES:
        _, result = golden_case(seed, inputs, outputs, steps, weight_bits, ramp_shift)
        activations.append(result.activations[1].ravel() / steps)
    fraction = np.concatenate(activations)
    assert np.mean(fraction == 0) > 0.1          # silent neurons
    assert np.mean(fraction == 1) > 0.05         # saturated (spike at step 0)
    assert np.mean((fraction > 0) & (fraction < 1)) > 0.2   # spikes inside the window


@pytest.mark.parametrize("lanes", [1, 3, 12])
def test_layer_cycle_model(lanes):
    """Integration takes exactly (E_in + T) * G cycles; firing at most E_out + T * G.

    Stated bounds checked here, with no input gaps and the output always
    ready, G = ceil(N / P):
    - integration of a window (first beat accepted to the closing tick's
      last group issued, inclusive) = (E_in + T) * G cycles;
    - firing: the window's last output beat comes at most E_out + T * G + 6
      cycles after its integration ended (or after the previous window's
      last beat, when that is later).
    """
    bundle, result = golden_case(21, 30, 12, 16, 5, 2)
    steps = bundle.time_steps
    groups = LaneGeometry.of(12, lanes).groups
    windows, run, expected = run_layer(bundle, result, lanes)
    assert [w.tolist() for w in windows] == [w.tolist() for w in expected]

    first_beat, first_output, previous_last_output = 0, 0, 0
    for image in range(IMAGES):
        spikes_in = len(result.traces(image)[0])
        spikes_out = len(expected[image])
        accepted = run.accepted_at[first_beat:first_beat + spikes_in + steps]
        first_beat += spikes_in + steps
        integration_end = accepted[-1] + groups
        assert integration_end - accepted[0] == (spikes_in + steps) * groups

        first_output += spikes_out + steps
        last_output = run.received[first_output - 1][0]
        firing = last_output - max(integration_end, previous_last_output)
        assert firing <= spikes_out + steps * groups + 6
        previous_last_output = last_output


def test_layer_double_buffers_and_loses_nothing_under_back_pressure():
    """With the output stalled, a second window integrates while the first waits to fire,
    the third waits for a free bank, and once the output runs every spike arrives."""
    bundle, result = golden_case(31, 10, 6, 4, 6, 1)
    steps = bundle.time_steps
    window_sizes = [len(result.traces(image)[0]) + steps for image in range(IMAGES)]
    stall = 400
    windows, run, expected = run_layer(bundle, result, 2, ready_after=stall)
    assert [w.tolist() for w in windows] == [w.tolist() for w in expected]
    accepted_during_stall = sum(cycle < stall for cycle in run.accepted_at)
    assert accepted_during_stall == window_sizes[0] + window_sizes[1]
    assert run.received[0][0] == stall


@pytest.mark.parametrize("seed, lanes", [(61, 1), (62, 3), (63, 11)])
def test_layer_reset_in_the_middle_of_a_window(seed, lanes):
    """rst while the busiest window is half integrated (its slopes hold partial sums)
    and the window before it may still be firing; the windows driven afterwards must
    be exact, the first of them from a silent input (so it only sees the biases)."""
    bundle, result = golden_case(seed, 14, 11, 8, 5, 2)
    steps = bundle.time_steps
    inputs = [result.traces(image)[0] for image in range(IMAGES)]
    busiest = int(np.argmax([len(trace) for trace in inputs]))
    first = window_beats(inputs[(busiest + 1) % IMAGES], steps)
    cut = window_beats(inputs[busiest], steps)
    # Half of the busiest window's beats: several spikes in, the last tick not.
    half = len(cut) // 2
    assert sum(1 for beat in cut[:half] if not beat.tick) >= 3
    after = [beat for trace in inputs for beat in window_beats(trace, steps)]
    assert len(inputs[0]) == 0                     # the first window after the reset is silent
    expected = [result.traces(image)[1] for image in range(IMAGES)]
    expected_beats = sum(len(trace) + steps for trace in expected)
    dut = LayerEngine(bundle.layers[0], steps, lanes)
    run = simulate_with_reset(dut, dut.inp, dut.out, first + cut, len(first) + half, after, expected_beats,
                              seed=seed)
    windows = output_windows(run, steps)
    assert [w.tolist() for w in windows] == [w.tolist() for w in expected]
    # The slope clearing pass: inp.ready low for exactly G cycles after rst falls.
    assert run.first_ready == LaneGeometry.of(11, lanes).groups


def test_layer_rejects_bad_parameters():
    bundle, _ = golden_case(41, 4, 3, 4, 4, 0, images=1)
    hidden, readout = bundle.layers
    with pytest.raises(HardwareError, match="readout is True"):
        LayerEngine(readout, 4, 1)
    with pytest.raises(HardwareError, match="lanes: 0 is below 1"):
        LayerEngine(hidden, 4, 0)
    with pytest.raises(HardwareError, match="lanes: expected an integer"):
        LayerEngine(hidden, 4, 2.5)
    with pytest.raises(HardwareError, match="time_steps: 6 is not a power of two"):
        LayerEngine(hidden, 6, 1)
    with pytest.raises(HardwareError, match="time_steps: 512"):
        LayerEngine(hidden, 512, 1)
    with pytest.raises(HardwareError, match="kind 'conv'"):
        LayerEngine(replace(hidden, kind="conv"), 4, 1)


def unpack(words, width, lanes):
    """ROM words -> int array (len(words), lanes), two's complement lanes of ``width`` bits."""
    values = np.array([[(word >> (lane * width)) & ((1 << width) - 1) for lane in range(lanes)]
                       for word in words], dtype=np.int64)
    return np.where(values >= 1 << (width - 1), values - (1 << width), values)


@pytest.mark.parametrize("outputs, lanes", [(7, 1), (7, 3), (7, 7), (7, 20), (40, 8)])
def test_rom_packing_round_trips(outputs, lanes):
    bundle, _ = golden_case(51, 5, outputs, 4, 13, 0, images=1)
    layer = bundle.layers[0]
    geometry = LaneGeometry.of(outputs, lanes)
    padded_weight = np.zeros((geometry.groups * geometry.lanes, layer.inputs), dtype=np.int64)
    padded_weight[:outputs] = layer.weight
    padded_bias = np.zeros(geometry.groups * geometry.lanes, dtype=np.int64)
    padded_bias[:outputs] = layer.bias

    weights = unpack(pack_weights(layer, lanes), layer.weight_bits, geometry.lanes)
    assert weights.shape == (layer.inputs * geometry.groups, geometry.lanes)
    for j in range(layer.inputs):
        for g in range(geometry.groups):
            rows = slice(g * geometry.lanes, (g + 1) * geometry.lanes)
            assert weights[j * geometry.groups + g].tolist() == padded_weight[rows, j].tolist()
    biases = unpack(pack_biases(layer, lanes), layer.bias_bits, geometry.lanes)
    assert biases.ravel().tolist() == padded_bias.tolist()


def test_rom_images_are_readmemh(tmp_path):
    # 2 lanes x 13 bits and 2 x bias bits stay within read_readmemh's 64-bit words.
    bundle, _ = golden_case(52, 6, 3, 4, 13, 0, images=1)
    layer = bundle.layers[0]
    paths = write_rom_images(layer, 2, tmp_path)
    assert paths["weight"].name == "fc1.weight.p2.hex"
    weight_words = read_readmemh(paths["weight"], 2 * layer.weight_bits, signed=False)
    assert weight_words.tolist() == pack_weights(layer, 2)
    bias_words = read_readmemh(paths["bias"], 2 * layer.bias_bits, signed=False)
    assert bias_words.tolist() == pack_biases(layer, 2)

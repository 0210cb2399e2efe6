"""The scoreboard finds the first divergence between hardware results and the golden model."""

from __future__ import annotations

import numpy as np
import pytest
from ttfs.contract.errors import TTFSError
from ttfs.sim.golden import run as golden_run
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images
from ttfs.sim.verify.scoreboard import (
    HardwareResult,
    Scoreboard,
    ScoreboardError,
    first_trace_divergence,
    golden_arrays,
    golden_from_arrays,
    golden_images,
    mismatched_neurons,
)


@pytest.fixture(scope="module")
def case():
    """A 2-hidden-layer bundle, 6 images and their golden run (every layer has spikes)."""
    bundle = random_bundle(7, sizes=(16, 10, 8, 4), time_steps=8, weight_bits=6, lut="default")
    images = random_images(8, bundle, 6, zero_fraction=0.2)
    golden = golden_run(bundle, images)
    assert all(len(trace) > 2 for trace in golden.traces(1))
    return bundle, images, golden


def perfect(golden, image) -> HardwareResult:
    """What a correct core reports for ``image``."""
    return HardwareResult([t.copy() for t in golden.traces(image)], golden.logits[image].copy(),
                          int(golden.classes[image]), cycles=100)


def test_identical_results_pass(case):
    bundle, _, golden = case
    board = Scoreboard(bundle, golden)
    for image in range(6):
        assert board.check(image, perfect(golden, image)) is None
    assert board.passed and board.first_divergence is None
    assert board.spike_mismatches == 0 and board.mismatched_images == []
    assert "6 images checked, 0 mismatched" in board.summary()


def test_moved_spike_is_reported_at_its_golden_place(case):
    bundle, _, golden = case
    hardware = perfect(golden, 2)
    trace = hardware.traces[1]
    step, neuron = (int(v) for v in trace[1])
    later = step + 1 if step + 1 < bundle.time_steps else step - 1
    moved = np.concatenate([np.delete(trace, 1, axis=0), [[later, neuron]]])
    hardware.traces[1] = moved[np.lexsort((moved[:, 1], moved[:, 0]))]
    board = Scoreboard(bundle, golden)
    divergence = board.check(2, hardware)
    assert (divergence.image, divergence.layer, divergence.layer_name) == (2, 1, "fc1")
    first = min((step, neuron), (later, neuron))
    assert (divergence.step, divergence.neuron) == first
    assert divergence.kind == "wrong step"
    assert board.spike_mismatches == 1
    text = str(divergence)
    assert f"image 2, layer 1 (fc1), neuron {neuron}, step {first[0]}" in text
    assert f"[({first[0]}, {neuron})]" in text  # the context marks the event


def test_missing_and_extra_spikes(case):
    bundle, _, golden = case
    hardware = perfect(golden, 3)
    gone = tuple(int(v) for v in hardware.traces[2][-1])
    hardware.traces[2] = hardware.traces[2][:-1]
    divergence = Scoreboard(bundle, golden).check(3, hardware)
    assert (divergence.layer, divergence.kind, divergence.step, divergence.neuron) == (2, "missing spike", *gone)
    assert "hardware: no spike" in divergence.detail

    silent = np.flatnonzero(golden.activations[1][3] == 0)
    assert silent.size, "the fixture needs a silent neuron in layer 1"
    hardware = perfect(golden, 3)
    extra = np.array([[0, silent[0]]])
    trace = np.concatenate([hardware.traces[1], extra])
    hardware.traces[1] = trace[np.lexsort((trace[:, 1], trace[:, 0]))]
    divergence = Scoreboard(bundle, golden).check(3, hardware)
    assert (divergence.layer, divergence.kind, divergence.step, divergence.neuron) == (1, "extra spike", 0, silent[0])


def test_the_lowest_layer_and_image_come_first(case):
    bundle, _, golden = case
    board = Scoreboard(bundle, golden)
    late = perfect(golden, 4)
    late.traces[0] = late.traces[0][:-1]
    late.traces[2] = late.traces[2][1:]
    early = perfect(golden, 1)
    early.logits[0] += 1
    assert board.check(4, late).layer == 0
    assert board.check(1, early).kind == "logit"
    assert board.mismatched_images == [1, 4]
    assert board.first_divergence.image == 1
    assert board.spike_mismatches == 2  # one neuron in layer 0, one in layer 2


def test_order_logit_and_class_divergences(case):
    bundle, _, golden = case
    hardware = perfect(golden, 5)
    trace = hardware.traces[1]
    hardware.traces[1] = trace[::-1].copy()
    board = Scoreboard(bundle, golden)
    divergence = board.check(5, hardware)
    assert divergence.kind == "order" and divergence.layer == 1
    assert board.spike_mismatches == 0  # the right spikes, only out of order

    hardware = perfect(golden, 5)
    hardware.logits[2] -= 7
    divergence = Scoreboard(bundle, golden).check(5, hardware)
    assert (divergence.layer, divergence.layer_name, divergence.neuron) == (3, "out", 2)
    assert f"golden {golden.logits[5][2]}, hardware {golden.logits[5][2] - 7}" in divergence.detail

    hardware = perfect(golden, 5)
    hardware.cls = (hardware.cls + 1) % 4
    assert Scoreboard(bundle, golden).check(5, hardware).kind == "class"


def test_missing_result(case):
    bundle, _, golden = case
    board = Scoreboard(bundle, golden)
    divergence = board.missing(0, "timeout")
    assert divergence.kind == "no result" and not board.passed
    assert "timeout" in board.summary()


def test_bad_input_is_one_clear_error(case):
    bundle, _, golden = case
    board = Scoreboard(bundle, golden)
    with pytest.raises(ScoreboardError, match="image: 9 is outside"):
        board.check(9, perfect(golden, 0))
    short = perfect(golden, 0)
    short.traces = short.traces[:2]
    with pytest.raises(ScoreboardError, match="2 hardware traces, expected 3"):
        board.check(0, short)
    board.check(1, perfect(golden, 1))
    with pytest.raises(ScoreboardError, match="checked twice"):
        board.check(1, perfect(golden, 1))
    with pytest.raises(ScoreboardError, match=r"\(K, 2\)"):
        first_trace_divergence(np.zeros((2, 2)), np.zeros((3, 3)))
    assert issubclass(ScoreboardError, TTFSError)


def test_mismatched_neurons_counts_each_wrong_neuron_once():
    activations = np.array([0, 3, 1, 0])      # T = 4: neuron 1 at step 1, neuron 2 at step 3
    assert mismatched_neurons(activations, np.array([[1, 1], [3, 2]]), 4) == 0
    assert mismatched_neurons(activations, np.array([[1, 1], [2, 2]]), 4) == 1      # moved
    assert mismatched_neurons(activations, np.array([[1, 1], [1, 1], [3, 2]]), 4) == 1  # repeated
    assert mismatched_neurons(activations, np.array([[0, 0], [1, 1], [3, 2], [0, 9]]), 4) == 2  # extra, outside
    assert mismatched_neurons(activations, np.zeros((0, 2)), 4) == 2


def test_golden_run_travels_through_an_npz_and_is_cut_per_image(case, tmp_path):
    """What the host hands the cocotb testbench: the same golden run after the round trip,
    and a part of it for one image (the rerun with waves)."""
    _, _, golden = case
    np.savez(tmp_path / "job.npz", images=np.zeros(1), **golden_arrays(golden))
    with np.load(tmp_path / "job.npz", allow_pickle=False) as archive:
        loaded = golden_from_arrays(archive)
    assert loaded.time_steps == golden.time_steps and loaded.neurons == golden.neurons
    assert loaded.pre_pool_activations is None
    for got, want in zip(loaded.activations + loaded.fired + [loaded.logits, loaded.classes],
                         golden.activations + golden.fired + [golden.logits, golden.classes]):
        assert got.tolist() == want.tolist()
    alone = golden_images(golden, slice(3, 4))
    assert alone.classes.tolist() == [golden.classes[3]] and alone.neurons == golden.neurons
    assert [t.tolist() for t in alone.traces(0)] == [t.tolist() for t in golden.traces(3)]


def test_a_conv_layer_divergence_names_channel_row_column_and_step():
    bundle = random_conv_bundle(3, input_shape=(2, 6, 5), convs=[(3, 3, "same", 2)], dense=[4],
                                time_steps=8, weight_bits=5, lut="default")
    images = random_images(4, bundle, 3, zero_fraction=0.2)
    golden = golden_run(bundle, images)
    hardware = perfect(golden, 1)
    trace = hardware.traces[1]
    assert len(trace) > 1
    step, neuron = (int(v) for v in trace[0])
    hardware.traces[1] = trace[1:]                      # the first conv event goes missing
    divergence = Scoreboard(bundle, golden).check(1, hardware)
    channel, row, column = neuron // 6, neuron // 2 % 3, neuron % 2   # pooled map (3, 3, 2)
    assert divergence.kind == "missing spike" and divergence.position == (channel, row, column)
    assert (f"layer 1 (conv1), neuron {neuron} (channel {channel}, row {row}, column {column}), "
            f"step {step}") in str(divergence)

"""ttfs.contract.streams: the plain-Python codec of the core's stream formats."""

from __future__ import annotations

import numpy as np
import pytest
from ttfs.contract.streams import (
    EventBeat,
    StreamError,
    TraceSplitter,
    WindowSplitter,
    beats_per_image,
    bits_for,
    packed_pixel_beats,
    pixel_beats,
    split_windows,
    window_beats,
)
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_images


def test_bits_for_and_beats_per_image():
    assert [bits_for(v) for v in (0, 1, 2, 3, 4, 255, 256)] == [1, 1, 2, 2, 3, 8, 9]
    assert [beats_per_image(784, k) for k in (1, 8, 16, 17, 784)] == [784, 98, 49, 47, 1]


def test_window_beats_spikes_then_a_tick_per_step():
    trace = np.array([[0, 3], [0, 5], [2, 1]])
    assert window_beats(trace, 4) == [
        (0, 0, 3), (0, 0, 5), (1, 0, 0),
        (1, 1, 0),
        (0, 2, 1), (1, 2, 0),
        (1, 3, 0),
    ]
    assert window_beats(np.zeros((0, 2)), 2) == [EventBeat(1, 0, 0), EventBeat(1, 1, 0)]
    assert window_beats(trace, 4)[0].neuron == 3


def test_windows_round_trip_through_beats():
    """Golden traces of random images -> beats -> windows: the same traces, in order."""
    rng = np.random.default_rng(5)
    bundle = random_bundle(rng, sizes=(30, 12, 4), time_steps=16, lut="default")
    result = golden.run(bundle, random_images(rng, bundle, 6))
    for layer in range(2):
        traces = [result.traces(image)[layer] for image in range(6)]
        beats = [beat for trace in traces for beat in window_beats(trace, 16)]
        assert len(beats) == sum(len(trace) + 16 for trace in traces)
        windows = split_windows(beats, 16)
        assert [w.tolist() for w in windows] == [t.tolist() for t in traces]


def test_tagged_trace_round_trip_with_layers_interleaved():
    rng = np.random.default_rng(6)
    time_steps = 8
    traces = [[np.array(sorted((int(rng.integers(time_steps)), n) for n in rng.choice(20, 5, replace=False)))
               for _ in range(3)] for _ in range(2)]
    streams = [[(layer,) + tuple(beat) for trace in traces[layer] for beat in window_beats(trace, time_steps)]
               for layer in range(2)]
    splitter = TraceSplitter(time_steps, 2)
    # Interleave the two layers' beats at random, each layer's order kept.
    positions = [0, 0]
    while positions != [len(stream) for stream in streams]:
        waiting = [k for k in range(2) if positions[k] < len(streams[k])]
        layer = waiting[int(rng.integers(len(waiting)))]
        splitter.beat(*streams[layer][positions[layer]])
        positions[layer] += 1
        assert splitter.complete(1) == all(len(splitter.windows(k)) >= 1 for k in range(2))
    assert splitter.complete(3) and not splitter.complete(4)
    for layer in range(2):
        assert [w.tolist() for w in splitter.windows(layer)] == [t.tolist() for t in traces[layer]]


def test_window_splitter_reports_protocol_errors_and_keeps_going():
    splitter = WindowSplitter(4)
    splitter.beat(0, 0, 2)
    with pytest.raises(StreamError, match="window 0: tick for step 1, expected step 0"):
        splitter.beat(1, 1, 0)
    assert splitter.step == 1           # taken as the tick of the open step
    with pytest.raises(StreamError, match="window 0: spike of neuron 7 carries step 3 but arrives during step 1"):
        splitter.beat(0, 3, 7)
    assert splitter.open == [(0, 2), (3, 7)]
    splitter.beat(1, 1, 0)
    splitter.beat(1, 2, 0)
    splitter.beat(1, 3, 0)
    assert [w.tolist() for w in splitter.windows] == [[[0, 2], [3, 7]]]
    assert not splitter.in_window


def test_split_windows_refuses_an_incomplete_window():
    beats = window_beats(np.array([[1, 4]]), 4)
    with pytest.raises(StreamError, match="window 1: incomplete, open at step 2"):
        split_windows(beats + beats[:3], 4)
    with pytest.raises(StreamError, match="window 0: incomplete, open at step 0"):
        split_windows([(0, 0, 1)], 4)


def test_trace_splitter_refuses_a_bad_layer_tag():
    splitter = TraceSplitter(4, 2)
    with pytest.raises(StreamError, match="tagged layer 2, the core has 2 spiking layers"):
        splitter.beat(2, 1, 0, 0)
    with pytest.raises(StreamError, match="layer 1, window 0: tick for step 3"):
        splitter.beat(1, 1, 3, 0)


def test_window_beats_refuses_bad_traces():
    with pytest.raises(StreamError, match="steps must lie in 0..3"):
        window_beats(np.array([[4, 0]]), 4)
    with pytest.raises(StreamError, match="not in step order"):
        window_beats(np.array([[2, 0], [1, 1]]), 4)


def test_pixel_beats_contract_order_and_padding():
    images = np.arange(2 * 1 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3)
    assert pixel_beats(images, 4) == [[0, 1, 2, 3], [4, 5, 0, 0], [6, 7, 8, 9], [10, 11, 0, 0]]
    assert pixel_beats(images, 6) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    assert packed_pixel_beats(images, 4) == [0x03020100, 0x0504, 0x09080706, 0x0B0A]
    # Every image starts on a fresh beat: ceil(C*H*W / K) beats each.
    assert len(pixel_beats(images, 5)) == 2 * beats_per_image(6, 5)


@pytest.mark.parametrize("images, k, message", [
    (np.zeros((2, 4), dtype=np.int16), 2, "expected uint8 images"),
    (np.zeros(4, dtype=np.uint8), 2, "expected uint8 images"),
    (np.zeros((2, 4), dtype=np.uint8), 0, "pixels_per_beat: 0"),
    (np.zeros((2, 4), dtype=np.uint8), True, "pixels_per_beat: True"),
])
def test_pixel_beats_refuses_bad_input(images, k, message):
    with pytest.raises(StreamError, match=message):
        pixel_beats(images, k)

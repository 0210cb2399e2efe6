"""InputEncoder in amaranth.sim against the golden model's layer-0 traces."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from streams import (
    StreamSink,
    StreamSource,
    event_beats,
    hold_reset,
    run_for,
    run_testbench,
    run_until,
    simulate,
)
from ttfs.contract.bundle import validate
from ttfs.contract.streams import pixel_beats, window_beats
from ttfs.hw.encoder import InputEncoder, beats_per_image
from ttfs.hw.errors import HardwareError
from ttfs.sim import golden
from ttfs.sim.random_bundle import random_bundle, random_images


def expected_windows(bundle, images):
    """Golden layer-0 windows as (tick, step, neuron) beats, ticks included, all images."""
    return [beat for row in golden.encode(bundle, images)
            for beat in window_beats(golden.trace_from_activations(row, bundle.time_steps), bundle.time_steps)]


def run_encoder(bundle, images, pixels_per_beat, rng, gap=0.0, stall=0.0):
    """Stream ``images`` through the encoder; returns (event beats, cycles until the last one).

    Nothing more may come out after the last window.
    """
    dut = InputEncoder(bundle, pixels_per_beat)
    beats = pixel_beats(images, pixels_per_beat)
    expected_count = len(expected_windows(bundle, images))
    seed = int(rng.integers(1 << 31))
    run = simulate(dut, dut.pixels, dut.events, beats, expected_count, seed=seed,
                   gap_probability=gap, ready_probability=1.0 - stall)
    received = event_beats(payload for _, payload in run.received)
    return received, run.received[-1][0] + 1


@pytest.mark.parametrize("seed", range(10))
def test_encoder_matches_golden_random(seed):
    """Random image shapes, LUTs, T and K; input gaps and back-pressure; consecutive images."""
    rng = np.random.default_rng(1000 + seed)
    # T from 2 to 256 over the seeds; big T only with few images to keep the test short.
    time_steps = int(2 ** (1 + seed % 8))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 7)))
    size = int(np.prod(shape))
    bundle = random_bundle(rng, sizes=(size, 3), input_shape=shape, time_steps=time_steps,
                           lut=str(rng.choice(["default", "random", "threshold"])))
    if seed % 3 == 0:
        # Any table is allowed, even one where pixel 0 spikes: padding must stay silent.
        lut = rng.integers(0, time_steps + 1, size=bundle.lut.shape)
        lut[:, 0] = time_steps
        bundle = dataclasses.replace(bundle, lut=lut)
        validate(bundle)
    pixels_per_beat = int(rng.integers(1, min(8, size) + 1))
    count = 2 if time_steps >= 64 else 4
    images = random_images(rng, bundle, count)
    received, _ = run_encoder(bundle, images, pixels_per_beat, rng,
                              gap=float(rng.uniform(0, 0.5)), stall=float(rng.uniform(0, 0.5)))
    assert received == expected_windows(bundle, images)


def test_encoder_mnist_shape_wide_beats():
    """784 pixels, 16 per beat (the benchmark width), default LUT, no gaps."""
    rng = np.random.default_rng(7)
    bundle = random_bundle(rng, sizes=(784, 4), input_shape=(1, 28, 28), time_steps=16, lut="default")
    images = random_images(rng, bundle, 3, zero_fraction=0.8)
    received, _ = run_encoder(bundle, images, 16, rng, gap=0.1, stall=0.2)
    assert received == expected_windows(bundle, images)


def test_encoder_cycles_are_event_driven_and_double_buffered():
    """At full speed an image's window takes 1 + spikes + T cycles, and the next
    image streams in meanwhile: total = first image's input + 1 + sum(windows)
    whenever each window is at least as long as an image's input."""
    rng = np.random.default_rng(3)
    time_steps = 16
    bundle = random_bundle(rng, sizes=(64, 4), input_shape=(1, 8, 8), time_steps=time_steps,
                           lut="default")
    pixels_per_beat = 8
    beats = beats_per_image(bundle.input_size, pixels_per_beat)
    totals = {}
    for zero_fraction in (0.2, 0.9):
        images = random_images(rng, bundle, 4, zero_fraction=zero_fraction)
        images[0] = images[1]  # random_images makes image 0 silent; keep all alike
        spikes = np.count_nonzero(golden.encode(bundle, images), axis=1)
        received, cycles = run_encoder(bundle, images, pixels_per_beat, rng)
        assert received == expected_windows(bundle, images)
        windows = [1 + int(s) + time_steps for s in spikes]
        assert min(windows) >= beats
        # Beats accepted in cycles 0..beats-1, the last appended in cycle
        # `beats`, step 0 loaded in cycle beats+1, then the windows (load,
        # spikes, ticks) back to back; `cycles` counts up to the last tick.
        assert cycles == beats + 2 + sum(windows)
        totals[zero_fraction] = cycles
    assert totals[0.9] < totals[0.2]


@pytest.mark.parametrize("pixels_per_beat", [1, 2])
def test_encoder_long_lists_emit_a_spike_every_cycle(pixels_per_beat):
    """Long lists walked at full speed: every step's list is two interleaved
    sublists whose next-pointers are read a cycle ahead, and the walk must
    still emit one spike per cycle (1 + spikes + T per window) whatever the
    list lengths: one step holding every pixel, then lists of every length
    from 1 to 7 and one of 20."""
    time_steps = 8
    rng = np.random.default_rng(11)
    bundle = random_bundle(rng, sizes=(48, 4), input_shape=(1, 6, 8), time_steps=time_steps,
                           lut="default")
    lut = np.asarray(bundle.lut[0])
    value_of = {int(a): v for v, a in reversed(list(enumerate(lut)))}   # a pixel value per activation
    every_pixel_one_step = np.full(48, value_of[time_steps])
    # Lists of every length 1..7 and one of 20, shuffled over the pixels.
    lengths = [1, 2, 3, 4, 5, 6, 7, 20]
    mixed = rng.permutation(np.repeat([value_of[a] for a in range(1, time_steps + 1)], lengths))
    images = np.stack([every_pixel_one_step, mixed, every_pixel_one_step]).reshape(3, 1, 6, 8)
    spikes = np.count_nonzero(golden.encode(bundle, images.astype(np.uint8)), axis=1)
    assert spikes.tolist() == [48, 48, 48]
    received, cycles = run_encoder(bundle, images.astype(np.uint8), pixels_per_beat, rng)
    assert received == expected_windows(bundle, images.astype(np.uint8))
    beats = beats_per_image(bundle.input_size, pixels_per_beat)
    windows = [1 + int(s) + time_steps for s in spikes]
    assert min(windows) >= beats
    assert cycles == beats + 2 + sum(windows)


def test_encoder_silent_image_is_ticks_only():
    rng = np.random.default_rng(5)
    bundle = random_bundle(rng, sizes=(12, 2), input_shape=(3, 2, 2), time_steps=4)
    images = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    received, _ = run_encoder(bundle, images, 5, rng, stall=0.3)
    assert received == [(1, s, 0) for s in range(4)] * 2


def run_encoder_with_reset(bundle, before, after, pixels_per_beat, rng, gap=0.2, stall=0.2):
    """Stream ``before`` (two images) until the first image's window is half out and the
    second image half in; hold ``rst`` for RESET_CYCLES; then stream ``after``.

    Returns the beats emitted after the reset (those before it are discarded;
    up to 4 beats beyond the expected windows are caught too) and the beats
    of the second image the encoder had taken when ``rst`` rose.
    """
    dut = InputEncoder(bundle, pixels_per_beat)
    per_image = beats_per_image(bundle.input_size, pixels_per_beat)
    # The whole first image and half of the second (at least one beat of it).
    beats_before = pixel_beats(before, pixels_per_beat)[:per_image + max(1, per_image // 2)]
    half_step = bundle.time_steps // 2
    expected_count = len(expected_windows(bundle, after))
    stream_rng = random.Random(int(rng.integers(1 << 31)))
    source = StreamSource(dut.pixels, beats_before, rng=stream_rng, gap=gap)
    sink = StreamSink(dut.events, rng=stream_rng, ready_probability=0.0)
    second_image_beats = []

    async def testbench(ctx, domain):
        # Before: the window waits until the second image is half in, then runs to its middle.
        cycle = await run_until(ctx, [source, sink], lambda: source.done)
        sink.ready_probability = 1.0 - stall
        await run_until(ctx, [source, sink], lambda: sum(beat.tick for beat in sink.beats) >= half_step,
                        start=cycle)
        second_image_beats.append(source.sent - per_image)
        await hold_reset(ctx, domain, [source])
        # After: everything emitted must be the windows of `after`, and then nothing.
        source.beats, sink.received = pixel_beats(after, pixels_per_beat), []
        cycle = await run_until(ctx, [source, sink], lambda: len(sink.received) >= expected_count)
        sink.ready_probability = 1.0
        await run_for(ctx, [source, sink], 4, cycle)

    run_testbench(dut, testbench, reset_domain=True)
    return event_beats(sink.beats), second_image_beats[0]


@pytest.mark.parametrize("seed, pixels_per_beat", [(0, 1), (1, 3), (2, 8)])
def test_encoder_reset_in_the_middle_of_a_window(seed, pixels_per_beat):
    """rst while the first image's window is half out and the second image half in: both
    list buffers must be empty afterwards, so a silent image gives ticks only and the
    images after it exactly the golden windows."""
    rng = np.random.default_rng(2000 + seed)
    time_steps = 8
    bundle = random_bundle(rng, sizes=(24, 3), input_shape=(2, 3, 4), time_steps=time_steps,
                           lut="default")
    before = random_images(rng, bundle, 3, zero_fraction=0.0)[1:]
    after = np.concatenate([np.zeros_like(before[:1]), random_images(rng, bundle, 3)[1:]])
    # The first image still has spikes in the steps not yet emitted when rst rises
    # (after step T/2, whose lists are loaded by then), and so does the second image.
    activations = golden.encode(bundle, before)
    assert np.any((activations[0] >= 1) & (activations[0] < time_steps // 2))
    received, second_image_beats = run_encoder_with_reset(bundle, before, after, pixels_per_beat, rng)
    assert second_image_beats == max(1, beats_per_image(24, pixels_per_beat) // 2)
    assert received[:time_steps] == [(1, s, 0) for s in range(time_steps)]
    assert received == expected_windows(bundle, after)


@pytest.mark.parametrize("pixels_per_beat, message", [
    (0, "pixels_per_beat: 0"),
    (True, "pixels_per_beat: True"),
    (13, "pixels_per_beat: 13 exceeds the image size 12"),
])
def test_encoder_rejects_bad_pixels_per_beat(pixels_per_beat, message):
    bundle = random_bundle(1, sizes=(12, 2), input_shape=(3, 2, 2), time_steps=4)
    with pytest.raises(HardwareError, match=message):
        InputEncoder(bundle, pixels_per_beat)

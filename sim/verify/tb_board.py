"""cocotb system test of the board top (``ttfs.hw.board.top.BoardTop``) through its UART pins.

Not a pytest module (``tb_`` prefix): ``tests/test_board_system.py`` builds
the Verilog and runs this with the job file named by ``TTFS_BOARD_JOB``
(bundle, UART bit time, frame timeout, counts, seed, output file).

The host side is the host tool's own code: :class:`ttfs.hw.board.host.BoardClient`
over :class:`CocotbUartTransport` (below).  A seeded mix of good
requests (classify, status, version, self-test) and malformed frames
(garbage, truncated frames, flipped bits, unknown types, wrong lengths) goes
through the link, one at a time:

- every good request must get exactly its answer (matched by sequence
  number), and a classification must equal the golden model's class and
  logits;
- after a malformed frame the link must go quiet with nothing but ERROR
  answers (or nothing at all);
- status answers must count every good frame and every rejected one, with no
  UART errors and no lost requests;
- at the end no answer is left over (nothing duplicated, nothing late).
"""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import (
    ClockCycles,
    FallingEdge,
    SimTimeoutError,
    Timer,
    with_timeout,
)
from cocotb.utils import get_sim_time
from ttfs.contract.bundle import load_bundle
from ttfs.contract.wire import (
    CLASSIFY,
    ERROR,
    STATUS,
    encode_frame,
    link_info,
    parse_error,
)
from ttfs.hw.board.host import BoardClient, Transport
from ttfs.sim.golden import run as golden_run

RESET_CYCLES = 4


class CocotbUartTransport(Transport):
    """The UART pins of a simulated board top (cocotb): 8N1 at ``bit_ns`` per bit.

    A background task samples ``tx`` in the middle of every bit and queues
    the bytes; ``write`` drives ``rx`` bit by bit.  A stop bit that reads 0
    is recorded in ``framing_errors`` (the board must never send one).
    """

    def __init__(self, rx, tx, bit_ns: int):
        self.rx, self.tx, self.bit_ns = rx, tx, bit_ns
        self.received: Queue = Queue()
        self.framing_errors = 0
        self.rx.value = 1
        self._receiver = cocotb.start_soon(self._receive())

    async def _receive(self) -> None:
        while True:
            await FallingEdge(self.tx)
            await Timer(self.bit_ns // 2, unit="ns")
            if int(self.tx.value) != 0:
                continue  # a glitch, not a start bit
            value = 0
            for bit in range(8):
                await Timer(self.bit_ns, unit="ns")
                value |= int(self.tx.value) << bit
            await Timer(self.bit_ns, unit="ns")
            if int(self.tx.value) != 1:
                self.framing_errors += 1
            self.received.put_nowait(value)

    async def write(self, data: bytes) -> None:
        for byte in bytes(data):
            for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [1]:
                self.rx.value = bit
                await Timer(self.bit_ns, unit="ns")

    async def read(self, timeout: float) -> bytes:
        if self.received.empty():
            try:
                first = await with_timeout(self.received.get(), max(1, round(timeout * 1e9)), "ns")
            except SimTimeoutError:
                return b""
        else:
            first = self.received.get_nowait()
        data = bytearray([first])
        while not self.received.empty():
            data.append(self.received.get_nowait())
        return bytes(data)

    def now(self) -> float:
        return get_sim_time("ns") * 1e-9


def _bad_frame(rng: random.Random, kind: str, image: bytes) -> bytes:
    """One malformed frame of the given ``kind``."""
    if kind == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    if kind == "truncated":
        frame = encode_frame(rng.randrange(256), rng.choice([CLASSIFY, STATUS]),
                             image if rng.random() < 0.7 else b"")
        return frame[:rng.randrange(1, len(frame))]
    if kind == "flipped":
        frame = bytearray(encode_frame(rng.randrange(256), CLASSIFY, image))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return bytes(frame)
    if kind == "bad_type":
        return encode_frame(rng.randrange(256), rng.choice([0x00, 0x05, 0x42, 0x81, 0xFF]), b"")
    if kind == "bad_length":
        wrong = rng.choice([0, 1, len(image) - 1, len(image) + 1])
        return encode_frame(rng.randrange(256), CLASSIFY, bytes(rng.randrange(256) for _ in range(wrong)))
    raise ValueError(kind)


@cocotb.test()
async def board_link_survives_malformed_frames(dut):
    """Good and malformed frames mixed: exact answers, rejections, no hang, nothing lost."""
    job = json.loads(open(os.environ["TTFS_BOARD_JOB"]).read())
    rng = random.Random(job["seed"])
    bundle = load_bundle(job["bundle"])
    info = link_info(bundle)
    clock_ns = job["clock_ns"]
    bit_ns = job["divisor"] * clock_ns
    byte_ns = 10 * bit_ns

    dut.rx.value = 1
    dut.rst.value = 1
    Clock(dut.clk, clock_ns, unit="ns").start()
    await ClockCycles(dut.clk, RESET_CYCLES)
    dut.rst.value = 0

    transport = CocotbUartTransport(dut.rx, dut.tx, bit_ns)
    # An answer needs the request's bytes, the core and the answer's bytes.
    client = BoardClient(transport, info, timeout=(4 * info.input_size + 400) * byte_ns * 1e-9
                         + job["core_cycles"] * clock_ns * 1e-9)
    # Silence long enough for a partial frame to time out and its ERROR to come back.
    quiet = (job["timeout_cycles"] * clock_ns + 40 * byte_ns) * 1e-9

    images = np.random.default_rng(job["seed"]).integers(
        0, 256, size=(job["good"], *bundle.input_shape), dtype=np.uint8)
    golden = golden_run(bundle, images)

    version = await client.version()
    expected_version = job["version"]
    assert version == expected_version, f"version answer {version} != {expected_version}"
    status = await client.status()
    assert status["selftest"] == "passed", f"the self-test after reset did not pass: {status}"

    good_kinds = ["classify"] * 8 + ["status", "version", "selftest"]
    bad_kinds = ["garbage", "truncated", "flipped", "bad_type", "bad_length"]
    plan = ([("good", rng.choice(good_kinds), k) for k in range(job["good"])]
            + [("bad", bad_kinds[k % len(bad_kinds)], k) for k in range(job["bad"])])
    rng.shuffle(plan)

    good_frames = 2  # the version and status above
    classified = answered_bad = dropped_bad = 0
    for sort, kind, index in plan:
        image = images[index % len(images)].tobytes()
        if sort == "bad":
            errors_before = len(client.errors)
            await client.send_raw(_bad_frame(rng, kind, image))
            frames = await client.drain(quiet)
            others = [frame for frame in frames if frame.kind != ERROR]
            assert not others, f"a malformed frame ({kind}) got a non-error answer: {others}"
            if len(client.errors) > errors_before:
                answered_bad += 1
            else:
                dropped_bad += 1
            continue
        good_frames += 1
        if kind == "classify":
            answer = await client.classify(image)
            assert answer.cls == int(golden.classes[index]), (
                f"image {index}: class {answer.cls}, golden {int(golden.classes[index])}")
            assert list(answer.logits) == [int(v) for v in golden.logits[index]], (
                f"image {index}: logits {answer.logits}, golden {golden.logits[index].tolist()}")
            assert answer.cycles > 0
            classified += 1
        elif kind == "status":
            status = await client.status()
            rejected = status["bad_crc"] + status["bad_header"] + status["timeouts"]
            assert status["frames_ok"] == good_frames, f"{status} after {good_frames} good frames"
            assert rejected == len(client.errors), f"{status} after {len(client.errors)} ERROR answers"
            assert status["uart_errors"] == 0 and status["lost_requests"] == 0 and status["busy"] == 0
        elif kind == "version":
            assert await client.version() == expected_version
        else:
            result = await client.selftest()
            assert result.ok and list(result.classes) == job["selftest_classes"], result

    leftovers = await client.drain(quiet)
    assert not leftovers, f"answers nobody asked for: {leftovers}"
    strays = [frame for frame in client.stray if frame.kind != ERROR]
    assert not strays, f"late or duplicated answers: {strays}"
    assert transport.framing_errors == 0
    codes = sorted({parse_error(frame.payload)[0] for frame in client.errors})
    final = await client.status()
    summary = {
        "good": job["good"] + 2 + 1, "bad": job["bad"], "classified": classified,
        "bad_answered": answered_bad, "bad_dropped": dropped_bad, "error_codes": codes,
        "status": final, "simulated_ns": transport.now() * 1e9,
    }
    with open(job["output"], "w") as handle:
        json.dump(summary, handle, indent=1)

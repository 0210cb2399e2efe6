"""The framed link protocol: host side (ttfs.contract.wire) and gateware (ttfs.hw.board.protocol) against each other."""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from streams import StreamSink, StreamSource, run_testbench, run_until
from ttfs.contract import wire
from ttfs.contract.wire import (
    CLASSIFY,
    ERR_BAD_CRC,
    ERR_BAD_LENGTH,
    ERR_BAD_TYPE,
    ERR_BUSY,
    ERR_TIMEOUT,
    ERROR,
    START,
    STATUS,
    BoardRejected,
    Frame,
    FrameDecoder,
    LinkError,
    LinkInfo,
    LinkTimeout,
    crc16,
    encode_frame,
)
from ttfs.hw.board import host
from ttfs.hw.board.host import BoardClient, Transport
from ttfs.hw.board.protocol import FrameAnswerer, FrameParser
from ttfs.hw.errors import HardwareError

IMAGE_BYTES = 12
LENGTHS = {CLASSIFY: IMAGE_BYTES, STATUS: 0, wire.VERSION: 0, wire.SELFTEST: 0}
TIMEOUT_CYCLES = 40


# ---------------------------------------------------------------- host side


def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_encode_frame_bytes():
    frame = encode_frame(7, STATUS)
    assert frame[:5] == bytes([START, 7, STATUS, 0, 0])
    assert int.from_bytes(frame[5:], "big") == crc16(bytes([7, STATUS, 0, 0]))
    long = encode_frame(1, CLASSIFY, bytes(range(10)))
    assert long[3:5] == (10).to_bytes(2, "little") and long[5:15] == bytes(range(10))


@pytest.mark.parametrize("seq, kind, payload, message", [
    (256, 1, b"", "seq"), (0, -1, b"", "type"), (0, 1, bytes(70000), "payload")])
def test_encode_frame_refuses_bad_fields(seq, kind, payload, message):
    with pytest.raises(LinkError, match=message):
        encode_frame(seq, kind, payload)


def test_decoder_resynchronises_through_garbage_and_corruption():
    rng = random.Random(3)
    frames = [Frame(rng.randrange(256), rng.randrange(256), bytes(rng.randrange(256) for _ in range(n)))
              for n in (0, 5, 40, 1, 17)]
    stream = bytearray()
    for frame in frames:
        # Garbage full of start markers, a corrupted copy and a truncated copy before each frame.
        stream += bytes([START, 0xFF, 0xFF, START]) + bytes(rng.randrange(256) for _ in range(7))
        corrupt = bytearray(encode_frame(frame.seq, frame.kind, frame.payload))
        corrupt[rng.randrange(1, len(corrupt))] ^= 1 << rng.randrange(8)
        stream += corrupt
        stream += encode_frame(frame.seq, frame.kind, frame.payload)[:4]
        stream += encode_frame(frame.seq, frame.kind, frame.payload)
    decoder = FrameDecoder(max_payload=64, payload_limits=None)  # the frames' types are random
    decoded = []
    # Byte by byte and in odd chunks alike.
    position = 0
    while position < len(stream):
        size = rng.randrange(1, 9)
        decoded += decoder.feed(bytes(stream[position:position + size]))
        position += size
    assert decoded == frames
    assert decoder.discarded > 0


def test_answer_parsers():
    info = LinkInfo(input_size=4, classes=3, logit_bytes=2)
    payload = bytes([2]) + (1234).to_bytes(4, "little") + b"".join(
        v.to_bytes(2, "little", signed=True) for v in (-5, 300, -32768))
    answer = wire.parse_classify(payload, info)
    assert answer == wire.ClassifyAnswer(2, (-5, 300, -32768), 1234)
    with pytest.raises(LinkError, match="expected"):
        wire.parse_classify(payload[:-1], info)
    with pytest.raises(LinkError, match="class 3"):
        wire.parse_classify(bytes([3]) + payload[1:], info)
    status = wire.parse_status(bytes(range(16)) + bytes([4, 1]))
    assert status["frames_ok"] == 0x0100 and status["lost_requests"] == 0x0F0E
    assert status["last_class"] == 4 and status["selftest"] == "passed"
    selftest = wire.parse_selftest(bytes([3, 3, 1, 2, 0]))
    assert selftest.ok and selftest.classes == (1, 2, 0)
    assert not wire.parse_selftest(bytes([2, 1, 1, 1])).ok
    with pytest.raises(LinkError, match="image count"):
        wire.parse_selftest(bytes([3, 3, 1]))
    assert "checksum" in wire.describe_error(bytes([ERR_BAD_CRC, CLASSIFY]))


class ScriptedTransport(Transport):
    """A fake board: answers each written frame from a script, on a virtual clock."""

    def __init__(self, answer):
        self.answer = answer
        self.clock = 0.0
        self.inbox = b""

    async def write(self, data):
        frames = FrameDecoder().feed(data)
        self.inbox += b"".join(self.answer(frame) for frame in frames)

    async def read(self, timeout):
        data, self.inbox = self.inbox, b""
        if not data:
            self.clock += timeout
        return data

    def now(self):
        return self.clock


def test_client_matches_answers_by_seq_and_keeps_strays():
    info = LinkInfo(input_size=2, classes=2, logit_bytes=1)

    def answer(frame):
        good = encode_frame(frame.seq, frame.kind | 0x80,
                            bytes([1]) + (9).to_bytes(4, "little") + bytes([5, 7]))
        # A stale answer and an error for garbage come first; they must not be taken.
        return (encode_frame((frame.seq - 1) & 0xFF, frame.kind | 0x80, b"old")
                + encode_frame(0, ERROR, bytes([ERR_BAD_TYPE, 0x33])) + good)

    client = BoardClient(ScriptedTransport(answer), info, timeout=1.0)
    result = asyncio.run(client.classify(bytes([1, 2])))
    assert result == wire.ClassifyAnswer(1, (5, 7), 9)
    assert len(client.stray) == 2 and len(client.errors) == 1
    with pytest.raises(LinkError, match="takes 2"):
        asyncio.run(client.classify(bytes(3)))


def test_client_raises_on_error_answer_and_on_silence():
    info = LinkInfo(input_size=2, classes=2, logit_bytes=1)
    rejecting = BoardClient(ScriptedTransport(
        lambda frame: encode_frame(frame.seq, ERROR, bytes([ERR_BUSY, frame.kind]))), info)
    with pytest.raises(BoardRejected, match="busy") as caught:
        asyncio.run(rejecting.status())
    assert caught.value.code == ERR_BUSY
    silent = BoardClient(ScriptedTransport(lambda frame: b""), info, timeout=0.5)
    with pytest.raises(LinkTimeout, match="no answer"):
        asyncio.run(silent.version())


def test_serial_transport_reports_a_missing_port():
    with pytest.raises(LinkError, match="/dev/does-not-exist"):
        host.SerialTransport("/dev/does-not-exist", 115200)


# ---------------------------------------------------------------- gateware


def _no_marker(rng, count):
    return bytes(rng.choice([b for b in range(256) if b != START]) for _ in range(count))


def _scenarios(rng):
    """(bytes to send, idle cycles after, expected request or None, buffer locked, payload written)."""
    cases = []
    for seq in range(6):
        image = bytes(rng.randrange(256) for _ in range(IMAGE_BYTES))
        cases.append((encode_frame(seq, CLASSIFY, image), 0, (seq, CLASSIFY, 0), False, image))
    cases.append((encode_frame(20, STATUS), 0, (20, STATUS, 0), False, b""))
    bad = bytearray(encode_frame(21, CLASSIFY, bytes(range(IMAGE_BYTES))))
    bad[9] ^= 0x10
    # The payload is written as it arrives; only the CRC, at the end, rejects it.
    cases.append((bytes(bad), 0, (21, CLASSIFY, ERR_BAD_CRC), False, bytes(bad[5:5 + IMAGE_BYTES])))
    bad = bytearray(encode_frame(22, STATUS))
    bad[-1] ^= 0x01
    cases.append((bytes(bad), 0, (22, STATUS, ERR_BAD_CRC), False, b""))
    cases.append((encode_frame(23, 0x77), 0, (23, 0x77, ERR_BAD_TYPE), False, b""))
    # A bad length is refused at the header; its payload (no markers) is skipped.
    short = bytes([START, 24, CLASSIFY, 3, 0]) + _no_marker(rng, 5)
    cases.append((short, 0, (24, CLASSIFY, ERR_BAD_LENGTH), False, b""))
    truncated = encode_frame(25, CLASSIFY, bytes(range(100, 100 + IMAGE_BYTES)))[:9]
    cases.append((truncated, TIMEOUT_CYCLES + 5, (25, CLASSIFY, ERR_TIMEOUT), False, truncated[5:]))
    cases.append((_no_marker(rng, 9), 0, None, False, b""))
    cases.append((encode_frame(26, CLASSIFY, bytes(IMAGE_BYTES)), 0, (26, CLASSIFY, ERR_BUSY), True, b""))
    cases.append((bytes([START]), TIMEOUT_CYCLES + 3, (0, 0, ERR_TIMEOUT), False, b""))
    return cases


def test_parser_against_scenarios():
    """Good frames, every kind of bad one, garbage: one request per frame, exact buffer writes."""
    rng = random.Random(11)
    cases = _scenarios(rng)
    rng.shuffle(cases)
    parser = FrameParser(LENGTHS, IMAGE_BYTES, TIMEOUT_CYCLES)
    requests, writes, dropped = [], [], []
    state = {"done": False}

    async def drive(ctx):
        for data, idle, _, locked, _ in cases:
            ctx.set(parser.buffer_locked, locked)
            for byte in data:
                if rng.random() < 0.3:
                    await ctx.tick().repeat(rng.randrange(1, 6))  # gaps shorter than the timeout
                ctx.set(parser.bytes_in.payload, byte)
                ctx.set(parser.bytes_in.valid, 1)
                await ctx.tick()
                ctx.set(parser.bytes_in.valid, 0)
            await ctx.tick().repeat(idle + 3)
            ctx.set(parser.buffer_locked, 0)
        state["done"] = True

    async def watch(ctx):
        ctx.set(parser.request.ready, 1)
        while not state["done"]:
            if ctx.get(parser.request.valid):
                payload = ctx.get(parser.request.payload)
                requests.append((payload.seq, payload.type, payload.error))
            if ctx.get(parser.write.en):
                writes.append((ctx.get(parser.write.addr), ctx.get(parser.write.data)))
            if ctx.get(parser.dropped):
                dropped.append(True)
            assert not ctx.get(parser.lost)
            await ctx.tick()

    sim = Simulator(parser)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(watch)
    sim.run()

    assert requests == [expected for _, _, expected, _, _ in cases if expected is not None]
    expected_writes = [pair for *_, written in cases for pair in enumerate(written)]
    assert writes == expected_writes
    # Skipped bytes: the garbage, the payload and CRC of the bad-length frame,
    # the CRC of the bad-type frame (both refused at their header).
    assert len(dropped) == 9 + 5 + 2


def test_parser_counts_a_lost_request():
    parser = FrameParser(LENGTHS, IMAGE_BYTES, TIMEOUT_CYCLES)
    lost, taken = [], []

    async def drive(ctx):
        ctx.set(parser.request.ready, 0)
        for seq in (1, 2):
            for byte in encode_frame(seq, STATUS):
                ctx.set(parser.bytes_in.payload, byte)
                ctx.set(parser.bytes_in.valid, 1)
                await ctx.tick()
                if ctx.get(parser.lost):
                    lost.append(seq)
        ctx.set(parser.bytes_in.valid, 0)
        await ctx.tick()
        if ctx.get(parser.lost):
            lost.append("later")
        taken.append(ctx.get(parser.request.payload).seq)

    sim = Simulator(parser)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.run()
    # The second frame's request is lost as its last byte arrives; the first one waits.
    assert lost == [2] and taken == [1]


def test_parser_refuses_bad_parameters():
    with pytest.raises(HardwareError, match="buffer_size"):
        FrameParser(LENGTHS, IMAGE_BYTES - 1, TIMEOUT_CYCLES)
    with pytest.raises(HardwareError, match="timeout_cycles"):
        FrameParser(LENGTHS, IMAGE_BYTES, 1)
    with pytest.raises(HardwareError, match="max_payload"):
        FrameAnswerer(70000)


def test_answerer_frames_decode_on_the_host():
    rng = random.Random(5)
    max_payload = 9
    answers = [Frame(rng.randrange(256), rng.randrange(256), bytes(rng.randrange(256) for _ in range(n)))
               for n in [0, 1, max_payload] + [rng.randrange(max_payload + 1) for _ in range(6)]]
    answerer = FrameAnswerer(max_payload)
    source = StreamSource(answerer.answer, [{
        "seq": frame.seq, "type": frame.kind, "length": len(frame.payload),
        "payload": list(frame.payload) + [rng.randrange(256)] * (max_payload - len(frame.payload)),
    } for frame in answers], rng=rng, gap=0.5)
    sink = StreamSink(answerer.bytes_out, rng=rng, ready_probability=0.6)
    total = sum(len(encode_frame(f.seq, f.kind, f.payload)) for f in answers)

    async def testbench(ctx, _):
        await run_until(ctx, [source, sink], lambda: len(sink.received) == total)

    run_testbench(answerer, testbench)
    received = bytearray(sink.beats)
    expected = b"".join(encode_frame(f.seq, f.kind, f.payload) for f in answers)
    assert bytes(received) == expected
    assert FrameDecoder(payload_limits=None).feed(bytes(received)) == answers  # random types


def test_cli_reports_a_silent_board(tmp_path, capsys):
    """A port that exists but never answers: one clear error line and exit status 2."""
    import os

    from ttfs.cli import main as cli

    controller, device = os.openpty()
    try:
        status = cli.main(["board", "selftest", "--port", os.ttyname(device), "--board", "ulx3s",
                           "--bundle", "fixtures/bundles/edge-deep", "--timeout", "0.3"])
    finally:
        os.close(controller)
        os.close(device)
    assert status == 2
    error = capsys.readouterr().err
    assert "no answer" in error and error.count("\n") == 1


class GoldenBoard(ScriptedTransport):
    """A fake serial board answering VERSION and CLASSIFY from the golden model."""

    def __init__(self, bundle, wrong_image=None):
        from ttfs.sim.golden import run as golden_run

        self.bundle, self.info = bundle, wire.link_info(bundle)
        self.golden_run, self.wrong_image, self.seen = golden_run, wrong_image, 0
        super().__init__(self.answer_frame)

    def answer_frame(self, frame):
        if frame.kind == wire.VERSION:
            fields = {"protocol": 1, "input_size": self.info.input_size, "classes": self.info.classes,
                      "logit_bytes": self.info.logit_bytes, "time_steps": self.bundle.time_steps,
                      "lanes": 1, "layers": len(self.bundle.layers), "selftest_images": 1,
                      "bundle_id": wire.bundle_id(self.bundle), "clock_hz": 1, "baud": 1}
            payload = b"".join(int(fields[name]).to_bytes(size, "little")
                               for name, size in wire.VERSION_FIELDS)
            return encode_frame(frame.seq, frame.kind | 0x80, payload)
        image = np.frombuffer(frame.payload, dtype=np.uint8).reshape(1, *self.bundle.input_shape)
        result = self.golden_run(self.bundle, image)
        cls = int(result.classes[0])
        if self.seen == self.wrong_image:
            cls = (cls + 1) % self.info.classes
        self.seen += 1
        payload = bytes([cls]) + (77).to_bytes(4, "little") + b"".join(
            int(v).to_bytes(self.info.logit_bytes, "little", signed=True) for v in result.logits[0])
        return encode_frame(frame.seq, frame.kind | 0x80, payload)

    def close(self):
        pass


@pytest.mark.parametrize("wrong_image, expected_status", [(None, 0), (2, 1)])
def test_cli_board_run_checks_answers_against_the_golden_model(monkeypatch, tmp_path, capsys,
                                                               wrong_image, expected_status):
    from ttfs.cli import board as board_cli
    from ttfs.cli import main as cli
    from ttfs.contract.bundle import load_bundle

    bundle_path = "fixtures/bundles/edge-deep"
    monkeypatch.setattr(board_cli, "SerialTransport",
                        lambda port, baud: GoldenBoard(load_bundle(bundle_path), wrong_image))
    report = tmp_path / "run.json"
    status = cli.main(["board", "run", "--port", "fake", "--bundle", bundle_path, "--images", "5",
                       "--json", str(report)])
    assert status == expected_status
    result = json.loads(report.read_text())
    assert result["images"] == 5 and result["mean_core_cycles"] == 77
    assert result["mismatches"] == ([] if wrong_image is None else [wrong_image])
    assert "differ from the golden model" in capsys.readouterr().out

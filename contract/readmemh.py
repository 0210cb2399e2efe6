"""Verilog ``$readmemh`` files: one hexadecimal word per line.

Signed values are written in two's complement over ``width`` bits and read
back sign-extended.  Used for ROM images (weights, biases, LUTs) handed to
the hardware and its simulators.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
from ttfs.contract.errors import TTFSError

# Reading returns int64, so read widths stop at 64 bits; writing takes Python
# integers of any size, because packed ROM words (P lanes x weight bits) are
# often hundreds of bits wide.
MAX_WIDTH = 64
_HEX_WORD = re.compile(r"[0-9a-fA-F_]+")


class ReadmemhError(TTFSError):
    """A value does not fit its width, or a file is not a valid $readmemh image."""


def _check_width(width: int, limit: int | None = MAX_WIDTH) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1 \
            or (limit is not None and width > limit):
        allowed = f"1..{limit}" if limit is not None else ">= 1"
        raise ReadmemhError(f"width: {width!r} must be an integer in {allowed}")
    return int(width)


def value_range(width: int, signed: bool | None) -> tuple[int, int]:
    """Inclusive range of values writable in ``width`` bits.

    signed=True: -2**(w-1)..2**(w-1)-1; signed=False: 0..2**w-1;
    signed=None: either reading, -2**(w-1)..2**w-1.
    """
    width = _check_width(width, limit=None)
    low = 0 if signed is False else -(1 << (width - 1))
    high = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    return low, high


def format_words(values: Iterable[int], width: int, signed: bool | None = None) -> str:
    """The file text for ``values``: one zero-padded lowercase hex word per line."""
    low, high = value_range(width, signed)
    digits = (width + 3) // 4
    mask = (1 << width) - 1
    lines = []
    for position, value in enumerate(np.asarray(values).reshape(-1).tolist()):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReadmemhError(f"values[{position}]: {value!r} is not an integer")
        if not low <= value <= high:
            raise ReadmemhError(f"values[{position}]: {value} does not fit {width} bits ({low}..{high})")
        lines.append(f"{value & mask:0{digits}x}")
    return "".join(line + "\n" for line in lines)


def write_readmemh(
    path: str | os.PathLike, values: Iterable[int], width: int, signed: bool | None = None
) -> None:
    """Write ``values`` (any shape, flattened in C order) as a $readmemh file.

    Negative values are written in two's complement.  ``signed`` restricts
    the accepted range (see :func:`value_range`); every value is checked
    before anything is written.
    """
    text = format_words(values, width, signed)
    Path(path).write_text(text, encoding="ascii")


def parse_words(text: str, width: int, signed: bool = True, source: str = "text") -> np.ndarray:
    """Parse $readmemh text; see :func:`read_readmemh`."""
    width = _check_width(width)
    words = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        content = line.split("//", 1)[0]
        for token in content.split():
            if token.startswith("@"):
                raise ReadmemhError(f"{source}:{line_number}: address directives ({token}) are not supported")
            if not _HEX_WORD.fullmatch(token) or token.strip("_") == "":
                raise ReadmemhError(f"{source}:{line_number}: {token!r} is not a hexadecimal word")
            value = int(token.replace("_", ""), 16)
            if value >> width:
                raise ReadmemhError(f"{source}:{line_number}: {token!r} does not fit {width} bits")
            if signed and value >> (width - 1):
                value -= 1 << width
            if not signed and value > np.iinfo(np.int64).max:
                raise ReadmemhError(f"{source}:{line_number}: {token!r} does not fit int64")
            words.append(value)
    return np.array(words, dtype=np.int64)


def read_readmemh(path: str | os.PathLike, width: int, signed: bool = True) -> np.ndarray:
    """Read a $readmemh file as int64, one entry per word.

    Blank lines and ``//`` comments are skipped, ``_`` separators allowed;
    ``signed`` sign-extends from bit ``width - 1``.  A word wider than
    ``width`` bits, an x/z digit or an ``@address`` raises ReadmemhError.
    """
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise ReadmemhError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReadmemhError(f"{path}: cannot read: {err}") from None
    return parse_words(text, width, signed, source=str(path))


__all__ = ["ReadmemhError", "format_words", "parse_words", "read_readmemh", "value_range", "write_readmemh"]

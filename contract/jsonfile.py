"""Reading JSON documents from untrusted files with bounded memory and nesting.

``json.loads`` of a file linked to /dev/zero reads until memory runs out,
and of ``[[[[...`` nested 100,000 deep ends in ``RecursionError``.  This
reader takes regular files only, of at most :data:`MAX_JSON_BYTES`, and
measures the nesting before parsing (strings removed, brackets counted), so
each of these is one error naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from ttfs.contract.errors import TTFSError
from ttfs.contract.npz import NpzError, check_regular_file

#: Largest JSON file read (network.json, config.json, settings, stamps).
MAX_JSON_BYTES = 16 << 20
#: Deepest nesting of arrays and objects accepted (the toolkit's own files nest fewer than 10 levels).
MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class JsonFileError(TTFSError):
    """A JSON file that cannot be read safely: missing, not a file, too large, too deep, invalid."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text ``data`` (brackets inside strings ignored)."""
    skeleton = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    steps = (np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(skeleton, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(steps).max()) if steps.size else 0


def read_json(path: str | os.PathLike, what: str | None = None) -> Any:
    """The JSON document in the regular file ``path``, within the size and depth limits.

    ``what`` names the file in messages (default: the path).  A missing file
    raises :class:`FileNotFoundError` for the caller to describe; every other
    problem is a :class:`JsonFileError`.
    """
    path = Path(path)
    label = what or str(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    try:
        check_regular_file(path, label, MAX_JSON_BYTES)
        data = path.read_bytes()
    except NpzError as err:
        raise JsonFileError(str(err)) from None
    except OSError as err:
        raise JsonFileError(f"{label}: cannot read it ({err.strerror or err})") from None
    if len(data) > MAX_JSON_BYTES:  # the file grew after the check
        raise JsonFileError(f"{label}: more than the limit of {MAX_JSON_BYTES} bytes")
    depth = nesting_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise JsonFileError(f"{label}: nested {depth} levels deep, more than the limit of {MAX_JSON_DEPTH}")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise JsonFileError(f"{label}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise JsonFileError(f"{label}: invalid JSON: {err}") from None


__all__ = ["JsonFileError", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "nesting_depth", "read_json"]

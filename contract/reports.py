"""Reports and plots: every ``--json OUT`` (and every PNG) of the command line is written here.

One writer so that every command behaves alike: parent folders are created,
the file appears whole or not at all (written beside, then renamed), and a
path that cannot be written is one clear error instead of a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ttfs.contract.errors import TTFSError


class ReportError(TTFSError):
    """A report file cannot be written."""


def write_file(path: str | os.PathLike, data: bytes, what: str = "--out") -> Path:
    """Write ``data`` to ``path`` atomically (beside, then renamed), creating parent folders; return the path.

    ``what`` names the option or file in the error message.
    """
    target = Path(path)
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, target)
    except OSError as err:
        with contextlib.suppress(OSError):  # the folder itself may be what failed
            partial.unlink(missing_ok=True)
        raise ReportError(f"{what}: cannot write {target}: {err.strerror or err}") from None
    return target


def write_json(path: str | os.PathLike, document: Any, what: str = "--json") -> Path:
    """Write ``document`` as indented UTF-8 JSON to ``path`` atomically and return the path.

    ``what`` names the option or file in the error message.
    """
    return write_file(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), what)

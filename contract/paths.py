"""Output paths: checked before any long work, never an input, files from names kept inside.

Every command of the toolkit writes only below the outputs it was given
(``--out``, ``--json``, ``--plot``, ``--png``, build roots).  Before it
starts work it calls :func:`check_output` on each, which refuses, as one
:class:`OutputPathError`:

- a path that is one of the command's inputs, lies inside one, or (for a
  directory output) holds one: an output never overwrites what was read;
- a path under a regular file, through a dangling symbolic link, or a
  directory output that is itself a symbolic link (replacing it would
  replace the link, not the directory it names);
- a parent folder in which nothing can be created (probed by creating and
  removing a temporary file in the nearest existing folder: under /proc,
  read-only or permission-denied places fail here, not at the end);
- an existing directory of another kind than the one written: a bundle
  output replaces only a bundle (``network.json``) or an empty folder, a run
  output only a run (``config.json``) or an empty folder, and a file output
  never replaces a directory.

:func:`inside` builds a file name from a bundle's name and checks that it
stays inside its directory.  :func:`replace_directory` swaps a finished
directory into place in one atomic step, so an interruption leaves either
the old directory or the new one, and :func:`recover_leftovers` tidies what
an interrupted replacement left beside it (docs/input-safety.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Iterable

from ttfs.contract.errors import TTFSError

#: What an output is: a file, or a directory of one kind.
FILE = "file"
BUNDLE = "bundle"
RUN = "run"
FOLDER = "folder"
#: The file that marks an existing directory as one of each kind (FOLDER: any directory).
KIND_MARKERS = {BUNDLE: "network.json", RUN: "config.json"}
#: Prefixes of the siblings :func:`replace_directory` creates beside a target.
STAGING_TAG = ".new-"
RETIRED_TAG = ".old-"

# renameat2(2) flag: exchange two paths atomically (Linux >= 3.15, glibc >= 2.28).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class OutputPathError(TTFSError):
    """An output path that cannot or must not be written."""


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _nearest_existing(path: Path, what: str) -> Path:
    """The nearest existing ancestor of ``path`` (itself included), refusing files and dangling links on the way."""
    current = path
    while True:
        if os.path.islink(current) and not current.exists():
            raise OutputPathError(f"{what}: cannot write {path}: {current} is a dangling symbolic link")
        if current.exists():
            if current != path and not current.is_dir():
                raise OutputPathError(f"{what}: cannot write {path}: {current} is not a directory")
            return current
        if current.parent == current:
            return current
        current = current.parent


def _probe_writable(folder: Path, what: str, path: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one test that the OS agrees."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".ttfs-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{what}: cannot write {path}: nothing can be created in {folder} ({err.strerror or err})") from None


def check_output(path: str | os.PathLike, what: str, *, kind: str = FILE,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse ``path`` as an output of ``kind`` (see the module docstring); return it as a Path.

    ``what`` names the option in messages (``--out``); ``inputs`` are the
    files and folders the command reads (None entries are skipped).
    """
    if kind not in (FILE, FOLDER, *KIND_MARKERS):
        raise ValueError(f"kind {kind!r}")
    target = Path(path)
    if str(path) == "":
        raise OutputPathError(f"{what}: an empty path")
    real = _real(target)
    for source in inputs:
        if source is None:
            continue
        source_real = _real(Path(source))
        if _is_within(real, source_real):
            raise OutputPathError(f"{what}: cannot write {target}: it is or lies inside the input {source}; "
                                  "an output never overwrites an input")
        if kind != FILE and _is_within(source_real, real):
            raise OutputPathError(f"{what}: cannot write {target}: it holds the input {source}; an output never overwrites an input")
    if kind != FILE and target.is_symlink():
        raise OutputPathError(f"{what}: cannot write {target}: it is a symbolic link; give the directory it names")
    existing = _nearest_existing(target, what)
    if existing == target:
        _check_existing(target, what, kind)
        folder = target if kind != FILE else target.parent
    else:
        folder = existing
    _probe_writable(folder, what, target)
    return target


def _check_existing(target: Path, what: str, kind: str) -> None:
    """An existing ``target`` may be replaced only by an output of its own kind."""
    try:
        mode = os.stat(target).st_mode
    except OSError as err:
        raise OutputPathError(f"{what}: cannot write {target}: cannot inspect it ({err.strerror or err})") from None
    if kind == FILE:
        if stat.S_ISDIR(mode):
            raise OutputPathError(f"{what}: cannot write {target}: it is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise OutputPathError(f"{what}: cannot write {target}: it exists and is not a regular file")
        return
    if not stat.S_ISDIR(mode):
        raise OutputPathError(f"{what}: cannot write {target}: it exists and is not a directory")
    marker = KIND_MARKERS.get(kind)
    if marker is None:
        return
    try:
        empty = not any(target.iterdir())
    except OSError as err:
        raise OutputPathError(f"{what}: cannot write {target}: cannot list it ({err.strerror or err})") from None
    if not empty and not (target / marker).is_file():
        raise OutputPathError(f"{what}: cannot write {target}: it exists and is not a {kind} directory (no {marker}); "
                              "refusing to replace it")


def inside(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` after checking that it resolves inside ``root`` (``name`` comes from a bundle)."""
    base = _real(Path(root))
    candidate = Path(root) / name
    if os.path.isabs(name) or not _is_within(_real(candidate), base) or _real(candidate) == base:
        raise OutputPathError(f"{name!r}: a file name that leads outside {root}")
    return candidate


def _rename_exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a file system without exchange
        return False
    raise OSError(code, os.strerror(code), str(second))


def staging_directory(target: Path) -> Path:
    """A new empty directory beside ``target`` to build its replacement in (``.<name>.new-<id>``)."""
    staging = target.parent / f".{target.name}{STAGING_TAG}{uuid.uuid4().hex}"
    staging.mkdir()
    return staging


def replace_directory(staging: Path, target: Path) -> None:
    """Put the complete directory ``staging`` at ``target``, replacing what is there, never losing both.

    No ``target``: one rename.  An existing ``target``: one atomic exchange
    (renameat2 RENAME_EXCHANGE), then the old directory, now at
    ``staging``, is removed.  Where the file system cannot exchange, the old
    directory is first renamed to ``.<name>.old-<id>`` and the new one
    renamed into place; an interruption between the two leaves the old one
    there, and :func:`recover_leftovers` puts it back on the next run.
    """
    if not target.exists():
        os.rename(staging, target)
        return
    if _rename_exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = target.parent / f".{target.name}{RETIRED_TAG}{uuid.uuid4().hex}"
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def recover_leftovers(target: Path) -> None:
    """Tidy what an interrupted :func:`replace_directory` left beside ``target``.

    With ``target`` missing, the newest retired copy is put back; every
    other staging or retired sibling is removed (they are never the only copy).
    """
    parent = target.parent
    if not parent.is_dir():
        return
    retired = sorted((p for p in parent.glob(f".{target.name}{RETIRED_TAG}*") if p.is_dir()),
                     key=lambda p: p.stat().st_mtime)
    if not target.exists() and not target.is_symlink() and retired:
        os.rename(retired.pop(), target)
    for leftover in [*retired, *parent.glob(f".{target.name}{STAGING_TAG}*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


__all__ = [
    "BUNDLE", "FILE", "FOLDER", "RUN", "OutputPathError", "check_output", "inside", "recover_leftovers",
    "replace_directory", "staging_directory",
]

"""Reading ``.npz`` archives from untrusted files with bounded memory and no pickle.

``np.load`` decompresses a member before anyone can look at its shape, so a
small archive that inflates to gigabytes (or an ``.npy`` header that
declares a huge shape) costs that memory before it can be refused.  This
reader looks first and reads second:

1. the path must be a regular file no larger than :data:`MAX_FILE_BYTES`;
2. each member's ``.npy`` header (dtype and shape) is read on its own, a few
   hundred bytes;
3. the declared array must be a plain numeric dtype (never an object array,
   which would need pickle), agree with the size the zip directory states
   for the member, and hold at most :data:`MAX_ARRAY_BYTES`;
4. only then is the member read, and its decoded length checked again.

So decoding never allocates more than the limit, whatever the file claims.
Errors are :class:`NpzError` naming the file and the member.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttfs.contract.errors import TTFSError

#: Largest archive accepted at all (the compressed file on disk).
MAX_FILE_BYTES = 2 << 30
#: Largest decoded array (uncompressed bytes of one member's data).
MAX_ARRAY_BYTES = 1 << 30
#: Largest .npy header read (numpy writes headers of at most a few hundred bytes).
MAX_HEADER_BYTES = 1 << 16


# What a corrupt or hostile archive makes zipfile and numpy raise: a flipped byte may name an
# unknown compression method (NotImplementedError) or claim encryption (RuntimeError).
_ARCHIVE_ERRORS = (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class NpzError(TTFSError):
    """An archive that cannot be read safely: not a file, not a zip, a lying or oversized member."""


@dataclass(frozen=True)
class ArrayHeader:
    """What a member's ``.npy`` header declares."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the declared data (Python int: no overflow)."""
        count = 1
        for dimension in self.shape:
            count *= int(dimension)
        return count * self.dtype.itemsize


def check_regular_file(path: Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> int:
    """Refuse anything but a regular file of at most ``max_bytes``; return its size."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise NpzError(f"{what}: no such file") from None
    except OSError as err:
        raise NpzError(f"{what}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise NpzError(f"{what}: not a regular file")
    if info.st_size > max_bytes:
        raise NpzError(f"{what}: {info.st_size} bytes, more than the limit of {max_bytes}")
    return info.st_size


class NpzReader:
    """An ``.npz`` archive opened for bounded reads; use as a context manager.

    ``what`` names the file in messages (for example ``params.npz``).
    """

    def __init__(self, path: str | os.PathLike, what: str | None = None,
                 max_array_bytes: int = MAX_ARRAY_BYTES):
        self.path = Path(path)
        self.what = what or str(self.path)
        self.max_array_bytes = max_array_bytes
        check_regular_file(self.path, self.what)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except _ARCHIVE_ERRORS as err:
            with open(self.path, "rb") as handle:
                single = handle.read(6) == b"\x93NUMPY"
            if single:
                raise NpzError(f"{self.what}: expected an .npz archive of named arrays, found a single array "
                               "(.npy)") from None
            raise NpzError(f"{self.what}: not a readable .npz file ({err})") from None
        self._members = {}
        for info in self._zip.infolist():
            if info.filename.endswith(".npy") and not info.is_dir():
                self._members[info.filename[:-4]] = info

    def __enter__(self) -> "NpzReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        """The arrays in the archive, in archive order."""
        return list(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def _label(self, name: str) -> str:
        return f"{self.what}: cannot read {name!r}"

    def header(self, name: str) -> ArrayHeader:
        """The declared shape and dtype of array ``name``, read without its data."""
        if name not in self._members:
            raise NpzError(f"{self.what}: {name!r} is missing from the archive")
        try:
            with self._zip.open(self._members[name]) as member:
                version = np.lib.format.read_magic(member)
                reader = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if reader is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran_order, dtype = reader(member, max_header_size=MAX_HEADER_BYTES)
        except (*_ARCHIVE_ERRORS, SyntaxError) as err:
            raise NpzError(f"{self._label(name)}: unreadable array header ({err})") from None
        return ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran_order))

    def read(self, name: str, kinds: str = "biufc") -> np.ndarray:
        """Array ``name``, after its header passed the checks; ``kinds`` are the numpy dtype kinds allowed."""
        header = self.header(name)
        label = self._label(name)
        if header.dtype.hasobject:
            raise NpzError(f"{label}: an object array, which cannot be read without pickle")
        if header.dtype.kind not in kinds:
            raise NpzError(f"{label}: dtype {header.dtype} is not allowed here")
        if header.nbytes > self.max_array_bytes:
            raise NpzError(f"{label}: shape {header.shape} of {header.dtype} needs {header.nbytes} bytes, "
                           f"more than the limit of {self.max_array_bytes}")
        stored = self._members[name].file_size
        if stored < header.nbytes:
            raise NpzError(f"{label}: the header declares {header.nbytes} bytes of data, "
                           f"the archive holds {stored}")
        if stored > header.nbytes + MAX_HEADER_BYTES:
            raise NpzError(f"{label}: {stored} bytes stored for {header.nbytes} bytes of data")
        try:
            with self._zip.open(self._members[name]) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
        except _ARCHIVE_ERRORS as err:
            raise NpzError(f"{label}: corrupt ({err})") from None
        return array


__all__ = ["ArrayHeader", "MAX_ARRAY_BYTES", "MAX_FILE_BYTES", "NpzError", "NpzReader", "check_regular_file"]

"""Image data sets as uint8 arrays: the embedded MNIST sample and local standard files.

Plain numpy (no torch), so the golden model and its command line run without
torch.  Nothing is downloaded: ``mnist-sample`` ships with the toolkit
(``fixtures/data/mnist-sample.npz``, see ``fixtures/data/README.md``); the full
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 sets are read from a folder the
user already has (``data_dir``), in their standard distribution formats.

Every loader returns a :class:`Dataset` with images ``uint8 (N, C, H, W)``
and labels ``int64 (N,)``; bad or missing input raises one
:class:`DatasetError` whose message names the file and what is wrong.
"""

from __future__ import annotations

import gzip
import pickle
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy._core.multiarray as numpy_multiarray
import numpy._core.numeric as numpy_numeric

from sim.errors import TTFSError

DATASET_NAMES = ("mnist-sample", "mnist", "fashion-mnist", "cifar10", "cifar100")
SPLITS = ("train", "test")

SAMPLE_FILE_NAME = "mnist-sample.npz"
# A checkout (editable install): sw/../fixtures/data.  A wheel install: the
# data-files folder under the environment's prefix.
SAMPLE_LOCATIONS = (
    Path(__file__).resolve().parent.parent / "fixtures" / "data" / SAMPLE_FILE_NAME,
    Path(sys.prefix) / "share" / "ttfs-toolkit" / "data" / SAMPLE_FILE_NAME,
)

DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UNSIGNED_BYTE = 0x08

CIFAR10_FILES = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
CIFAR10_META = "batches.meta"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
CIFAR100_META = "meta"
CIFAR100_SUBDIR = "cifar-100-python"
CIFAR_SIDE = 32


class DatasetError(TTFSError):
    """A data set is missing, corrupt or not what the caller asked for."""


@dataclass
class Dataset:
    """Images with their labels.

    ``images`` is uint8 ``(N, C, H, W)``; ``labels`` is int64 ``(N,)``, or None
    for a user's input file without labels (:func:`load_images_npz`);
    ``classes[k]`` names label ``k`` (empty when the names are unknown).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str]


def load_dataset(name: str = "mnist-sample", split: str = "test", data_dir: str | Path | None = None) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of data set ``name``.

    ``name`` is one of :data:`DATASET_NAMES`.  ``mnist-sample`` is the
    embedded 5,000-image MNIST sample (4,000 train / 1,000 test, 100 test
    images per digit, shuffled); ``data_dir`` is not used for it.  The others
    are read from ``data_dir``:

    - ``mnist``, ``fashion-mnist``: the four IDX files
      (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each raw or
      gzipped (``.gz``);
    - ``cifar10``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (and
      optionally ``batches.meta``) in ``data_dir`` or
      ``data_dir/cifar-10-batches-py``;
    - ``cifar100``: ``train``, ``test`` and ``meta`` in ``data_dir`` or
      ``data_dir/cifar-100-python`` (fine labels, 100 classes).
    """
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} of {name}; choose one of {', '.join(SPLITS)}")
    if name == "mnist-sample":
        return _load_sample(split)
    if data_dir is None:
        raise DatasetError(f"{name} is read from local files: give the folder that holds them (data_dir)")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DatasetError(f"{name}: data folder {directory} does not exist")
    if name in ("mnist", "fashion-mnist"):
        classes = DIGIT_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
        return _load_idx_pair(name, split, directory, classes)
    if name == "cifar10":
        return _load_cifar(name, split, directory, CIFAR10_SUBDIR, CIFAR10_FILES, "labels", CIFAR10_META)
    return _load_cifar(name, split, directory, CIFAR100_SUBDIR, CIFAR100_FILES, "fine_labels", CIFAR100_META)


def load_images_npz(path: str | Path) -> Dataset:
    """Load a user's input file: an ``.npz`` with ``images`` and optional ``labels``.

    ``images`` must be uint8, ``(N, C, H, W)`` or ``(N, H, W)`` (read as one
    channel); ``labels``, when present, a 1-D integer array of N non-negative
    values.  The returned :class:`Dataset` has ``labels`` None when the file
    has none, and empty ``classes`` (the network bundle names the classes).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DatasetError(f"{path}: not a readable .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: expected an .npz archive with an 'images' array, found a single array")
    with archive:
        if "images" not in archive.files:
            raise DatasetError(f"{path}: no 'images' array (arrays found: {', '.join(archive.files) or 'none'})")
        images = _read_npz_member(path, archive, "images")
        labels = _read_npz_member(path, archive, "labels") if "labels" in archive.files else None
    if images.dtype != np.uint8:
        raise DatasetError(f"{path}: 'images' has dtype {images.dtype}, expected uint8 (pixel values 0..255)")
    if images.ndim == 3:
        images = images[:, np.newaxis]
    if images.ndim != 4:
        raise DatasetError(f"{path}: 'images' has shape {images.shape}, expected (N, C, H, W) or (N, H, W)")
    if len(images) == 0:
        raise DatasetError(f"{path}: 'images' holds no images")
    if labels is not None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(
                f"{path}: 'labels' has dtype {labels.dtype} and shape {labels.shape}, expected 1-D integers"
            )
        if len(labels) != len(images):
            raise DatasetError(f"{path}: {len(labels)} labels for {len(images)} images")
        if labels.min() < 0:
            raise DatasetError(f"{path}: 'labels' holds the negative value {labels.min()}")
        labels = labels.astype(np.int64)
    return Dataset(name=path.name, images=np.ascontiguousarray(images), labels=labels, classes=[])


def _read_npz_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: cannot read '{key}' ({err})") from err


# --- the embedded sample ----------------------------------------------------


def _sample_path() -> Path:
    for candidate in SAMPLE_LOCATIONS:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"the embedded MNIST sample is missing; looked for {', '.join(str(p) for p in SAMPLE_LOCATIONS)}"
    )


def _load_sample(split: str) -> Dataset:
    path = _sample_path()
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"]
            indices = archive[f"{split}_indices"]
            classes = [str(c) for c in archive["classes"]]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: the embedded MNIST sample is damaged ({err})") from err
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        raise DatasetError(f"{path}: the embedded MNIST sample is damaged (unexpected array shapes)")
    return Dataset(
        name="mnist-sample",
        images=images[indices],
        labels=labels[indices].astype(np.int64),
        classes=classes,
    )


# --- IDX files (MNIST, Fashion-MNIST) ----------------------------------------


def _load_idx_pair(name: str, split: str, directory: Path, classes: list[str]) -> Dataset:
    images_stem, labels_stem = IDX_FILES[split]
    found = {stem: _find_idx_file(directory, stem) for stem in (images_stem, labels_stem)}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DatasetError(
            f"{name} {split}: {directory} lacks {' and '.join(f'{stem}[.gz]' for stem in missing)} "
            f"(expected IDX files: {', '.join(f'{s}[.gz]' for pair in IDX_FILES.values() for s in pair)})"
        )
    images = _read_idx(found[images_stem], dims=3)
    labels = _read_idx(found[labels_stem], dims=1)
    if len(images) != len(labels):
        raise DatasetError(
            f"{name} {split}: {found[images_stem].name} holds {len(images)} images "
            f"but {found[labels_stem].name} holds {len(labels)} labels"
        )
    labels = labels.astype(np.int64)
    if len(labels) and labels.max() >= len(classes):
        raise DatasetError(f"{found[labels_stem]}: label {labels.max()} is outside 0..{len(classes) - 1}")
    return Dataset(name=name, images=images[:, np.newaxis], labels=labels, classes=list(classes))


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``dims`` dimensions (gzipped when named .gz)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DatasetError(f"{path}: not a valid gzip file ({err})") from err
    # Header: two zero bytes, a type code, the number of dimensions, then one
    # big-endian uint32 per dimension.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != IDX_UNSIGNED_BYTE:
        raise DatasetError(f"{path}: IDX type code 0x{raw[2]:02X} is not supported (expected 0x08, unsigned byte)")
    if raw[3] != dims:
        raise DatasetError(f"{path}: IDX file has {raw[3]} dimensions, expected {dims}")
    header_size = 4 + 4 * dims
    if len(raw) < header_size:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DatasetError(f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


# --- CIFAR python pickles ------------------------------------------------------

def _protocol2_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 pickles use it for bytes, limited to that use."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The only globals a CIFAR pickle needs: numpy's array, dtype and scalar
# reconstruction (written by numpy 1.x as numpy.core, by 2.x as numpy._core;
# _frombuffer for protocol 5), and _codecs.encode, which is how protocol 2
# pickles spell a bytes object.  Anything else (os.system, eval, ...) is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): numpy_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): numpy_multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): numpy_multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): numpy_multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): numpy_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): numpy_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _protocol2_bytes,
}


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the safe list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"refusing to load global {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    """Load a CIFAR batch file without running anything but array reconstruction."""
    try:
        with path.open("rb") as stream:
            # latin1 turns Python 2 strings (the original files) into str and
            # lets numpy rebuild the arrays they hold.
            content = _RestrictedUnpickler(stream, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise DatasetError(f"{path}: not a safe CIFAR pickle ({err})") from err
    except Exception as err:  # only safe objects are built, so any failure means a damaged file
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(content).__name__}")
    # Python 3 writers may use bytes keys (the documented way to read the files).
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _cifar_directory(name: str, directory: Path, subdir: str, required: list[str]) -> Path:
    for candidate in (directory, directory / subdir):
        if all((candidate / file).is_file() for file in required):
            return candidate
    missing = [file for file in required if not (directory / file).is_file()]
    raise DatasetError(
        f"{name}: {directory} (or {directory / subdir}) lacks {', '.join(missing)} "
        f"(expected files: {', '.join(required)})"
    )


def _load_cifar(
    name: str,
    split: str,
    directory: Path,
    subdir: str,
    split_files: dict[str, list[str]],
    labels_key: str,
    meta_file: str,
) -> Dataset:
    is_cifar100 = name == "cifar100"
    required = split_files[split] + ([meta_file] if is_cifar100 else [])
    folder = _cifar_directory(name, directory, subdir, required)
    classes = _cifar_classes(folder, meta_file, is_cifar100)
    key = labels_key
    images_parts, labels_parts = [], []
    for file in split_files[split]:
        path = folder / file
        batch = _unpickle(path)
        for needed in ("data", key):
            if needed not in batch:
                raise DatasetError(f"{path}: no '{needed}' entry (found: {', '.join(map(str, batch)) or 'none'})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
            raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        try:
            labels = np.asarray(batch[key], dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise DatasetError(f"{path}: '{key}' is not a list of integers ({err})") from err
        if labels.shape != (len(data),):
            raise DatasetError(f"{path}: {labels.size} labels for {len(data)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{len(classes) - 1}")
        images_parts.append(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE))
        labels_parts.append(labels)
    return Dataset(
        name=name,
        images=np.concatenate(images_parts),
        labels=np.concatenate(labels_parts),
        classes=classes,
    )


def _cifar_classes(folder: Path, meta_file: str, is_cifar100: bool) -> list[str]:
    """Class names from the meta file (required for CIFAR-100, optional for CIFAR-10)."""
    path = folder / meta_file
    if not is_cifar100 and not path.is_file():
        return list(CIFAR10_CLASSES)
    meta = _unpickle(path)
    key = "fine_label_names" if is_cifar100 else "label_names"
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(n, (str, bytes)) for n in names) or not names:
        raise DatasetError(f"{path}: no list of class names under '{key}'")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]

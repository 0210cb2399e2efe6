"""Image data sets as uint8 arrays: the embedded MNIST sample and local standard files.

Plain numpy (no torch), so the golden model and its command line run without
torch.  Nothing is downloaded: ``mnist-sample`` ships with the toolkit
(``fixtures/data/mnist-sample.npz``, see ``fixtures/data/README.md``); the full
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 sets are read from a folder the
user already has (``data_dir``), in their standard distribution formats.

A user's own data comes in two forms (``docs/your-data.md``):
``npz:FILE`` (arrays in one ``.npz``) and ``folder:DIR`` (one subfolder of
PNG or JPEG images per class, the ImageFolder layout).  Archives are read
with bounded memory (:mod:`ttfs.contract.npz`); images are decoded with
Pillow.

Every loader returns a :class:`Dataset` with images ``uint8 (N, C, H, W)``
and labels ``int64 (N,)``; bad or missing input raises one
:class:`DatasetError` whose message names the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy._core.multiarray as numpy_multiarray
import numpy._core.numeric as numpy_numeric
from ttfs.contract.errors import TTFSError
from ttfs.contract.npz import MAX_ARRAY_BYTES, NpzError, NpzReader
from ttfs.contract.resources import packaged

DATASET_NAMES = ("mnist-sample", "mnist", "fashion-mnist", "cifar10", "cifar100")
#: A user's data: ``npz:FILE`` or ``folder:DIR``.
USER_SCHEMES = ("npz", "folder")
SPLITS = ("train", "test")
#: A user's data set without its own split: this share of each class is the test split.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Largest array of an input file of images (``--input``, a bundle's vectors.npz), so that
#: the images and the work on them stay well within memory.
MAX_INPUT_BYTES = 256 << 20
#: At most this many classes (labels 0..MAX_CLASSES-1) in a user's data.
MAX_CLASSES = 65536

SAMPLE_FILE_NAME = "mnist-sample.npz"

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


def dataset_names_help() -> str:
    """The accepted data set names, for messages and --help."""
    return f"{', '.join(DATASET_NAMES)}, npz:FILE or folder:DIR"


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it names a data set (a standard one or a user's), else raise DatasetError."""
    if not isinstance(name, str):
        raise DatasetError(f"unknown data set {name!r}; choose one of {dataset_names_help()}")
    scheme, separator, location = name.partition(":")
    if separator and scheme in USER_SCHEMES:
        if not location:
            raise DatasetError(f"data set {name!r}: give the {'file' if scheme == 'npz' else 'folder'} "
                               f"after '{scheme}:'")
        return name
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown data set {name!r}; choose one of {dataset_names_help()}")
    return name


def user_data_path(name: str | None) -> Path | None:
    """The file or folder of a user's data set (``npz:FILE``, ``folder:DIR``); None for any other name."""
    if not isinstance(name, str):
        return None
    scheme, separator, location = name.partition(":")
    return Path(location) if separator and scheme in USER_SCHEMES and location else None


def is_image_folder(name: str) -> bool:
    """True for a user's folder of images (``folder:DIR``): the one kind of data read at a chosen size and channels."""
    return name.startswith("folder:")


def load_dataset(name: str = "mnist-sample", split: str = "test", data_dir: str | Path | None = None,
                 image_size: tuple[int, int] | None = None, channels: int | None = None) -> Dataset:
    """Load split ``"train"`` or ``"test"`` of data set ``name``.

    ``name`` is one of :data:`DATASET_NAMES`, ``npz:FILE`` or ``folder:DIR``.
    ``mnist-sample`` is the embedded 5,000-image MNIST sample (4,000 train /
    1,000 test, 100 test images per digit, shuffled); ``data_dir`` is not
    used for it.  The standard sets are read from ``data_dir``:

    - ``mnist``, ``fashion-mnist``: the four IDX files
      (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
      ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each raw or
      gzipped (``.gz``);
    - ``cifar10``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` (and
      optionally ``batches.meta``) in ``data_dir`` or
      ``data_dir/cifar-10-batches-py``;
    - ``cifar100``: ``train``, ``test`` and ``meta`` in ``data_dir`` or
      ``data_dir/cifar-100-python`` (fine labels, 100 classes).

    A user's data (:func:`load_user_npz`, :func:`load_image_folder`) takes
    ``image_size`` (H, W) and ``channels`` (1 or 3) for folders of images.
    """
    check_dataset_name(name)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} of {name}; choose one of {', '.join(SPLITS)}")
    scheme, separator, location = name.partition(":")
    if separator and scheme == "npz":
        return load_user_npz(location, split)
    if separator and scheme == "folder":
        return load_image_folder(location, split, image_size=image_size, channels=channels)
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


def load_for_input(name: str, split: str, data_dir: str | Path | None, input_shape) -> Dataset:
    """Split ``split`` of data set ``name`` for a network whose input is ``input_shape`` (C, H, W).

    A folder of images is read at that size and number of channels; other
    data sets as they are (the caller checks that their shape fits).
    """
    channels, height, width = (int(v) for v in input_shape)
    if is_image_folder(name):
        return load_dataset(name, split, data_dir, image_size=(height, width), channels=channels)
    return load_dataset(name, split, data_dir)


def _checked_images(images: np.ndarray, where: str) -> np.ndarray:
    """uint8 (N, C, H, W) from (N, C, H, W) or (N, H, W); one line naming ``where`` otherwise."""
    if images.dtype != np.uint8:
        raise DatasetError(f"{where} has dtype {images.dtype}, expected uint8 (pixel values 0..255)")
    if images.ndim == 3:
        images = images[:, np.newaxis]
    if images.ndim != 4:
        raise DatasetError(f"{where} has shape {images.shape}, expected (N, C, H, W) or (N, H, W)")
    if len(images) == 0 or 0 in images.shape[1:]:
        raise DatasetError(f"{where} holds no images (shape {images.shape})")
    return np.ascontiguousarray(images)


def _checked_labels(labels: np.ndarray, count: int, where: str, classes: int | None = None) -> np.ndarray:
    """int64 (N,) labels in 0..classes-1 (0..MAX_CLASSES-1 when the classes are unknown)."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{where} has dtype {labels.dtype} and shape {labels.shape}, expected 1-D integers")
    if len(labels) != count:
        raise DatasetError(f"{where}: {len(labels)} labels for {count} images")
    limit = MAX_CLASSES if classes is None else classes
    if len(labels) and int(labels.min()) < 0:
        raise DatasetError(f"{where} holds the negative value {int(labels.min())}")
    if len(labels) and int(labels.max()) >= limit:
        raise DatasetError(f"{where} holds the label {int(labels.max())}, outside 0..{limit - 1}")
    return labels.astype(np.int64)


def _read_user_arrays(path: Path, wanted: list[str], optional: list[str]) -> dict[str, np.ndarray]:
    try:
        with NpzReader(path) as archive:
            missing = [name for name in wanted if name not in archive]
            if missing:
                raise DatasetError(f"{path}: no {', '.join(repr(m) for m in missing)} array "
                                   f"(arrays found: {', '.join(archive.names) or 'none'})")
            arrays = {name: archive.read(name) for name in wanted}
            for name in optional:
                if name in archive:
                    arrays[name] = archive.read(name, kinds="U")
    except NpzError as err:
        raise DatasetError(str(err)) from None
    return arrays


def read_images_member(path: Path, what: str) -> np.ndarray | None:
    """The checked ``images`` array of an optional archive (a bundle's vectors.npz); None when the file
    or the array is absent.  A file that is there but unreadable is a DatasetError, never ignored."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with NpzReader(path, what=what, max_array_bytes=MAX_INPUT_BYTES) as archive:
            images = archive.read("images", kinds="u") if "images" in archive else None
    except NpzError as err:
        raise DatasetError(str(err)) from None
    return None if images is None else _checked_images(images, f"{what}: 'images'")


def load_images_npz(path: str | Path) -> Dataset:
    """Load a user's input file: an ``.npz`` with ``images`` and optional ``labels``.

    ``images`` must be uint8, ``(N, C, H, W)`` or ``(N, H, W)`` (read as one
    channel); ``labels``, when present, a 1-D integer array of N non-negative
    values.  The returned :class:`Dataset` has ``labels`` None when the file
    has none, and empty ``classes`` (the network bundle names the classes).
    """
    path = Path(path)
    try:
        with NpzReader(path, max_array_bytes=MAX_INPUT_BYTES) as archive:
            if "images" not in archive:
                raise DatasetError(f"{path}: no 'images' array (arrays found: {', '.join(archive.names) or 'none'})")
            images = archive.read("images")
            labels = archive.read("labels") if "labels" in archive else None
    except NpzError as err:
        raise DatasetError(str(err)) from None
    images = _checked_images(images, f"{path}: 'images'")
    if labels is not None:
        labels = _checked_labels(labels, len(images), f"{path}: 'labels'")
    return Dataset(name=path.name, images=images, labels=labels, classes=[])


def load_user_npz(location: str | Path, split: str) -> Dataset:
    """Split ``split`` of a user's ``.npz`` data set (``npz:FILE``).

    The archive holds uint8 images (N, C, H, W) or (N, H, W) and integer
    labels, in one of three layouts:

    - ``train_images``, ``train_labels``, ``test_images``, ``test_labels``;
    - ``images``, ``labels``, ``train_indices``, ``test_indices`` (the
      embedded sample's layout);
    - ``images`` and ``labels`` only: :data:`TEST_FRACTION` of each class
      (a seeded shuffle, :data:`SPLIT_SEED`) is the test split.

    An optional ``classes`` array of strings names the labels.
    """
    path = Path(location)
    where = f"npz:{location}"
    try:
        with NpzReader(path, what=where) as archive:
            names = set(archive.names)
    except NpzError as err:
        raise DatasetError(str(err)) from None
    if {"train_images", "train_labels", "test_images", "test_labels"} <= names:
        arrays = _read_user_arrays(path, [f"{split}_images", f"{split}_labels"], ["classes"])
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        picked = None
    elif {"images", "labels"} <= names:
        indices = [f"{s}_indices" for s in SPLITS] if {"train_indices", "test_indices"} <= names else []
        arrays = _read_user_arrays(path, ["images", "labels", *indices], ["classes"])
        images, labels = arrays["images"], arrays["labels"]
        picked = arrays[f"{split}_indices"] if indices else None
    else:
        raise DatasetError(f"{where}: expected 'images' and 'labels' (or train_/test_ images and labels); "
                           f"arrays found: {', '.join(sorted(names)) or 'none'}")
    classes = [str(c) for c in arrays["classes"].reshape(-1)] if "classes" in arrays else None
    images = _checked_images(images, f"{where}: images")
    labels = _checked_labels(labels, len(images), f"{where}: labels", None if classes is None else len(classes))
    if picked is not None:
        if picked.ndim != 1 or picked.dtype.kind not in "iu" or len(picked) == 0 \
                or int(picked.min()) < 0 or int(picked.max()) >= len(images):
            raise DatasetError(f"{where}: '{split}_indices' must be a non-empty 1-D array of indices "
                               f"in 0..{len(images) - 1}")
        images, labels = images[picked], labels[picked]
    elif not {"train_images"} <= names:
        chosen = _seeded_split(labels)[split]
        images, labels = images[chosen], labels[chosen]
    if classes is None:
        classes = [str(k) for k in range(int(labels.max()) + 1)] if len(labels) else []
    return Dataset(name=where, images=np.ascontiguousarray(images), labels=labels, classes=classes)


def _seeded_split(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices of the train and test splits: TEST_FRACTION of each class, chosen by a seeded shuffle."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(np.ceil(TEST_FRACTION * len(members))) if len(members) > 1 else 0
        test.append(rng.permutation(members)[:count])
    test_indices = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_indices] = False
    return {"train": np.flatnonzero(train_mask), "test": test_indices}


def load_image_folder(location: str | Path, split: str, image_size: tuple[int, int] | None = None,
                      channels: int | None = None) -> Dataset:
    """Split ``split`` of a folder of images (``folder:DIR``), the ImageFolder layout.

    ``DIR/<class>/*.png|jpg|jpeg`` (classes are the sorted subfolder names;
    :data:`TEST_FRACTION` of each class is the test split), or
    ``DIR/train/<class>/...`` and ``DIR/test/<class>/...``.  Images are
    decoded with Pillow; ``channels`` 1 makes them grey, 3 RGB (default: 1
    when every image is greyscale, else 3); ``image_size`` (H, W) resizes
    them (default: all must share the first image's size).
    """
    directory = Path(location)
    where = f"folder:{location}"
    if not directory.is_dir():
        raise DatasetError(f"{where}: no such folder")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels: {channels!r} is not 1 or 3")
    split_dirs = {s: directory / s for s in SPLITS}
    has_splits = all(path.is_dir() for path in split_dirs.values())
    root = split_dirs[split] if has_splits else directory
    classes = sorted(p.name for p in (split_dirs["train"] if has_splits else directory).iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{where}: no class subfolders (expected DIR/<class>/*.png or DIR/train/<class>/...)")
    if len(classes) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(classes)} classes, more than {MAX_CLASSES}")
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()) \
            if folder.is_dir() else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"{where}: no .png or .jpg images in its class folders")
    labels = np.array(labels, dtype=np.int64)
    if not has_splits:
        chosen = _seeded_split(labels)[split]
        files, labels = [files[k] for k in chosen], labels[chosen]
        if not files:
            raise DatasetError(f"{where}: too few images for a {split} split")
    images = _decode_images(files, where, image_size, channels)
    return Dataset(name=where, images=images, labels=labels, classes=classes)


def _decode_images(files: list[Path], where: str, image_size, channels) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{where}: reading image folders needs Pillow "
                           "(pip install pillow, or the toolkit's 'train' extra)") from None
    grey_modes = {"1", "L", "LA", "I", "I;16", "F"}
    with _warnings_as_errors():
        headers = []
        for path in files:
            try:
                with Image.open(path) as image:
                    headers.append((image.mode, image.size))
            except (OSError, ValueError, Image.DecompressionBombError, Warning) as err:
                raise DatasetError(f"{path}: not a readable image ({err})") from None
        if channels is None:
            channels = 1 if all(mode in grey_modes for mode, _ in headers) else 3
        if image_size is None:
            width, height = headers[0][1]
            odd = next((path for path, (_, size) in zip(files, headers) if size != (width, height)), None)
            if odd is not None:
                raise DatasetError(f"{odd}: {headers[files.index(odd)][1][0]}x{headers[files.index(odd)][1][1]} "
                                   f"pixels, the first image has {width}x{height}: give an image size to resize them")
        else:
            height, width = image_size
        if len(files) * channels * height * width > MAX_ARRAY_BYTES:
            raise DatasetError(f"{where}: {len(files)} images of {channels}x{height}x{width} need more than "
                               f"{MAX_ARRAY_BYTES} bytes")
        images = np.empty((len(files), channels, height, width), dtype=np.uint8)
        mode = "L" if channels == 1 else "RGB"
        for index, path in enumerate(files):
            try:
                with Image.open(path) as image:
                    image = image.convert(mode)
                    if image.size != (width, height):
                        image = image.resize((width, height), Image.Resampling.BILINEAR)
                    pixels = np.asarray(image, dtype=np.uint8)
            except (OSError, ValueError, Image.DecompressionBombError, Warning) as err:
                raise DatasetError(f"{path}: not a readable image ({err})") from None
            images[index] = pixels[np.newaxis] if channels == 1 else pixels.transpose(2, 0, 1)
    return images


@contextlib.contextmanager
def _warnings_as_errors():
    """Pillow warns (DecompressionBombWarning) before it refuses: treat a warning as the refusal."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- the embedded sample ----------------------------------------------------


def _sample_path() -> Path:
    path = packaged("data", SAMPLE_FILE_NAME)
    if not path.is_file():
        raise DatasetError(f"the embedded MNIST sample is missing: {path}")
    return path


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

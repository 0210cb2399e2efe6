"""Bundle I/O: round trips, atomic saves, and every contract rule of section 8."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import ttfs.contract.bundle as bundle_module
from ttfs.contract.bundle import (
    Bundle,
    BundleError,
    default_lut,
    load_bundle,
    save_bundle,
    validate,
)
from ttfs.contract.errors import TTFSError
from ttfs.sim.random_bundle import random_bundle

from bundle_edits import delete_field, edit_array, edit_json, set_field


def _arrays_equal(a: Bundle, b: Bundle) -> bool:
    if not np.array_equal(a.lut, b.lut):
        return False
    return all(
        np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
        for x, y in zip(a.layers, b.layers, strict=True)
    )


def test_round_trip_keeps_everything(tmp_path, rng):
    for trial in range(10):
        original = random_bundle(rng)
        loaded = load_bundle(save_bundle(original, tmp_path / f"b{trial}"))
        assert _arrays_equal(original, loaded)
        for field in ("time_steps", "channels", "height", "width", "classes", "meta"):
            assert getattr(loaded, field) == getattr(original, field)
        for x, y in zip(original.layers, loaded.layers, strict=True):
            for field in ("name", "kind", "inputs", "outputs", "weight_bits", "ramp_shift", "readout"):
                assert getattr(x, field) == getattr(y, field)
        assert loaded.lut.dtype == np.int64
        assert all(layer.weight.dtype == np.int64 and layer.bias.dtype == np.int64 for layer in loaded.layers)


def test_saved_arrays_use_small_dtypes(tmp_path, rng):
    bundle = random_bundle(rng, sizes=(16, 5, 3), time_steps=256, weight_bits=(6, 16))
    path = save_bundle(bundle, tmp_path / "b")
    with np.load(path / "params.npz", allow_pickle=False) as params:
        assert params["input.lut"].dtype == np.uint16  # 256 does not fit uint8
        assert params["fc1.weight"].dtype in (np.int8, np.uint8)
        assert params["out.weight"].dtype.itemsize <= 2
    bundle8 = random_bundle(rng, sizes=(16, 3), time_steps=16, weight_bits=8)
    with np.load(save_bundle(bundle8, tmp_path / "c") / "params.npz") as params:
        assert params["input.lut"].dtype == np.uint8


def test_network_json_matches_contract_layout(bundle_dir, small_bundle):
    document = json.loads((bundle_dir / "network.json").read_text())
    assert document["format"] == "ttfs-bundle" and document["version"] == 1
    assert document["input"] == {"channels": 1, "height": 4, "width": 4, "lut": "input.lut"}
    assert [layer["readout"] for layer in document["layers"]] == [False, True]
    assert document["layers"][0]["weight"] == "fc1.weight"
    assert document["classes"] == ["0", "1", "2"]


def test_save_is_byte_reproducible(tmp_path, small_bundle):
    first = save_bundle(small_bundle, tmp_path / "a")
    second = save_bundle(small_bundle, tmp_path / "b")
    for name in ("network.json", "params.npz"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_extra_files_are_written_and_ignored_by_readers(tmp_path, small_bundle):
    path = save_bundle(small_bundle, tmp_path / "b", extra_files={"fc1.weight.hex": b"00\n", "report.json": b"{}"})
    assert (path / "fc1.weight.hex").read_bytes() == b"00\n"
    assert _arrays_equal(load_bundle(path), small_bundle)


@pytest.mark.parametrize("name", ["../escape", "sub/dir", "network.json", "params.npz", "", ".hidden"])
def test_extra_file_names_must_be_plain(tmp_path, small_bundle, name):
    with pytest.raises(BundleError, match="extra_files"):
        save_bundle(small_bundle, tmp_path / "b", extra_files={name: b"x"})
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_bundle_drops_the_old_files(tmp_path, rng, small_bundle):
    path = save_bundle(small_bundle, tmp_path / "b", extra_files={"old.txt": b"old"})
    other = random_bundle(rng, sizes=(16, 4, 2), time_steps=4, weight_bits=3)
    save_bundle(other, path)
    assert not (path / "old.txt").exists()
    assert _arrays_equal(load_bundle(path), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_failed_save_leaves_nothing(tmp_path, small_bundle, monkeypatch):
    def broken(arrays):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "npz_bytes", broken)
    with pytest.raises(BundleError, match="disk full"):
        save_bundle(small_bundle, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_the_old_bundle(tmp_path, rng, small_bundle, monkeypatch):
    path = save_bundle(small_bundle, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(bundle_module, "npz_bytes", lambda arrays: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(BundleError):
        save_bundle(random_bundle(rng, sizes=(16, 2)), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_invalid_bundle_is_not_written(tmp_path, small_bundle):
    broken = dataclasses.replace(small_bundle, time_steps=12)
    with pytest.raises(BundleError, match="time_steps"):
        save_bundle(broken, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_replace_a_non_bundle_directory(tmp_path, small_bundle):
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        save_bundle(small_bundle, target)
    assert (target / "precious.txt").read_text() == "keep me"


def test_default_lut_rounds_halves_down():
    lut = default_lut(16)
    assert lut.shape == (256,) and lut.dtype == np.int64
    assert lut[0] == 0 and lut[255] == 16
    # v*T/255 = 7.5 at v = 119.53..: exact halves occur when 2*v*T is an odd multiple of 255
    values = np.arange(256)
    exact = values * 16 / 255
    assert np.array_equal(lut, np.where(exact - np.floor(exact) > 0.5, np.ceil(exact), np.floor(exact)))
    lut2 = default_lut(2)
    # 2*63/255 = 0.494 -> 0, 2*64/255 = 0.502 -> 1, 2*191/255 = 1.498 -> 1, 2*192/255 = 1.506 -> 2
    assert lut2[[63, 64, 191, 192]].tolist() == [0, 1, 1, 2]
    with pytest.raises(BundleError, match="time_steps"):
        default_lut(3)


def test_validate_messages_name_the_field(small_bundle):
    layer = dataclasses.replace(small_bundle.layers[0], weight_bits=17)
    broken = dataclasses.replace(small_bundle, layers=(layer, small_bundle.layers[1]))
    with pytest.raises(BundleError, match=r"layers\[0\]\.weight_bits: 17 is outside 2\.\.16"):
        validate(broken)
    assert issubclass(BundleError, TTFSError)


def test_bundle_properties(small_bundle):
    assert small_bundle.input_size == 16
    assert small_bundle.readout is small_bundle.layers[-1]
    assert small_bundle.hidden_layers == small_bundle.layers[:1]


# ---------------------------------------------------------------------------
# malformed bundles: each is rejected with a message naming the field


class _Tripwire:
    """Unpickling this object records the fact; a safe loader never does."""

    triggered = False

    def __reduce__(self):
        return (_trip, ())


def _trip():
    _Tripwire.triggered = True
    return 0


def _write(name, data):
    def apply(path: Path) -> None:
        (path / name).write_bytes(data)

    return apply


def _remove(name):
    def apply(path: Path) -> None:
        (path / name).unlink()

    return apply


def _object_array(array):
    values = np.empty(array.shape, dtype=object)
    values[...] = _Tripwire()
    return values


MALFORMED = {
    "format": (edit_json(set_field("format", "ttfs")), "format"),
    "version-3": (edit_json(set_field("version", 3)), "version"),
    "version-string": (edit_json(set_field("version", "1")), "version"),
    "missing-version": (edit_json(delete_field("version")), "version"),
    "time-steps-not-power": (edit_json(set_field("time_steps", 12)), "time_steps"),
    "time-steps-too-large": (edit_json(set_field("time_steps", 512)), "time_steps"),
    "time-steps-one": (edit_json(set_field("time_steps", 1)), "time_steps"),
    "time-steps-bool": (edit_json(set_field("time_steps", True)), "time_steps"),
    "time-steps-float": (edit_json(set_field("time_steps", 8.0)), "time_steps"),
    "input-not-object": (edit_json(set_field("input", [1, 4, 4])), "input"),
    "input-height-zero": (edit_json(set_field("input", "height", 0)), "input.height"),
    "input-lut-missing": (edit_json(delete_field("input", "lut")), "input.lut"),
    "input-size-mismatch": (edit_json(set_field("input", "width", 5)), "layers[0].inputs"),
    "layers-empty": (edit_json(set_field("layers", [])), "layers"),
    "layer-not-object": (edit_json(set_field("layers", 0, "fc1")), "layers[0]"),
    "inputs-chain": (edit_json(set_field("layers", 1, "inputs", 7)), "layers[1].inputs"),
    "inputs-string": (edit_json(set_field("layers", 0, "inputs", "16")), "layers[0].inputs"),
    "outputs-zero": (edit_json(set_field("layers", 0, "outputs", 0)), "layers[0].outputs"),
    "no-readout": (edit_json(set_field("layers", 1, "readout", False)), "layers[1].readout"),
    "two-readouts": (edit_json(set_field("layers", 0, "readout", True)), "layers[0].readout"),
    "readout-string": (edit_json(set_field("layers", 1, "readout", "yes")), "layers[1].readout"),
    "kind-conv": (edit_json(set_field("layers", 0, "kind", "conv2d")), "layers[0].kind"),
    "weight-bits-17": (edit_json(set_field("layers", 0, "weight_bits", 17)), "layers[0].weight_bits"),
    "weight-bits-1": (edit_json(set_field("layers", 1, "weight_bits", 1)), "layers[1].weight_bits"),
    "ramp-shift-31": (edit_json(set_field("layers", 0, "ramp_shift", 31)), "layers[0].ramp_shift"),
    "ramp-shift-negative": (edit_json(set_field("layers", 0, "ramp_shift", -1)), "layers[0].ramp_shift"),
    "name-missing": (edit_json(delete_field("layers", 0, "name")), "layers[0].name"),
    "name-duplicate": (edit_json(set_field("layers", 1, "name", "fc1")), "layers[1].name"),
    "weight-name-number": (edit_json(set_field("layers", 0, "weight", 3)), "layers[0].weight"),
    "classes-length": (edit_json(set_field("classes", ["a", "b"])), "classes"),
    "classes-not-strings": (edit_json(set_field("classes", [0, 1, 2])), "classes"),
    "meta-list": (edit_json(set_field("meta", [])), "meta"),
    "weight-missing": (edit_array("fc1.weight", lambda a: None), "fc1.weight"),
    "weight-float": (edit_array("fc1.weight", lambda a: a.astype(np.float64)), "layers[0].weight"),
    "weight-transposed": (edit_array("fc1.weight", lambda a: a.T.copy()), "layers[0].weight"),
    "weight-out-of-range": (edit_array("out.weight", lambda a: np.full(a.shape, 32, dtype=np.int64)), "layers[1].weight"),
    "bias-bool": (edit_array("fc1.bias", lambda a: a > 0), "layers[0].bias"),
    "bias-object": (edit_array("fc1.bias", _object_array), "layers[0].bias"),
    "bias-2d": (edit_array("out.bias", lambda a: a[None, :]), "layers[1].bias"),
    "bias-huge": (edit_array("fc1.bias", lambda a: np.full(a.shape, 2**60, dtype=np.int64)), "layers[0].bias"),
    "bound-over-48-bits": (edit_array("fc1.bias", lambda a: np.full(a.shape, 2**47 - 1, dtype=np.int64)), "layers[0]: potential bound"),
    "lut-above-t": (edit_array("input.lut", lambda a: np.full(a.shape, 9, dtype=np.int64)), "input.lut"),
    "lut-negative": (edit_array("input.lut", lambda a: a.astype(np.int64) - 1), "input.lut"),
    "lut-short": (edit_array("input.lut", lambda a: a[:, :255]), "input.lut"),
    "json-invalid": (_write("network.json", b"{ not json"), "network.json"),
    "json-array": (_write("network.json", b"[1, 2]"), "network.json"),
    "json-missing": (_remove("network.json"), "network.json"),
    "npz-missing": (_remove("params.npz"), "params.npz"),
    "npz-garbage": (_write("params.npz", b"PK\x03\x04 definitely not a zip"), "params.npz"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bundle_is_rejected_naming_the_field(bundle_dir, case):
    corrupt, field = MALFORMED[case]
    corrupt(bundle_dir)
    _Tripwire.triggered = False
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_dir)
    assert field in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not _Tripwire.triggered


def test_missing_directory_is_rejected(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "nowhere")


def test_npz_holding_a_single_array_is_rejected(bundle_dir):
    np.save(bundle_dir / "params.npy", np.zeros(3))
    (bundle_dir / "params.npy").rename(bundle_dir / "params.npz")
    with pytest.raises(BundleError, match="params.npz"):
        load_bundle(bundle_dir)


def test_truncated_npz_member_is_rejected(bundle_dir):
    data = (bundle_dir / "params.npz").read_bytes()
    (bundle_dir / "params.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="params.npz"):
        load_bundle(bundle_dir)


def test_unknown_fields_and_files_are_ignored(bundle_dir, small_bundle):
    edit_json(set_field("meta", {"note": "free-form", "nested": [1, 2]}))(bundle_dir)
    (bundle_dir / "rom.hex").write_text("00\n")
    with zipfile.ZipFile(bundle_dir / "params.npz") as archive:
        assert "input.lut.npy" in archive.namelist()
    loaded = load_bundle(bundle_dir)
    assert loaded.meta == {"note": "free-form", "nested": [1, 2]}
    assert _arrays_equal(loaded, small_bundle)


def test_corrupt_npz_member_is_rejected(bundle_dir):
    # Flip bytes inside the compressed data of the first member, keeping the zip directory.
    data = bytearray((bundle_dir / "params.npz").read_bytes())
    with zipfile.ZipFile(bundle_dir / "params.npz") as archive:
        first = archive.infolist()[0]
    start = first.header_offset + 30 + len(first.filename)
    for offset in range(start, start + min(first.compress_size, 40)):
        data[offset] ^= 0xFF
    (bundle_dir / "params.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="params.npz: cannot read 'input.lut': unreadable array header"):
        load_bundle(bundle_dir)

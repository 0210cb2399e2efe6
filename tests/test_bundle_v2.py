"""Contract v2 bundles (conv2d layers) and the name rule: layout, round trips,
version 1 unchanged, and every malformed case rejected naming its field."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from ttfs.cli.main import main
from ttfs.contract.bundle import (
    Bundle,
    BundleError,
    bundle_fingerprint,
    check_name,
    conv2d_layer,
    describe,
    load_bundle,
    network_text,
    potential_bits,
    save_bundle,
    validate,
)
from ttfs.sim.golden import run
from ttfs.sim.random_bundle import random_conv_bundle, random_images

from bundle_edits import delete_field, edit_array, edit_json, set_field

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures" / "bundles"


def conv_bundle() -> Bundle:
    """2x8x8 -> conv1 (4 channels, 3x3 'same', pool 2, bias per position) -> conv2 (3, 3x3 'valid',
    bias per channel) -> fc1 (5) -> out (3)."""
    return random_conv_bundle(
        np.random.default_rng(5), input_shape=(2, 8, 8), convs=[(4, 3, "same", 2), (3, 3, "valid", 1)],
        dense=[5, 3], time_steps=16, weight_bits=(6, 5, 4, 4), bias_per=["position", "channel"], lut="default",
    )


@pytest.fixture
def conv_dir(tmp_path) -> Path:
    return save_bundle(conv_bundle(), tmp_path / "conv")


def test_v2_document_layout(conv_dir):
    document = json.loads((conv_dir / "network.json").read_text())
    assert document["version"] == 2
    assert document["layers"][0] == {
        "name": "conv1", "kind": "conv2d", "inputs": 128, "outputs": 64,
        "input_shape": [2, 8, 8], "out_channels": 4, "kernel_size": 3, "padding": "same", "pool_size": 2,
        "output_shape": [4, 4, 4], "weight_bits": 6, "ramp_shift": document["layers"][0]["ramp_shift"],
        "weight": "conv1.weight", "bias": "conv1.bias", "bias_per": "position", "readout": False,
    }
    second = document["layers"][1]
    assert (second["input_shape"], second["output_shape"], second["bias_per"]) == ([4, 4, 4], [3, 2, 2], "channel")
    assert document["layers"][2] == {
        "name": "fc1", "kind": "dense", "inputs": 12, "outputs": 5, "weight_bits": 4,
        "ramp_shift": document["layers"][2]["ramp_shift"], "weight": "fc1.weight", "bias": "fc1.bias", "readout": False,
    }
    with np.load(conv_dir / "params.npz") as params:
        assert params["conv1.weight"].shape == (4, 2, 3, 3) and params["conv1.bias"].shape == (4, 8, 8)
        assert params["conv2.weight"].shape == (3, 4, 3, 3) and params["conv2.bias"].shape == (3,)


def test_v2_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    for trial in range(12):
        original = random_conv_bundle(rng)
        path = save_bundle(original, tmp_path / f"b{trial}")
        loaded = load_bundle(path)
        assert loaded.version == 2 and bundle_fingerprint(loaded) == bundle_fingerprint(original)
        for x, y in zip(original.layers, loaded.layers, strict=True):
            for name in ("name", "kind", "inputs", "outputs", "weight_bits", "ramp_shift", "readout",
                         "input_shape", "out_channels", "kernel_size", "padding", "pool_size"):
                assert getattr(x, name) == getattr(y, name), name
            assert np.array_equal(x.weight, y.weight) and np.array_equal(x.bias, y.bias)
            assert x.bias.shape == y.bias.shape and y.weight.dtype == y.bias.dtype == np.int64
        images = random_images(rng, original, 3)
        assert np.array_equal(run(original, images).logits, run(loaded, images).logits)
        again = save_bundle(loaded, tmp_path / f"c{trial}")
        for name in ("network.json", "params.npz"):
            assert (again / name).read_bytes() == (path / name).read_bytes()


# Fingerprints of the committed fixtures before contract v2: they must never change.
V1_FINGERPRINTS = {
    "edge-deep": "21515e88ee4a7157fbb705f89c3bc2b61fef98d720a49eef7c0d4ff268a01a46",
    "edge-wb16": "0cf74fc40ae031700f4c9a3b7f043e6a8b358798100cd5eb2d5666cdad21d675",
    "mnist-fc2": "8b81a6baf6826f669d18c6d4ce322df782ce753a6d58ebd579268d8740c3c3ff",
}


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if (p / "network.json").exists()))
def test_v1_bundles_are_unchanged(tmp_path, name):
    """Every committed bundle loads, and saving it again gives the same bytes: the dense ones
    as version 1, the one conv fixture (mnist-vgg, tools/make_fixtures.py) as version 2."""
    bundle = load_bundle(FIXTURES / name)
    assert bundle.version == (2 if name == "mnist-vgg" else 1)
    path = save_bundle(bundle, tmp_path / name)
    for file_name in ("network.json", "params.npz"):
        assert (path / file_name).read_bytes() == (FIXTURES / name / file_name).read_bytes()
    if name in V1_FINGERPRINTS:
        assert bundle_fingerprint(bundle) == V1_FINGERPRINTS[name]


def test_dense_bundle_written_as_version_2_loads_and_saves_as_version_1(tmp_path, bundle_dir, small_bundle):
    document = json.loads((bundle_dir / "network.json").read_text())
    document["version"] = 2
    (bundle_dir / "network.json").write_text(json.dumps(document))
    loaded = load_bundle(bundle_dir)
    assert loaded.version == 1
    again = save_bundle(loaded, tmp_path / "again")
    assert json.loads((again / "network.json").read_text())["version"] == 1
    assert bundle_fingerprint(loaded) == bundle_fingerprint(small_bundle)


def test_conv_bundle_properties():
    bundle = conv_bundle()
    conv1, conv2, fc1, out = bundle.layers
    assert conv1.conv_shape == (4, 8, 8) and conv1.output_shape == (4, 4, 4) and conv1.neurons == 256
    assert conv2.conv_shape == (3, 2, 2) and conv2.output_shape == (3, 2, 2) and conv2.neurons == 12
    assert fc1.output_shape == (5,) and fc1.neurons == 5 and fc1.conv_shape is None
    assert (conv1.bias_per, conv2.bias_per, fc1.bias_per) == ("position", "channel", None)
    assert bundle.sizes == [128, 64, 12, 5, 3]
    assert bundle.spiking_widths == [128, 64, 12, 5]
    assert bundle.spiking_layer_names == ["input", "conv1", "conv2", "fc1"]
    assert network_text(bundle) == "2x8x8-4x4x4-3x2x2-5-3"
    assert describe(bundle) == "2x8x8-4x4x4-3x2x2-5-3, T=16, weights 4/5/6 bits"
    bound = 16 * np.abs(conv1.weight).reshape(4, -1).sum(axis=1)[:, None, None] + np.abs(conv1.bias) + 17 * conv1.ramp
    assert potential_bits(conv1, 16) == int(bound.max()).bit_length() + 1
    assert conv2.neuron_bias().shape == (3, 2, 2) and conv2.neuron_bias()[:, 1, 0].tolist() == conv2.bias.tolist()
    # The fingerprint covers the conv fields.
    padded = dataclasses.replace(conv2, padding="same", outputs=48)
    other = dataclasses.replace(bundle, layers=(conv1, padded, dataclasses.replace(fc1, inputs=48,
                                weight=np.zeros((5, 48), dtype=np.int64)), out))
    validate(other)
    assert bundle_fingerprint(other) != bundle_fingerprint(bundle)


def test_pool_floors_like_torch():
    """A pool that does not divide the convolution's output drops the last rows and columns."""
    weight = np.ones((1, 1, 3, 3), dtype=np.int64)
    layer = conv2d_layer("c", (1, 7, 5), weight, np.zeros(1, dtype=np.int64), weight_bits=2, ramp_shift=0,
                         padding="same", pool_size=2)
    assert layer.conv_shape == (1, 7, 5) and layer.output_shape == (1, 3, 2) and layer.outputs == 6
    valid = conv2d_layer("c", (1, 7, 5), weight, np.zeros(1, dtype=np.int64), weight_bits=2, ramp_shift=0,
                         padding="valid", pool_size=3)
    assert valid.conv_shape == (1, 5, 3) and valid.output_shape == (1, 1, 1)


# ---------------------------------------------------------------------------
# malformed v2 bundles: each is rejected with a message naming the field


def _conv_readout(document):
    # conv2 becomes the last layer and the readout.
    document["layers"] = document["layers"][:2]
    document["layers"][1]["readout"] = True


def _conv_after_dense(document):
    late = copy.deepcopy(document["layers"][1])
    late.update(name="late", inputs=5, outputs=3, input_shape=[5, 1, 1], kernel_size=1, padding="same",
                pool_size=1, output_shape=[3, 1, 1], weight="late.weight", bias="late.bias")
    document["layers"].insert(3, late)


MALFORMED_V2 = {
    "kernel-even": (edit_json(set_field("layers", 0, "kernel_size", 4)), "layers[0].kernel_size"),
    "kernel-9": (edit_json(set_field("layers", 0, "kernel_size", 9)), "layers[0].kernel_size"),
    "kernel-zero": (edit_json(set_field("layers", 0, "kernel_size", 0)), "layers[0].kernel_size"),
    "kernel-string": (edit_json(set_field("layers", 0, "kernel_size", "3")), "layers[0].kernel_size"),
    "kernel-too-big-for-valid": (edit_json(set_field("layers", 1, "kernel_size", 5)), "layers[1].kernel_size"),
    "pool-5": (edit_json(set_field("layers", 0, "pool_size", 5)), "layers[0].pool_size"),
    "pool-zero": (edit_json(set_field("layers", 0, "pool_size", 0)), "layers[0].pool_size"),
    "pool-larger-than-output": (edit_json(set_field("layers", 1, "pool_size", 3)), "layers[1].pool_size"),
    "pool-missing": (edit_json(delete_field("layers", 0, "pool_size")), "layers[0].pool_size"),
    "padding-full": (edit_json(set_field("layers", 0, "padding", "full")), "layers[0].padding"),
    "padding-number": (edit_json(set_field("layers", 0, "padding", 1)), "layers[0].padding"),
    "padding-missing": (edit_json(delete_field("layers", 1, "padding")), "layers[1].padding"),
    "out-channels-zero": (edit_json(set_field("layers", 0, "out_channels", 0)), "layers[0].out_channels"),
    "input-shape-not-previous": (edit_json(set_field("layers", 1, "input_shape", [4, 2, 8])), "layers[1].input_shape"),
    "input-shape-not-image": (edit_json(set_field("layers", 0, "input_shape", [1, 16, 8])), "layers[0].input_shape"),
    "input-shape-two-values": (edit_json(set_field("layers", 0, "input_shape", [8, 16])), "layers[0].input_shape"),
    "input-shape-bool": (edit_json(set_field("layers", 0, "input_shape", [True, 8, 16])), "layers[0].input_shape"),
    "output-shape-unpooled": (edit_json(set_field("layers", 0, "output_shape", [4, 8, 8])), "layers[0].output_shape"),
    "output-shape-missing": (edit_json(delete_field("layers", 1, "output_shape")), "layers[1].output_shape"),
    "outputs-not-pooled": (edit_json(set_field("layers", 0, "outputs", 256)), "layers[0].outputs"),
    "dense-inputs-after-conv": (edit_json(set_field("layers", 2, "inputs", 13)), "layers[2].inputs"),
    "conv-readout": (edit_json(_conv_readout), "layers[1].kind"),
    "conv-after-dense": (edit_json(_conv_after_dense), "layers[3].kind"),
    "conv-in-version-1": (edit_json(set_field("version", 1)), "layers[0].kind"),
    "kind-unknown": (edit_json(set_field("layers", 1, "kind", "maxpool")), "layers[1].kind"),
    "bias-per-pixel": (edit_json(set_field("layers", 0, "bias_per", "pixel")), "layers[0].bias_per"),
    "bias-per-missing": (edit_json(delete_field("layers", 0, "bias_per")), "layers[0].bias_per"),
    "bias-per-says-channel": (edit_json(set_field("layers", 0, "bias_per", "channel")), "layers[0].bias"),
    "bias-per-says-position": (edit_json(set_field("layers", 1, "bias_per", "position")), "layers[1].bias"),
    "bias-pooled-shape": (edit_array("conv1.bias", lambda a: a[:, ::2, ::2].copy()), "layers[0].bias"),
    "weight-not-square": (edit_array("conv1.weight", lambda a: a[:, :, :, :2].copy()), "layers[0].weight"),
    "weight-channels-swapped": (edit_array("conv1.weight", lambda a: a.transpose(1, 0, 2, 3).copy()), "layers[0].weight"),
    "weight-out-of-range": (edit_array("conv2.weight", lambda a: np.full(a.shape, 16, dtype=np.int64)), "layers[1].weight"),
    "bias-over-48-bits": (edit_array("conv1.bias", lambda a: np.full(a.shape, 2**47 - 1, dtype=np.int64)), "layers[0]: potential bound"),
}


def test_enough_malformed_cases():
    assert len(MALFORMED_V2) >= 20


@pytest.mark.parametrize("case", sorted(MALFORMED_V2))
def test_malformed_v2_bundle_is_rejected_naming_the_field(conv_dir, case):
    corrupt, field = MALFORMED_V2[case]
    corrupt(conv_dir)
    with pytest.raises(BundleError) as caught:
        load_bundle(conv_dir)
    message = str(caught.value)
    assert field in message and "\n" not in message


def _replace_layer(bundle: Bundle, index: int, **changes) -> Bundle:
    layers = list(bundle.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(bundle, layers=tuple(layers))


@pytest.mark.parametrize("index, changes, field", [
    (2, {"kernel_size": 3}, "layers[2].kernel_size"),  # a dense layer with a conv field
    (2, {"pool_size": 1}, "layers[2].pool_size"),
    (0, {"padding": None}, "layers[0].padding"),
    (0, {"bias": np.zeros((4, 4, 4), dtype=np.int64)}, "layers[0].bias"),  # the pooled shape
    (1, {"bias": np.zeros((3, 1), dtype=np.int64)}, "layers[1].bias"),
    (0, {"weight": np.zeros((4, 2, 3), dtype=np.int64)}, "layers[0].weight"),
    (0, {"input_shape": (2, 8)}, "layers[0].input_shape"),
    (1, {"input_shape": (4, 8, 8)}, "layers[1].input_shape"),
    (0, {"out_channels": 5}, "layers[0].outputs"),
    (0, {"kernel_size": 2}, "layers[0].kernel_size"),
    (3, {"kind": "conv2d"}, "layers[3].kind"),
])
def test_validate_checks_conv_layers(index, changes, field):
    broken = _replace_layer(conv_bundle(), index, **changes)
    with pytest.raises(BundleError) as caught:
        validate(broken)
    assert field in str(caught.value)


# ---------------------------------------------------------------------------
# the name rule: [A-Za-z_][A-Za-z0-9_.-]{0,63}, no ".."

VALID_NAMES = ["a", "_", "fc1", "conv-1.block_2", "A" * 64, "x.y", "Z9-"]
INVALID_NAMES = ["", "../x", "a/b", "a\\b", ".hidden", "1fc", "-x", "a..b", "fc.." , "A" * 65, "é", "fc1\n",
                 "a b", "conv\u00b9", "/abs", "..", "~home"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name):
    assert check_name(name, "where") == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name):
    with pytest.raises(BundleError, match=r"^where: .* is not a valid name"):
        check_name(name, "where")


@pytest.mark.parametrize("value", [None, 3, ["fc1"]])
def test_names_are_strings(value):
    with pytest.raises(BundleError, match="where: expected a name"):
        check_name(value, "where")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "A" * 65, "é", ""])
@pytest.mark.parametrize("where, keys", [
    ("layers[0].name", ("layers", 0, "name")),
    ("layers[1].weight", ("layers", 1, "weight")),
    ("layers[0].bias", ("layers", 0, "bias")),
    ("input.lut", ("input", "lut")),
])
def test_loading_enforces_the_name_rule(bundle_dir, name, where, keys):
    edit_json(set_field(*keys, name))(bundle_dir)
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle_dir)
    message = str(caught.value)
    assert f"{where}: " in message and "is not a valid name" in message and "\n" not in message


def test_loading_accepts_a_64_character_array_name(bundle_dir):
    name = "w" * 64
    with np.load(bundle_dir / "params.npz") as params:
        arrays = {key: params[key] for key in params.files}
    arrays[name] = arrays.pop("fc1.weight")
    np.savez(bundle_dir / "params.npz", **arrays)
    edit_json(set_field("layers", 0, "weight", name))(bundle_dir)
    assert load_bundle(bundle_dir).layers[0].weight.shape == (6, 16)


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "A" * 65, "é"])
def test_validate_enforces_the_name_rule(small_bundle, name):
    broken = _replace_layer(small_bundle, 1, name=name)
    with pytest.raises(BundleError, match=r"layers\[1\]\.name: .* is not a valid name"):
        validate(broken)


@pytest.mark.parametrize("name", ["L" * 58, "fc."])
def test_saving_refuses_names_whose_array_names_break_the_rule(tmp_path, small_bundle, name):
    """A valid layer name can still be too long (or end in '.') for "<name>.weight"."""
    bundle = _replace_layer(small_bundle, 0, name=name)
    validate(bundle)
    with pytest.raises(BundleError, match=r"layers\[0\]\.name: .* cannot name its arrays"):
        save_bundle(bundle, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
    fits = _replace_layer(small_bundle, 0, name="L" * 57)
    assert load_bundle(save_bundle(fits, tmp_path / "c")).layers[0].name == "L" * 57


# ---------------------------------------------------------------------------
# tools: the golden command and the hardware run v2 bundles


def test_golden_command_runs_a_conv_bundle(tmp_path, conv_dir, capsys):
    bundle = load_bundle(conv_dir)
    images = random_images(np.random.default_rng(2), bundle, 6)
    np.savez(tmp_path / "in.npz", images=images)
    assert main(["golden", str(conv_dir), "--input", str(tmp_path / "in.npz"), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["classes"] == run(bundle, images).classes.tolist()
    assert "conv1" in capsys.readouterr().out


def test_hardware_builds_conv_layers(tmp_path, conv_dir):
    """The hardware half of contract v2: `ttfs hw verilog` builds a conv bundle's core."""
    assert main(["hw", "verilog", str(conv_dir), "--lanes", "4", "--out", str(tmp_path / "v")]) == 0
    layers = json.loads((tmp_path / "v" / "ports.json").read_text())["parameters"]["layers"]
    kinds = [layer["kind"] for layer in layers]
    assert kinds[0] == "conv2d" and kinds[-1] == "dense"


@pytest.mark.parametrize("arguments, field", [
    (dict(input_shape=(1, 4, 4), weight=np.zeros((2, 1, 3))), "c.weight"),
    (dict(input_shape=(4, 4), weight=np.zeros((2, 1, 3, 3))), "c.input_shape"),
    (dict(input_shape=(1, 4, 4), weight=np.zeros((2, 1, 3, 3)), pool_size=0), "c.pool_size"),
])
def test_conv2d_layer_refuses_what_it_cannot_size(arguments, field):
    arguments = {"bias": np.zeros(2), "pool_size": 1, **arguments}
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        conv2d_layer("c", weight_bits=4, ramp_shift=0, **arguments)

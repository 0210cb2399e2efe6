"""Network bundles (contract v1, section 8): load, validate, save.

A bundle is a directory holding ``network.json`` (the structure) and
``params.npz`` (integer arrays: the input lookup table, every weight and
bias).  Everything in the toolkit reads bundles through this module; every
rule of the contract is checked here and a violation raises one
:class:`BundleError` whose message names the offending field.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sim.errors import TTFSError

FORMAT = "ttfs-bundle"
VERSION = 1
NETWORK_FILE = "network.json"
PARAMS_FILE = "params.npz"
LUT_ARRAY = "input.lut"

MIN_TIME_STEPS = 2
MAX_TIME_STEPS = 256
MIN_WEIGHT_BITS = 2
MAX_WEIGHT_BITS = 16
MAX_RAMP_SHIFT = 30
# Section 6: no register may need more than this many bits (signed).
MAX_POTENTIAL_BITS = 48
# A bias beyond this cannot fit the 48-bit bound; checking it first keeps the
# bound arithmetic in int64 safe from overflow.
_MAX_ABS_BIAS = 2 ** (MAX_POTENTIAL_BITS - 1) - 1


class BundleError(TTFSError):
    """A bundle breaks the contract; the message names the offending field."""


@dataclass(frozen=True, eq=False)
class Layer:
    """One dense layer: ``weight`` is (outputs, inputs), ``bias`` is (outputs,)."""

    name: str
    kind: str
    inputs: int
    outputs: int
    weight_bits: int
    ramp_shift: int
    readout: bool
    weight: np.ndarray
    bias: np.ndarray

    @property
    def ramp(self) -> int:
        """The ramp slope R = 2**ramp_shift (ignored by a readout layer)."""
        return 1 << self.ramp_shift


@dataclass(frozen=True, eq=False)
class Bundle:
    """A whole network: input encoder, hidden layers, readout."""

    time_steps: int
    channels: int
    height: int
    width: int
    lut: np.ndarray
    layers: tuple[Layer, ...]
    classes: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        """Number of input activations, channels * height * width."""
        return self.channels * self.height * self.width

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one input image."""
        return (self.channels, self.height, self.width)

    @property
    def hidden_layers(self) -> tuple[Layer, ...]:
        """The spiking layers (all but the readout)."""
        return self.layers[:-1]

    @property
    def readout(self) -> Layer:
        """The last layer, which integrates but never fires."""
        return self.layers[-1]


def default_lut(time_steps: int) -> np.ndarray:
    """The contract's table for data scaled to [0, 1]: round(v*T/255), halves down.

    Returns int64 of shape (256,); index it per channel (``np.tile`` it to
    (channels, 256) for a bundle).
    """
    _check_time_steps(time_steps, "time_steps")
    values = np.arange(256, dtype=np.int64)
    return (2 * values * time_steps + 255) // 510


# ---------------------------------------------------------------------------
# validation of an in-memory bundle


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python; the contract's integers are not booleans.
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    if not _is_int(value):
        raise BundleError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        low_text = "-inf" if low is None else str(low)
        high_text = "inf" if high is None else str(high)
        raise BundleError(f"{where}: {value} is outside {low_text}..{high_text}")
    return value


def _check_time_steps(value: Any, where: str) -> int:
    value = _check_int(value, where)
    if not (MIN_TIME_STEPS <= value <= MAX_TIME_STEPS) or value & (value - 1):
        raise BundleError(
            f"{where}: {value} is not a power of two in {MIN_TIME_STEPS}..{MAX_TIME_STEPS}"
        )
    return value


def _check_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _check_array(
    array: Any, where: str, shape: tuple[int, ...], low: int, high: int
) -> None:
    if not isinstance(array, np.ndarray):
        raise BundleError(f"{where}: expected a numpy array, got {type(array).__name__}")
    if array.dtype.kind not in "iu":
        raise BundleError(f"{where}: expected an integer array, got dtype {array.dtype}")
    if array.shape != shape:
        raise BundleError(f"{where}: shape {array.shape} != expected {shape}")
    if array.size:
        # Python-int comparison is exact for every integer dtype (uint64 included).
        smallest, largest = int(array.min()), int(array.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise BundleError(f"{where}: value {bad} is outside {low}..{high}")


def layer_potential_bounds(layer: Layer, time_steps: int) -> np.ndarray:
    """Per-neuron bound of section 6 as int64 (outputs,).

    T * sum_j |W[i][j]| + |Bias[i]| + (T+1) * R for every layer.  Section 6
    makes no exception for the readout, so its bound keeps the ramp term
    too, although the readout never runs the ramp: the 48-bit rule then
    rejects exactly the bundles the contract rejects, and the readout's
    registers are at most a few bits wider than strictly needed.  Callers
    must have checked the weight and bias ranges (``validate``) so that
    int64 cannot overflow.
    """
    weight = np.asarray(layer.weight, dtype=np.int64)
    bias = np.asarray(layer.bias, dtype=np.int64)
    return time_steps * np.abs(weight).sum(axis=1) + np.abs(bias) + (time_steps + 1) * layer.ramp


def signed_bits(bound: int) -> int:
    """Width of the smallest two's-complement register holding -bound..+bound."""
    return int(bound).bit_length() + 1


def validate(bundle: Bundle) -> None:
    """Check every rule of contract v1 on an in-memory bundle.

    Raises :class:`BundleError` naming the offending field (for example
    ``layers[1].weight_bits: 17 is outside 2..16``).
    """
    if not isinstance(bundle, Bundle):
        raise BundleError(f"bundle: expected a Bundle, got {type(bundle).__name__}")
    steps = _check_time_steps(bundle.time_steps, "time_steps")
    channels = _check_int(bundle.channels, "input.channels", 1)
    height = _check_int(bundle.height, "input.height", 1)
    width = _check_int(bundle.width, "input.width", 1)
    _check_array(bundle.lut, "input.lut", (channels, 256), 0, steps)

    layers = bundle.layers
    if not isinstance(layers, (tuple, list)) or not layers:
        raise BundleError("layers: expected a non-empty tuple of Layer")
    previous_outputs = channels * height * width
    previous_name = "input channels*height*width"
    names: set[str] = set()
    for index, layer in enumerate(layers):
        where = f"layers[{index}]"
        if not isinstance(layer, Layer):
            raise BundleError(f"{where}: expected a Layer, got {type(layer).__name__}")
        name = _check_str(layer.name, f"{where}.name")
        if name in names:
            raise BundleError(f"{where}.name: {name!r} is used by an earlier layer")
        names.add(name)
        if layer.kind != "dense":
            raise BundleError(
                f"{where}.kind: {layer.kind!r} is not supported in version 1 (only 'dense')"
            )
        inputs = _check_int(layer.inputs, f"{where}.inputs", 1)
        outputs = _check_int(layer.outputs, f"{where}.outputs", 1)
        if inputs != previous_outputs:
            raise BundleError(
                f"{where}.inputs: {inputs} != {previous_name} {previous_outputs}"
            )
        bits = _check_int(layer.weight_bits, f"{where}.weight_bits", MIN_WEIGHT_BITS, MAX_WEIGHT_BITS)
        _check_int(layer.ramp_shift, f"{where}.ramp_shift", 0, MAX_RAMP_SHIFT)
        if not isinstance(layer.readout, (bool, np.bool_)):
            raise BundleError(f"{where}.readout: expected true or false, got {layer.readout!r}")
        is_last = index == len(layers) - 1
        if bool(layer.readout) != is_last:
            raise BundleError(
                f"{where}.readout: {bool(layer.readout)}, but exactly the last layer "
                "must be the readout"
            )
        limit = 1 << (bits - 1)
        _check_array(layer.weight, f"{where}.weight", (outputs, inputs), -limit, limit - 1)
        _check_array(layer.bias, f"{where}.bias", (outputs,), -_MAX_ABS_BIAS, _MAX_ABS_BIAS)
        bound = int(layer_potential_bounds(layer, steps).max())
        if signed_bits(bound) > MAX_POTENTIAL_BITS:
            raise BundleError(
                f"{where}: potential bound {bound} needs {signed_bits(bound)} bits, "
                f"more than {MAX_POTENTIAL_BITS} (contract section 6)"
            )
        previous_outputs = outputs
        previous_name = f"layers[{index}].outputs"

    if bundle.classes is not None:
        if not isinstance(bundle.classes, (tuple, list)) or not all(
            isinstance(label, str) for label in bundle.classes
        ):
            raise BundleError("classes: expected a tuple of strings")
        if len(bundle.classes) != layers[-1].outputs:
            raise BundleError(
                f"classes: {len(bundle.classes)} labels != readout outputs {layers[-1].outputs}"
            )
    if not isinstance(bundle.meta, dict):
        raise BundleError(f"meta: expected an object, got {type(bundle.meta).__name__}")


# ---------------------------------------------------------------------------
# loading


def _require(obj: Mapping, key: str, where: str) -> Any:
    if key not in obj:
        raise BundleError(f"{where}{key}: missing")
    return obj[key]


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{NETWORK_FILE}: missing (a bundle needs {NETWORK_FILE} and {PARAMS_FILE})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{NETWORK_FILE}: cannot read: {err}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise BundleError(f"{NETWORK_FILE}: invalid JSON: {err}") from None
    if not isinstance(document, dict):
        raise BundleError(f"{NETWORK_FILE}: expected a JSON object at the top level")
    return document


class _Arrays:
    """The npz file, read lazily by name; each read is checked and made int64."""

    def __init__(self, path: Path):
        try:
            self._npz = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise BundleError(f"{PARAMS_FILE}: missing (a bundle needs {NETWORK_FILE} and {PARAMS_FILE})") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise BundleError(f"{PARAMS_FILE}: not a readable npz file: {err}") from None
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise BundleError(f"{PARAMS_FILE}: not an npz archive (a single .npy array)")

    def close(self) -> None:
        self._npz.close()

    def get(self, key: str, where: str, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
        label = f"{PARAMS_FILE}: {key!r} ({where})"
        if key not in self._npz.files:
            raise BundleError(f"{label}: missing from the archive")
        try:
            array = self._npz[key]
        except ValueError as err:
            if "allow_pickle" in str(err):
                # An object array: reading it would need pickle, which we refuse.
                raise BundleError(f"{label}: an object array, which cannot be read without pickle") from None
            raise BundleError(f"{label}: corrupt: {err}") from None
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise BundleError(f"{label}: corrupt: {err}") from None
        _check_array(array, label, shape, low, high)
        return array.astype(np.int64)


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and validate the bundle directory ``path``; arrays come back int64."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (missing or not a directory)")
    # Every message starts with the bundle's path, then names the file and field.
    try:
        document = _read_json(root / NETWORK_FILE)
        try:
            structure = _parse_structure(document)
        except BundleError as err:
            raise BundleError(f"{NETWORK_FILE}: {err}") from None
        bundle = _load_arrays(structure, root / PARAMS_FILE)
        validate(bundle)
    except BundleError as err:
        raise BundleError(f"{root}: {err}") from None
    return bundle


def _parse_structure(document: dict) -> dict:
    """Check network.json's fields (types, ranges, layer chaining), arrays aside."""
    fmt = _require(document, "format", "")
    if fmt != FORMAT:
        raise BundleError(f"format: {fmt!r} != {FORMAT!r}")
    version = _require(document, "version", "")
    if not _is_int(version) or version != VERSION:
        raise BundleError(f"version: {version!r} is not supported (this reader knows {VERSION})")
    steps = _check_time_steps(_require(document, "time_steps", ""), "time_steps")

    spec_input = _require(document, "input", "")
    if not isinstance(spec_input, dict):
        raise BundleError("input: expected an object")
    channels = _check_int(_require(spec_input, "channels", "input."), "input.channels", 1)
    height = _check_int(_require(spec_input, "height", "input."), "input.height", 1)
    width = _check_int(_require(spec_input, "width", "input."), "input.width", 1)
    lut_key = _check_str(_require(spec_input, "lut", "input."), "input.lut")

    spec_layers = _require(document, "layers", "")
    if not isinstance(spec_layers, list) or not spec_layers:
        raise BundleError("layers: expected a non-empty list")

    classes = document.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise BundleError("classes: expected a list of strings")
        classes = tuple(classes)
    meta = document.get("meta", {})
    if not isinstance(meta, dict):
        raise BundleError(f"meta: expected an object, got {type(meta).__name__}")

    # Check the whole structure before touching the arrays, so a structural
    # mistake is reported as such rather than as a missing array.
    parsed = []
    for index, spec in enumerate(spec_layers):
        where = f"layers[{index}]"
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: expected an object")
        readout = _require(spec, "readout", f"{where}.")
        if not isinstance(readout, bool):
            raise BundleError(f"{where}.readout: expected true or false, got {readout!r}")
        kind = _require(spec, "kind", f"{where}.")
        if kind != "dense":
            raise BundleError(f"{where}.kind: {kind!r} is not supported in version 1 (only 'dense')")
        parsed.append(
            dict(
                name=_check_str(_require(spec, "name", f"{where}."), f"{where}.name"),
                kind=kind,
                inputs=_check_int(_require(spec, "inputs", f"{where}."), f"{where}.inputs", 1),
                outputs=_check_int(_require(spec, "outputs", f"{where}."), f"{where}.outputs", 1),
                weight_bits=_check_int(
                    _require(spec, "weight_bits", f"{where}."),
                    f"{where}.weight_bits", MIN_WEIGHT_BITS, MAX_WEIGHT_BITS,
                ),
                ramp_shift=_check_int(
                    _require(spec, "ramp_shift", f"{where}."), f"{where}.ramp_shift", 0, MAX_RAMP_SHIFT
                ),
                readout=readout,
                weight=_check_str(_require(spec, "weight", f"{where}."), f"{where}.weight"),
                bias=_check_str(_require(spec, "bias", f"{where}."), f"{where}.bias"),
            )
        )
    previous = channels * height * width
    previous_name = "input channels*height*width"
    for index, spec in enumerate(parsed):
        if spec["inputs"] != previous:
            raise BundleError(f"layers[{index}].inputs: {spec['inputs']} != {previous_name} {previous}")
        if spec["readout"] != (index == len(parsed) - 1):
            raise BundleError(
                f"layers[{index}].readout: {spec['readout']}, but exactly the last layer "
                "must be the readout"
            )
        previous = spec["outputs"]
        previous_name = f"layers[{index}].outputs"

    return dict(
        time_steps=steps, channels=channels, height=height, width=width, lut=lut_key,
        layers=parsed, classes=classes, meta=meta,
    )


def _load_arrays(structure: dict, params_path: Path) -> Bundle:
    """Read the arrays named by the checked structure and build the Bundle."""
    steps, channels = structure["time_steps"], structure["channels"]
    arrays = _Arrays(params_path)
    try:
        lut = arrays.get(structure["lut"], "input.lut", (channels, 256), 0, steps)
        layers = []
        for index, spec in enumerate(structure["layers"]):
            where = f"layers[{index}]"
            limit = 1 << (spec["weight_bits"] - 1)
            weight = arrays.get(
                spec["weight"], f"{where}.weight", (spec["outputs"], spec["inputs"]), -limit, limit - 1
            )
            bias = arrays.get(spec["bias"], f"{where}.bias", (spec["outputs"],), -_MAX_ABS_BIAS, _MAX_ABS_BIAS)
            layers.append(Layer(**{**spec, "weight": weight, "bias": bias}))
    finally:
        arrays.close()

    return Bundle(
        time_steps=steps, channels=channels, height=structure["height"], width=structure["width"],
        lut=lut, layers=tuple(layers), classes=structure["classes"], meta=structure["meta"],
    )


# ---------------------------------------------------------------------------
# saving


def _small_dtype(array: np.ndarray) -> np.dtype:
    """The smallest standard integer dtype holding every value of ``array``."""
    low = int(array.min()) if array.size else 0
    high = int(array.max()) if array.size else 0
    candidates = (np.uint8, np.uint16, np.uint32) if low >= 0 else ()
    for dtype in (*candidates, np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An npz archive with fixed timestamps, so equal bundles are equal bytes.

    (np.savez stamps each member with the current time, which would make
    every regenerated fixture a spurious change.)
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            # C order always (equal arrays, equal bytes); np.require keeps 0-d arrays 0-d.
            np.lib.format.write_array(member, np.require(array, requirements="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def network_document(bundle: Bundle) -> dict:
    """The ``network.json`` object for ``bundle`` (arrays named ``<layer>.weight`` etc.)."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "time_steps": int(bundle.time_steps),
        "input": {
            "channels": int(bundle.channels),
            "height": int(bundle.height),
            "width": int(bundle.width),
            "lut": LUT_ARRAY,
        },
        "layers": [
            {
                "name": layer.name,
                "kind": layer.kind,
                "inputs": int(layer.inputs),
                "outputs": int(layer.outputs),
                "weight_bits": int(layer.weight_bits),
                "ramp_shift": int(layer.ramp_shift),
                "weight": f"{layer.name}.weight",
                "bias": f"{layer.name}.bias",
                "readout": bool(layer.readout),
            }
            for layer in bundle.layers
        ],
    }
    if bundle.classes is not None:
        document["classes"] = list(bundle.classes)
    document["meta"] = bundle.meta
    return document


def _check_extra_name(name: Any) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..", NETWORK_FILE, PARAMS_FILE)
        or "/" in name
        or "\\" in name
        or name.startswith(".")
    ):
        raise BundleError(f"extra_files: {name!r} is not a plain file name usable in a bundle")
    return name


def save_bundle(
    bundle: Bundle,
    path: str | os.PathLike,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Validate ``bundle`` and write it to the directory ``path`` atomically.

    Everything is written into a temporary sibling directory which is then
    renamed into place; an existing bundle at ``path`` is replaced only once
    the new one is complete, and a failed save leaves nothing behind.
    ``extra_files`` maps file names to bytes written beside ``network.json``.
    Returns the bundle's path.
    """
    validate(bundle)
    extras = {_check_extra_name(name): data for name, data in (extra_files or {}).items()}
    for name, data in extras.items():
        if not isinstance(data, (bytes, bytearray)):
            raise BundleError(f"extra_files[{name!r}]: expected bytes, got {type(data).__name__}")
    try:
        meta_text = json.dumps(network_document(bundle), indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise BundleError(f"meta: not representable as JSON: {err}") from None

    target = Path(path)
    if target.exists() and not (
        target.is_dir() and ((target / NETWORK_FILE).exists() or not any(target.iterdir()))
    ):
        raise BundleError(f"{target}: exists and is not a bundle directory; refusing to replace it")
    arrays = {LUT_ARRAY: bundle.lut}
    for layer in bundle.layers:
        arrays[f"{layer.name}.weight"] = layer.weight
        arrays[f"{layer.name}.bias"] = layer.bias
    arrays = {key: np.asarray(value).astype(_small_dtype(np.asarray(value))) for key, value in arrays.items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    try:
        temporary.mkdir()
        (temporary / NETWORK_FILE).write_text(meta_text, encoding="utf-8")
        (temporary / PARAMS_FILE).write_bytes(npz_bytes(arrays))
        for name, data in extras.items():
            (temporary / name).write_bytes(bytes(data))
        if target.exists():
            os.rename(target, retired)
            try:
                os.rename(temporary, target)
            except OSError:
                os.rename(retired, target)
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(temporary, target)
    except OSError as err:
        raise BundleError(f"{target}: cannot save bundle: {err}") from None
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return target


def describe(bundle: Bundle) -> str:
    """A one-line summary such as ``784-340-10, T=16, weights 5 bits``."""
    sizes = "-".join(str(n) for n in [bundle.input_size] + [layer.outputs for layer in bundle.layers])
    bits = sorted({layer.weight_bits for layer in bundle.layers})
    bits_text = "/".join(str(b) for b in bits)
    return f"{sizes}, T={bundle.time_steps}, weights {bits_text} bits"


__all__ = [
    "Bundle",
    "BundleError",
    "Layer",
    "default_lut",
    "describe",
    "layer_potential_bounds",
    "load_bundle",
    "network_document",
    "npz_bytes",
    "save_bundle",
    "signed_bits",
    "validate",
]

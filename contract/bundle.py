"""Network bundles (contract v1 section 8, v2 section 9): load, validate, save.

A bundle is a directory holding ``network.json`` (the structure) and
``params.npz`` (integer arrays: the input lookup table, every weight and
bias).  Everything in the toolkit reads bundles through this module; every
rule of the contract is checked here and a violation raises one
:class:`BundleError` whose message names the offending field.

Version 2 adds ``conv2d`` layers; a bundle of dense layers only is still
written as version 1, byte for byte as before, and both versions load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ttfs.contract.errors import TTFSError
from ttfs.contract.jsonfile import JsonFileError, read_json
from ttfs.contract.npz import NpzError, NpzReader
from ttfs.contract.paths import (
    BUNDLE,
    OutputPathError,
    check_output,
    recover_leftovers,
    replace_directory,
    staging_directory,
)

FORMAT = "ttfs-bundle"
# A bundle with conv2d layers is version 2; one of dense layers only is written as version 1.
VERSION_DENSE = 1
VERSION_CONV = 2
VERSIONS = (VERSION_DENSE, VERSION_CONV)
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

DENSE = "dense"
CONV2D = "conv2d"
LAYER_KINDS = (DENSE, CONV2D)
PADDINGS = ("same", "valid")
KERNEL_SIZES = (1, 3, 5, 7)
MAX_POOL_SIZE = 4
# network.json's "bias_per" of a conv2d layer: one bias per output channel, or one per
# output position of the convolution (before pooling).
BIAS_PER = ("channel", "position")

# The name rule (v1 amendment 2026-12, v2 section 9): tools derive file names
# from layer and array names, so a name must never lead outside a directory.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "names match [A-Za-z_][A-Za-z0-9_.-]{0,63} and contain no '..'"
# The toolkit names a layer's arrays "<layer>.weight" and "<layer>.bias".
ARRAY_SUFFIXES = (".weight", ".bias")


#: Most integers (weights, biases, LUT entries) a bundle may hold: 2**25, 256 MiB as int64.
#: Checked from network.json's shapes before params.npz is read, so memory stays bounded.
MAX_PARAMETERS = 1 << 25


class BundleError(TTFSError):
    """A bundle breaks the contract; the message names the offending field."""


def conv_output_size(size: int, kernel_size: int, padding: str) -> int:
    """Rows (or columns) of a stride-1 convolution's output: 'same' keeps the size, 'valid' loses k-1."""
    return size if padding == "same" else size - kernel_size + 1


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer.

    ``dense``: ``weight`` is (outputs, inputs), ``bias`` (outputs,); the
    conv fields stay None.  ``conv2d`` (v2 section 4): ``input_shape`` is
    (C, H, W), ``weight`` (out_channels, C, k, k) with k = ``kernel_size``,
    ``padding`` "same" or "valid", stride 1, ``bias`` (out_channels,) or
    (out_channels, H_out, W_out) (see :attr:`conv_shape`), then a
    ``pool_size`` x ``pool_size`` max-pool of stride ``pool_size`` (1: none).
    ``inputs`` and ``outputs`` are always the flattened sizes of what enters
    and what leaves the layer (for conv2d: C*H*W and the pooled
    out_channels*H_pool*W_pool).  :func:`conv2d_layer` fills them in.
    """

    name: str
    kind: str
    inputs: int
    outputs: int
    weight_bits: int
    ramp_shift: int
    readout: bool
    weight: np.ndarray
    bias: np.ndarray
    input_shape: tuple[int, int, int] | None = None
    out_channels: int | None = None
    kernel_size: int | None = None
    padding: str | None = None
    pool_size: int | None = None

    @property
    def ramp(self) -> int:
        """The ramp slope R = 2**ramp_shift (ignored by a readout layer)."""
        return 1 << self.ramp_shift

    @property
    def bias_bits(self) -> int:
        """Signed width of the layer's biases (the width of its bias ROM words)."""
        return signed_width(int(np.min(self.bias)), int(np.max(self.bias)))

    @property
    def is_conv(self) -> bool:
        """True for a conv2d layer."""
        return self.kind == CONV2D

    @property
    def conv_shape(self) -> tuple[int, int, int] | None:
        """(out_channels, H_out, W_out): the convolution's output, before pooling; None for dense."""
        if not self.is_conv:
            return None
        _, height, width = self.input_shape
        return (
            self.out_channels,
            conv_output_size(height, self.kernel_size, self.padding),
            conv_output_size(width, self.kernel_size, self.padding),
        )

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the activations leaving the layer: (outputs,) for dense,
        (out_channels, H_out // p, W_out // p) for conv2d (pooling floors, as torch)."""
        if not self.is_conv:
            return (self.outputs,)
        channels, height, width = self.conv_shape
        return (channels, height // self.pool_size, width // self.pool_size)

    @property
    def neurons(self) -> int:
        """Neurons that integrate and fire: ``outputs`` for dense, the convolution's
        out_channels*H_out*W_out (before pooling) for conv2d."""
        return math.prod(self.conv_shape) if self.is_conv else self.outputs

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The shape ``weight`` must have: (outputs, inputs) or (out_channels, C, k, k)."""
        if not self.is_conv:
            return (self.outputs, self.inputs)
        return (self.out_channels, self.input_shape[0], self.kernel_size, self.kernel_size)

    @property
    def bias_per(self) -> str | None:
        """For conv2d, "channel" or "position" according to the shape of ``bias``; None for dense."""
        if not self.is_conv:
            return None
        return "position" if np.ndim(self.bias) == 3 else "channel"

    def bias_shape(self, bias_per: str = "channel") -> tuple[int, ...]:
        """The shape ``bias`` must have: (outputs,) for dense; for conv2d (out_channels,)
        when ``bias_per`` is "channel", :attr:`conv_shape` when it is "position"."""
        if not self.is_conv:
            return (self.outputs,)
        return (self.out_channels,) if bias_per == "channel" else self.conv_shape

    def neuron_bias(self) -> np.ndarray:
        """int64 bias of every neuron: (outputs,) for dense, :attr:`conv_shape` for conv2d
        (a per-channel bias broadcast over the positions, read-only)."""
        bias = np.asarray(self.bias, dtype=np.int64)
        if not self.is_conv or bias.ndim == 3:
            return bias
        return np.broadcast_to(bias[:, None, None], self.conv_shape)


def conv2d_layer(
    name: str,
    input_shape: tuple[int, int, int],
    weight: np.ndarray,
    bias: np.ndarray,
    *,
    weight_bits: int,
    ramp_shift: int,
    padding: str = "same",
    pool_size: int = 1,
) -> Layer:
    """A hidden conv2d layer with ``out_channels``, ``kernel_size``, ``inputs`` and
    ``outputs`` taken from the shapes.  ``weight`` is (out_channels, C, k, k),
    ``bias`` (out_channels,) or (out_channels, H_out, W_out).  Only what the
    sizes need is checked here; :func:`validate` checks the bundle the layer
    goes into.
    """
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise BundleError(f"{name}.weight: expected (out_channels, C, k, k), got shape {weight.shape}")
    shape = _check_shape(input_shape, f"{name}.input_shape")
    _check_int(pool_size, f"{name}.pool_size", 1, MAX_POOL_SIZE)
    layer = Layer(
        name=name, kind=CONV2D, inputs=math.prod(shape), outputs=0, weight_bits=weight_bits,
        ramp_shift=ramp_shift, readout=False, weight=weight, bias=np.asarray(bias), input_shape=shape,
        out_channels=int(weight.shape[0]), kernel_size=int(weight.shape[2]), padding=padding, pool_size=pool_size,
    )
    return dataclasses.replace(layer, outputs=math.prod(layer.output_shape))


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
    def version(self) -> int:
        """The contract version the bundle is written as: 2 with a conv2d layer, else 1."""
        return VERSION_CONV if any(layer.is_conv for layer in self.layers) else VERSION_DENSE

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

    @property
    def sizes(self) -> list[int]:
        """Activations entering the first layer and leaving every layer (flattened,
        after pooling): [C*H*W, outputs of each layer]."""
        return [self.input_size] + [layer.outputs for layer in self.layers]

    @property
    def spiking_widths(self) -> list[int]:
        """Neurons whose events leave each spiking layer: the input encoder (layer 0),
        then every hidden layer's ``outputs`` (after pooling for conv2d)."""
        return [self.input_size] + [layer.outputs for layer in self.hidden_layers]

    @property
    def spiking_layer_names(self) -> list[str]:
        """Names of the spiking layers: "input" (the encoder), then every hidden layer's name."""
        return ["input"] + [layer.name for layer in self.hidden_layers]


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


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a valid layer or array name (the name rule), else a BundleError naming ``where``."""
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected a name (a string), got {type(value).__name__} {value!r}")
    # fullmatch, not match with "$", which would let a trailing newline through.
    if NAME_PATTERN.fullmatch(value) is None or ".." in value:
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise BundleError(f"{where}: {shown!r} is not a valid name ({NAME_RULE})")
    return value


def _check_shape(value: Any, where: str) -> tuple[int, int, int]:
    """A (C, H, W) shape: a list or tuple of three positive integers."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_is_int(size) and size >= 1 for size in value):
        raise BundleError(f"{where}: expected [C, H, W], three positive integers, got {value!r}")
    return tuple(int(size) for size in value)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


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
    """Per-neuron bound of section 6 as int64: (outputs,) for dense, :attr:`Layer.conv_shape` for conv2d.

    T * sum |W| + |Bias| + (T+1) * R, the sum over the neuron's weights (a
    conv2d neuron's are its channel's whole kernel, also where 'same'
    padding hides part of it).  Section 6 makes no exception for the readout,
    so its bound keeps the ramp term too, although the readout never runs the
    ramp: the 48-bit rule then rejects exactly the bundles the contract
    rejects, and the readout's registers are at most a few bits wider than
    strictly needed.  Callers must have checked the weight and bias ranges
    (``validate``) so that int64 cannot overflow.
    """
    weight = np.asarray(layer.weight, dtype=np.int64)
    kernel_sums = np.abs(weight.reshape(weight.shape[0], -1)).sum(axis=1)
    if layer.is_conv:
        kernel_sums = kernel_sums[:, None, None]
    return time_steps * kernel_sums + np.abs(layer.neuron_bias()) + (time_steps + 1) * layer.ramp


def signed_width(low: int, high: int) -> int:
    """Width of the smallest two's-complement register holding every integer in low..high (at least 1)."""
    magnitude = max(int(high), -int(low) - 1, 0)
    return magnitude.bit_length() + 1


def signed_bits(bound: int) -> int:
    """Width of the smallest two's-complement register holding -bound..+bound."""
    return signed_width(-int(bound), int(bound))


def potential_bits(layer: Layer, time_steps: int) -> int:
    """Signed register width of a layer's potentials (section 6): every intermediate
    potential ``Bias + sum W * a(k)`` with a(k) in 0..T stays within it."""
    return signed_bits(int(layer_potential_bounds(layer, time_steps).max()))


def _check_conv_structure(layer: Layer, where: str, entering: tuple[int, int, int] | None, source: str) -> None:
    """The conv2d fields of ``layer`` (v2 section 9), given the shape of what enters it."""
    if layer.readout:
        raise BundleError(f"{where}.kind: the readout must be 'dense', not 'conv2d'")
    if entering is None:
        raise BundleError(f"{where}.kind: a 'conv2d' layer cannot follow a dense layer (conv2d layers come first)")
    shape = _check_shape(layer.input_shape, f"{where}.input_shape")
    if shape != entering:
        raise BundleError(f"{where}.input_shape: {_shape_text(shape)} != {source} {_shape_text(entering)}")
    _check_int(layer.out_channels, f"{where}.out_channels", 1)
    kernel = _check_int(layer.kernel_size, f"{where}.kernel_size")
    if kernel not in KERNEL_SIZES:
        raise BundleError(f"{where}.kernel_size: {kernel} is not an odd size in 1..7")
    if layer.padding not in PADDINGS:
        raise BundleError(f"{where}.padding: {layer.padding!r} is not 'same' or 'valid'")
    _, height, width = shape
    if layer.padding == "valid" and min(height, width) < kernel:
        raise BundleError(
            f"{where}.kernel_size: a {kernel}x{kernel} 'valid' convolution does not fit the {height}x{width} input"
        )
    pool = _check_int(layer.pool_size, f"{where}.pool_size", 1, MAX_POOL_SIZE)
    _, out_height, out_width = layer.conv_shape
    if min(out_height, out_width) < pool:
        raise BundleError(
            f"{where}.pool_size: a {pool}x{pool} pool does not fit the {out_height}x{out_width} convolution output"
        )
    if layer.outputs != math.prod(layer.output_shape):
        raise BundleError(
            f"{where}.outputs: {layer.outputs} != the pooled output {_shape_text(layer.output_shape)} "
            f"= {math.prod(layer.output_shape)}"
        )


# Layer fields (and network.json keys) of every layer, and those of conv2d layers only.
_COMMON_FIELDS = ("name", "inputs", "outputs", "weight_bits", "ramp_shift", "readout")
_CONV_FIELDS = ("input_shape", "out_channels", "kernel_size", "padding", "pool_size")


def _check_structure(layers: Any, image_shape: tuple[int, int, int]) -> None:
    """Every rule on the layers' fields and their chaining; arrays aside.

    ``layers`` may hold Layers without arrays (``load_bundle`` checks the
    structure before it reads any array).
    """
    if not isinstance(layers, (tuple, list)) or not layers:
        raise BundleError("layers: expected a non-empty tuple of Layer")
    previous_outputs = math.prod(image_shape)
    previous_name = "input channels*height*width"
    # The (C, H, W) shape of the activations entering the next layer; None once a dense layer flattened them.
    entering: tuple[int, int, int] | None = image_shape
    entering_name = "the input shape [channels, height, width]"
    names: set[str] = set()
    for index, layer in enumerate(layers):
        where = f"layers[{index}]"
        if not isinstance(layer, Layer):
            raise BundleError(f"{where}: expected a Layer, got {type(layer).__name__}")
        name = check_name(layer.name, f"{where}.name")
        if name in names:
            raise BundleError(f"{where}.name: {name!r} is used by an earlier layer")
        names.add(name)
        if layer.kind not in LAYER_KINDS:
            raise BundleError(f"{where}.kind: {layer.kind!r} is not one of 'dense', 'conv2d'")
        if not isinstance(layer.readout, (bool, np.bool_)):
            raise BundleError(f"{where}.readout: expected true or false, got {layer.readout!r}")
        if bool(layer.readout) != (index == len(layers) - 1):
            raise BundleError(
                f"{where}.readout: {bool(layer.readout)}, but exactly the last layer "
                "must be the readout"
            )
        inputs = _check_int(layer.inputs, f"{where}.inputs", 1)
        _check_int(layer.outputs, f"{where}.outputs", 1)
        if inputs != previous_outputs:
            raise BundleError(f"{where}.inputs: {inputs} != {previous_name} {previous_outputs}")
        _check_int(layer.weight_bits, f"{where}.weight_bits", MIN_WEIGHT_BITS, MAX_WEIGHT_BITS)
        _check_int(layer.ramp_shift, f"{where}.ramp_shift", 0, MAX_RAMP_SHIFT)
        if layer.is_conv:
            _check_conv_structure(layer, where, entering, entering_name)
            entering = layer.output_shape
            entering_name = f"layers[{index}]'s pooled output shape"
        else:
            for conv_field in _CONV_FIELDS:
                if getattr(layer, conv_field) is not None:
                    raise BundleError(f"{where}.{conv_field}: a dense layer has none (got {getattr(layer, conv_field)!r})")
            entering = None
        previous_outputs = layer.outputs
        previous_name = f"layers[{index}].outputs"


def _check_layer_arrays(layer: Layer, where: str, time_steps: int) -> None:
    """``layer``'s weight and bias: integer arrays of the right shape and range, and the 48-bit bound."""
    limit = 1 << (layer.weight_bits - 1)
    _check_array(layer.weight, f"{where}.weight", layer.weight_shape, -limit, limit - 1)
    bias_shape = layer.bias_shape()
    if layer.is_conv and np.shape(layer.bias) == layer.bias_shape("position"):
        bias_shape = layer.bias_shape("position")
    elif layer.is_conv and np.shape(layer.bias) != bias_shape:
        raise BundleError(
            f"{where}.bias: shape {np.shape(layer.bias)} is neither (out_channels,) = {bias_shape} "
            f"nor (out_channels, H_out, W_out) = {layer.bias_shape('position')}"
        )
    _check_array(layer.bias, f"{where}.bias", bias_shape, -_MAX_ABS_BIAS, _MAX_ABS_BIAS)
    bound = int(layer_potential_bounds(layer, time_steps).max())
    if signed_bits(bound) > MAX_POTENTIAL_BITS:
        raise BundleError(
            f"{where}: potential bound {bound} needs {signed_bits(bound)} bits, "
            f"more than {MAX_POTENTIAL_BITS} (contract section 6)"
        )


def validate(bundle: Bundle) -> None:
    """Check every rule of the contract (v1, and v2 for conv2d layers) on an in-memory bundle.

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
    _check_structure(layers, (channels, height, width))
    for index, layer in enumerate(layers):
        _check_layer_arrays(layer, f"layers[{index}]", steps)

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
        document = read_json(path, NETWORK_FILE)
    except FileNotFoundError:
        raise BundleError(f"{NETWORK_FILE}: missing (a bundle needs {NETWORK_FILE} and {PARAMS_FILE})") from None
    except JsonFileError as err:
        raise BundleError(str(err)) from None
    if not isinstance(document, dict):
        raise BundleError(f"{NETWORK_FILE}: expected a JSON object at the top level")
    return document


class _Arrays:
    """params.npz through the bounded reader (:mod:`ttfs.contract.npz`); each read is checked and made int64."""

    def __init__(self, path: Path):
        if not os.path.lexists(path):
            raise BundleError(f"{PARAMS_FILE}: missing (a bundle needs {NETWORK_FILE} and {PARAMS_FILE})")
        try:
            self._npz = NpzReader(path, what=PARAMS_FILE)
        except NpzError as err:
            raise BundleError(str(err)) from None

    def close(self) -> None:
        self._npz.close()

    def get(self, key: str, where: str, shape: tuple[int, ...], low: int, high: int) -> np.ndarray:
        label = f"{PARAMS_FILE}: {key!r} ({where})"
        if key not in self._npz:
            raise BundleError(f"{label}: missing from the archive")
        try:
            declared = self._npz.header(key)
            # The shape is known from network.json: refuse another before reading any data.
            if declared.shape != shape:
                raise BundleError(f"{label}: shape {declared.shape} != expected {shape}")
            array = self._npz.read(key, kinds="iu")
        except NpzError as err:
            raise BundleError(f"{err} ({where})") from None
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
    """Check network.json's fields (types, ranges, layer chaining), arrays aside.

    Returns the bundle's scalars, its layers (without arrays) and, per
    layer, the names of its weight and bias arrays and the bias's shape.
    """
    fmt = _require(document, "format", "")
    if fmt != FORMAT:
        raise BundleError(f"format: {fmt!r} != {FORMAT!r}")
    version = _require(document, "version", "")
    if not _is_int(version) or version not in VERSIONS:
        known = " and ".join(str(v) for v in VERSIONS)
        raise BundleError(f"version: {version!r} is not supported (this reader knows {known})")
    steps = _check_time_steps(_require(document, "time_steps", ""), "time_steps")

    spec_input = _require(document, "input", "")
    if not isinstance(spec_input, dict):
        raise BundleError("input: expected an object")
    channels = _check_int(_require(spec_input, "channels", "input."), "input.channels", 1)
    height = _check_int(_require(spec_input, "height", "input."), "input.height", 1)
    width = _check_int(_require(spec_input, "width", "input."), "input.width", 1)
    lut_key = check_name(_require(spec_input, "lut", "input."), "input.lut")

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
    layers, arrays, declared_outputs = [], [], []
    for index, spec in enumerate(spec_layers):
        where = f"layers[{index}]"
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: expected an object")
        kind = _require(spec, "kind", f"{where}.")
        if version == VERSION_DENSE and kind != DENSE:
            raise BundleError(
                f"{where}.kind: {kind!r} is not supported in version 1 (only 'dense'; 'conv2d' needs version 2)"
            )
        fields = {key: _require(spec, key, f"{where}.") for key in _COMMON_FIELDS}
        conv_fields: dict[str, Any] = {}
        bias_per, output_shape = "channel", None
        if kind == CONV2D:
            conv_fields = {key: _require(spec, key, f"{where}.") for key in _CONV_FIELDS}
            if isinstance(conv_fields["input_shape"], list):
                conv_fields["input_shape"] = tuple(conv_fields["input_shape"])
            output_shape = _require(spec, "output_shape", f"{where}.")
            bias_per = _require(spec, "bias_per", f"{where}.")
            if bias_per not in BIAS_PER:
                raise BundleError(f"{where}.bias_per: {bias_per!r} is not 'channel' or 'position'")
        layers.append(Layer(kind=kind, weight=None, bias=None, **fields, **conv_fields))
        arrays.append((
            check_name(_require(spec, "weight", f"{where}."), f"{where}.weight"),
            check_name(_require(spec, "bias", f"{where}."), f"{where}.bias"),
            bias_per,
        ))
        declared_outputs.append(output_shape)
    _check_structure(layers, (channels, height, width))
    for index, (layer, declared) in enumerate(zip(layers, declared_outputs)):
        if layer.is_conv:
            shape = _check_shape(declared, f"layers[{index}].output_shape")
            if shape != layer.output_shape:
                raise BundleError(
                    f"layers[{index}].output_shape: {_shape_text(shape)} != the pooled convolution output "
                    f"{_shape_text(layer.output_shape)}"
                )

    return dict(
        time_steps=steps, channels=channels, height=height, width=width, lut=lut_key,
        layers=layers, arrays=arrays, classes=classes, meta=meta,
    )


def _load_arrays(structure: dict, params_path: Path) -> Bundle:
    """Read the arrays named by the checked structure and build the Bundle."""
    steps, channels = structure["time_steps"], structure["channels"]
    count = channels * 256 + sum(
        math.prod(layer.weight_shape) + math.prod(layer.bias_shape(bias_per))
        for layer, (_, _, bias_per) in zip(structure["layers"], structure["arrays"])
    )
    if count > MAX_PARAMETERS:
        raise BundleError(f"{NETWORK_FILE}: the layers need {count} parameters, more than the limit of {MAX_PARAMETERS}")
    arrays = _Arrays(params_path)
    try:
        lut = arrays.get(structure["lut"], "input.lut", (channels, 256), 0, steps)
        layers = []
        for index, (layer, (weight_key, bias_key, bias_per)) in enumerate(
            zip(structure["layers"], structure["arrays"])
        ):
            where = f"layers[{index}]"
            limit = 1 << (layer.weight_bits - 1)
            weight = arrays.get(weight_key, f"{where}.weight", layer.weight_shape, -limit, limit - 1)
            bias = arrays.get(bias_key, f"{where}.bias", layer.bias_shape(bias_per), -_MAX_ABS_BIAS, _MAX_ABS_BIAS)
            layers.append(dataclasses.replace(layer, weight=weight, bias=bias))
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


def array_names(layer: Layer) -> tuple[str, str]:
    """The names this module gives a layer's weight and bias arrays: "<layer>.weight", "<layer>.bias"."""
    weight_suffix, bias_suffix = ARRAY_SUFFIXES
    return layer.name + weight_suffix, layer.name + bias_suffix


def _check_array_names(bundle: Bundle) -> None:
    """Every derived array name obeys the name rule: a valid layer name of up to
    64 characters may still be too long, or end in '.', for its arrays' names."""
    for index, layer in enumerate(bundle.layers):
        for derived in array_names(layer):
            if NAME_PATTERN.fullmatch(derived) is None or ".." in derived:
                raise BundleError(
                    f"layers[{index}].name: {layer.name!r} cannot name its arrays: {derived!r} "
                    f"breaks the name rule ({NAME_RULE})"
                )


def _layer_document(layer: Layer) -> dict:
    """One entry of network.json's "layers" (a dense layer's exactly as in version 1)."""
    entry: dict[str, Any] = {
        "name": layer.name,
        "kind": layer.kind,
        "inputs": int(layer.inputs),
        "outputs": int(layer.outputs),
    }
    if layer.is_conv:
        entry.update(
            input_shape=[int(size) for size in layer.input_shape],
            out_channels=int(layer.out_channels),
            kernel_size=int(layer.kernel_size),
            padding=layer.padding,
            pool_size=int(layer.pool_size),
            output_shape=list(layer.output_shape),
        )
    weight_name, bias_name = array_names(layer)
    entry.update(
        weight_bits=int(layer.weight_bits),
        ramp_shift=int(layer.ramp_shift),
        weight=weight_name,
        bias=bias_name,
    )
    if layer.is_conv:
        entry["bias_per"] = layer.bias_per
    entry["readout"] = bool(layer.readout)
    return entry


def network_document(bundle: Bundle) -> dict:
    """The ``network.json`` object for ``bundle`` (arrays named ``<layer>.weight`` etc.):
    version 1 when every layer is dense, else version 2."""
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": bundle.version,
        "time_steps": int(bundle.time_steps),
        "input": {
            "channels": int(bundle.channels),
            "height": int(bundle.height),
            "width": int(bundle.width),
            "lut": LUT_ARRAY,
        },
        "layers": [_layer_document(layer) for layer in bundle.layers],
    }
    if bundle.classes is not None:
        document["classes"] = list(bundle.classes)
    document["meta"] = bundle.meta
    return document


def bundle_fingerprint(bundle: Bundle) -> str:
    """SHA-256 of everything in a bundle that the hardware depends on."""
    digest = hashlib.sha256()
    document = network_document(bundle)
    document.pop("meta", None)
    digest.update(json.dumps(document, sort_keys=True).encode())
    for array in [bundle.lut] + [a for layer in bundle.layers for a in (layer.weight, layer.bias)]:
        values = np.ascontiguousarray(array, dtype=np.int64)
        digest.update(str(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


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

    Everything is written into a staging sibling directory which is then put
    in place by :func:`ttfs.contract.paths.replace_directory` (one atomic
    exchange with an existing bundle): an interruption leaves the old bundle
    or the new one, never neither, and a failed save leaves nothing behind.
    ``path`` may be a bundle or an empty directory, nothing else, and not a
    symbolic link.
    ``extra_files`` maps file names to bytes written beside ``network.json``.
    Returns the bundle's path.
    """
    validate(bundle)
    _check_array_names(bundle)
    extras = {_check_extra_name(name): data for name, data in (extra_files or {}).items()}
    for name, data in extras.items():
        if not isinstance(data, (bytes, bytearray)):
            raise BundleError(f"extra_files[{name!r}]: expected bytes, got {type(data).__name__}")
    try:
        meta_text = json.dumps(network_document(bundle), indent=2) + "\n"
    except (TypeError, ValueError) as err:
        raise BundleError(f"meta: not representable as JSON: {err}") from None

    target = Path(path)
    arrays = {LUT_ARRAY: bundle.lut}
    for layer in bundle.layers:
        weight_name, bias_name = array_names(layer)
        arrays[weight_name] = layer.weight
        arrays[bias_name] = layer.bias
    arrays = {key: np.asarray(value).astype(_small_dtype(np.asarray(value))) for key, value in arrays.items()}

    try:
        recover_leftovers(target)
        check_output(target, "bundle", kind=BUNDLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_directory(target)
    except OutputPathError as err:
        raise BundleError(str(err)) from None
    except OSError as err:
        raise BundleError(f"{target}: cannot save bundle: {err.strerror or err}") from None
    try:
        (staging / NETWORK_FILE).write_text(meta_text, encoding="utf-8")
        (staging / PARAMS_FILE).write_bytes(npz_bytes(arrays))
        for name, data in extras.items():
            (staging / name).write_bytes(bytes(data))
        replace_directory(staging, target)
    except OSError as err:
        raise BundleError(f"{target}: cannot save bundle: {err.strerror or err}") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def network_text(bundle: Bundle) -> str:
    """The activations entering and leaving each layer, e.g. ``784-340-10``, or with
    conv2d layers their (C, H, W) shapes, e.g. ``1x28x28-16x14x14-32x7x7-10``."""
    if bundle.version == VERSION_DENSE:
        return "-".join(str(n) for n in bundle.sizes)
    shapes = [bundle.input_shape] + [layer.output_shape for layer in bundle.layers]
    return "-".join("x".join(str(size) for size in shape) for shape in shapes)


def describe(bundle: Bundle) -> str:
    """A one-line summary such as ``784-340-10, T=16, weights 5 bits``."""
    bits = sorted({layer.weight_bits for layer in bundle.layers})
    bits_text = "/".join(str(b) for b in bits)
    return f"{network_text(bundle)}, T={bundle.time_steps}, weights {bits_text} bits"


__all__ = [
    "Bundle",
    "BundleError",
    "Layer",
    "array_names",
    "check_name",
    "conv2d_layer",
    "conv_output_size",
    "default_lut",
    "describe",
    "layer_potential_bounds",
    "load_bundle",
    "network_document",
    "network_text",
    "npz_bytes",
    "save_bundle",
    "bundle_fingerprint",
    "potential_bits",
    "signed_bits",
    "signed_width",
    "validate",
]

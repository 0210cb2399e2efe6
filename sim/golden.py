"""The golden model: executes a bundle exactly, vectorised over a batch.

It computes the closed form of the contract for every image of a batch at
once.  A dense layer (v1 section 4) and a conv2d layer (v2 section 4):

    V[i] = sum_j W[i][j] a_in[j]
    V[o, y, x] = sum_{c, ky, kx} W[o, c, ky, kx] a_in[c, y + ky - pad, x + kx - pad]

(the conv2d sum is a cross-correlation, as torch.nn.functional.conv2d, with
a_in = 0 outside the input: padding is silence), then for every neuron

    a = clip(floor((V + Bias) / R), 0, T),

and a conv2d layer's pool passes the largest activation (the earliest spike)
of each p x p block.  The readout logits are z = V + Bias and the class the
smallest index of the largest logit (section 5).  The results are exact
integers; the hardware and the event model (``ttfs.sim.event_model``) must
equal them spike for spike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from ttfs.contract.bundle import (
    Bundle,
    BundleError,
    Layer,
    layer_potential_bounds,
    signed_bits,
    validate,
)
from ttfs.contract.errors import TTFSError

# Images per matrix product: large enough for BLAS to run at full speed,
# small enough that the float and int64 intermediates stay in a few tens of MB.
DEFAULT_BATCH = 2048
# A conv2d layer's im2col matrix holds C*k*k values per output position and
# image; a batch is cut so that it stays below this many values (4 MB in
# float32): small enough to stay in cache, which measured fastest.
_PATCH_VALUES = 1 << 20

# Float formats whose matrix products are exact on our integers.  Every
# output is a sum of products W * a of integers, a in 0..T (a conv2d
# neuron's terms are its kernel's weights times the activations under it,
# padding contributing exact zeros), so every partial sum, whatever order
# BLAS adds in, and every product, is an integer of magnitude at most
# T * sum |W| <= the layer's potential bound; adding the bias stays within
# the bound too.  Such integers are represented exactly below
# 2**mantissa_bits: a product computed in float32 is exact when the bound is
# below 2**24, in float64 below 2**53 - and the bundle rules cap every bound
# at 48 bits, so float64 always is.  Scaling by 1/R = 2**-ramp_shift only
# moves the exponent (exact), floor and clip are exact, and max-pooling
# compares exact values.
_FLOAT32_EXACT_LIMIT = 2**24
_FLOAT64_EXACT_LIMIT = 2**53


class GoldenError(TTFSError):
    """Bad input to the golden model (images of the wrong shape or dtype, bad traces)."""


@dataclass(frozen=True)
class LayerBound:
    """Section 6 bound of one layer: the largest |potential| any neuron can reach.

    ``bound`` is the layer maximum, ``bits`` the signed register width that
    holds -bound..+bound, ``per_neuron`` the bound of each neuron (int64,
    (outputs,) for dense, (out_channels, H_out, W_out) for conv2d).
    """

    name: str
    bound: int
    bits: int
    per_neuron: np.ndarray


def potential_bounds(bundle: Bundle) -> list[LayerBound]:
    """One :class:`LayerBound` per layer (hidden layers then the readout).

    Every neuron's bound is T * sum |W| + |Bias| + (T+1) * R over its weights
    (a conv2d neuron's: its channel's kernel), the readout's included
    (section 6 makes no exception for it).
    """
    validate(bundle)
    bounds = []
    for layer in bundle.layers:
        per_neuron = layer_potential_bounds(layer, bundle.time_steps)
        bound = int(per_neuron.max())
        bounds.append(LayerBound(layer.name, bound, signed_bits(bound), per_neuron))
    return bounds


def as_image_batch(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    """``images`` as uint8 (N, C, H, W) for ``bundle``; (N, H, W) is accepted when C = 1."""
    channels, height, width = bundle.channels, bundle.height, bundle.width
    expected = f"uint8 of shape (N, {channels}, {height}, {width})"
    if channels == 1:
        expected += f" or (N, {height}, {width})"
    if not isinstance(images, np.ndarray):
        raise GoldenError(f"images: expected a numpy array, {expected}; got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise GoldenError(f"images: dtype {images.dtype}, expected {expected}")
    if images.ndim == 3 and channels == 1:
        images = images[:, None, :, :]
    if images.ndim != 4 or images.shape[1:] != (channels, height, width):
        raise GoldenError(f"images: shape {images.shape} does not match the bundle input, expected {expected}")
    return images


def encode(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    """Input activations (layer 0), int64 (N, C*H*W): ``lut[c][pixel]`` (section 3)."""
    batch = as_image_batch(bundle, images)
    return _encode_batch(bundle, batch)


def _encode_batch(bundle: Bundle, batch: np.ndarray) -> np.ndarray:
    count = batch.shape[0]
    pixels_per_channel = bundle.height * bundle.width
    # One flat table: channel c's entries start at 256*c, so a single gather
    # encodes every channel.
    lut_flat = np.asarray(bundle.lut, dtype=np.int64).reshape(-1)
    index = batch.reshape(count, bundle.channels, pixels_per_channel).astype(np.intp)
    index += (256 * np.arange(bundle.channels, dtype=np.intp))[None, :, None]
    return lut_flat[index.reshape(count, -1)]


@dataclass
class GoldenResult:
    """Exact results for a batch of images.

    ``activations[k]`` is int64 (N, width) for spiking layer k (layer 0 is the
    input encoder, then every hidden layer): the activations of the events
    that leave the layer, flattened (C, H, W) after a conv2d layer's pooling;
    ``logits`` int64 (N, classes); ``classes`` int64 (N,).  ``neurons[k]`` is
    the number of layer k's firing neurons (a conv2d layer's before pooling)
    and ``fired[k]`` int64 (N,) how many of them fire for each image.
    ``pre_pool_activations`` (only when :func:`run` was asked for it) holds,
    per spiking layer, int64 (N, neurons[k]): a conv2d layer's activations
    before pooling, flattened (o, y, x); for the other layers the same array
    as ``activations[k]``.
    """

    time_steps: int
    activations: list[np.ndarray]
    logits: np.ndarray
    classes: np.ndarray
    neurons: list[int]
    fired: list[np.ndarray]
    pre_pool_activations: list[np.ndarray] | None = None

    def traces(self, image: int) -> list[np.ndarray]:
        """Canonical spike traces of one image: an int64 (K, 2) array of
        (step, neuron) per spiking layer, sorted by step, then neuron: the
        events that leave each layer."""
        return [trace_from_activations(layer[image], self.time_steps) for layer in self.activations]

    def pre_pool_traces(self, image: int) -> list[np.ndarray]:
        """Like :meth:`traces`, for every firing neuron (a conv2d layer's before pooling)."""
        if self.pre_pool_activations is None:
            raise GoldenError("pre_pool_traces: run the golden model with pre_pool=True")
        return [trace_from_activations(layer[image], self.time_steps) for layer in self.pre_pool_activations]

    def spikes_per_neuron(self) -> list[float]:
        """Per spiking layer, the fraction of its neurons that fire (a conv2d layer's
        neurons before pooling), averaged over images."""
        return [int(fired.sum()) / (fired.size * neurons) for fired, neurons in zip(self.fired, self.neurons)]

    def events_per_output(self) -> list[float]:
        """Per spiking layer, the fraction of its outputs that carry an event (after a
        conv2d layer's pooling), averaged over images; for dense layers as
        :meth:`spikes_per_neuron`."""
        return [float(np.count_nonzero(layer) / layer.size) for layer in self.activations]


def trace_from_activations(activations: np.ndarray, time_steps: int) -> np.ndarray:
    """The canonical trace (K, 2) of (step, neuron) for one layer's activations.

    Activation a >= 1 is a spike at step T - a; a = 0 is silence (section 2).
    """
    values = np.asarray(activations)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise GoldenError(f"activations: expected a 1-D integer array, got {values.dtype} {values.shape}")
    if values.size and (values.min() < 0 or values.max() > time_steps):
        raise GoldenError(f"activations: values must lie in 0..{time_steps}")
    neurons = np.flatnonzero(values)
    steps = time_steps - values[neurons].astype(np.int64)
    order = np.lexsort((neurons, steps))
    return np.stack([steps[order], neurons[order].astype(np.int64)], axis=1).reshape(-1, 2)


def activations_from_trace(trace: np.ndarray, width: int, time_steps: int) -> np.ndarray:
    """Inverse of :func:`trace_from_activations`: int64 (width,) activations.

    Any event order is accepted; a neuron may spike at most once.
    """
    events = np.asarray(trace)
    if events.size == 0:
        return np.zeros(width, dtype=np.int64)
    if events.ndim != 2 or events.shape[1] != 2 or events.dtype.kind not in "iu":
        raise GoldenError(f"trace: expected an integer (K, 2) array of (step, neuron), got {events.dtype} {events.shape}")
    steps, neurons = events[:, 0].astype(np.int64), events[:, 1].astype(np.int64)
    if steps.min() < 0 or steps.max() >= time_steps:
        raise GoldenError(f"trace: steps must lie in 0..{time_steps - 1}")
    if neurons.min() < 0 or neurons.max() >= width:
        raise GoldenError(f"trace: neurons must lie in 0..{width - 1}")
    if np.unique(neurons).size != neurons.size:
        raise GoldenError("trace: a neuron spikes more than once")
    activations = np.zeros(width, dtype=np.int64)
    activations[neurons] = time_steps - steps
    return activations


@dataclass(frozen=True)
class _CompiledLayer:
    """A layer prepared for fast exact evaluation."""

    layer: Layer
    # dense: (inputs, outputs); conv2d: (C*k*k, out_channels), rows in (c, ky, kx) order.
    weight: np.ndarray
    # dense: (outputs,); conv2d: (out_channels,) or, per position, (H_out, W_out, out_channels).
    bias: np.ndarray
    inv_ramp: float  # 1 / R, a power of two: multiplying by it is exact
    bound: float  # the layer's potential bound, checked at run time


def _compile(bundle: Bundle) -> list[_CompiledLayer]:
    compiled = []
    for layer, bound in zip(bundle.layers, potential_bounds(bundle)):
        if bound.bound < _FLOAT32_EXACT_LIMIT:
            dtype = np.float32
        elif bound.bound < _FLOAT64_EXACT_LIMIT:
            dtype = np.float64
        else:  # cannot happen for a valid bundle (bounds are capped at 48 bits)
            raise BundleError(f"{layer.name}: potential bound {bound.bound} is too large")
        if layer.is_conv:
            # Channels last: the im2col product yields (positions, out_channels).
            weight = layer.weight.reshape(layer.out_channels, -1).T
            bias = np.moveaxis(layer.bias, 0, -1)
        else:
            weight, bias = layer.weight.T, layer.bias
        compiled.append(
            _CompiledLayer(
                layer=layer,
                weight=np.ascontiguousarray(weight, dtype=dtype),
                bias=np.ascontiguousarray(bias, dtype=dtype),
                inv_ramp=1.0 / layer.ramp,
                bound=float(bound.bound),
            )
        )
    return compiled


def _convolve(maps: np.ndarray, compiled: _CompiledLayer) -> np.ndarray:
    """V of a conv2d layer for activation maps (n, H, W, C): (n, H_out, W_out, out_channels)."""
    layer = compiled.layer
    kernel = layer.kernel_size
    maps = maps.astype(compiled.weight.dtype, copy=False)
    if layer.padding == "same":
        pad = (kernel - 1) // 2  # odd kernels: the same padding on every side
        maps = np.pad(maps, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # (n, H_out, W_out, C, k, k): window [ky, kx] at (y, x) is padded input (y + ky, x + kx),
    # so the product with W[o, c, ky, kx] is the cross-correlation.
    windows = sliding_window_view(maps, (kernel, kernel), axis=(1, 2))
    count, out_height, out_width = windows.shape[:3]
    patches = windows.reshape(count * out_height * out_width, -1)
    return (patches @ compiled.weight).reshape(count, out_height, out_width, -1)


def _max_pool(maps: np.ndarray, size: int) -> np.ndarray:
    """p x p max-pool, stride p, of (n, H, W, C) maps; rows and columns beyond a multiple of p are dropped."""
    if size == 1:
        return maps
    rows, columns = maps.shape[1] // size * size, maps.shape[2] // size * size
    # The maximum of the p*p strided sub-grids (one per offset in the block):
    # faster than a reduction over the block axes of a reshaped array.
    pooled = maps[:, :rows:size, :columns:size].copy()
    for dy in range(size):
        for dx in range(size):
            if dy or dx:
                np.maximum(pooled, maps[:, dy:rows:size, dx:columns:size], out=pooled)
    return pooled


def _channels_first(maps: np.ndarray) -> np.ndarray:
    """(n, H, W, C) maps flattened in the contract's (C, H, W) order: (n, C*H*W)."""
    return maps.transpose(0, 3, 1, 2).reshape(maps.shape[0], -1)


def _images_per_batch(bundle: Bundle, batch_size: int) -> int:
    """``batch_size``, cut so that no conv2d layer's im2col matrix exceeds _PATCH_VALUES."""
    per_image = max(
        (layer.conv_shape[1] * layer.conv_shape[2] * layer.input_shape[0] * layer.kernel_size**2
         for layer in bundle.layers if layer.is_conv),
        default=0,
    )
    return batch_size if per_image == 0 else max(1, min(batch_size, _PATCH_VALUES // per_image))


def _chunks(count: int, batch_size: int, progress: bool) -> Iterator[slice]:
    starts = range(0, count, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="golden", unit="batch", total=len(starts))
    for start in starts:
        yield slice(start, min(start + batch_size, count))


def run(
    bundle: Bundle,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    pre_pool: bool = False,
) -> GoldenResult:
    """Run the bundle on a batch of uint8 images; exact integer results.

    ``images`` is (N, C, H, W) or (N, H, W) when C = 1.  ``batch_size`` is
    the most images per matrix product (fewer for large conv2d layers).
    ``progress`` shows a tqdm bar over the batches.  ``pre_pool`` also keeps
    every conv2d layer's activations before pooling
    (:attr:`GoldenResult.pre_pool_activations`).
    """
    images = as_image_batch(bundle, images)
    count = images.shape[0]
    if count == 0:
        raise GoldenError("images: the batch is empty")
    if batch_size < 1:
        raise GoldenError(f"batch_size: {batch_size} must be at least 1")
    compiled = _compile(bundle)
    steps = bundle.time_steps
    activations = [np.empty((count, width), dtype=np.int64) for width in bundle.spiking_widths]
    neurons = [bundle.input_size] + [layer.neurons for layer in bundle.hidden_layers]
    fired = [np.empty(count, dtype=np.int64) for _ in neurons]
    before_pool = list(activations)
    if pre_pool:
        for index, layer in enumerate(bundle.hidden_layers, start=1):
            if layer.is_conv and layer.pool_size > 1:
                before_pool[index] = np.empty((count, layer.neurons), dtype=np.int64)
    logits = np.empty((count, bundle.readout.outputs), dtype=np.int64)

    for part in _chunks(count, _images_per_batch(bundle, batch_size), progress):
        flat = _encode_batch(bundle, images[part])
        activations[0][part] = flat
        fired[0][part] = np.count_nonzero(flat, axis=1)
        maps = None  # (n, H, W, C) activation maps, while the layers are conv2d
        for index, layer in enumerate(compiled):
            source = layer.layer
            if source.is_conv:
                if maps is None:  # the image: (n, C*H*W) -> (n, H, W, C)
                    maps = flat.reshape(-1, *source.input_shape).transpose(0, 2, 3, 1)
                potential = _convolve(maps, layer)
            else:
                potential = flat.astype(layer.weight.dtype, copy=False) @ layer.weight
            potential += layer.bias
            # Run-time check of section 6: no potential beyond the bound the
            # hardware sizes its registers from.
            if max(float(potential.max()), -float(potential.min())) > layer.bound:
                raise GoldenError(f"{source.name}: potential exceeds its bound {int(layer.bound)}")
            if source.readout:
                logits[part] = potential.astype(np.int64)
                break
            # floor((V + Bias) / R) with R a power of two: scaling by 1/R is
            # exact in binary floating point, and floor rounds toward -inf.
            potential *= layer.inv_ramp
            np.floor(potential, out=potential)
            np.clip(potential, 0, steps, out=potential)
            spiking = index + 1
            fired[spiking][part] = np.count_nonzero(potential.reshape(potential.shape[0], -1), axis=1)
            if source.is_conv:
                if before_pool[spiking] is not activations[spiking]:
                    before_pool[spiking][part] = _channels_first(potential)
                maps = _max_pool(potential, source.pool_size)
                flat = _channels_first(maps)
            else:
                flat, maps = potential, None
            activations[spiking][part] = flat
    # np.argmax returns the first index of the maximum: ties go to the lowest class.
    classes = np.argmax(logits, axis=1).astype(np.int64)
    return GoldenResult(steps, activations, logits, classes, neurons, fired, before_pool if pre_pool else None)


__all__ = [
    "GoldenError",
    "GoldenResult",
    "LayerBound",
    "activations_from_trace",
    "as_image_batch",
    "encode",
    "potential_bounds",
    "run",
    "trace_from_activations",
]

"""The golden model: executes a bundle exactly, vectorised over a batch.

It computes the closed form of contract v1 (section 4) for every image of a
batch at once:

    a_out[i] = clip(floor((V[i] + Bias[i]) / R), 0, T),   V = W a_in

and the readout logits z = V + Bias with the class the smallest index of the
largest logit (section 5).  The results are exact integers; the hardware and
the event model (``sim.event_model``) must equal them spike for spike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from sim.bundle import Bundle, BundleError, layer_potential_bounds, signed_bits, validate
from sim.errors import TTFSError

# Images per matrix product: large enough for BLAS to run at full speed,
# small enough that the float and int64 intermediates stay in a few tens of MB.
DEFAULT_BATCH = 2048

# Float formats whose matrix products are exact on our integers: every partial
# sum of integer products is itself an integer of magnitude at most the
# layer's potential bound, whatever order BLAS sums in, and such integers are
# represented exactly when below 2**mantissa_bits.  So a product computed in
# float32 is exact when the bound is below 2**24, in float64 below 2**53 -
# and the bundle rules cap every bound at 48 bits, so float64 always is.
_FLOAT32_EXACT_LIMIT = 2**24
_FLOAT64_EXACT_LIMIT = 2**53


class GoldenError(TTFSError):
    """Bad input to the golden model (images of the wrong shape or dtype, bad traces)."""


@dataclass(frozen=True)
class LayerBound:
    """Section 6 bound of one layer: the largest |potential| any neuron can reach.

    ``bound`` is the layer maximum, ``bits`` the signed register width that
    holds -bound..+bound, ``per_neuron`` the bound of each neuron (int64).
    """

    name: str
    bound: int
    bits: int
    per_neuron: np.ndarray


def potential_bounds(bundle: Bundle) -> list[LayerBound]:
    """One :class:`LayerBound` per layer (hidden layers then the readout).

    Every layer's bound is T * sum_j |W[i][j]| + |Bias[i]| + (T+1) * R, the
    readout's included (section 6 makes no exception for it).
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
    input encoder, then every hidden layer); ``logits`` int64 (N, classes);
    ``classes`` int64 (N,).
    """

    time_steps: int
    activations: list[np.ndarray]
    logits: np.ndarray
    classes: np.ndarray

    def traces(self, image: int) -> list[np.ndarray]:
        """Canonical spike traces of one image: an int64 (K, 2) array of
        (step, neuron) per spiking layer, sorted by step, then neuron."""
        return [trace_from_activations(layer[image], self.time_steps) for layer in self.activations]

    def spikes_per_neuron(self) -> list[float]:
        """Per spiking layer, the fraction of neurons that fire, averaged over images."""
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

    weight_t: np.ndarray  # (inputs, outputs) in the chosen float dtype
    bias: np.ndarray  # (outputs,) same dtype
    inv_ramp: float  # 1 / R, a power of two: multiplying by it is exact
    bound: float  # the layer's potential bound, checked at run time
    readout: bool


def _compile(bundle: Bundle) -> list[_CompiledLayer]:
    compiled = []
    for layer, bound in zip(bundle.layers, potential_bounds(bundle)):
        if bound.bound < _FLOAT32_EXACT_LIMIT:
            dtype = np.float32
        elif bound.bound < _FLOAT64_EXACT_LIMIT:
            dtype = np.float64
        else:  # cannot happen for a valid bundle (bounds are capped at 48 bits)
            raise BundleError(f"{layer.name}: potential bound {bound.bound} is too large")
        compiled.append(
            _CompiledLayer(
                weight_t=np.ascontiguousarray(layer.weight.T, dtype=dtype),
                bias=layer.bias.astype(dtype),
                inv_ramp=1.0 / layer.ramp,
                bound=float(bound.bound),
                readout=layer.readout,
            )
        )
    return compiled


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
) -> GoldenResult:
    """Run the bundle on a batch of uint8 images; exact integer results.

    ``images`` is (N, C, H, W) or (N, H, W) when C = 1.  ``progress`` shows a
    tqdm bar over the batches.
    """
    images = as_image_batch(bundle, images)
    count = images.shape[0]
    if count == 0:
        raise GoldenError("images: the batch is empty")
    if batch_size < 1:
        raise GoldenError(f"batch_size: {batch_size} must be at least 1")
    compiled = _compile(bundle)
    steps = bundle.time_steps
    widths = [bundle.input_size] + [layer.outputs for layer in bundle.hidden_layers]
    activations = [np.empty((count, width), dtype=np.int64) for width in widths]
    logits = np.empty((count, bundle.readout.outputs), dtype=np.int64)

    for part in _chunks(count, batch_size, progress):
        current = _encode_batch(bundle, images[part])
        activations[0][part] = current
        for index, layer in enumerate(compiled):
            potential = current.astype(layer.weight_t.dtype, copy=False) @ layer.weight_t
            potential += layer.bias
            # Run-time check of section 6: no potential beyond the bound the
            # hardware sizes its registers from.
            if max(float(potential.max()), -float(potential.min())) > layer.bound:
                raise GoldenError(
                    f"{bundle.layers[index].name}: potential exceeds its bound {int(layer.bound)}"
                )
            if layer.readout:
                logits[part] = potential.astype(np.int64)
                break
            # floor((V + Bias) / R) with R a power of two: scaling by 1/R is
            # exact in binary floating point, and floor rounds toward -inf.
            potential *= layer.inv_ramp
            np.floor(potential, out=potential)
            np.clip(potential, 0, steps, out=potential)
            current = potential
            activations[index + 1][part] = potential
    # np.argmax returns the first index of the maximum: ties go to the lowest class.
    classes = np.argmax(logits, axis=1).astype(np.int64)
    return GoldenResult(steps, activations, logits, classes)


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

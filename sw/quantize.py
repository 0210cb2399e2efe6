"""Quantisation of a trained TTFS network onto the integer grid of the contract.

Dense networks (ttfs.sw.models.TTFSNetwork) map onto contract v1; conv
networks (ttfs.sw.conv.TTFSLayerNetwork) onto contract v2, where each B1
convolution, with the max-pools after it, becomes one ``conv2d`` layer
(:func:`check_expressible` says how a network maps, or why it cannot).

Contract section 7 ties three scales per layer n together: the activation
step Delta(n) (float activation = a * Delta(n)), the weight scale S(n)
(float weight = W * S(n)) and the ramp R = 2^ramp_shift, by

    R = Delta(n) / (S(n) * Delta(n-1)).

:func:`calibrate` chooses them:

- Delta(0) = 1/T: pixels v/255 in [0, 1] become a = round(v*T/255), the
  contract's default input table;
- Delta(n) of a hidden layer is a high percentile of its positive float
  activations on calibration images, divided by T, so that few activations
  clip at T;
- the ramp shift k is the largest in 0..30 for which the rounded weights
  W / S(n), S(n) = Delta(n) / (2^k Delta(n-1)), fit the signed weight_bits
  range: every extra shift doubles the weight resolution, so the largest k
  that does not overflow uses the range best.  When even k = 0 overflows
  (very few bits), Delta(n) grows until the weights fit at k = 0;
- the readout's logit scale is free (only the argmax counts): S = max|W| /
  (2^(B-1) - 1) puts the largest weight at the end of the range.

A conv layer's activations are those of its neurons before pooling (a
max-pool passes values on unchanged, so the step is the same after it).

Integer conversion (one definition, used by export and by training):

    W_int    = clamp(floor(W / S + 1/2), -2^(B-1), 2^(B-1) - 1)
    Bias_int = floor(b / (S Delta(n-1)) + 1/2) + R // 2

The R // 2 makes the contract's floor((V + Bias) / R) round to the nearest
step instead of flooring (a readout gets no offset).  A conv layer whose
float network holds a border bias (batch norm or input normalisation folded
across 'same' padding, ttfs.sw.folding) gets one integer bias per position,
Bias_int[o, y, x] from b[o] + border_bias[o, y, x] (contract v2 section 7);
otherwise one per channel.

:class:`IntegerNetwork` runs exactly the contract's integer semantics in
torch (float64, in which every integer of a valid bundle is exact) with
straight-through gradients, so quantisation-aware fine-tuning
(:func:`finetune`, the training loop of ttfs.sw.fitting) trains the network
the golden model will execute: its integer forward equals
``ttfs.sim.golden.run`` bit for bit.  :func:`round_half_up` and
:func:`straight_through` are also the hardware fine-tuning's
(ttfs.sw.finetune).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from ttfs.contract.bundle import (
    KERNEL_SIZES,
    MAX_POOL_SIZE,
    MAX_POTENTIAL_BITS,
    MAX_RAMP_SHIFT,
    MAX_TIME_STEPS,
    MAX_WEIGHT_BITS,
    MIN_TIME_STEPS,
    MIN_WEIGHT_BITS,
    Bundle,
    conv_output_size,
    default_lut,
)
from ttfs.contract.errors import TTFSError
from ttfs.sw import fitting
from ttfs.sw.conv import TTFSConv2d, TTFSFlatten, TTFSMaxPool2d
from ttfs.sw.ttfs import Alpha1Dense, TTFSDense, WindowedLayer

#: Default percentile of the positive float activations that maps to T.
DEFAULT_CLIP_PERCENTILE = 99.99

#: A bias beyond this magnitude cannot fit the contract's 48-bit potential bound.
MAX_ABS_BIAS = 2 ** (MAX_POTENTIAL_BITS - 1) - 1

#: Images per batch of the integer forward outside training: a conv layer's
#: unfolded windows of a batch stay within a few hundred MB in float64.
PREDICT_BATCH = 250


class QuantizeError(TTFSError):
    """A quantisation request the contract cannot express (bits, T, layer kinds, ranges)."""


def signed_range(bits: int) -> tuple[int, int]:
    """(-2^(B-1), 2^(B-1) - 1): the integers a B-bit two's complement word holds."""
    half = 1 << (bits - 1)
    return -half, half - 1


def check_weight_bits(bits: int) -> int:
    """``bits`` if it is an integer in 2..16, else QuantizeError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_WEIGHT_BITS <= bits <= MAX_WEIGHT_BITS:
        raise QuantizeError(f"weight bits: {bits!r} is outside {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}")
    return int(bits)


def check_time_steps(steps: int) -> int:
    """``steps`` if it is a power of two in 2..256, else QuantizeError."""
    valid = not isinstance(steps, bool) and isinstance(steps, (int, np.integer))
    if not valid or not MIN_TIME_STEPS <= steps <= MAX_TIME_STEPS or steps & (steps - 1):
        raise QuantizeError(f"time steps: {steps!r} is not a power of two in {MIN_TIME_STEPS}..{MAX_TIME_STEPS}")
    return int(steps)


def check_percentile(percentile: float) -> float:
    """``percentile`` if it lies in (0, 100], else QuantizeError."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise QuantizeError(f"clip percentile: {percentile!r} must be a number in (0, 100]")
    return float(percentile)


@dataclass(frozen=True)
class ConvGeometry:
    """The shape of a conv2d layer (contract v2 section 3): the map entering it
    (C, H, W), its square kernel, its padding ("same" or "valid", stride 1) and
    the size p of the p x p max-pool after it (1: none)."""

    input_shape: tuple[int, int, int]
    kernel_size: int
    padding: str
    pool_size: int = 1

    @property
    def pad(self) -> int:
        """Zero padding on every side: (k - 1) / 2 for 'same' (odd kernels), 0 for 'valid'."""
        return (self.kernel_size - 1) // 2 if self.padding == "same" else 0

    @property
    def output_size(self) -> tuple[int, int]:
        """(H_out, W_out) of the convolution, before pooling."""
        _, height, width = self.input_shape
        return tuple(conv_output_size(side, self.kernel_size, self.padding) for side in (height, width))


@dataclass(frozen=True)
class LayerScales:
    """How one float layer maps to its integer layer.

    ``weight_scale`` S(n); ``input_step`` Delta(n-1); ``activation_step``
    Delta(n) (None for the readout); ``bias_scale`` S(n) * Delta(n-1), which
    is also a readout's logit scale (float logit = integer logit * bias_scale);
    ``bias_offset`` R // 2 (rounding) or 0; ``conv`` the geometry of a conv2d
    layer (None: dense).
    """

    name: str
    weight_bits: int
    ramp_shift: int
    readout: bool
    input_step: float
    activation_step: float | None
    weight_scale: float
    bias_offset: int
    conv: ConvGeometry | None = None

    @property
    def ramp(self) -> int:
        """R = 2^ramp_shift."""
        return 1 << self.ramp_shift

    @property
    def bias_scale(self) -> float:
        """S(n) * Delta(n-1): float bias = integer bias * bias_scale."""
        return self.weight_scale * self.input_step

    @property
    def weight_range(self) -> tuple[int, int]:
        """Signed range of weight_bits: (-2^(B-1), 2^(B-1) - 1)."""
        return signed_range(self.weight_bits)


@dataclass(frozen=True)
class QuantPlan:
    """Every scale of a network: time steps, input table, one LayerScales per layer."""

    time_steps: int
    lut: np.ndarray  # int64 (channels, 256)
    layers: tuple[LayerScales, ...]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch (and its BLAS) on one thread inside the block.

    Float sums then happen in one fixed order whatever the machine's load or
    core count (MKL may otherwise change its thread count dynamically), so
    calibration and fine-tuning repeat bit for bit.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class SourceLayer:
    """One layer of the contract and the float layer it comes from: its name in
    the bundle, the B1 module holding its weights (TTFSDense or TTFSConv2d) and,
    for a conv2d layer, its geometry (pools after the convolution included)."""

    name: str
    module: WindowedLayer
    conv: ConvGeometry | None


def check_expressible(model: nn.Module) -> list[SourceLayer]:
    """The model's layers as the contract's, or QuantizeError naming the first one it cannot express.

    The contract's network is encoder -> conv2d* -> dense+ (v2 section 2):
    B1 convolutions (TTFSConv2d, odd kernels up to 7), each followed by
    max-pools whose sizes multiply to at most 4 (two successive pools are one
    pool of the product, floors included), then a flatten, then dense B1
    layers (TTFSDense) ending in the readout.  A pool that takes the minimum
    on some channels (a negative batch-norm scale folded across it,
    ttfs.sw.folding) has no counterpart in the contract.  Layers are named
    ``conv1``, ``conv2``, ... then ``fc1``, ``fc2``, ... and ``out``.
    """
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) < 2:
        raise QuantizeError("network: expected a TTFS network with .layers (hidden layers then a readout)")
    sources: list[SourceLayer] = []
    flattened = False
    for index, layer in enumerate(layers):
        where = f"layers[{index}] ({type(layer).__name__})"
        last = sources[-1] if sources else None
        if isinstance(layer, TTFSConv2d):
            if flattened or (last is not None and last.conv is None):
                raise QuantizeError(f"{where}: a convolution after a flatten or a dense layer has no map to read")
            if layer.kernel_size not in KERNEL_SIZES:
                raise QuantizeError(f"{where}: kernel size {layer.kernel_size} is not one of the contract's "
                                    f"{', '.join(map(str, KERNEL_SIZES))}")  # fmt: skip
            name = f"conv{sum(source.conv is not None for source in sources) + 1}"
            geometry = ConvGeometry((layer.in_channels, *layer.input_size), layer.kernel_size, layer.padding)
            sources.append(SourceLayer(name, layer, geometry))
        elif isinstance(layer, TTFSMaxPool2d):
            if flattened or last is None or last.conv is None:
                raise QuantizeError(f"{where}: the contract pools only right after a convolution")
            if bool(layer.min_channels.any()):
                channels = layer.min_channels.nonzero().flatten().tolist()
                raise QuantizeError(
                    f"{last.name}: its pool ({where}) takes the minimum on channel(s) {channels} (a negative batch-norm "
                    "scale folded across the pool); contract v2 has no min-pool, so the network cannot be exported "
                    "(train with batch norm before the ReLU, or without it)"
                )
            size = last.conv.pool_size * layer.size
            if size > MAX_POOL_SIZE:
                raise QuantizeError(f"{where}: the pools after {last.name} amount to a {size}x{size} pool; "
                                    f"the contract's largest is {MAX_POOL_SIZE}x{MAX_POOL_SIZE}")  # fmt: skip
            sources[-1] = dataclasses.replace(last, conv=dataclasses.replace(last.conv, pool_size=size))
        elif isinstance(layer, TTFSFlatten) and last is not None and last.conv is not None and not flattened:
            flattened = True
        elif isinstance(layer, TTFSDense) and not isinstance(layer, Alpha1Dense):
            if last is not None and last.conv is not None and not flattened:
                raise QuantizeError(f"{where}: a dense layer after a convolution needs a flatten between them")
            if layer.readout != (index == len(layers) - 1):
                raise QuantizeError(f"layers[{index}]: exactly the last layer must be the readout")
            dense_count = sum(source.conv is None for source in sources)
            sources.append(SourceLayer("out" if layer.readout else f"fc{dense_count + 1}", layer, None))
        else:
            raise QuantizeError(
                f"{where}: the contract expresses B1 convolutions (TTFSConv2d) with max-pools after them, one "
                "flatten, and dense B1 layers (TTFSDense); not this layer here"
            )
    if not sources[-1].module.readout:
        raise QuantizeError(f"layers[{len(layers) - 1}]: exactly the last layer must be the readout")
    return sources


def round_half_up(values: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2): the one rounding rule of every quantisation (torch.round would round halves to even)."""
    return torch.floor(values + 0.5)


def straight_through(continuous: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``exact`` in the forward pass, the gradient of ``continuous`` in the backward pass."""
    return continuous + (exact - continuous).detach()


def _fits(weight: torch.Tensor, scale: float, low: int, high: int) -> bool:
    rounded = round_half_up(torch.stack([weight.max(), weight.min()]) / scale)
    return bool(rounded[0] <= high and rounded[1] >= low)


@torch.no_grad()
def float_activations(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Float activations of every hidden layer (t_max(n) - spike time), float64, for pixels in [0, 1];
    a conv layer's before pooling, (N, out_channels, H_out, W_out)."""
    was_training = model.training
    model.eval()
    try:
        with single_thread():
            _, times = model(pixels.to(model.layers[0].weight.dtype), return_times=True)
        return [activation.to(torch.float64) for activation in model.activations(times)[1:]]
    finally:
        model.train(was_training)


def quantile(values: torch.Tensor, fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` with torch.quantile's linear interpolation, bit for bit.

    torch.quantile refuses more than 2^24 values, which a conv layer's
    activations on the default 1,000 calibration images can exceed; this is
    its computation (sort, rank fraction * (n - 1), lerp between the two
    neighbours) without the limit.
    """
    ordered = values.flatten().sort().values
    rank = torch.tensor(fraction, dtype=ordered.dtype) * (ordered.numel() - 1)
    below, above = int(rank.floor()), int(rank.ceil())
    return float(torch.lerp(ordered[below], ordered[above], rank - below))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    images: np.ndarray,
    weight_bits: int,
    time_steps: int,
    clip_percentile: float = DEFAULT_CLIP_PERCENTILE,
    rounding: bool = True,
) -> QuantPlan:
    """Choose every scale for ``model`` from calibration ``images`` (uint8 (N, C, H, W)).

    See the module docstring for the rules.  ``rounding`` adds R // 2 to
    hidden biases (round to the nearest step rather than floor).
    """
    bits = check_weight_bits(weight_bits)
    steps = check_time_steps(time_steps)
    percentile = check_percentile(clip_percentile)
    sources = check_expressible(model)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise QuantizeError(f"calibration images: expected a non-empty uint8 (N, C, H, W) array, got {images.dtype} {images.shape}")
    channels = images.shape[1]
    pixels = torch.from_numpy(images.astype(np.float64) / 255.0)
    activations = float_activations(model, pixels)

    input_step = 1.0 / steps
    scales = []
    for index, source in enumerate(sources):
        layer = source.module
        weight = layer.weight.detach().to(torch.float64)
        low, high = signed_range(bits)
        largest = float(weight.abs().max())
        if layer.readout:
            weight_scale = largest / high if largest > 0 else 1.0
            scales.append(LayerScales(source.name, bits, 0, True, input_step, None, weight_scale, 0))
            break
        positive = activations[index][activations[index] > 0]
        level = quantile(positive, percentile / 100.0) if positive.numel() else 1.0
        if not math.isfinite(level) or level <= 0:
            level = 1.0
        activation_step = level / steps
        shift = next(
            (k for k in range(MAX_RAMP_SHIFT, -1, -1)
             if _fits(weight, activation_step / ((1 << k) * input_step), low, high)),
            None,
        )  # fmt: skip
        if shift is None:
            # Too few bits for these weights at this step: coarsen the step so
            # the largest weight lands exactly on the end of the range at R = 1.
            shift = 0
            activation_step = largest * input_step / high
        weight_scale = activation_step / ((1 << shift) * input_step)
        offset = (1 << shift) // 2 if rounding else 0
        scales.append(LayerScales(source.name, bits, shift, False, input_step, activation_step, weight_scale, offset,
                                  source.conv))  # fmt: skip
        input_step = activation_step
    lut = np.tile(default_lut(steps), (channels, 1))
    return QuantPlan(steps, lut, tuple(scales))


class IntegerNetwork(nn.Module):
    """The contract's integer network in torch, differentiable by straight-through estimators.

    Parameters are float weights and biases (float64); the forward pass uses
    their integer conversion (module docstring) and the contract's integer
    semantics exactly: input table; V = W a + Bias for a dense layer, for a
    conv2d layer the cross-correlation of its input map with the kernel,
    padding silent (v2 section 3), computed as the golden model does, one
    matrix product of the kernel with the unfolded input windows (im2col),
    plus Bias; a = clip(floor(V / R), 0, T) for hidden layers, then a conv2d
    layer's p x p max-pool (floor); integer logits for the readout.  Every
    value, and every partial sum of the products, is an integer below 2^53
    and so exact in float64, whatever order the sums run in.  Gradients pass
    through the rounding, floor and clamp as if they were the identity (zero
    where a clamp saturates) and through the pool to the block's maximum, so
    training moves the float parameters as the float network would.

    ``border_biases`` (one per layer, None where there is none) are fixed
    per-position additions to a conv2d layer's per-channel float bias (the
    float network's ``border_bias``); a layer with one has an integer bias
    per position.
    """

    def __init__(
        self,
        plan: QuantPlan,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        border_biases: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        super().__init__()
        borders = list(border_biases) if border_biases is not None else [None] * len(plan.layers)
        if not (len(weights) == len(biases) == len(borders) == len(plan.layers)):
            raise QuantizeError(f"expected {len(plan.layers)} weights and biases, got {len(weights)} and {len(biases)}")
        self.plan = plan
        self.weights = nn.ParameterList(nn.Parameter(w.detach().to(torch.float64).clone()) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().to(torch.float64).clone()) for b in biases)
        self.border_biases = [None if b is None else b.detach().to(torch.float64).clone() for b in borders]
        self.register_buffer("lut", torch.from_numpy(np.asarray(plan.lut, dtype=np.float64).reshape(-1)))

    @classmethod
    def from_float(cls, model: nn.Module, plan: QuantPlan) -> "IntegerNetwork":
        """The integer network of a float TTFS network under ``plan``."""
        sources = check_expressible(model)
        borders = [
            source.module.border_bias if source.conv is not None and bool(source.module.border_bias.any()) else None
            for source in sources
        ]
        return cls(plan, [s.module.weight for s in sources], [s.module.bias for s in sources], borders)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "IntegerNetwork":
        """The integer network of a bundle: unit scales, so the integer parameters are the bundle's."""
        scales = tuple(
            LayerScales(layer.name, layer.weight_bits, layer.ramp_shift, layer.readout, 1.0,
                        None if layer.readout else 1.0, 1.0, 0,
                        ConvGeometry(layer.input_shape, layer.kernel_size, layer.padding, layer.pool_size)
                        if layer.is_conv else None)
            for layer in bundle.layers
        )  # fmt: skip
        plan = QuantPlan(bundle.time_steps, np.asarray(bundle.lut, dtype=np.int64), scales)
        weights = [torch.from_numpy(np.asarray(layer.weight, dtype=np.float64)) for layer in bundle.layers]
        biases = [torch.from_numpy(np.asarray(layer.bias, dtype=np.float64)) for layer in bundle.layers]
        return cls(plan, weights, biases)

    def integer_weight(self, index: int) -> torch.Tensor:
        """W_int of layer ``index`` (float64 holding integers; straight-through gradient)."""
        scales = self.plan.layers[index]
        low, high = scales.weight_range
        continuous = (self.weights[index] / scales.weight_scale).clamp(low, high)
        return straight_through(continuous, round_half_up(continuous))

    def integer_bias(self, index: int) -> torch.Tensor:
        """Bias_int of layer ``index`` (float64 holding integers; straight-through gradient):
        (outputs,) or (out_channels,), or (out_channels, H_out, W_out) per position."""
        scales = self.plan.layers[index]
        bias, border = self.biases[index], self.border_biases[index]
        if border is not None:
            bias = bias[:, None, None] + border.to(bias.device)
        continuous = (bias / scales.bias_scale).clamp(-MAX_ABS_BIAS, MAX_ABS_BIAS)
        return straight_through(continuous, round_half_up(continuous)) + scales.bias_offset

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input activations (N, C*H*W) float64 from uint8 images (N, C, H, W): lut[c][pixel]."""
        count, channels = images.shape[0], images.shape[1]
        index = images.reshape(count, channels, -1).long()
        index = index + 256 * torch.arange(channels, device=index.device).reshape(1, channels, 1)
        return self.lut[index.reshape(count, -1)]

    def drive(self, index: int, inputs: torch.Tensor) -> torch.Tensor:
        """V + Bias of layer ``index`` for its input activations ``inputs`` (N, inputs), flattened
        (C, H, W) after a conv2d layer: (N, outputs) for dense, (N, out_channels, H_out, W_out) for conv2d."""
        scales = self.plan.layers[index]
        weight, bias = self.integer_weight(index), self.integer_bias(index)
        conv = scales.conv
        if conv is None:
            return inputs @ weight.T + bias
        count, out_channels = inputs.shape[0], weight.shape[0]
        # (N, C*k*k, H_out*W_out): the (c, ky, kx) window of every output position, zeros outside the input.
        patches = nn.functional.unfold(inputs.reshape(count, *conv.input_shape), conv.kernel_size, padding=conv.pad)
        potential = (weight.reshape(out_channels, -1) @ patches).reshape(count, out_channels, *conv.output_size)
        return potential + (bias if bias.dim() == 3 else bias[:, None, None])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(integer logits (N, classes), activations of every spiking layer, input first): the
        activations that leave each layer, (N, outputs), after a conv2d layer's pool."""
        current = self.encode(images)
        activations = [current]
        steps = self.plan.time_steps
        for index, scales in enumerate(self.plan.layers):
            potential = self.drive(index, current)
            if scales.readout:
                return potential, activations
            # Dividing by a power of two is exact; floor rounds toward -inf (contract section 4).
            continuous = (potential / scales.ramp).clamp(0, steps)
            fired = straight_through(continuous, torch.floor(continuous))
            if scales.conv is not None and scales.conv.pool_size > 1:
                fired = nn.functional.max_pool2d(fired, scales.conv.pool_size)  # floors, as the contract
            current = fired.flatten(1)
            activations.append(current)
        raise QuantizeError("network: the last layer must be a readout")

    def float_logits(self, integer_logits: torch.Tensor) -> torch.Tensor:
        """Integer logits in the float network's units (for the loss): times S * Delta(n-1)."""
        return integer_logits * self.plan.layers[-1].bias_scale

    @torch.no_grad()
    def integer_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W_int, Bias_int) of every layer as int64 numpy arrays."""
        arrays = []
        for index, scales in enumerate(self.plan.layers):
            bias = self.integer_bias(index)
            if bias.abs().max() > MAX_ABS_BIAS - scales.bias_offset:
                raise QuantizeError(
                    f"{scales.name}: an integer bias exceeds {MAX_POTENTIAL_BITS}-bit registers "
                    "(contract section 6); the network cannot be expressed at these scales"
                )
            arrays.append((self.integer_weight(index).cpu().numpy().astype(np.int64),
                           bias.cpu().numpy().astype(np.int64)))
        return arrays

    @torch.no_grad()
    def clipped_fractions(self, activations: Sequence[np.ndarray], batch_size: int = PREDICT_BATCH) -> list[float]:
        """Per hidden layer, the fraction of its neurons (a conv2d layer's before pooling) whose
        unclipped value floor((V + Bias) / R) exceeds T, averaged over images.

        ``activations[k]`` (int, (N, inputs)) is what enters hidden layer k:
        the golden model's activations of spiking layers 0 .. L-1.
        """
        fractions = []
        for index, scales in enumerate(self.plan.layers[:-1]):
            above, total = 0, 0
            for start in range(0, len(activations[index]), batch_size):
                inputs = torch.from_numpy(np.asarray(activations[index][start : start + batch_size], dtype=np.float64))
                inputs = inputs.to(self.lut.device)
                potential = self.drive(index, inputs)
                above += int(torch.count_nonzero(torch.floor(potential / scales.ramp) > self.plan.time_steps))
                total += potential.numel()
            fractions.append(above / total)
        return fractions

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> tuple[np.ndarray, list[np.ndarray]]:
        """(integer logits int64, activations int64 per spiking layer) for uint8 images (N, C, H, W)."""
        logits, activations = [], None
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.lut.device)
            batch_logits, batch_activations = self(batch)
            logits.append(batch_logits.cpu().numpy().astype(np.int64))
            chunk = [a.cpu().numpy().astype(np.int64) for a in batch_activations]
            activations = chunk if activations is None else [np.concatenate([a, b]) for a, b in zip(activations, chunk)]
        return np.concatenate(logits), activations

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Integer-mode accuracy (argmax, ties to the lowest class as the contract says)."""
        logits, _ = self.predict(images)
        return float(np.mean(np.argmax(logits, axis=1) == labels))


def finetune(
    network: IntegerNetwork,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    *,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    on_epoch: Callable[[int, float, float], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """Quantisation-aware fine-tuning: Adam on the float parameters through the integer forward.

    The loss is the cross-entropy of the integer logits in float units; the
    loop is ttfs.sw.fitting's, on one thread.  ``seed`` fixes the batch
    order.  Returns one record per epoch (epoch, mean loss, training accuracy
    in integer mode seen while training); ``on_epoch(epoch, loss, accuracy)``
    is called after each.  The network trains on ``device`` and is back on
    the CPU when this returns.
    """
    fitting.check_fit_settings(QuantizeError, epochs, lr, batch_size, prefix="qat ")

    def loss_and_logits(batch_images: torch.Tensor, batch_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = network(batch_images)
        return nn.functional.cross_entropy(network.float_logits(logits), batch_labels), logits

    network.to(device)
    image_tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    label_tensor = torch.from_numpy(labels.astype(np.int64)).to(device)
    history = []
    with single_thread():
        for epoch, loss, accuracy in fitting.adam_epochs(
            network, loss_and_logits, image_tensor, label_tensor, epochs, lr=lr, batch_size=batch_size, seed=seed
        ):
            history.append({"epoch": epoch, "loss": loss, "train_accuracy": accuracy})
            if on_epoch is not None:
                on_epoch(epoch, loss, accuracy)
    network.to("cpu")
    network.eval()
    return history

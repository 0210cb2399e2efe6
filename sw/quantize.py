"""Quantisation of a trained TTFS network onto the integer grid of contract v1.

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

Integer conversion (one definition, used by export and by training):

    W_int    = clamp(floor(W / S + 1/2), -2^(B-1), 2^(B-1) - 1)
    Bias_int = floor(b / (S Delta(n-1)) + 1/2) + R // 2

The R // 2 makes the contract's floor((V + Bias) / R) round to the nearest
step instead of flooring (a readout gets no offset).

:class:`IntegerNetwork` runs exactly the contract's integer semantics in
torch (float64, in which every integer of a valid bundle is exact) with
straight-through gradients, so quantisation-aware fine-tuning
(:func:`finetune`) trains the network the golden model will execute: its
integer forward equals ``sim.golden.run`` bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sim.bundle import (
    MAX_POTENTIAL_BITS,
    MAX_RAMP_SHIFT,
    MAX_TIME_STEPS,
    MAX_WEIGHT_BITS,
    MIN_TIME_STEPS,
    MIN_WEIGHT_BITS,
    Bundle,
    default_lut,
)
from sim.errors import TTFSError
from sw.ttfs import Alpha1Dense, TTFSDense

#: Default percentile of the positive float activations that maps to T.
DEFAULT_CLIP_PERCENTILE = 99.99

#: A bias beyond this magnitude cannot fit the contract's 48-bit potential bound.
MAX_ABS_BIAS = 2 ** (MAX_POTENTIAL_BITS - 1) - 1


class QuantizeError(TTFSError):
    """A quantisation request the contract cannot express (bits, T, layer kinds, ranges)."""


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
class LayerScales:
    """How one float layer maps to its integer layer.

    ``weight_scale`` S(n); ``input_step`` Delta(n-1); ``activation_step``
    Delta(n) (None for the readout); ``bias_scale`` S(n) * Delta(n-1), which
    is also a readout's logit scale (float logit = integer logit * bias_scale);
    ``bias_offset`` R // 2 (rounding) or 0.
    """

    name: str
    weight_bits: int
    ramp_shift: int
    readout: bool
    input_step: float
    activation_step: float | None
    weight_scale: float
    bias_offset: int

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
        half = 1 << (self.weight_bits - 1)
        return -half, half - 1


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


def _layer_name(index: int, count: int) -> str:
    return "out" if index == count - 1 else f"fc{index + 1}"


def check_expressible(model: nn.Module) -> list[TTFSDense]:
    """The model's layers if contract v1 can express them (dense B1 layers, last one a readout)."""
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) < 2:
        raise QuantizeError("network: expected a TTFS network with .layers (hidden layers then a readout)")
    for index, layer in enumerate(layers):
        kind = type(layer).__name__
        if not isinstance(layer, TTFSDense) or isinstance(layer, Alpha1Dense):
            raise QuantizeError(
                f"layers[{index}] ({kind}): contract v1 expresses only dense B1 layers (TTFSDense); "
                "convolutions and other kinds need a later contract version"
            )
        if layer.readout != (index == len(layers) - 1):
            raise QuantizeError(f"layers[{index}]: exactly the last layer must be the readout")
    return list(layers)


def round_half_up(values: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2): the one rounding rule of the conversion (torch.round would round halves to even)."""
    return torch.floor(values + 0.5)


def _fits(weight: torch.Tensor, scale: float, low: int, high: int) -> bool:
    rounded = round_half_up(torch.stack([weight.max(), weight.min()]) / scale)
    return bool(rounded[0] <= high and rounded[1] >= low)


@torch.no_grad()
def float_activations(model: nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """Float activations of every hidden layer (t_max(n) - spike time), float64, for pixels in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        with single_thread():
            _, times = model(pixels.to(model.layers[0].weight.dtype), return_times=True)
        return [activation.to(torch.float64) for activation in model.activations(times)[1:]]
    finally:
        model.train(was_training)


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
    layers = check_expressible(model)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise QuantizeError(f"calibration images: expected a non-empty uint8 (N, C, H, W) array, got {images.dtype} {images.shape}")
    channels = images.shape[1]
    pixels = torch.from_numpy(images.astype(np.float64) / 255.0)
    activations = float_activations(model, pixels)

    input_step = 1.0 / steps
    scales = []
    for index, layer in enumerate(layers):
        name = _layer_name(index, len(layers))
        weight = layer.weight.detach().to(torch.float64)
        half = 1 << (bits - 1)
        low, high = -half, half - 1
        largest = float(weight.abs().max())
        if layer.readout:
            weight_scale = largest / high if largest > 0 else 1.0
            scales.append(LayerScales(name, bits, 0, True, input_step, None, weight_scale, 0))
            break
        positive = activations[index][activations[index] > 0]
        level = float(torch.quantile(positive, percentile / 100.0)) if positive.numel() else 1.0
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
        scales.append(LayerScales(name, bits, shift, False, input_step, activation_step, weight_scale, offset))
        input_step = activation_step
    lut = np.tile(default_lut(steps), (channels, 1))
    return QuantPlan(steps, lut, tuple(scales))


def _straight_through(continuous: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``exact`` in the forward pass, the gradient of ``continuous`` in the backward pass."""
    return continuous + (exact - continuous).detach()


class IntegerNetwork(nn.Module):
    """Contract v1's integer network in torch, differentiable by straight-through estimators.

    Parameters are float weights and biases (float64); the forward pass uses
    their integer conversion (module docstring) and the contract's integer
    semantics exactly: input table, V = W a + Bias, a = clip(floor(V / R), 0,
    T) for hidden layers, integer logits for the readout.  Every value is an
    integer below 2^53 and so exact in float64.  Gradients pass through the
    rounding, floor and clamp as if they were the identity (zero where a
    clamp saturates), so training moves the float parameters as the float
    network would.
    """

    def __init__(self, plan: QuantPlan, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        super().__init__()
        if not (len(weights) == len(biases) == len(plan.layers)):
            raise QuantizeError(f"expected {len(plan.layers)} weights and biases, got {len(weights)} and {len(biases)}")
        self.plan = plan
        self.weights = nn.ParameterList(nn.Parameter(w.detach().to(torch.float64).clone()) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().to(torch.float64).clone()) for b in biases)
        self.register_buffer("lut", torch.from_numpy(np.asarray(plan.lut, dtype=np.float64).reshape(-1)))

    @classmethod
    def from_float(cls, model: nn.Module, plan: QuantPlan) -> "IntegerNetwork":
        """The integer network of a float TTFS network under ``plan``."""
        layers = check_expressible(model)
        return cls(plan, [layer.weight for layer in layers], [layer.bias for layer in layers])

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "IntegerNetwork":
        """The integer network of a bundle: unit scales, so the integer parameters are the bundle's."""
        scales = tuple(
            LayerScales(layer.name, layer.weight_bits, layer.ramp_shift, layer.readout, 1.0,
                        None if layer.readout else 1.0, 1.0, 0)
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
        return _straight_through(continuous, round_half_up(continuous))

    def integer_bias(self, index: int) -> torch.Tensor:
        """Bias_int of layer ``index`` (float64 holding integers; straight-through gradient)."""
        scales = self.plan.layers[index]
        continuous = (self.biases[index] / scales.bias_scale).clamp(-MAX_ABS_BIAS, MAX_ABS_BIAS)
        return _straight_through(continuous, round_half_up(continuous)) + scales.bias_offset

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input activations (N, C*H*W) float64 from uint8 images (N, C, H, W): lut[c][pixel]."""
        count, channels = images.shape[0], images.shape[1]
        index = images.reshape(count, channels, -1).long()
        index = index + 256 * torch.arange(channels).reshape(1, channels, 1)
        return self.lut[index.reshape(count, -1)]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(integer logits (N, classes), activations of every spiking layer, input first)."""
        current = self.encode(images)
        activations = [current]
        steps = self.plan.time_steps
        for index, scales in enumerate(self.plan.layers):
            potential = current @ self.integer_weight(index).T + self.integer_bias(index)
            if scales.readout:
                return potential, activations
            # Dividing by a power of two is exact; floor rounds toward -inf (contract section 4).
            continuous = (potential / scales.ramp).clamp(0, steps)
            current = _straight_through(continuous, torch.floor(continuous))
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
            arrays.append((self.integer_weight(index).numpy().astype(np.int64), bias.numpy().astype(np.int64)))
        return arrays

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 1000) -> tuple[np.ndarray, list[np.ndarray]]:
        """(integer logits int64, activations int64 per spiking layer) for uint8 images (N, C, H, W)."""
        logits, activations = [], None
        for start in range(0, len(images), batch_size):
            batch_logits, batch_activations = self(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
            logits.append(batch_logits.numpy().astype(np.int64))
            chunk = [a.numpy().astype(np.int64) for a in batch_activations]
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
) -> list[dict[str, float]]:
    """Quantisation-aware fine-tuning: Adam on the float parameters through the integer forward.

    The loss is the cross-entropy of the integer logits in float units.
    ``seed`` fixes the batch order.  Returns one record per epoch
    (epoch, mean loss, training accuracy in integer mode seen while training);
    ``on_epoch(epoch, loss, accuracy)`` is called after each.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise QuantizeError(f"qat epochs: {epochs!r} is not an integer >= 0")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise QuantizeError(f"qat lr: {lr!r} must be a positive number")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QuantizeError(f"qat batch size: {batch_size!r} is not an integer >= 1")
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    image_tensor = torch.from_numpy(np.ascontiguousarray(images))
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    history = []
    network.train()
    with single_thread():
        for epoch in range(1, epochs + 1):
            total_loss, correct = 0.0, 0
            for index in torch.randperm(len(labels), generator=generator).split(batch_size):
                logits, _ = network(image_tensor[index])
                loss = nn.functional.cross_entropy(network.float_logits(logits), label_tensor[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(index)
                correct += int((logits.detach().argmax(dim=1) == label_tensor[index]).sum())
            record = {"epoch": epoch, "loss": total_loss / len(labels), "train_accuracy": correct / len(labels)}
            history.append(record)
            if on_epoch is not None:
                on_epoch(epoch, record["loss"], record["train_accuracy"])
    network.eval()
    return history

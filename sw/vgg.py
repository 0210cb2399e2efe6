"""VGG-style convolutional networks: the ReLU twin (optionally with batch norm) and the TTFS network.

A layout is a spec string of stride-1 convolutions and max-pools, e.g.
``"16,P,32,P"`` (a 3x3 'same' conv to 16 channels, a 2x2 pool, conv 32,
pool) or ``"8:5:valid,P3,16"`` (a 5x5 'valid' conv, a 3x3 pool, a 3x3
conv; :func:`parse_layers`), followed by dense hidden widths and the
readout.  The syntax spells any kernel size and padding per layer, so one
string describes a network trained here and one converted from a user's
PyTorch model (ttfs.sw.convert) alike.  :data:`VGG_LAYOUTS` holds the VGG16
layouts (13 conv layers, two dense 512 layers) for 32x32 inputs (five
pools, as VGG16 on CIFAR) and for 28x28 inputs, where the fifth pool is
dropped because 28 halves only four times (28, 14, 7, 3, 1).

:class:`ReLUConvNetwork` is the ReLU twin: ordinary torch modules in order
(an optional fixed :class:`InputNormalization`, then conv, batch norm
before or after the ReLU, ReLU, pool, ..., flatten, linear, ..., linear
readout).  Batch norm and input normalisation exist only in the ReLU twin:
ttfs.sw.folding folds them into the weights, after which :func:`relu_to_snn`
copies every parameter into a :class:`ttfs.sw.conv.TTFSLayerNetwork` (B1) and
:func:`snn_to_relu` copies them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from ttfs.sw.conv import (
    PADDINGS,
    BorderBiasConv2d,
    ConvError,
    SignedMaxPool2d,
    TTFSConv2d,
    TTFSFlatten,
    TTFSLayerNetwork,
    TTFSMaxPool2d,
    check_conv_shape,
    check_pool,
)
from ttfs.sw.ttfs import DEFAULT_WINDOW_FACTOR, MAX_WIDTH, TTFSDense, copy_weight_and_bias

POOL = "P"
BATCH_NORM_PLACES = ("before", "after")

_VGG16_BLOCKS = "64,64,P,128,128,P,256,256,256,P,512,512,512,P,512,512,512"
#: name -> (conv spec, dense hidden widths, input (height, width)).
VGG_LAYOUTS: dict[str, tuple[str, list[int], tuple[int, int]]] = {
    "vgg16-32": (_VGG16_BLOCKS + ",P", [512, 512], (32, 32)),
    "vgg16-28": (_VGG16_BLOCKS, [512, 512], (28, 28)),
}


@dataclass(frozen=True)
class Conv:
    """A stride-1 convolution to ``channels`` maps with a square ``kernel_size`` kernel and 'same' or 'valid' zero padding.

    Written ``C`` for the default 3x3 'same' convolution, otherwise ``C:K``
    ('same') or ``C:K:valid``.
    """

    channels: int
    kernel_size: int = 3
    padding: str = "same"

    def __str__(self) -> str:
        if (self.kernel_size, self.padding) == (3, "same"):
            return str(self.channels)
        return f"{self.channels}:{self.kernel_size}" + (f":{self.padding}" if self.padding != "same" else "")


@dataclass(frozen=True)
class Pool:
    """A max-pool over ``size`` x ``size`` blocks, stride ``size``; written ``P`` (2x2) or ``P<size>``."""

    size: int = 2

    def __str__(self) -> str:
        return POOL if self.size == 2 else f"{POOL}{self.size}"


LayerItem = Conv | Pool


def _parse_item(part: str, text: str, kernel_size: int, padding: str) -> LayerItem:
    """One comma-separated item of a conv spec (see :func:`parse_layers`)."""
    def number(value: str, what: str) -> int:
        try:
            result = int(value)
        except ValueError:
            raise ConvError(f"layers: {part!r} in {text!r} is neither a channel count nor P (pool): "
                            f"{what} {value!r} is not an integer") from None
        if not 1 <= result <= MAX_WIDTH:
            raise ConvError(f"layers: {what} {result} in {part!r} is outside 1..{MAX_WIDTH}")
        return result

    if part[:1].upper() == POOL:
        return Pool(number(part[1:], "pool size") if part[1:] else 2)
    fields = part.split(":")
    if len(fields) > 3 or not fields[0].strip():
        raise ConvError(f"layers: {part!r} in {text!r} is neither a channel count nor P (pool); "
                        "a conv is C, C:K or C:K:valid")
    channels = number(fields[0], "channel count")
    if len(fields) > 1:
        kernel_size = number(fields[1], "kernel size")
    if len(fields) > 2:
        padding = fields[2].strip()
    if padding not in PADDINGS:
        raise ConvError(f"layers: padding {padding!r} in {part!r} is not one of {', '.join(PADDINGS)}")
    return Conv(channels, kernel_size, padding)


def parse_layers(text: str, kernel_size: int = 3, padding: str = "same") -> list[LayerItem]:
    """A conv spec such as "64,64,P,128" as :class:`Conv` and :class:`Pool` items.

    An item is a channel count ``C`` (a ``kernel_size`` x ``kernel_size``
    conv with ``padding``, by default 3x3 'same'), ``C:K`` (a KxK 'same'
    conv), ``C:K:valid`` or ``C:K:same``, ``P`` (a 2x2 max-pool) or ``P<N>``
    (an NxN max-pool, stride N).  A name of :data:`VGG_LAYOUTS` stands for
    its conv spec.
    """
    if text in VGG_LAYOUTS:
        text = VGG_LAYOUTS[text][0]
    items = [_parse_item(part.strip(), str(text), kernel_size, padding) for part in str(text).split(",")]
    if not any(isinstance(item, Conv) for item in items):
        raise ConvError(f"layers: {text!r} has no convolution")
    return items


def layers_text(items: Sequence[LayerItem]) -> str:
    """The canonical spec string of conv and pool items (:func:`parse_layers` reads it back)."""
    return ",".join(str(item) for item in items)


@dataclass(frozen=True)
class VGGSpec:
    """A VGG-style network: conv and pool items, dense hidden widths, input shape, classes and options."""

    layers: tuple[LayerItem, ...]
    dense: tuple[int, ...]
    input_shape: tuple[int, int, int]
    classes: int
    batch_norm: str | None = None
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def create(
        cls,
        layers: str | Sequence[LayerItem],
        dense: Sequence[int],
        input_shape: Sequence[int],
        classes: int,
        *,
        kernel_size: int = 3,
        padding: str = "same",
        **options: Any,
    ) -> VGGSpec:
        """Validated spec from a layers string (or items), dense widths, (C, H, W) and class count.

        ``kernel_size`` and ``padding`` are those of the convs the string
        gives by their channel count alone.
        """
        items = parse_layers(layers if isinstance(layers, str) else layers_text(layers), kernel_size, padding)
        for width in dense:
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
                raise ConvError(f"dense widths: {width!r} is not an integer in 1..{MAX_WIDTH}")
        if len(input_shape) != 3 or any(not isinstance(v, int) or v < 1 for v in input_shape):
            raise ConvError(f"input shape: {list(input_shape)!r} is not [channels, height, width]")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ConvError(f"classes: {classes!r} is not a positive integer")
        if options.get("batch_norm") not in (None, *BATCH_NORM_PLACES):
            raise ConvError(f"batch_norm: {options['batch_norm']!r} is not one of {', '.join(BATCH_NORM_PLACES)} (or none)")
        norm = options.get("input_norm")
        if norm is not None:
            mean, std = (tuple(float(v) for v in values) for values in norm)
            if len(mean) != input_shape[0] or len(std) != input_shape[0] or not all(s > 0 for s in std):
                raise ConvError(f"input_norm: need {input_shape[0]} means and {input_shape[0]} positive standard deviations")
            options["input_norm"] = (mean, std)
        spec = cls(tuple(items), tuple(dense), tuple(input_shape), classes, **options)
        spec.shapes()  # every layer must fit its input
        return spec

    def shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) after every conv and pool, input first; ConvError where one does not fit."""
        channels, height, width = self.input_shape
        shapes = [(channels, height, width)]
        for item in self.layers:
            try:
                if isinstance(item, Pool):
                    height, width = check_pool(channels, item.size, (height, width))
                else:
                    height, width = check_conv_shape(channels, item.channels, item.kernel_size, item.padding, (height, width))
                    channels = item.channels
            except ConvError as err:
                raise ConvError(f"layers {layers_text(self.layers)}: {err}") from None
            shapes.append((channels, height, width))
        return shapes

    @property
    def flat_features(self) -> int:
        """Inputs of the first dense layer: C*H*W of the last map."""
        channels, height, width = self.shapes()[-1]
        return channels * height * width


def spec_from_config(config: dict[str, Any], *, with_batch_norm: bool = True) -> VGGSpec:
    """The VGGSpec of a run configuration (keys ``layers``, ``widths``, ``input_shape``,
    ``classes``, ``batch_norm``); without ``with_batch_norm`` the folded network's spec."""
    return VGGSpec.create(
        config["layers"],
        list(config["widths"]),
        tuple(config["input_shape"]),
        len(config["classes"]),
        batch_norm=config.get("batch_norm") if with_batch_norm else None,
    )


class InputNormalization(nn.Module):
    """Fixed per-channel input normalisation (x - mean) / std (buffers; folded away by ttfs.sw.folding)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=dtype))
        self.register_buffer("std", torch.tensor(list(std), dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class ReLUConvNetwork(nn.Module):
    """The ReLU twin of a conv TTFS network: ordinary torch modules in ``layers``, applied in order.

    The last module is the nn.Linear readout, or a batch norm after it (folded into it).  ``forward(images,
    return_activations=True)`` also returns the input and the output of every
    ReLU (before any batch norm that follows it): the TTFS network's
    spike-coded activations.
    """

    def __init__(self, layers: Sequence[nn.Module], input_shape: Sequence[int]) -> None:
        super().__init__()
        weighted = [layer for layer in layers if not isinstance(layer, nn.modules.batchnorm._BatchNorm)]
        if not weighted or not isinstance(weighted[-1], nn.Linear):
            raise ConvError("the last layer of the ReLU network must be an nn.Linear readout (a batch norm may follow it)")
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(input_shape)

    def forward(self, images: torch.Tensor, return_activations: bool = False):
        x = images.reshape(images.shape[0], *self.input_shape)
        activations = [x]
        for layer in self.layers:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                activations.append(x)
        return (x, activations) if return_activations else x

    @property
    def has_normalization(self) -> bool:
        """True while batch norm or input normalisation remain (ttfs.sw.folding removes them)."""
        return any(isinstance(layer, (nn.modules.batchnorm._BatchNorm, InputNormalization)) for layer in self.layers)


def build_relu(spec: VGGSpec, *, dtype: torch.dtype | None = None) -> ReLUConvNetwork:
    """A freshly initialised ReLU twin of ``spec`` (batch norm as spec.batch_norm says)."""
    modules: list[nn.Module] = []
    if spec.input_norm is not None:
        modules.append(InputNormalization(*spec.input_norm, dtype=dtype))
    shapes = spec.shapes()

    def activation_block(norm: nn.Module | None) -> list[nn.Module]:
        if norm is None:
            return [nn.ReLU()]
        return [norm, nn.ReLU()] if spec.batch_norm == "before" else [nn.ReLU(), norm]

    for item, (channels, height, width) in zip(spec.layers, shapes):
        if isinstance(item, Pool):
            modules.append(SignedMaxPool2d(channels, (height, width), item.size))
            continue
        modules.append(BorderBiasConv2d(channels, item.channels, item.kernel_size, (height, width), padding=item.padding, dtype=dtype))
        norm = nn.BatchNorm2d(item.channels, dtype=dtype) if spec.batch_norm else None
        modules += activation_block(norm)
    modules.append(nn.Flatten())
    features = spec.flat_features
    for width in spec.dense:
        modules.append(nn.Linear(features, width, dtype=dtype))
        modules += activation_block(nn.BatchNorm1d(width, dtype=dtype) if spec.batch_norm else None)
        features = width
    modules.append(nn.Linear(features, spec.classes, dtype=dtype))
    return ReLUConvNetwork(modules, spec.input_shape)


def relu_to_snn(relu: ReLUConvNetwork, *, window_factor: float = DEFAULT_WINDOW_FACTOR) -> TTFSLayerNetwork:
    """The TTFS network with the same parameters (B1), windows of length 1 (calibrate them).

    ``relu`` must hold no batch norm or input normalisation: fold them first
    (ttfs.sw.folding.fold_network).
    """
    if relu.has_normalization:
        raise ConvError("the ReLU network still holds batch norm or input normalisation: fold it first (ttfs.sw.folding)")
    dtype = relu.layers[-1].weight.dtype
    layers: list[nn.Module] = []
    last = len(relu.layers) - 1
    for index, module in enumerate(relu.layers):
        if isinstance(module, BorderBiasConv2d):
            layer = TTFSConv2d(
                module.in_channels, module.out_channels, module.kernel_size[0], module.input_size,
                padding=module.padding, dtype=dtype,
            )  # fmt: skip
            with torch.no_grad():
                layer.border_bias.copy_(module.border_bias)
        elif isinstance(module, nn.Linear):
            layer = TTFSDense(module.in_features, module.out_features, readout=index == last, dtype=dtype)
        elif isinstance(module, SignedMaxPool2d):
            layer = TTFSMaxPool2d(module.channels, module.input_size, module.size)
            layer.min_channels.copy_(module.min_channels)
        elif isinstance(module, nn.Flatten):
            layer = TTFSFlatten()
        elif isinstance(module, nn.ReLU):
            continue  # B1: every firing layer is the ReLU of its drive
        else:
            raise ConvError(f"layers[{index}] ({type(module).__name__}) has no TTFS counterpart")
        if isinstance(module, (BorderBiasConv2d, nn.Linear)):
            copy_weight_and_bias(module, layer)
        layers.append(layer)
    snn = TTFSLayerNetwork(layers, relu.input_shape, window_factor=window_factor, dtype=dtype)
    return snn.to(relu.layers[-1].weight.device)


def snn_to_relu(snn: TTFSLayerNetwork) -> ReLUConvNetwork:
    """The ReLU twin of a conv TTFS network: every parameter and buffer copied (B1)."""
    modules: list[nn.Module] = []
    for layer in snn.layers:
        if isinstance(layer, TTFSConv2d):
            module = BorderBiasConv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.input_size,
                padding=layer.padding, dtype=layer.weight.dtype,
            )  # fmt: skip
            copy_weight_and_bias(layer, module)
            with torch.no_grad():
                module.border_bias.copy_(layer.border_bias)
            modules += [module, nn.ReLU()]
        elif isinstance(layer, TTFSMaxPool2d):
            module = SignedMaxPool2d(layer.channels, layer.input_size, layer.size)
            module.min_channels.copy_(layer.min_channels)
            modules.append(module)
        elif isinstance(layer, TTFSFlatten):
            modules.append(nn.Flatten())
        else:
            module = nn.Linear(layer.inputs, layer.outputs, dtype=layer.weight.dtype)
            copy_weight_and_bias(layer, module)
            modules += [module] if layer.readout else [module, nn.ReLU()]
    return ReLUConvNetwork(modules, snn.input_shape).to(snn.layers[-1].weight.device)


def spec_of(network: ReLUConvNetwork) -> VGGSpec:
    """The spec of a ReLU twin without normalisation: its convs and pools, dense widths, input shape and classes.

    :func:`build_relu` of the result has the same modules in the same order
    (ReLUs aside), so the TTFS networks of both share one state_dict layout.
    """
    if network.has_normalization:
        raise ConvError("the ReLU network still holds batch norm or input normalisation: fold it first (ttfs.sw.folding)")
    items: list[LayerItem] = []
    dense: list[int] = []
    for module in network.layers:
        if isinstance(module, BorderBiasConv2d):
            items.append(Conv(module.out_channels, module.kernel_size[0], module.padding))
        elif isinstance(module, SignedMaxPool2d):
            items.append(Pool(module.size))
        elif isinstance(module, nn.Linear):
            dense.append(module.out_features)
    return VGGSpec.create(items, dense[:-1], network.input_shape, dense[-1])


def build_snn(spec: VGGSpec, *, dtype: torch.dtype | None = None, window_factor: float = DEFAULT_WINDOW_FACTOR) -> TTFSLayerNetwork:
    """A freshly initialised conv TTFS network of ``spec`` (no batch norm: that lives in the ReLU twin only)."""
    if spec.batch_norm or spec.input_norm is not None:
        raise ConvError("batch norm and input normalisation exist only in the ReLU twin: train it (mode relu) and fold")
    return relu_to_snn(build_relu(spec, dtype=dtype), window_factor=window_factor)


def build_seeded(spec: VGGSpec, *, seed: int, dtype: torch.dtype, relu: bool, window_factor: float = DEFAULT_WINDOW_FACTOR) -> nn.Module:
    """A ReLU twin (``relu``) or TTFS network of ``spec`` whose parameters depend only on ``seed``.

    Both are drawn through the ReLU twin, so a seed gives the same weights
    to the spiking network and to its twin (without batch norm).
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        network = build_relu(spec, dtype=dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return network if relu else relu_to_snn(network, window_factor=window_factor)

"""Fold batch norm and input normalisation into the neighbouring weighted layers, exactly.

In evaluation, batch norm is a per-channel affine map y -> s*y + c with
s = gamma / sqrt(running_var + eps) and c = beta - s * running_mean; input
normalisation (x - mean) / std is the same with s = 1/std, c = -mean/std.
A TTFS network has no such layer, so :func:`fold_network` removes them from
the ReLU twin (ttfs.sw.vgg.ReLUConvNetwork) without changing its function:

- BN BEFORE the ReLU (conv/linear -> BN -> ReLU) folds into the PRECEDING
  layer: W' = s W (per output channel), b' = s b + c.  The border bias of a
  'same' conv is part of its bias and is scaled the same way.
- BN AFTER the ReLU (ReLU -> BN -> [pool ...] [flatten] -> conv/linear) and
  input normalisation fold into the FOLLOWING weighted layer:
  W' = W s (per input channel) and a bias that adds W applied to the shift c.
  With 'same' zero padding that shift is NOT seen at padded positions (they
  hold 0 after the BN, not c), so the added bias depends on the position:
  it is the convolution of the constant map c with the zero-padded kernel,
  smaller at the border.  The folded conv keeps its interior value as its
  per-channel ``bias`` and the difference at the border in ``border_bias``
  (ttfs.sw.conv): exact.  'valid' convs and dense layers get a plain bias.
- Max pooling between an after-ReLU BN and the next layer: max(s*y + c) =
  s*max(y) + c when s >= 0, but s*min(y) + c when s < 0, so a negative scale
  turns that channel's max-pool into a min-pool.  By default the fold is
  exact by flagging those channels in the pool's ``min_channels`` (the TTFS
  pool then takes the latest spike of the block on them); with
  ``negative_scale="refuse"`` it raises :class:`FoldingError` naming the
  pool and the channels instead.
- An affine map cannot move across a ReLU: a BN after a ReLU must reach a
  weighted layer through pools and flatten only.

Folding works in the network's dtype; in float64 the folded network equals
the unfolded one to rounding (~1e-15), which the tests check.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from ttfs.contract.errors import TTFSError
from ttfs.sw.conv import BorderBiasConv2d, SignedMaxPool2d
from ttfs.sw.vgg import InputNormalization, ReLUConvNetwork

NEGATIVE_SCALE_POLICIES = ("min-pool", "refuse")


class FoldingError(TTFSError):
    """A normalisation cannot be folded (its position, its statistics, or a negative scale across a pool)."""


def batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an evaluation-mode batch norm: y = scale * x + shift."""
    if norm.running_mean is None or norm.running_var is None:
        raise FoldingError(f"{norm}: a batch norm without running statistics cannot be folded")
    scale = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale.detach(), shift.detach()


def normalization_affine(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a batch norm or an input normalisation."""
    if isinstance(module, InputNormalization):
        return 1.0 / module.std, -module.mean / module.std
    return batch_norm_affine(module)


def _fold_output_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """BN before the ReLU: scale the layer's outputs and add the shift (in place)."""
    with torch.no_grad():
        if isinstance(layer, BorderBiasConv2d):
            layer.weight.mul_(scale[:, None, None, None])
            layer.border_bias.mul_(scale[:, None, None])
        else:
            layer.weight.mul_(scale[:, None])
        layer.bias.mul_(scale).add_(shift)


def _kernel_inside(layer: BorderBiasConv2d) -> torch.Tensor:
    """Boolean (H', W'): output positions whose whole kernel lies inside the (unpadded) input."""
    height, width = layer.input_size
    ones = torch.ones(1, 1, height, width, dtype=layer.weight.dtype, device=layer.weight.device)
    counts = nn.functional.conv2d(ones, torch.ones_like(layer.weight[:1, :1]), padding=layer.padding)
    return counts[0, 0] == layer.kernel_size[0] * layer.kernel_size[1]


def _fold_input_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor, spatial: tuple[int, int] | None) -> None:
    """An affine map applied to the layer's input (BN after the ReLU, input normalisation), in place.

    ``spatial`` is the (H, W) of the map the affine acts on when a flatten
    lies between it and a dense layer (each channel then covers H*W inputs).
    """
    with torch.no_grad():
        if isinstance(layer, BorderBiasConv2d):
            height, width = layer.input_size
            shift_map = shift.view(1, -1, 1, 1).expand(1, -1, height, width)
            # The padded positions hold 0, not the shift: convolve the shift map with the zero padding.
            bias_map = nn.functional.conv2d(shift_map, layer.weight, padding=layer.padding)[0]
            # Where the whole kernel lies inside, every tap sees the shift.
            interior = (layer.weight * shift[None, :, None, None]).sum(dim=(1, 2, 3))
            border = torch.where(_kernel_inside(layer), torch.zeros_like(bias_map), bias_map - interior[:, None, None])
            layer.bias.add_(interior)
            layer.border_bias.add_(border)
            layer.weight.mul_(scale[None, :, None, None])
            return
        if spatial is not None:
            repeat = spatial[0] * spatial[1]
            scale, shift = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
        if scale.numel() != layer.in_features:
            raise FoldingError(f"{layer}: an affine map over {scale.numel()} features cannot fold into {layer.in_features} inputs")
        layer.bias.add_(layer.weight @ shift)
        layer.weight.mul_(scale[None, :])


def fold_network(relu: ReLUConvNetwork, *, negative_scale: str = "min-pool") -> ReLUConvNetwork:
    """A copy of ``relu`` with every batch norm and input normalisation folded away (module docstring).

    ``negative_scale`` says what to do when a negative batch-norm scale must
    cross a max-pool: "min-pool" (flag the channel, exact) or "refuse"
    (FoldingError).  The input network is not changed.
    """
    if negative_scale not in NEGATIVE_SCALE_POLICIES:
        raise FoldingError(f"negative_scale: {negative_scale!r} is not one of {', '.join(NEGATIVE_SCALE_POLICIES)}")
    source = copy.deepcopy(relu).eval()
    folded: list[nn.Module] = []
    # An affine map waiting for the next weighted layer, and the (H, W) it covered at a flatten.
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    flattened_from: tuple[int, int] | None = None
    # (H, W) of the maps so far, the input's at first; None once a flatten or dense layer made them vectors.
    last_shape: tuple[int, int] | None = tuple(source.input_shape[1:])
    for index, module in enumerate(source.layers):
        where = f"layers[{index}] ({type(module).__name__})"
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, InputNormalization)):
            scale, shift = normalization_affine(module)
            previous = folded[-1] if folded else None
            if isinstance(previous, (BorderBiasConv2d, nn.Linear)):
                _fold_output_affine(previous, scale, shift)  # BN before the ReLU
            elif pending is None:
                pending = (scale, shift)
            else:  # two affine maps in a row compose
                pending = (pending[0] * scale, pending[1] * scale + shift)
            continue
        if isinstance(module, (BorderBiasConv2d, nn.Linear)):
            if pending is not None:
                if isinstance(module, nn.Linear) and flattened_from is None and pending[0].numel() != module.in_features:
                    raise FoldingError(f"{where}: cannot fold a per-channel map into a dense layer without a flatten")
                _fold_input_affine(module, *pending, flattened_from)
                pending, flattened_from = None, None
            last_shape = module.output_size if isinstance(module, BorderBiasConv2d) else None
        elif isinstance(module, nn.ReLU):
            if pending is not None:
                raise FoldingError(f"{where}: a normalisation cannot be folded across a ReLU; put it right before or after one")
        elif isinstance(module, SignedMaxPool2d):
            last_shape = module.output_size
            if pending is not None:
                negative = pending[0] < 0
                if bool(negative.any()):
                    if negative_scale == "refuse":
                        channels = negative.nonzero().flatten().tolist()
                        raise FoldingError(
                            f"{where}: batch-norm scale is negative on channel(s) {channels}; max-pooling then a negative "
                            "scale is a min-pool, so it cannot fold across this pool (use negative_scale='min-pool')"
                        )
                    module.min_channels ^= negative
        elif isinstance(module, nn.Flatten):
            if pending is not None:
                flattened_from = last_shape
            last_shape = None
        else:
            raise FoldingError(f"{where}: unknown layer kind; cannot fold")
        folded.append(module)
    if pending is not None:
        raise FoldingError("the last normalisation has no following weighted layer to fold into")
    return ReLUConvNetwork(folded, source.input_shape)

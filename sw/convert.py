"""Bring your own model: a trained PyTorch ReLU network becomes a TTFS run as it is, without retraining.

B1 makes a ReLU network and its TTFS network the same function
(ttfs.sw.ttfs), so the weights of a ReLU network built from the layers below
ARE a spiking network's.  :func:`check` reads the model into the toolkit's
ReLU twin (ttfs.sw.vgg.ReLUConvNetwork, the same function), refusing in one
line, naming the module, anything that has no TTFS counterpart;
:meth:`Conversion.ttfs_network` folds batch norm and the input normalisation
into the weights (ttfs.sw.folding), copies them into a TTFS network and
calibrates its windows on the user's images (the window rule over them, as
a ReLU run's windows are calibrated); :func:`convert_run` writes the result
as a run directory (config ``mode`` "convert"), which ``ttfs eval``, ``ttfs
train --mode snn-from-relu|finetune --init RUN`` and ``ttfs export`` take
like any other run.  A dense network becomes an ``arch`` "fc" run, a
convolutional one an ``arch`` "vgg" run whose layers string spells every
conv's kernel and padding and every pool's size (ttfs.sw.vgg.parse_layers).

Accepted, in the order the model applies them: an ``nn.Sequential`` (nested
ones too) or a module whose ``forward`` torch.fx traces to a plain chain
(each step consumes the previous step's output only) of

- nn.Conv2d: stride 1, a square kernel, zero padding 'same' or 'valid'
  (numeric padding 0 is 'valid', (k-1)/2 for an odd k is 'same'), dilation 1,
  groups 1, with or without bias;
- nn.Linear, with or without bias; the last weighted layer is the readout
  and must be a Linear;
- nn.ReLU (or F.relu, torch.relu, x.relu()) after every weighted layer but
  the readout (pooling and flatten may stand between: they commute with it);
- nn.MaxPool2d with kernel_size = stride, no padding, dilation 1, floor mode;
- nn.BatchNorm1d / nn.BatchNorm2d with running statistics, either right
  after a Conv2d/Linear or after its ReLU, reaching the next Conv2d/Linear
  through pooling and flatten only (folded);
- nn.Flatten (or torch.flatten(x, 1)) before the dense layers; a model whose
  first layer is a Linear of C*H*W inputs takes the image flattened (C, H, W
  order);
- nn.Dropout (every kind) and nn.Identity: nothing in evaluation, dropped;
- an input normalisation (x - mean) / std per channel, passed as
  ``input_norm`` (the toolkit's images are pixel / 255 in [0, 1]); folded.

A model on disk is a state_dict, read with ``torch.load(weights_only=True)``
(nothing is unpickled), plus an architecture description (:func:`load_model`):
the layers as PyTorch constructor calls, one per line, with literal
arguments only, as ``print(model)`` of an nn.Sequential writes them.
Nothing in either file is executed.
"""

from __future__ import annotations

import ast
import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ttfs.contract.datasets import is_image_folder
from ttfs.contract.errors import TTFSError
from ttfs.sw import distributed, fitting, folding, models, training, vgg
from ttfs.sw.conv import BorderBiasConv2d, ConvError, SignedMaxPool2d, check_conv_shape, check_pool
from ttfs.sw.ttfs import DEFAULT_WINDOW_FACTOR, MAX_WIDTH, WindowedNetwork

#: What the conversion takes, for messages.
SUPPORTED = "Conv2d, Linear, ReLU, MaxPool2d, BatchNorm1d, BatchNorm2d, Flatten, Dropout, Identity"

#: Layers that do nothing in evaluation.
IGNORED_LAYERS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)

#: The layer classes an architecture description may name (every other name is refused with its reason).
DESCRIBABLE = {
    cls.__name__: cls
    for cls in (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, *IGNORED_LAYERS)
}
#: Classes built on the meta device first, so a description cannot make the toolkit allocate their weights.
WEIGHTED_CLASSES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)

#: An architecture description larger than this is not one.
MAX_DESCRIPTION_BYTES = 1 << 20

_AVERAGE = "averages a block, which no single spike does; use nn.MaxPool2d with kernel_size = stride (the earliest spike)"
_NOT_RELU = "is not ReLU: B1 turns only ReLU(W x + b) into a spike time"
_SOFTMAX = ("the readout's logits are the network's output (read from the membrane); drop the final softmax, "
            "the class (its argmax) is the same")  # fmt: skip
_OWN_STATISTICS = ("normalises each input by its own statistics, which no fixed weight can fold; "
                   "only batch norm (fixed running statistics) folds")  # fmt: skip
_ARITHMETIC = ("combines activations arithmetically; a TTFS layer takes spikes from the layer before it only "
               "(an input normalisation (x - mean) / std is given to the conversion: input_norm, --mean/--std)")  # fmt: skip
_RESHAPE = "reshapes activations; flatten them with nn.Flatten() or torch.flatten(x, 1)"

#: Why a layer or function has no TTFS counterpart, by its name lower-cased without underscores
#: (nn.AvgPool2d and F.avg_pool2d share "avgpool2d").
REASONS = {
    **dict.fromkeys(("avgpool1d", "avgpool2d", "avgpool3d", "adaptiveavgpool1d", "adaptiveavgpool2d",
                     "adaptiveavgpool3d", "lppool1d", "lppool2d", "lppool3d"), _AVERAGE),  # fmt: skip
    **dict.fromkeys(("adaptivemaxpool1d", "adaptivemaxpool2d", "adaptivemaxpool3d"),
                    "chooses its blocks from the input size; use nn.MaxPool2d with kernel_size = stride"),  # fmt: skip
    **dict.fromkeys(("maxpool1d", "maxpool3d", "fractionalmaxpool2d", "fractionalmaxpool3d", "maxunpool2d"),
                    "is not a 2-D max-pool over non-overlapping blocks; use nn.MaxPool2d with kernel_size = stride"),  # fmt: skip
    **dict.fromkeys(("gelu", "silu", "elu", "selu", "celu", "leakyrelu", "prelu", "rrelu", "relu6", "hardtanh",
                     "sigmoid", "tanh", "softplus", "mish", "hardswish", "hardsigmoid", "logsigmoid", "softsign",
                     "tanhshrink", "threshold", "glu", "hardshrink", "softshrink"), _NOT_RELU),  # fmt: skip
    **dict.fromkeys(("softmax", "logsoftmax", "softmin", "softmax2d"), _SOFTMAX),
    **dict.fromkeys(("layernorm", "groupnorm", "instancenorm1d", "instancenorm2d", "instancenorm3d",
                     "localresponsenorm", "rmsnorm"), _OWN_STATISTICS),  # fmt: skip
    **dict.fromkeys(("conv1d", "conv3d", "convtranspose1d", "convtranspose2d", "convtranspose3d", "lazyconv2d"),
                    "is not a 2-D convolution; only nn.Conv2d maps to a TTFS conv layer"),  # fmt: skip
    **dict.fromkeys(("batchnorm3d", "syncbatchnorm", "lazybatchnorm2d"),
                    "is not nn.BatchNorm1d or nn.BatchNorm2d; convert it to one of them before saving"),  # fmt: skip
    **dict.fromkeys(("add", "iadd", "cat", "concat", "stack"),
                    "joins two branches (a residual connection or a concatenation); a TTFS layer takes spikes "
                    "from the layer before it only"),  # fmt: skip
    **dict.fromkeys(("sub", "isub", "mul", "imul", "truediv", "div", "neg", "matmul", "pow", "exp", "log", "clamp",
                     "clip", "abs"), _ARITHMETIC),  # fmt: skip
    **dict.fromkeys(("view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "size", "contiguous",
                     "unflatten", "getitem", "pixelshuffle", "pixelunshuffle", "channelshuffle"), _RESHAPE),  # fmt: skip
    **dict.fromkeys(("upsample", "upsamplingnearest2d", "upsamplingbilinear2d", "interpolate", "pad",
                     "zeropad2d", "constantpad2d", "reflectionpad2d", "replicationpad2d"),
                    "resizes or pads the maps; a TTFS conv pads with 'no spike' itself (padding='same')"),  # fmt: skip
    "maxpool2d": "is called as a function; use the module nn.MaxPool2d so its settings can be checked",
    "dropout": "is called as a function, its training flag fixed when traced; use the module nn.Dropout",
    "linear": "is called as a function; use the module nn.Linear",
    "conv2d": "is called as a function; use the module nn.Conv2d",
    "batchnorm": "is called as a function; use the module nn.BatchNorm1d or nn.BatchNorm2d",
}


class ConversionError(TTFSError):
    """A model, its checkpoint or its architecture description cannot be converted."""


def reason(kind: str) -> str:
    """Why the layer or function named ``kind`` is refused."""
    return REASONS.get(kind.replace("_", "").lower(), f"is not a layer the conversion takes (it takes {SUPPORTED})")


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


# --------------------------------------------------------------------------- the chain of layers


def _relu_function(node) -> bool:
    if node.op == "call_function":
        return node.target in (torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _flatten_step(node) -> nn.Flatten | None:
    """The nn.Flatten a torch.flatten(x, ...) or x.flatten(...) node equals, else None."""
    if not ((node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method" and node.target == "flatten")):
        return None
    arguments = list(node.args[1:])
    start = node.kwargs.get("start_dim", arguments[0] if arguments else 0)
    end = node.kwargs.get("end_dim", arguments[1] if len(arguments) > 1 else -1)
    return nn.Flatten(start, end)


def _node_kind(node) -> str:
    """What a traced node calls, for messages: torch.add -> "add", x.view -> "view"."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _traced_chain(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The steps of a module whose forward torch.fx traces to a plain chain."""
    label = prefix.rstrip(".") or type(module).__name__
    try:
        graph_module = torch.fx.symbolic_trace(module)
    except Exception as err:  # fx raises many kinds for code it cannot follow
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConversionError(f"{label} ({type(module).__name__}): torch.fx cannot follow its forward "
                              f"({type(err).__name__}: {first}); write the network as an nn.Sequential") from None  # fmt: skip
    nodes = list(graph_module.graph.nodes)
    inputs = [node for node in nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        raise ConversionError(f"{label} ({type(module).__name__}): forward takes {len(inputs)} inputs; a network takes one image batch")
    for node in nodes:
        if node.op in ("placeholder", "output", "call_module"):
            continue
        if node.op == "get_attr":
            raise ConversionError(f"{prefix}{node.target}: forward uses this parameter or buffer directly; "
                                  "only layers (modules) and ReLU/flatten calls can be converted")  # fmt: skip
        if not (_relu_function(node) or _flatten_step(node) is not None):
            kind = _node_kind(node)
            raise ConversionError(f"{label}.forward: {node.name} ({kind}) {reason(kind)}")
    steps = []
    previous = inputs[0]
    for node in nodes[1:]:
        if len(previous.users) != 1:
            raise ConversionError(f"{label}.forward: the output of {previous.name} is used {len(previous.users)} times "
                                  "(a branch or skip connection); a TTFS network is a chain of layers")  # fmt: skip
        if node.op == "output":
            if node.args[0] is not previous:
                raise ConversionError(f"{label}.forward: returns more than its last step's output")
            break
        if node.all_input_nodes != [previous]:
            names = ", ".join(n.name for n in node.all_input_nodes)
            raise ConversionError(f"{label}.forward: {node.name} takes {names}; a TTFS network is a chain of layers")
        name = f"{prefix}{node.target}" if node.op == "call_module" else f"{prefix}{node.name}"
        if node.op == "call_module":
            steps += module_chain(graph_module.get_submodule(node.target), f"{prefix}{node.target}.")
        elif _relu_function(node):
            steps.append((name, nn.ReLU()))
        else:  # a flatten call
            steps.append((name, _flatten_step(node)))
        previous = node
    return steps


def _is_layer(module: nn.Module) -> bool:
    """True for torch's own layers (taken or refused as they are); False for containers and user modules to trace."""
    return type(module).__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential)


def module_chain(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(name, layer) in the order ``model`` applies them; names are state_dict prefixes ("features.0")."""
    if isinstance(model, nn.Sequential):
        steps = []
        for name, child in model.named_children():
            steps += module_chain(child, f"{prefix}{name}.")
        return steps
    if _is_layer(model):
        return [(prefix.rstrip(".") or type(model).__name__, model)]
    return _traced_chain(model, prefix)


# --------------------------------------------------------------------------- the ReLU twin


def check_input_shape(input_shape: Sequence[Any]) -> tuple[int, int, int]:
    """(C, H, W) of positive integers, or ConversionError."""
    if isinstance(input_shape, (str, bytes)) or len(input_shape) != 3 or any(
        isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WIDTH for v in input_shape
    ):
        raise ConversionError(f"input shape: {list(input_shape)!r} is not [channels, height, width] of positive integers")
    return tuple(input_shape)


def check_input_norm(input_norm: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(means, standard deviations), one per channel (a single value stands for every channel), or ConversionError."""
    if input_norm is None:
        return None
    try:
        mean, std = ([float(v) for v in (values if isinstance(values, (list, tuple)) else [values])] for values in input_norm)
    except (TypeError, ValueError):
        raise ConversionError(f"input normalisation: {input_norm!r} is not (means, standard deviations)") from None
    mean, std = (values * channels if len(values) == 1 else values for values in (mean, std))
    if len(mean) != channels or len(std) != channels:
        raise ConversionError(f"input normalisation: need 1 or {channels} means and standard deviations, "
                              f"got {len(mean)} and {len(std)}")  # fmt: skip
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
        raise ConversionError(f"input normalisation: means must be finite and standard deviations positive, got {mean}, {std}")
    return tuple(mean), tuple(std)


class _TwinBuilder:
    """Reads layers in order into the modules of the ReLU twin, checking each where it stands."""

    def __init__(self, input_shape: tuple[int, int, int], dtype: torch.dtype) -> None:
        self.input_shape = input_shape
        self.dtype = dtype
        self.modules: list[nn.Module] = []
        self.maps: tuple[int, int, int] | None = input_shape  # (C, H, W), None once flattened
        self.features: int | None = None
        self.spatial_layers = False  # a conv or pool has run
        self.flat_input = False  # the model takes the image flattened
        self.last_weighted: str | None = None
        self.last_is_linear = False
        self.relu_after_last: str | None = None
        self.after_weighted = False  # nothing but batch norm since the last weighted layer
        self.pending_norm: str | None = None  # a normalisation waiting for the next weighted layer

    def normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.modules.append(vgg.InputNormalization(mean, std, dtype=self.dtype))
        self.pending_norm = "the input normalisation"

    def add(self, name: str, module: nn.Module) -> None:
        """Read the next layer of the model, ``name`` its state_dict name."""
        where = f"{name} ({type(module).__name__})"
        kind = type(module)
        if kind in IGNORED_LAYERS:
            return
        handlers = {
            nn.Conv2d: self._conv, nn.Linear: self._linear, nn.MaxPool2d: self._pool,
            nn.BatchNorm1d: self._batch_norm, nn.BatchNorm2d: self._batch_norm, nn.Flatten: self._flatten,
        }  # fmt: skip
        if kind is nn.ReLU:
            self._relu(where)
            return
        if kind in handlers:
            handlers[kind](where, module)
            return
        base = next((cls for cls in (nn.ReLU, *handlers) if isinstance(module, cls)), None)
        if base is not None:
            raise ConversionError(f"{where}: a subclass of nn.{base.__name__}, whose forward may differ; use nn.{base.__name__}")
        raise ConversionError(f"{where}: {reason(kind.__name__)}")

    def _weighted(self, where: str, linear: bool) -> None:
        """What every Conv2d and Linear needs: a ReLU since the previous one; it takes any pending normalisation."""
        if self.last_weighted is not None and self.relu_after_last is None:
            raise ConversionError(f"{where}: follows {self.last_weighted} without a ReLU between them; every layer "
                                  "but the readout must be ReLU(W x + b) to be a spiking layer")  # fmt: skip
        self.last_weighted = where
        self.last_is_linear = linear
        self.relu_after_last = None
        self.after_weighted = True
        self.pending_norm = None

    @staticmethod
    def _copy(source: nn.Module, target: nn.Module) -> nn.Module:
        """``target`` with ``source``'s weight and bias (zero where it has none), in the target's dtype."""
        with torch.no_grad():
            target.weight.copy_(source.weight)
            if source.bias is None:
                target.bias.zero_()
            else:
                target.bias.copy_(source.bias)
        return target

    def _conv(self, where: str, module: nn.Conv2d) -> None:
        if self.maps is None:
            raise ConversionError(f"{where}: applied to flat features; a Conv2d needs (C, H, W) maps")
        kernel = module.kernel_size
        if kernel[0] != kernel[1]:
            raise ConversionError(f"{where}: kernel_size {kernel} is not square")
        if tuple(module.stride) != (1, 1):
            raise ConversionError(f"{where}: stride {tuple(module.stride)}; only stride 1 is a TTFS conv (downsample with nn.MaxPool2d)")
        if tuple(module.dilation) != (1, 1):
            raise ConversionError(f"{where}: dilation {tuple(module.dilation)}; only dilation 1 is a TTFS conv")
        if module.groups != 1:
            raise ConversionError(f"{where}: groups {module.groups}; only groups=1 (every output channel sees every input channel)")
        if module.padding_mode != "zeros":
            raise ConversionError(f"{where}: padding_mode {module.padding_mode!r}; only zero padding ('zeros') is 'no spike'")
        padding = self._padding(where, module)
        channels, height, width = self.maps
        if module.in_channels != channels:
            raise ConversionError(f"{where}: expects {module.in_channels} input channels, gets {channels}")
        try:
            output = check_conv_shape(channels, module.out_channels, kernel[0], padding, (height, width))
        except ConvError as err:
            raise ConversionError(f"{where}: {err}") from None
        self._weighted(where, linear=False)
        twin = BorderBiasConv2d(channels, module.out_channels, kernel[0], (height, width), padding=padding, dtype=self.dtype)
        self.modules.append(self._copy(module, twin))
        self.maps = (module.out_channels, *output)
        self.spatial_layers = True

    @staticmethod
    def _padding(where: str, module: nn.Conv2d) -> str:
        if isinstance(module.padding, str):
            return module.padding
        kernel = module.kernel_size[0]
        rows, columns = module.padding
        if rows != columns:
            raise ConversionError(f"{where}: padding {tuple(module.padding)} differs between the axes; only 'same' or 'valid'")
        if rows == 0:
            return "valid"
        if kernel % 2 == 1 and rows == (kernel - 1) // 2:
            return "same"
        same = f"{(kernel - 1) // 2} ('same')" if kernel % 2 == 1 else "padding='same'"
        raise ConversionError(f"{where}: padding {rows} for a {kernel}x{kernel} kernel is neither 0 ('valid') nor {same}")

    def _linear(self, where: str, module: nn.Linear) -> None:
        if self.maps is not None:
            channels, height, width = self.maps
            if self.spatial_layers or module.in_features != channels * height * width:
                raise ConversionError(f"{where}: applied to (C, H, W) = {self.maps} maps; flatten them first "
                                      "(nn.Flatten() or torch.flatten(x, 1))")  # fmt: skip
            # The model takes the image flattened (C, H, W order, as the toolkit flattens images).
            self.modules.append(nn.Flatten())
            self.maps, self.features, self.flat_input = None, channels * height * width, True
        if module.in_features != self.features:
            raise ConversionError(f"{where}: expects {module.in_features} inputs, gets {self.features}")
        self._weighted(where, linear=True)
        twin = nn.Linear(module.in_features, module.out_features, dtype=self.dtype)
        self.modules.append(self._copy(module, twin))
        self.features = module.out_features

    def _relu(self, where: str) -> None:
        if self.last_weighted is None:
            if self.pending_norm is not None:
                raise ConversionError(f"{where}: a ReLU on the normalised input, before any Conv2d/Linear, is no TTFS layer")
            return  # pixels are never negative: ReLU(x) = x
        if self.pending_norm is not None:
            raise ConversionError(f"{self.pending_norm}: sits between two ReLUs (the next is {where}); a batch norm after "
                                  "a ReLU must reach the next Conv2d/Linear through pooling and flatten only")  # fmt: skip
        if self.relu_after_last is not None:
            return  # ReLU(ReLU(x)) = ReLU(x) (only pooling or flatten between)
        self.relu_after_last = where
        self.after_weighted = False
        self.modules.append(nn.ReLU())

    def _pool(self, where: str, module: nn.MaxPool2d) -> None:
        if self.maps is None:
            raise ConversionError(f"{where}: pools flat features; a MaxPool2d needs (C, H, W) maps")
        kernel, stride = _pair(module.kernel_size), _pair(module.stride if module.stride is not None else module.kernel_size)
        if kernel[0] != kernel[1]:
            raise ConversionError(f"{where}: kernel_size {kernel} is not square")
        if stride != kernel:
            raise ConversionError(f"{where}: stride {stride} differs from kernel_size {kernel}; only non-overlapping "
                                  "pools (kernel_size = stride) are TTFS pools")  # fmt: skip
        if _pair(module.padding) != (0, 0):
            raise ConversionError(f"{where}: padding {module.padding}; a TTFS pool does not pad")
        if _pair(module.dilation) != (1, 1):
            raise ConversionError(f"{where}: dilation {module.dilation}; only dilation 1")
        if module.ceil_mode:
            raise ConversionError(f"{where}: ceil_mode=True pools partial blocks at the border; only floor mode (ceil_mode=False)")
        if module.return_indices:
            raise ConversionError(f"{where}: return_indices=True returns more than the pooled maps")
        channels, height, width = self.maps
        try:
            output = check_pool(channels, kernel[0], (height, width))
        except ConvError as err:
            raise ConversionError(f"{where}: {err}") from None
        self.modules.append(SignedMaxPool2d(channels, (height, width), kernel[0]))
        self.maps = (channels, *output)
        self.spatial_layers = True
        self.after_weighted = False

    def _batch_norm(self, where: str, module: nn.modules.batchnorm._BatchNorm) -> None:
        if module.running_mean is None or module.running_var is None:
            raise ConversionError(f"{where}: no running statistics (track_running_stats=False); only batch norm "
                                  "with fixed statistics folds into the weights")  # fmt: skip
        if isinstance(module, nn.BatchNorm2d):
            if self.maps is None or module.num_features != self.maps[0]:
                got = f"{self.maps[0]} channels" if self.maps is not None else f"{self.features} flat features"
                raise ConversionError(f"{where}: normalises {module.num_features} channels of (C, H, W) maps, gets {got}")
        elif self.maps is not None or module.num_features != self.features:
            got = f"(C, H, W) = {self.maps} maps" if self.maps is not None else f"{self.features} features"
            raise ConversionError(f"{where}: normalises {module.num_features} flat features, gets {got}")
        if not self.after_weighted:
            if self.last_weighted is not None and self.relu_after_last is None:
                raise ConversionError(f"{where}: comes after {self.last_weighted} and pooling or flatten but before "
                                      "its ReLU; put batch norm right after the Conv2d/Linear or after the ReLU")  # fmt: skip
            self.pending_norm = where
        self.modules.append(copy.deepcopy(module).to(self.dtype))

    def _flatten(self, where: str, module: nn.Flatten) -> None:
        if module.start_dim != 1 or module.end_dim != -1:
            raise ConversionError(f"{where}: start_dim={module.start_dim}, end_dim={module.end_dim}; only flattening "
                                  "each image's (C, H, W) maps (start_dim=1, end_dim=-1)")  # fmt: skip
        if self.maps is None:
            return  # flat features stay as they are
        channels, height, width = self.maps
        self.modules.append(nn.Flatten())
        self.maps, self.features = None, channels * height * width
        self.after_weighted = False

    def finish(self) -> vgg.ReLUConvNetwork:
        if self.last_weighted is None:
            raise ConversionError("the model has no Conv2d or Linear layer")
        if not self.last_is_linear:
            raise ConversionError(f"the model ends in {self.last_weighted}; it must end in an nn.Linear readout")
        if self.relu_after_last is not None:
            raise ConversionError(f"{self.relu_after_last}: a ReLU after the readout {self.last_weighted}; the readout's "
                                  "logits are read from the membrane and may be negative: remove this ReLU")  # fmt: skip
        if self.pending_norm is not None:
            raise ConversionError(f"{self.pending_norm}: no Conv2d/Linear follows to fold it into")
        return vgg.ReLUConvNetwork(self.modules, self.input_shape)


@dataclass
class Conversion:
    """A model read into the toolkit: its ReLU twin, the same function (batch norm and the input
    normalisation not folded yet), the normalisation, and whether the model takes images flattened."""

    twin: vgg.ReLUConvNetwork
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None
    flat_input: bool

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """The batch the original model takes for images of pixel / 255 values: normalised, maybe flattened."""
        if self.input_norm is not None:
            images = vgg.InputNormalization(*self.input_norm, dtype=images.dtype).to(images.device)(images)
        return images.flatten(1) if self.flat_input else images

    @property
    def is_dense(self) -> bool:
        """True when the model has no conv or pool: it becomes a dense (arch fc) network."""
        return not any(isinstance(module, (BorderBiasConv2d, SignedMaxPool2d)) for module in self.twin.layers)

    def ttfs_network(
        self, calibration_images: torch.Tensor, *, window_factor: float = DEFAULT_WINDOW_FACTOR
    ) -> tuple[WindowedNetwork, dict[str, Any]]:
        """(TTFS network in evaluation mode, windows calibrated on ``calibration_images``; the architecture keys of its run config).

        The twin is folded (ttfs.sw.folding: exact), its weights copied (B1);
        every window grows to window_factor x the largest activation its
        layer shows on the calibration images.
        """
        folded = folding.fold_network(self.twin)
        if self.is_dense:
            linears = [module for module in folded.layers if isinstance(module, nn.Linear)]
            if len(linears) < 2:
                raise ConversionError("the model is a single Linear layer: a TTFS network needs at least one hidden (spiking) layer")
            sizes = [linears[0].in_features, *(layer.out_features for layer in linears)]
            relu = models.ReLUNetwork(sizes, dtype=linears[0].weight.dtype).to(linears[0].weight.device)
            for source, target in zip(linears, relu.layers):
                target.load_state_dict(source.state_dict())
            architecture = {"arch": "fc", "layers": None, "widths": sizes[1:-1], "batch_norm": None}
        else:
            try:
                spec = vgg.spec_of(folded)
            except ConvError as err:
                raise ConversionError(str(err)) from None
            relu = folded
            architecture = {"arch": "vgg", "layers": vgg.layers_text(spec.layers), "widths": list(spec.dense), "batch_norm": None}
        return training.relu_run_to_snn(relu, window_factor, calibration_images).eval(), architecture


def check(
    model: nn.Module | Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    *,
    input_norm: Any = None,
    dtype: torch.dtype = torch.float64,
) -> Conversion:
    """Read ``model`` (a module, or its (name, layer) steps in order) into a :class:`Conversion`.

    ConversionError names the first module (by its state_dict name) the
    conversion cannot take and says why.  ``dtype`` is the twin's.
    """
    shape = check_input_shape(input_shape)
    steps = module_chain(model) if isinstance(model, nn.Module) else list(model)
    builder = _TwinBuilder(shape, dtype)
    norm = check_input_norm(input_norm, shape[0])
    if norm is not None:
        builder.normalisation(*norm)
    for name, module in steps:
        builder.add(name, module)
    return Conversion(builder.finish(), norm, builder.flat_input)


def convert(
    model: nn.Module | Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    calibration_images: torch.Tensor,
    *,
    input_norm: Any = None,
    dtype: torch.dtype = torch.float64,
    window_factor: float = DEFAULT_WINDOW_FACTOR,
) -> WindowedNetwork:
    """The TTFS network of ``model``, windows calibrated on ``calibration_images`` (pixel / 255 values, (N, C, H, W)).

    In float64 its logits equal the model's (on the normalised images) to
    rounding, wherever no activation exceeds its window (none does on the
    calibration images).
    """
    conversion = check(model, input_shape, input_norm=input_norm, dtype=dtype)
    snn, _ = conversion.ttfs_network(calibration_images.to(dtype), window_factor=window_factor)
    return snn


# --------------------------------------------------------------------------- a run directory


@torch.no_grad()
def _compare(original: nn.Module, conversion: Conversion, snn: WindowedNetwork, images: torch.Tensor,
             labels: torch.Tensor) -> tuple[float, float]:
    """(largest |original model's logits - TTFS logits| over ``images``, the original model's accuracy)."""
    largest, correct = 0.0, 0
    for index in fitting.batch_indices(len(images), training.EVAL_BATCH, None):
        batch = images[index]
        logits = original(conversion.model_input(batch))
        largest = max(largest, float((logits - snn(batch)).abs().max()))
        correct += int((logits.argmax(dim=1) == labels[index]).sum())
    return largest, correct / len(labels)


def convert_run(
    model: nn.Module | Sequence[tuple[str, nn.Module]],
    input_shape: Sequence[int],
    *,
    out: str | Path,
    dataset: str = "mnist-sample",
    data_dir: str | None = None,
    input_norm: Any = None,
    dtype: str = "float32",
    window_factor: float = DEFAULT_WINDOW_FACTOR,
    device: str = "auto",
    source: str | None = None,
) -> tuple[WindowedNetwork, dict[str, Any], dict[str, Any]]:
    """Convert ``model`` and write the run directory ``out``; returns (TTFS network, config, report).

    ``dataset`` (a standard data set, ``npz:FILE`` or ``folder:DIR``, read
    at the input shape) gives the classes, the images the windows are
    calibrated on (its training split) and the test images of the report:
    the accuracies of the original model, of the TTFS network and of its
    ReLU twin, and the largest difference between the original model's
    logits and the TTFS network's.
    """
    if dtype not in models.DTYPES:
        raise ConversionError(f"dtype: {dtype!r} is not one of {', '.join(models.DTYPES)}")
    if not (isinstance(window_factor, (int, float)) and math.isfinite(window_factor) and window_factor > 1):
        raise ConversionError(f"window_factor: {window_factor!r} must be a number above 1")
    torch_dtype = models.DTYPES[dtype]
    shape = check_input_shape(input_shape)
    conversion = check(model, shape, input_norm=input_norm, dtype=torch_dtype)
    place = distributed.resolve_device(device)
    config: dict[str, Any] = {
        "mode": "convert",
        "source": source or (type(model).__name__ if isinstance(model, nn.Module) else "model"),
        "dataset": dataset,
        "data_dir": data_dir,
        "input_shape": list(shape),
        "input_norm": None if conversion.input_norm is None else [list(values) for values in conversion.input_norm],
        "dtype": dtype,
        "window_factor": float(window_factor),
        "device": device,
    }
    if is_image_folder(dataset):
        config["image_size"], config["channels"] = list(shape[1:]), shape[0]
    train_set, test_set = (training.load_split(config, split) for split in ("train", "test"))
    outputs = next(module.out_features for module in reversed(conversion.twin.layers) if isinstance(module, nn.Linear))
    classes = list(train_set.classes) or [str(k) for k in range(int(train_set.labels.max()) + 1)]
    if len(classes) != outputs:
        raise ConversionError(f"the model has {outputs} outputs, {dataset} has {len(classes)} classes")
    config["classes"] = classes

    train_images, _ = training.to_tensors(train_set, torch_dtype, place)
    test_images, test_labels = training.to_tensors(test_set, torch_dtype, place)
    conversion.twin.to(place)
    snn, architecture = conversion.ttfs_network(train_images, window_factor=float(window_factor))
    config.update(architecture)
    config["name"] = re.sub(r"[^A-Za-z0-9._-]", "_", f"{Path(config['source']).stem}-convert-{dtype}")
    run_dir = Path(out)
    config["out"] = str(run_dir)
    config["train_images"], config["test_images"] = len(train_set.labels), len(test_set.labels)
    # A run directory is rebuilt from its config alone: the converted network must be that network.
    models.network_for_config(config).load_state_dict(snn.state_dict())

    if isinstance(model, nn.Module):
        original = copy.deepcopy(model)
    else:
        original = nn.Sequential(*(copy.deepcopy(module) for _, module in model))
    original = original.to(device=place, dtype=torch_dtype).eval()
    test = training.snn_and_relu_metrics(snn, test_images, test_labels)
    difference, original_accuracy = _compare(original, conversion, snn, test_images, test_labels)
    report = {
        "mode": "convert",
        "source": config["source"],
        "dataset": dataset,
        "sizes": snn.sizes,
        "dtype": dtype,
        "arch": config["arch"],
        "layers": config["layers"],
        "widths": config["widths"],
        "original_test_accuracy": original_accuracy,
        "max_logit_difference": difference,
        "test_accuracy": test["accuracy"],
        "snn_test_accuracy": test["accuracy"],
        "relu_test_accuracy": test["relu_accuracy"],
        "snn_test_loss": test["loss"],
        "relu_test_loss": test["relu_loss"],
        **{key: test[key] for key in training.ACTIVITY_KEYS},
        "device": str(place),
        "history": {},
    }
    training.write_run(run_dir, snn, config, report)
    return snn, config, report


# --------------------------------------------------------------------------- a model on disk

_NAMED_LINE = re.compile(r"^(?:\((?P<paren>[^()]+)\)|(?P<name>[A-Za-z_][\w.]*))\s*:\s*(?P<rest>.*)$")
_OPEN_CONTAINER = re.compile(r"^(?:(?:torch\.)?nn\.)?(?P<kind>[A-Za-z_]\w*)\($")


def _literal_call(text: str, where: str) -> tuple[str, list[Any], dict[str, Any]]:
    """(class name, positional arguments, keyword arguments) of a constructor call with literal arguments."""
    try:
        expression = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ConversionError(f"{where}: {text!r} is not a layer constructor such as Conv2d(1, 8, 3, padding=1)") from None
    function = expression.func if isinstance(expression, ast.Call) else None
    parts = []
    while isinstance(function, ast.Attribute):
        parts.append(function.attr)
        function = function.value
    if not isinstance(function, ast.Name) or not (
        not parts or [function.id, *reversed(parts[1:])] in (["nn"], ["torch", "nn"])
    ):
        raise ConversionError(f"{where}: {text!r} is not a layer constructor such as Conv2d(1, 8, 3, padding=1)")
    kind = parts[0] if parts else function.id
    try:
        arguments = [ast.literal_eval(argument) for argument in expression.args]
        keywords = {keyword.arg: ast.literal_eval(keyword.value) for keyword in expression.keywords}
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise ConversionError(f"{where}: {text!r}: arguments must be literals (numbers, strings, tuples, True/False/None)") from None
    if None in keywords:
        raise ConversionError(f"{where}: {text!r}: **keyword unpacking is not a literal argument")
    return kind, arguments, keywords


def parse_architecture(text: str, origin: str = "architecture") -> list[tuple[str, nn.Module]]:
    """The layers an architecture description lists, as (state_dict name, module on the meta device).

    One layer per line, in the order the model applies them: a constructor
    call with literal arguments (``Conv2d(1, 8, 3, padding=1)``, ``nn.ReLU()``),
    optionally named ``name: Call(...)`` or ``(name): Call(...)``; unnamed
    layers are numbered 0, 1, ... as nn.Sequential numbers them.  A line
    ``Sequential(`` (named or not) opens a nested sequence and ``)`` closes
    it, so the text ``print(model)`` writes for an nn.Sequential is a
    description.  ``#`` starts a comment.
    """
    layers: list[tuple[str, nn.Module]] = []
    scopes: list[list[Any]] = [["", 0]]  # [name prefix, next index] per open Sequential
    opened_at_top = False
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{origin} line {number}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line == ")":
            if len(scopes) == 1:
                raise ConversionError(f"{where}: ')' closes no Sequential(")
            scopes.pop()
            continue
        match = _NAMED_LINE.match(line)
        call = match.group("rest").strip() if match else line
        container = _OPEN_CONTAINER.match(call)
        if container is not None and container.group("kind") != "Sequential":
            raise ConversionError(f"{where}: {container.group('kind')}( is not an nn.Sequential; describe a custom "
                                  "module as its layers, one per line, in the order its forward applies them")  # fmt: skip
        if container is not None and match is None and len(scopes) == 1 and not layers and not opened_at_top:
            opened_at_top = True  # print(model)'s outer "Sequential(": its layers have no name prefix
            scopes.append(["", 0])
            continue
        scope = scopes[-1]
        name = (match.group("paren") or match.group("name")).strip() if match else str(scope[1])
        scope[1] += 1
        if container is not None:
            scopes.append([f"{scope[0]}{name}.", 0])
            continue
        full_name = f"{scope[0]}{name}"
        kind, arguments, keywords = _literal_call(call, where)
        if kind not in DESCRIBABLE:
            raise ConversionError(f"{full_name} ({kind}): {reason(kind)}")
        cls = DESCRIBABLE[kind]
        if issubclass(cls, WEIGHTED_CLASSES):
            keywords["device"] = "meta"
        try:
            module = cls(*arguments, **keywords)
        except Exception as err:  # the constructor's own refusal (bad argument count, value, type)
            raise ConversionError(f"{where}: {call}: {type(err).__name__}: {err}") from None
        layers.append((full_name, module))
    if len(scopes) != 1:
        raise ConversionError(f"{origin}: a Sequential( is never closed with ')'")
    if not layers:
        raise ConversionError(f"{origin}: no layers (expected one constructor call per line, e.g. Linear(784, 64))")
    return layers


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read with ``torch.load(weights_only=True)``.

    A state_dict saved on its own, or under "state_dict", "model_state_dict"
    or "model" in a dict of other (weights-only) entries.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for corrupt or unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConversionError(f"{path}: not a weights-only checkpoint ({type(err).__name__}: {first}); "
                              "save the model's state_dict with torch.save(model.state_dict(), path)") from None  # fmt: skip

    def is_state(value: Any) -> bool:
        return isinstance(value, Mapping) and bool(value) and all(
            isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()
        )

    if not is_state(loaded) and isinstance(loaded, Mapping):
        loaded = next((loaded[key] for key in ("state_dict", "model_state_dict", "model") if is_state(loaded.get(key))), loaded)
    if not is_state(loaded):
        raise ConversionError(f"{path}: expected a state_dict (parameter name -> tensor), found {type(loaded).__name__}; "
                              "save it with torch.save(model.state_dict(), path)")  # fmt: skip
    return dict(loaded)


def _listed(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(name) for name in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_model(checkpoint: str | Path, architecture: str | Path) -> list[tuple[str, nn.Module]]:
    """The (name, layer) steps of a model saved as a state_dict (``checkpoint``) whose layers ``architecture`` describes.

    The description (:func:`parse_architecture`) is read from the file
    ``architecture``; every tensor of the checkpoint must belong to a
    described layer and every layer's tensors must be there, with the
    shapes the description implies, finite.  The result goes to
    :func:`check` or :func:`convert_run` as the model.
    """
    checkpoint, architecture = Path(checkpoint), Path(architecture)
    if not architecture.is_file():
        raise ConversionError(f"{architecture}: no such architecture description")
    if architecture.stat().st_size > MAX_DESCRIPTION_BYTES:
        raise ConversionError(f"{architecture}: larger than {MAX_DESCRIPTION_BYTES} bytes; not an architecture description")
    try:
        text = architecture.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{architecture}: not readable text ({err})") from None
    layers = parse_architecture(text, str(architecture))
    state = read_state_dict(checkpoint)
    expected: dict[str, tuple[str, torch.Tensor]] = {}
    for name, module in layers:
        for key, tensor in module.state_dict().items():
            expected[f"{name}.{key}"] = (key, tensor)
    optional = {key for key in expected if key.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    extra = sorted(set(state) - set(expected))
    if missing:
        raise ConversionError(f"{checkpoint}: no tensor {_listed(missing)} for the layers of {architecture} "
                              f"(the checkpoint has {_listed(sorted(state))})")  # fmt: skip
    if extra:
        raise ConversionError(f"{checkpoint}: tensor(s) {_listed(extra)} belong to no layer of {architecture}")
    for full_name, (_, meta) in expected.items():
        if full_name not in state:
            continue
        tensor = state[full_name]
        if tuple(tensor.shape) != tuple(meta.shape):
            raise ConversionError(f"{checkpoint}: {full_name} has shape {tuple(tensor.shape)}, {architecture} implies {tuple(meta.shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConversionError(f"{checkpoint}: {full_name} holds non-finite values")
    for name, module in layers:
        own = {key: state[f"{name}.{key}"] for key in module.state_dict() if f"{name}.{key}" in state}
        module.to_empty(device="cpu")
        for key, tensor in module.state_dict().items():
            if key not in own:  # num_batches_tracked, which evaluation does not use
                own[key] = torch.zeros_like(tensor)
        module.load_state_dict(own)
        module.eval()
    return layers

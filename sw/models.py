"""TTFS networks, their ReLU twins, exact conversions, and trained runs on disk.

A network is a list of layers (``.layers``, an ``nn.ModuleList``) from the
first hidden layer to the readout, so other layer kinds can join later:
convolutional runs (config ``arch`` "vgg") load as a
:class:`ttfs.sw.conv.TTFSLayerNetwork` with conv, pool, flatten and dense layers
(ttfs.sw.vgg, docs/conv-and-finetuning.md).  The ``layers`` string spells each
conv's kernel size and padding and each pool's size, so it describes a network
converted from a user's PyTorch model (config ``mode`` "convert",
ttfs.sw.convert) as well as one trained here.

:class:`TTFSNetwork` is the spiking network (B1 mapping, ttfs.sw.ttfs): each
layer exposes ``weight`` (outputs, inputs), ``bias`` (outputs,), ``t_min``
and ``t_max`` (its coding window; the readout's ``t_max`` equals its
``t_min``, the network's latency) and ``readout``.  :class:`ReLUNetwork` is
the plain ReLU network of the same shape.  B1 keeps weights and biases
unchanged, so :func:`snn_to_relu` and :func:`relu_to_snn` copy them.

A trained run is a directory written by ``ttfs train`` (ttfs.sw.training):

- ``config.json``: the resolved training configuration, including
  ``input_shape`` [C, H, W], ``widths`` (hidden layers) and ``classes``
  (a converted run: its source, data set, input normalisation and
  architecture);
- ``checkpoint.pt``: the :class:`TTFSNetwork` state_dict (tensors only, so
  ``torch.load(..., weights_only=True)`` reads it), windows included; ReLU
  runs are stored converted, with windows calibrated on the training set;
- ``report.json`` and ``curve.png``.

:func:`load_run` reads and validates one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ttfs.contract.errors import TTFSError
from ttfs.contract.jsonfile import JsonFileError, read_json
from ttfs.contract.npz import NpzError, check_regular_file
from ttfs.sw import vgg
from ttfs.sw.conv import ConvError, TTFSLayerNetwork
from ttfs.sw.ttfs import (
    DEFAULT_WINDOW_FACTOR,
    MAX_WIDTH,
    ModelError,
    TTFSDense,
    WindowedNetwork,
    check_chained,
    copy_weight_and_bias,
    encode_input,
)

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"
CURVE_FILE = "curve.png"

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Network families: "fc" (dense TTFSNetwork) and "vgg" (conv TTFSLayerNetwork, ttfs.sw.vgg).
ARCHS = ("fc", "vgg")


def check_widths(widths: Sequence[Any]) -> list[int]:
    """Validate hidden-layer widths: a non-empty list of integers in 1..65536."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise ModelError(f"widths: expected a non-empty list of hidden-layer widths, got {widths!r}")
    for width in widths:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise ModelError(f"widths: {width!r} is not an integer in 1..{MAX_WIDTH}")
    return list(widths)


def layer_sizes(input_size: int, widths: Sequence[int], classes: int) -> list[int]:
    """[inputs, hidden widths..., classes] after validating each entry."""
    widths = check_widths(widths)
    for name, value in (("input size", input_size), ("classes", classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name}: {value!r} is not a positive integer")
    return [input_size, *widths, classes]


class TTFSNetwork(WindowedNetwork):
    """A feed-forward TTFS network: spiking dense layers then a readout.

    ``sizes`` is [inputs, hidden widths..., classes].  Windows, the window
    rule and the forward pass are :class:`ttfs.sw.ttfs.WindowedNetwork`'s:
    the input window is [0, 1], every hidden window starts with length 1,
    and in training mode a hidden window grows (never shrinks) to
    ``window_factor`` times the largest activation of the batch.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        window_factor: float = DEFAULT_WINDOW_FACTOR,
        dtype: torch.dtype | None = None,
    ) -> None:
        if len(sizes) < 3:
            raise ModelError(f"a TTFS network needs inputs, at least one hidden layer and a readout, got sizes {list(sizes)}")
        last = len(sizes) - 2
        layers = [
            TTFSDense(inputs, outputs, readout=index == last, dtype=dtype)
            for index, (inputs, outputs) in enumerate(zip(sizes[:-1], sizes[1:]))
        ]
        super().__init__(layers, window_factor=window_factor, dtype=dtype)

    @property
    def sizes(self) -> list[int]:
        """[inputs, hidden widths..., classes]."""
        return [self.layers[0].inputs, *(layer.outputs for layer in self.layers)]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input spike times (batch, inputs) for images (batch, ...) with values in [0, 1]."""
        return encode_input(images.flatten(1), self.input_t_max)


class ReLUNetwork(nn.Module):
    """The ReLU twin: nn.Linear layers with ReLU between them, same shape as the TTFS network."""

    def __init__(self, sizes: Sequence[int], *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if len(sizes) < 3:
            raise ModelError(f"a network needs inputs, at least one hidden layer and a readout, got sizes {list(sizes)}")
        self.layers = nn.ModuleList(
            nn.Linear(inputs, outputs, dtype=dtype) for inputs, outputs in zip(sizes[:-1], sizes[1:])
        )

    @property
    def sizes(self) -> list[int]:
        """[inputs, hidden widths..., classes]."""
        return [self.layers[0].in_features, *(layer.out_features for layer in self.layers)]

    def forward(self, images: torch.Tensor, return_activations: bool = False):
        """Logits for images (batch, ...); optionally also the activations of every
        layer before the readout, input first (the TTFS network's spiking layers)."""
        x = images.flatten(1)
        activations = [x]
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
            activations.append(x)
        logits = self.layers[-1](x)
        return (logits, activations) if return_activations else logits


def snn_to_relu(snn: TTFSNetwork | TTFSLayerNetwork) -> ReLUNetwork | vgg.ReLUConvNetwork:
    """The ReLU twin of a TTFS network: B1 keeps every weight and bias unchanged."""
    if isinstance(snn, TTFSLayerNetwork):
        return vgg.snn_to_relu(snn)
    relu = ReLUNetwork(snn.sizes, dtype=snn.layers[0].weight.dtype).to(snn.layers[0].weight.device)
    for source, target in zip(snn.layers, relu.layers):
        copy_weight_and_bias(source, target)
    return relu


def relu_to_snn(
    relu: ReLUNetwork,
    windows: Sequence[tuple[float, float]] | None = None,
    *,
    window_factor: float = DEFAULT_WINDOW_FACTOR,
) -> TTFSNetwork:
    """The TTFS network of a ReLU network: same weights and biases (B1).

    ``windows`` gives every layer's (t_min, t_max); by default each hidden
    window has length 1 — calibrate them with :func:`calibrate_windows`.
    """
    snn = TTFSNetwork(relu.sizes, window_factor=window_factor, dtype=relu.layers[0].weight.dtype).to(relu.layers[0].weight.device)
    for source, target in zip(relu.layers, snn.layers):
        copy_weight_and_bias(source, target)
    if windows is not None:
        snn.set_windows(windows)
    return snn


def calibrate_windows(snn: WindowedNetwork, batches: Iterable[torch.Tensor]) -> None:
    """Apply the window rule over ``batches`` of images without changing any weight."""
    was_training = snn.training
    snn.train()
    with torch.no_grad():
        for images in batches:
            snn(images)
    snn.train(was_training)


def build_network(sizes: Sequence[int], *, seed: int, dtype: torch.dtype, window_factor: float = DEFAULT_WINDOW_FACTOR) -> TTFSNetwork:
    """A freshly initialised TTFS network; the same seed gives the same parameters."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TTFSNetwork(sizes, window_factor=window_factor, dtype=dtype)
    finally:
        torch.random.set_rng_state(generator_state)


def read_json_object(path: Path, error: type[TTFSError], expected: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in ``path``; otherwise ``error`` naming the path and what is wrong."""
    try:
        document = read_json(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except JsonFileError as err:
        raise error(str(err)) from None
    if not isinstance(document, dict):
        raise error(f"{path}: expected {expected}")
    return document


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json as a dict, with the fields load_run needs checked."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run directory")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing (is {run_dir} a run directory made by `ttfs train`?)")
    config = read_json_object(path, ModelError)
    for key in ("input_shape", "widths", "classes", "dtype", "window_factor", "mode"):
        if key not in config:
            raise ModelError(f"{path}: missing key {key!r}")
    shape = config["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ModelError(f"{path}: input_shape {shape!r} is not [channels, height, width]")
    if not (isinstance(config["classes"], list) and config["classes"] and all(isinstance(c, str) for c in config["classes"])):
        raise ModelError(f"{path}: classes must be a non-empty list of labels")
    if config["dtype"] not in DTYPES:
        raise ModelError(f"{path}: dtype {config['dtype']!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(config["window_factor"], (int, float)) or not config["window_factor"] > 1:
        raise ModelError(f"{path}: window_factor {config['window_factor']!r} must be a number above 1")
    arch = config.get("arch", "fc")  # runs from before conv networks are dense
    if arch not in ARCHS:
        raise ModelError(f"{path}: arch {arch!r} is not one of {', '.join(ARCHS)}")
    if arch == "vgg" and "layers" not in config:
        raise ModelError(f"{path}: missing key 'layers' (the conv spec of an arch vgg run)")
    try:
        if arch == "vgg":
            vgg.spec_from_config(config, with_batch_norm=False)
        else:
            check_widths(config["widths"])
    except (ModelError, ConvError) as err:
        raise ModelError(f"{path}: {err}") from None
    return config


def network_for_config(config: dict[str, Any]) -> TTFSNetwork | TTFSLayerNetwork:
    """An (untrained) TTFS network of the shape a resolved config describes.

    A "vgg" run's checkpoint holds the network with its batch norm folded,
    so it is built without batch norm.
    """
    if config.get("arch", "fc") == "vgg":
        spec = vgg.spec_from_config(config, with_batch_norm=False)
        return vgg.build_snn(spec, dtype=DTYPES[config["dtype"]], window_factor=config["window_factor"])
    channels, height, width = config["input_shape"]
    sizes = layer_sizes(channels * height * width, config["widths"], len(config["classes"]))
    return TTFSNetwork(sizes, window_factor=config["window_factor"], dtype=DTYPES[config["dtype"]])


def save_run_model(run_dir: Path, model: TTFSNetwork, config: dict[str, Any]) -> None:
    """Write config.json and checkpoint.pt (state_dict only) into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # CPU tensors: a run trained on a GPU loads anywhere.
    torch.save({key: value.detach().cpu() for key, value in model.state_dict().items()}, run_dir / CHECKPOINT_FILE)


def load_run(run_dir: str | Path) -> tuple[TTFSNetwork, dict[str, Any]]:
    """Load a trained run: (TTFS network in eval mode, resolved config).

    The checkpoint is read with ``torch.load(weights_only=True)``; its keys,
    shapes and windows are validated.  Every run, ReLU-trained ones included,
    loads as a :class:`TTFSNetwork` (B1: the same weights), or for a "vgg"
    run as a :class:`ttfs.sw.conv.TTFSLayerNetwork` (batch norm folded);
    ``snn_to_relu`` gives the ReLU twin.  Layers are ``model.layers`` in order, each with
    ``weight`` (outputs, inputs), ``bias``, ``t_min``, ``t_max`` and
    ``readout``; ``model.windows()`` lists the windows as floats.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    model = network_for_config(config)
    path = run_dir / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing checkpoint")
    try:
        check_regular_file(path, str(path))
    except NpzError as err:
        raise ModelError(str(err)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        # torch's message goes on for lines of advice (weights_only=False among them): keep its first line.
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ModelError(f"{path}: not a readable weights-only checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state_dict, got {type(state).__name__}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{path}: does not match config.json (missing {missing}, unexpected {unexpected})")
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ModelError(f"{path}: {key} has shape {shape}, config.json implies {tuple(tensor.shape)}")
        if not torch.isfinite(value).all():
            raise ModelError(f"{path}: {key} holds non-finite values")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()})
    try:
        check_chained(float(model.input_t_max), model.windows())
    except ModelError as err:
        raise ModelError(f"{path}: {err}") from None
    model.eval()
    return model, config

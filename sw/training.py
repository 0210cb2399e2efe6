"""Training and evaluation of TTFS networks and their ReLU twins.

``train_run(config)`` is what ``ttfs train`` runs: it resolves and checks the
configuration, loads the data (ttfs.contract.datasets), trains in one of four modes

- ``relu``: the ReLU twin (ttfs.sw.models.ReLUNetwork, or for ``arch`` "vgg"
  ttfs.sw.vgg.ReLUConvNetwork, optionally with batch norm, folded away at the end);
- ``snn``: the TTFS network with the B1 mapping and the window rule;
- ``snn-from-relu``: the TTFS network initialised from a trained run (``init``),
- ``finetune``: a trained run (``init``) fine-tuned for hardware (spike-time
  noise, time steps, weight bits, shorter windows; ttfs.sw.finetune),

and writes the run directory (config.json, checkpoint.pt, report.json,
curve.png; see ttfs.sw.models).  The optimiser is Adam (lr 5e-4, multiplied by 0.9
every 5,000 steps, as in the paper) or SGD with momentum.  A fixed seed fixes
the initial parameters (drawn the same way for every mode, so the ReLU and
the spiking run of one seed start equal) and the order of the batches.

The data set is a standard one or a user's own (``npz:FILE``,
``folder:DIR``; a folder's ``image_size`` and ``channels`` are resolved on
the training split and kept in config.json, so evaluation and export read
the same images: :func:`load_split`).  ``device`` is auto, cpu or cuda
(ttfs.sw.distributed); with ``processes`` (torchrun) several processes train
one network with DistributedDataParallel and process 0 writes the run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ttfs.contract.datasets import (
    Dataset,
    DatasetError,
    check_dataset_name,
    is_image_folder,
    load_dataset,
    load_for_input,
    user_data_path,
)
from ttfs.contract.errors import TTFSError
from ttfs.contract.paths import RUN, check_output
from ttfs.sw import distributed, finetune, fitting, folding, models, vgg
from ttfs.sw.conv import ConvError, TTFSLayerNetwork
from ttfs.sw.models import TTFSNetwork
from ttfs.sw.ttfs import MAX_WIDTH, WindowedNetwork

MODES = ("relu", "snn", "snn-from-relu", "finetune")
#: Modes that start from a trained run (``init``).
INIT_MODES = ("snn-from-relu", "finetune")
#: The hardware settings of mode finetune (ttfs.sw.finetune.HardwareSettings).
HARDWARE_KEYS = ("noise", "time_steps", "weight_bits", "latency_quantile")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR = {"adam": 5e-4, "sgd": 0.05}

#: Every configuration key with its default; a --config file may set any of them.
DEFAULTS: dict[str, Any] = {
    "dataset": "mnist-sample",
    "data_dir": None,
    "widths": [340],
    "mode": "snn",
    "init": None,
    "optimizer": "adam",
    "lr": None,  # None: DEFAULT_LR of the optimiser
    "momentum": 0.9,
    "lr_decay": 0.9,
    "lr_decay_steps": 5000,
    "epochs": 40,
    "batch_size": 32,
    "seed": 0,
    "dtype": "float32",
    "window_factor": models.DEFAULT_WINDOW_FACTOR,
    "activity_penalty": 0.0,
    "arch": "fc",
    "layers": None,  # arch vgg: conv spec such as "16,P,32,P" (ttfs.sw.vgg)
    "batch_norm": None,  # arch vgg, mode relu: "before" or "after" the ReLU
    "noise": 0.0,
    "time_steps": None,
    "weight_bits": None,
    "latency_quantile": None,
    "image_size": None,  # folder:DIR data: resize every image to [height, width]
    "channels": None,  # folder:DIR data: 1 (grey) or 3 (RGB); None: 1 if every image is grey
    "device": "auto",  # auto, cpu or cuda (ttfs.sw.distributed)
    "out": None,  # None: runs/<name>
}

#: What an init run passes on to a run that starts from it, unless the run sets it: its data
#: (all four settings, unless the run names its own dataset) and its architecture.
INHERITED_DATA_KEYS = ("dataset", "data_dir", "image_size", "channels")
INHERITED_ARCHITECTURE_KEYS = ("arch", "layers", "widths", "batch_norm")

#: The activity metrics ``evaluate`` adds for a TTFS network (copied into reports).
ACTIVITY_KEYS = (
    "spikes_per_neuron",
    "input_spikes_per_neuron",
    "synaptic_events_per_image",
    "saturated_spikes",
    "latency",
    "windows",
)

#: Evaluation batch size: large, since no gradients are kept.
EVAL_BATCH = 1000


class TrainingError(TTFSError):
    """A training configuration or request is invalid."""


def _check_int(config: dict[str, Any], key: str, low: int, high: int | None = None) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise TrainingError(f"{key}: {value!r} is not an integer {bound}")


def _check_number(config: dict[str, Any], key: str, low: float, high: float | None = None, *, open_low: bool = True) -> None:
    value = config[key]
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'above' if open_low else 'at least'} {low}" + (f" and at most {high}" if high is not None else "")
        raise TrainingError(f"{key}: {value!r} must be a number {bound}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a --config file; unknown keys are refused."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: no such config file")
    config = models.read_json_object(path, TrainingError, "a JSON object of training settings")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise TrainingError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return config


def resolve_config(file_config: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the config file, then explicit overrides (None means "not given"); checked.

    A run that starts from another (``init``) takes that run's data set and
    architecture unless the file or the overrides set them.
    """
    given = dict(file_config or {})
    given.update({key: value for key, value in (overrides or {}).items() if value is not None})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise TrainingError(f"unknown setting(s) {', '.join(unknown)}")
    config = {**DEFAULTS, **given}
    if config["mode"] not in MODES:
        raise TrainingError(f"mode: {config['mode']!r} is not one of {', '.join(MODES)}")
    if config["mode"] in INIT_MODES and not config["init"]:
        raise TrainingError(f"mode {config['mode']} needs init: the run directory of the network to start from")
    if config["mode"] not in INIT_MODES and config["init"]:
        raise TrainingError(f"init is only used by mode snn-from-relu or finetune, not {config['mode']}")
    _check_hardware(config)
    if config["mode"] in INIT_MODES:
        init_config = models.read_config(config["init"])
        keys = INHERITED_ARCHITECTURE_KEYS + (() if "dataset" in given else INHERITED_DATA_KEYS)
        inherited = {key: init_config.get(key, DEFAULTS[key]) for key in keys}
        config = {**DEFAULTS, **inherited, **given}
    try:
        check_dataset_name(config["dataset"])
    except DatasetError as err:
        raise TrainingError(f"dataset: {err}") from None
    if config["optimizer"] not in OPTIMIZERS:
        raise TrainingError(f"optimizer: {config['optimizer']!r} is not one of {', '.join(OPTIMIZERS)}")
    if config["dtype"] not in models.DTYPES:
        raise TrainingError(f"dtype: {config['dtype']!r} is not one of {', '.join(models.DTYPES)}")
    if config["device"] not in distributed.DEVICES:
        raise TrainingError(f"device: {config['device']!r} is not one of {', '.join(distributed.DEVICES)}")
    _check_image_settings(config)
    _check_architecture(config, "widths" in given)
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    _check_number(config, "lr", 0.0)
    _check_number(config, "momentum", 0.0, 1.0, open_low=False)
    _check_number(config, "lr_decay", 0.0, 1.0)
    _check_int(config, "lr_decay_steps", 1)
    _check_int(config, "epochs", 1)
    _check_int(config, "batch_size", 1)
    _check_int(config, "seed", 0, 2**63 - 1)
    _check_number(config, "window_factor", 1.0)
    _check_number(config, "activity_penalty", 0.0, open_low=False)
    return config


def _check_image_settings(config: dict[str, Any]) -> None:
    """image_size [height, width] and channels (1 or 3): for folder:DIR data only."""
    size, channels = config["image_size"], config["channels"]
    if (size is not None or channels is not None) and not is_image_folder(config["dataset"]):
        raise TrainingError(f"image_size and channels resize a folder of images (folder:DIR); {config['dataset']} is read as it is")
    if size is not None:
        valid = isinstance(size, (list, tuple)) and len(size) == 2
        if not valid or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WIDTH for v in size):
            raise TrainingError(f"image_size: {size!r} is not [height, width] with sides in 1..{MAX_WIDTH}")
        config["image_size"] = list(size)
    if channels not in (None, 1, 3):
        raise TrainingError(f"channels: {channels!r} is not 1 or 3")


def _check_architecture(config: dict[str, Any], widths_given: bool) -> None:
    """Check arch, layers, widths and batch_norm; a vgg run's dense widths default to none."""
    if config["arch"] not in models.ARCHS:
        raise TrainingError(f"arch: {config['arch']!r} is not one of {', '.join(models.ARCHS)}")
    if config["arch"] == "fc":
        if config["layers"] is not None or config["batch_norm"] is not None:
            raise TrainingError("layers and batch_norm describe conv networks: they need arch vgg")
        config["widths"] = models.check_widths(config["widths"])
        return
    if config["mode"] in INIT_MODES:
        return  # the architecture comes from the init run
    if not config["layers"]:
        raise TrainingError('arch vgg needs layers, the conv spec, e.g. "16,P,32,P" (P: 2x2 max-pool)')
    if not widths_given:
        # A named layout brings its dense head; otherwise the last conv maps feed the readout directly.
        layout = vgg.VGG_LAYOUTS.get(config["layers"])
        config["widths"] = list(layout[1]) if layout else []
    if config["batch_norm"] is not None and config["mode"] != "relu":
        raise TrainingError(
            "batch_norm: batch norm exists only in the ReLU twin; use mode relu (the run folds it into the TTFS network)"
        )
    try:
        # The data set's shape is not known yet: any fitting shape checks the spec's syntax and widths.
        vgg.VGGSpec.create(config["layers"], list(config["widths"]), (1, 1 << 12, 1 << 12), 1, batch_norm=config["batch_norm"])
    except ConvError as err:
        raise TrainingError(str(err)) from None
    config["layers"] = vgg.layers_text(vgg.parse_layers(config["layers"]))


def _check_hardware(config: dict[str, Any]) -> None:
    """The hardware settings: valid, and given exactly when the mode is finetune."""
    settings = hardware_settings(config)
    if config["mode"] == "finetune" and not settings.active:
        raise TrainingError("mode finetune needs at least one of noise, time_steps, weight_bits, latency_quantile")
    if config["mode"] != "finetune" and settings.active:
        raise TrainingError(
            f"{settings.describe()}: hardware settings are for mode finetune (with init RUN), not {config['mode']}"
        )


def hardware_settings(config: dict[str, Any]) -> finetune.HardwareSettings:
    """The ttfs.sw.finetune settings a configuration holds."""
    try:
        return finetune.HardwareSettings(**{key: config[key] for key in HARDWARE_KEYS})
    except finetune.FineTuneError as err:
        raise TrainingError(str(err)) from None


def run_name(config: dict[str, Any]) -> str:
    """Default run name, e.g. ``mnist-sample-fc340-snn-seed0`` or ``mnist-sample-vgg16-P-32-P-relu-bn-after-seed0``."""
    widths = "-".join(str(width) for width in config["widths"])
    if config["arch"] == "vgg":
        shape = "vgg" + config["layers"].replace(",", "-") + (f"-fc{widths}" if widths else "")
        shape += f"-bn-{config['batch_norm']}" if config["batch_norm"] else ""
    else:
        shape = f"fc{widths}"
    mode = config["mode"]
    if mode == "finetune":  # one init run has many fine-tunings: name the settings
        labels = {"noise": "noise", "time_steps": "T", "weight_bits": "w", "latency_quantile": "q"}
        mode += "".join(f"-{label}{config[key]:g}" for key, label in labels.items() if config[key])
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{config['dataset']}-{shape}-{mode}-seed{config['seed']}")


def load_split(config: dict[str, Any], split: str, *, dataset: str | None = None, data_dir: str | None = None) -> Dataset:
    """Split ``split`` of a run's data set as the run was trained on it, checked against its input shape.

    ``dataset`` and ``data_dir`` replace the run's own; a folder of images is
    read at the run's image size and channels (its input shape).
    """
    name = config["dataset"] if dataset is None else dataset
    try:
        check_dataset_name(name)
    except DatasetError as err:
        raise TrainingError(f"dataset: {err}") from None
    data = load_for_input(name, split, config.get("data_dir") if data_dir is None else data_dir, config["input_shape"])
    if list(data.images.shape[1:]) != list(config["input_shape"]):
        raise TrainingError(f"{name} {split} images have shape {list(data.images.shape[1:])}, "
                            f"the run expects {list(config['input_shape'])}")  # fmt: skip
    if data.labels is None:
        raise TrainingError(f"{name}: training and evaluation need labels")
    return data


def to_tensors(dataset: Dataset, dtype: torch.dtype, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Images as floats v/255 in [0, 1] (N, C, H, W) and labels as int64, on ``device``."""
    if dataset.labels is None:
        raise TrainingError(f"{dataset.name}: training and evaluation need labels")
    images = torch.from_numpy(dataset.images.astype(np.float64) / 255.0).to(dtype)
    return images.to(device), torch.from_numpy(dataset.labels.astype(np.int64)).to(device)


def make_optimizer(
    parameters, config: dict[str, Any]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and its step-wise schedule: lr x lr_decay every lr_decay_steps steps."""
    if config["optimizer"] == "adam":
        optimizer = torch.optim.Adam(parameters, lr=config["lr"])
    else:
        optimizer = torch.optim.SGD(parameters, lr=config["lr"], momentum=config["momentum"])
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config["lr_decay_steps"], gamma=config["lr_decay"])
    return optimizer, schedule


def logits_and_hidden(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and the hidden layers' activations (for a TTFS network: t_max(n) - spike time).

    ``model`` may be wrapped for several processes (ttfs.sw.distributed).
    """
    network = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(network, WindowedNetwork):
        logits, times = model(images, return_times=True)
        return logits, network.activations(times)[1:]
    logits, activations = model(images, return_activations=True)
    return logits, activations[1:]


def training_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, activity_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): cross-entropy plus ``activity_penalty`` x the mean hidden activation.

    The penalty is an L1 term on activations, i.e. on how early the hidden
    neurons spike; it drives activations to exactly 0 (no spike) and so
    lowers the spike count.  It is the same function of the weights for a
    TTFS network and its ReLU twin.
    """
    if activity_penalty == 0:
        logits = model(images)
        return nn.functional.cross_entropy(logits, labels), logits
    logits, hidden = logits_and_hidden(model, images)
    activity = torch.cat([activation.flatten(1) for activation in hidden], dim=1).mean()
    return nn.functional.cross_entropy(logits, labels) + activity_penalty * activity, logits


def train_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
    activity_penalty: float = 0.0,
    on_step: Callable[[float], None] | None = None,
    shard: fitting.Shard | None = None,
) -> tuple[float, float]:
    """One pass over the data in shuffled batches; returns (mean objective, accuracy) seen while training.

    The objective is the cross-entropy plus the activity penalty, if any; the
    loop is ttfs.sw.fitting's, with the learning-rate ``schedule`` stepping
    after every batch.  ``on_step`` receives each batch's loss (the
    equivalence tests record curves with it); ``shard`` is this process's
    part of every batch when several train ``model`` (ttfs.sw.distributed).
    """

    def loss_and_logits(batch_images: torch.Tensor, batch_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return training_loss(model, batch_images, batch_labels, activity_penalty)

    return fitting.fit_epoch(
        model, loss_and_logits, images, labels, optimizer, batch_size, generator, schedule=schedule, on_step=on_step,
        shard=shard,
    )  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Accuracy and loss; for a TTFS network also its activity.

    Activity of a TTFS network: ``spikes_per_neuron`` per hidden layer (the
    fraction of its neurons that fire, averaged over images),
    ``input_spikes_per_neuron`` (non-zero pixels), ``synaptic_events_per_image``
    (every spike times its fan-out, input layer included) and
    ``saturated_spikes`` (hidden spikes held at t_min because the activation
    exceeded the window; 0 means the network equals its ReLU twin).
    """
    model.eval()
    is_snn = isinstance(model, WindowedNetwork)
    total_loss = 0.0
    correct = 0
    spikes = None
    saturated = 0
    conv_events = 0.0  # a conv network counts its synaptic events itself (receptive fields, pooling)
    for index in fitting.batch_indices(len(labels), batch_size, None):
        if is_snn:
            logits, times = model(images[index], return_times=True)
            counts = [mask.sum(dtype=torch.int64) for mask in model.fired(times)]
            spikes = counts if spikes is None else [a + b for a, b in zip(spikes, counts)]
            saturated += int(sum(mask.sum() for mask in model.saturated(times)))
            if isinstance(model, TTFSLayerNetwork):
                conv_events += float(model.synaptic_events(times))
        else:
            logits = model(images[index])
        total_loss += float(nn.functional.cross_entropy(logits, labels[index], reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels[index]).sum())
    count = len(labels)
    metrics: dict[str, Any] = {"accuracy": correct / count, "loss": total_loss / count, "images": count}
    if is_snn:
        widths = model.sizes[:-1]  # spiking layers: input, hidden...
        fan_outs = model.sizes[1:]
        per_neuron = [int(total) / (count * width) for total, width in zip(spikes, widths)]
        metrics["input_spikes_per_neuron"] = per_neuron[0]
        metrics["spikes_per_neuron"] = per_neuron[1:]
        if isinstance(model, TTFSLayerNetwork):
            metrics["synaptic_events_per_image"] = conv_events / count
        else:
            metrics["synaptic_events_per_image"] = sum(int(total) * fan_out for total, fan_out in zip(spikes, fan_outs)) / count
        metrics["saturated_spikes"] = saturated
        metrics["latency"] = model.latency
        metrics["windows"] = model.windows()
    return metrics


def snn_and_relu_metrics(snn: TTFSNetwork, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Evaluate a TTFS network and its ReLU twin on the same images; merged metrics."""
    metrics = evaluate(snn, images, labels)
    relu = evaluate(models.snn_to_relu(snn), images, labels)
    metrics["relu_accuracy"] = relu["accuracy"]
    metrics["relu_loss"] = relu["loss"]
    return metrics


def initial_model(config: dict[str, Any], sizes: list[int]) -> nn.Module:
    """The network a run starts from: seeded fresh parameters or the ``init`` run's."""
    dtype = models.DTYPES[config["dtype"]]
    if config["mode"] in INIT_MODES:
        snn, _ = models.load_run(config["init"])
        return snn.to(dtype)
    if config["arch"] == "vgg":
        spec = vgg.spec_from_config(config)
        relu = config["mode"] == "relu"
        return vgg.build_seeded(spec, seed=config["seed"], dtype=dtype, relu=relu, window_factor=config["window_factor"])
    snn = models.build_network(sizes, seed=config["seed"], dtype=dtype, window_factor=config["window_factor"])
    return models.snn_to_relu(snn) if config["mode"] == "relu" else snn


def relu_run_to_snn(relu: nn.Module, window_factor: float, train_images: torch.Tensor) -> WindowedNetwork:
    """The TTFS network of a trained ReLU twin (batch norm folded first), windows calibrated on the training set."""
    if isinstance(relu, vgg.ReLUConvNetwork):
        snn = vgg.relu_to_snn(folding.fold_network(relu), window_factor=window_factor)
    else:
        snn = models.relu_to_snn(relu, window_factor=window_factor)
    models.calibrate_windows(snn, (train_images[index] for index in fitting.batch_indices(len(train_images), EVAL_BATCH, None)))
    return snn


def train_run(
    config: dict[str, Any], progress: bool = True, processes: distributed.Processes | None = None
) -> tuple[WindowedNetwork, dict[str, Any], dict[str, Any] | None]:
    """Train as ``config`` (resolved or not) says and write the run directory.

    Returns (trained TTFS network, resolved config, report).  A ReLU run is
    converted to its TTFS network (B1) with windows calibrated on the
    training set, so every run directory holds a spiking network.  With
    ``processes`` (ttfs.sw.distributed) this process is one of several that
    train the network together; only process 0 evaluates and writes the run
    (the others return None for the report).
    """
    from tqdm import tqdm

    if processes is not None and config.get("mode") == "finetune":
        raise TrainingError(f"mode finetune runs in one process; start it without torchrun ({processes.world_size} processes)")
    config = resolve_config({key: config[key] for key in DEFAULTS if key in config})
    device = processes.device if processes is not None else distributed.resolve_device(config["device"])
    main = processes is None or processes.main
    init_config = models.read_config(config["init"]) if config["mode"] in INIT_MODES else None
    # The output is checked before any work (the name depends on the settings only, not on the data).
    config["name"] = run_name(config)
    run_dir = Path(config["out"] or Path("runs") / config["name"])
    check_output(run_dir, "--out", kind=RUN,
                 inputs=[config["init"], user_data_path(config["dataset"]), config["data_dir"]])
    train_set, test_set = _load_training_data(config)
    if init_config is not None:
        for key in ("input_shape", "arch", "layers", "widths", "classes"):
            if init_config.get(key, DEFAULTS.get(key)) != config[key]:
                raise TrainingError(f"init run {config['init']}: {key} {init_config.get(key)} does not match this run's {config[key]}")
        config["window_factor"] = init_config["window_factor"]
    channels, height, width = config["input_shape"]
    try:
        if config["arch"] == "vgg":
            sizes = []  # the conv network's shape comes from its spec
            vgg.spec_from_config(config)
        else:
            sizes = models.layer_sizes(channels * height * width, config["widths"], len(config["classes"]))
    except (models.ModelError, ConvError) as err:
        raise TrainingError(str(err)) from None
    config["out"] = str(run_dir)
    config["train_images"] = len(train_set.labels)
    config["test_images"] = len(test_set.labels)

    dtype = models.DTYPES[config["dtype"]]
    train_images, train_labels = to_tensors(train_set, dtype, device)
    test_images, test_labels = to_tensors(test_set, dtype, device)
    model = initial_model(config, sizes).to(device)
    if config["mode"] == "finetune":
        snn, tuning = finetune.finetune(
            model, (train_images, train_labels), (test_images, test_labels), hardware_settings(config),
            epochs=config["epochs"], lr=config["lr"], batch_size=config["batch_size"], seed=config["seed"], progress=progress,
        )  # fmt: skip
        report = finetune_report(snn, config, tuning, (train_images, train_labels), (test_images, test_labels))
        report["device"] = str(device)
        write_run(run_dir, snn, config, report)
        return snn, config, report
    trainee = model if processes is None else processes.wrap(model)
    optimizer, schedule = make_optimizer(trainee.parameters(), config)
    generator = torch.Generator().manual_seed(config["seed"])

    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "train_accuracy": [], "test_loss": [], "test_accuracy": []}
    epoch_seconds = []
    bar = tqdm(range(1, config["epochs"] + 1), desc=f"train {config['mode']}", unit="epoch", disable=not (progress and main))
    for epoch in bar:
        start = time.perf_counter()
        loss, accuracy = train_epoch(
            trainee, train_images, train_labels, optimizer, schedule, config["batch_size"], generator, config["activity_penalty"],
            shard=processes,
        )  # fmt: skip
        epoch_seconds.append(time.perf_counter() - start)
        if not main:
            continue
        test = evaluate(model, test_images, test_labels)
        for key, value in (("epoch", epoch), ("train_loss", loss), ("train_accuracy", accuracy), ("test_loss", test["loss"]), ("test_accuracy", test["accuracy"])):
            history[key].append(value)
        bar.set_postfix(loss=f"{loss:.4f}", test=f"{100 * test['accuracy']:.2f}%")
    model = distributed.unwrap(trainee)
    if not main:
        return model, config, None

    if isinstance(model, WindowedNetwork):
        snn = model
    else:
        snn = relu_run_to_snn(model, config["window_factor"], train_images)
    test = snn_and_relu_metrics(snn, test_images, test_labels)
    train = snn_and_relu_metrics(snn, train_images, train_labels)
    trained_in_snn = config["mode"] != "relu"
    report = {
        "mode": config["mode"],
        "dataset": config["dataset"],
        "sizes": snn.sizes,
        "dtype": config["dtype"],
        "test_accuracy": test["accuracy"] if trained_in_snn else test["relu_accuracy"],
        "train_accuracy": train["accuracy"] if trained_in_snn else train["relu_accuracy"],
        "snn_test_accuracy": test["accuracy"],
        "relu_test_accuracy": test["relu_accuracy"],
        "snn_train_accuracy": train["accuracy"],
        "relu_train_accuracy": train["relu_accuracy"],
        "snn_test_loss": test["loss"],
        "relu_test_loss": test["relu_loss"],
        "train_saturated_spikes": train["saturated_spikes"],
        **{key: test[key] for key in ACTIVITY_KEYS},
        "epochs": config["epochs"],
        "steps": config["epochs"] * math.ceil(len(train_labels) / config["batch_size"]),
        "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds),
        "epoch_seconds_each": epoch_seconds,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "processes": 1 if processes is None else processes.world_size,
        "history": history,
    }
    if config["arch"] == "vgg":
        report["arch"] = "vgg"
        report["layers"] = config["layers"]
        report["widths"] = config["widths"]
        report["batch_norm"] = config["batch_norm"]
        if not trained_in_snn:
            # The ReLU twin as trained (batch norm unfolded) against the folded network it became.
            report["unfolded_relu_test_accuracy"] = evaluate(model, test_images, test_labels)["accuracy"]
    write_run(run_dir, snn, config, report)
    return snn, config, report


def _load_training_data(config: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """The train and test splits; sets the config's input_shape and classes, and a folder's image size and channels."""
    name = config["dataset"]
    if is_image_folder(name):
        size = tuple(config["image_size"]) if config["image_size"] is not None else None
        train_set = load_dataset(name, "train", image_size=size, channels=config["channels"])
        # The test split is read at the size and channels the training split resolved.
        channels, height, width = (int(v) for v in train_set.images.shape[1:])
        config["channels"], config["image_size"] = channels, [height, width]
    else:
        train_set = load_dataset(name, "train", config["data_dir"])
    config["input_shape"] = list(train_set.images.shape[1:])
    config["classes"] = list(train_set.classes) or [str(k) for k in range(int(train_set.labels.max()) + 1)]
    return train_set, load_split(config, "test")


def finetune_report(
    snn: nn.Module,
    config: dict[str, Any],
    tuning: dict[str, Any],
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """The report of a finetune run: accuracies with the hardware settings, the ideal metrics, before/after."""
    settings = hardware_settings(config)
    ideal_test = snn_and_relu_metrics(snn, *test)
    ideal_train = evaluate(snn, *train)
    train_hardware = finetune.hardware_accuracy(snn, *train, settings, seed=config["seed"])
    history = tuning["history"]
    return {
        "mode": "finetune",
        "dataset": config["dataset"],
        "arch": config["arch"],
        "sizes": snn.sizes,
        "dtype": config["dtype"],
        "init": config["init"],
        "test_accuracy": tuning["after"]["accuracy"],
        "train_accuracy": train_hardware["accuracy"],
        "snn_test_accuracy": ideal_test["accuracy"],
        "relu_test_accuracy": ideal_test["relu_accuracy"],
        "snn_train_accuracy": ideal_train["accuracy"],
        "relu_train_accuracy": evaluate(models.snn_to_relu(snn), *train)["accuracy"],
        "snn_test_loss": ideal_test["loss"],
        "relu_test_loss": ideal_test["relu_loss"],
        **{key: ideal_test[key] for key in ACTIVITY_KEYS},
        "finetune": {key: value for key, value in tuning.items() if key != "history"},
        **({key: config[key] for key in ("layers", "widths", "batch_norm")} if config["arch"] == "vgg" else {}),
        "epochs": config["epochs"],
        "epoch_seconds": float(np.mean(tuning["epoch_seconds_each"])) if tuning["epoch_seconds_each"] else 0.0,
        "epoch_seconds_each": tuning["epoch_seconds_each"],
        "steps": config["epochs"] * math.ceil(len(train[1]) / config["batch_size"]),
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }


def write_run(run_dir: Path, snn: WindowedNetwork, config: dict[str, Any], report: dict[str, Any]) -> None:
    """Write config.json, checkpoint.pt, report.json and, when the report has a history of epochs, curve.png into ``run_dir``.

    The files are written into a temporary folder beside ``run_dir`` first and
    moved in only when all exist, so a failure leaves no half-written run.
    """
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        models.save_run_model(staging, snn, config)
        (staging / models.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        names = [models.CONFIG_FILE, models.CHECKPOINT_FILE, models.REPORT_FILE]
        if report["history"].get("epoch"):
            plot_curve(report["history"], staging / models.CURVE_FILE, title=config["name"])
            names.append(models.CURVE_FILE)
        run_dir.mkdir(exist_ok=True)
        for name in names:
            os.replace(staging / name, run_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def plot_curve(history: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch (train and test) as a PNG, drawn with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = history["epoch"]
    loss_axes.plot(epochs, history["train_loss"], label="train (objective, with any activity penalty)")
    loss_axes.plot(epochs, history["test_loss"], label="test (cross-entropy)")
    loss_axes.set(xlabel="epoch", ylabel="loss", yscale="log")
    accuracy_axes.plot(epochs, [100 * v for v in history["train_accuracy"]], label="train")
    accuracy_axes.plot(epochs, [100 * v for v in history["test_accuracy"]], label="test")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy (%)")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=100)


def summary_lines(report: dict[str, Any], split: str = "test") -> list[str]:
    """A readable summary of a report from ``train_run`` or ``ttfs eval`` (accuracies of ``split``)."""
    snn_accuracy = report[f"snn_{split}_accuracy"]
    relu_accuracy = report[f"relu_{split}_accuracy"]
    spikes = ", ".join(f"{value:.3f}" for value in report["spikes_per_neuron"])
    origin = f"converted from {report['source']}" if report["mode"] == "convert" else f"trained as {report['mode']}"
    lines = [
        f"network          {'-'.join(str(s) for s in report['sizes'])} ({origin}, {report['dtype']})",
    ]
    if report.get("arch") == "vgg" and "layers" in report:
        norm = f", batch norm {report['batch_norm']} the ReLU, folded" if report.get("batch_norm") else ""
        dense = ",".join(str(width) for width in report["widths"]) or "none"
        lines.append(f"conv layers      {report['layers']}, dense {dense}{norm} (sizes: neurons per layer)")
    if "max_logit_difference" in report:
        lines.append(f"original model   {100 * report['original_test_accuracy']:.2f} % test; its logits and the spiking "
                     f"network's differ by at most {report['max_logit_difference']:.3g}")  # fmt: skip
    if "unfolded_relu_test_accuracy" in report:
        lines.append(f"unfolded ReLU    {100 * report['unfolded_relu_test_accuracy']:.2f} % test (as trained, before folding)")
    lines += [
        f"{split + ' accuracy':<17}{100 * snn_accuracy:.2f} % spiking, {100 * relu_accuracy:.2f} % ReLU twin "
        f"(difference {100 * (snn_accuracy - relu_accuracy):.2f} pp)",
    ]
    if split == "test" and "train_accuracy" in report:
        lines.append(f"{'train accuracy':<17}{100 * report['train_accuracy']:.2f} % (as trained)")
    lines += [
        f"spikes/neuron    {spikes} (hidden layers), {report['input_spikes_per_neuron']:.3f} (input)",
        f"synaptic events  {report['synaptic_events_per_image']:.0f} per image",
        f"latency          {report['latency']:.3f} (readout t_min; input window [0, 1])",
        f"saturated spikes {report['saturated_spikes']}",
    ]
    if "epoch_seconds" in report:
        lines.append(f"epoch time       {report['epoch_seconds']:.3f} s (mean of {report['epochs']} epochs)")
    if "finetune" in report:
        lines += finetune.summary_lines(report["finetune"])
    return lines

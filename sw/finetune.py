"""Fine-tuning TTFS networks for hardware: spike-time noise, time and weight quantisation, low latency.

Every fine-tuning runs the network through :func:`hardware_forward`, the
TTFS forward pass with the hardware's imperfections applied, and trains
through it (windows fixed, straight-through gradients where rounding is
involved).  It works for the dense networks of ttfs.sw.models and the conv
networks of ttfs.sw.conv alike.

- Spike-time noise (``noise`` = sigma): every hidden spike is jittered by
  Gaussian noise of standard deviation sigma x (the layer's window length),
  then held inside its window [t_min, t_max]; a spike pushed to t_max or
  later arrives after the next layer stopped integrating and is lost.
  Silent neurons stay silent.  The input layer is not jittered (the encoder
  is digital).  Noise is drawn in training and in testing.
- Time quantisation (``time_steps`` = T): the spike times of every layer,
  input included, lie on a grid of T steps per window: activation
  a in [0, window] becomes (window / T) * floor(a T / window + 1/2), which is
  0 (no spike) below half a step.  This is the contract's T (activation
  step Delta(n) = window / T).
- Weight quantisation (``weight_bits`` = B): every weight matrix (readout
  included) is rounded to B-bit signed integers times a power-of-two scale
  2^ceil(log2(max|W| / (2^(B-1) - 1))), so the largest weight fits;
  gradients pass straight through.  Biases stay in float: the contract's
  integer bias has up to 48 bits, far finer than the weights.
- Low latency (``latency_quantile`` = Q): the paper's window rule leaves
  each window 10x the largest activation seen in training.  Each hidden
  window is shrunk, layer by layer, to the Q-quantile of the layer's
  positive activations on training images; larger activations saturate (the
  spike is held at t_min: a clipped ReLU), and fine-tuning through the
  clipped ReLU recovers the accuracy.  The latency (readout t_min) falls by
  the ratio reported.  Time quantisation needs tight windows too (otherwise
  most of the T steps are never used), so when T is given without Q the
  windows are shrunk to :data:`DEFAULT_TIME_QUANTILE`.

:func:`finetune` measures every setting before and after fine-tuning (the
training loop is ttfs.sw.fitting's) and returns a report; :func:`sweep`
evaluates accuracy against noise, T or B (tables and plots of ttfs.sw.sweeps).
Rounding is the quantisation's (ttfs.sw.quantize.round_half_up, with its
straight-through gradients).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from ttfs.contract.errors import TTFSError
from ttfs.sw import fitting, sweeps
from ttfs.sw.quantize import round_half_up, signed_range, straight_through
from ttfs.sw.ttfs import Alpha1Dense, WindowedLayer

#: Window quantile used for time quantisation when no latency quantile is given.
DEFAULT_TIME_QUANTILE = 0.9999
#: Images used to measure activation quantiles when shrinking windows.
QUANTILE_IMAGES = 1000
EVAL_BATCH = 500


class FineTuneError(TTFSError):
    """A fine-tuning setting is out of range or the network cannot be fine-tuned."""


@dataclass(frozen=True)
class HardwareSettings:
    """The imperfections :func:`hardware_forward` applies (None / 0: that one is off)."""

    noise: float = 0.0
    time_steps: int | None = None
    weight_bits: int | None = None
    latency_quantile: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
            raise FineTuneError(f"noise: {self.noise!r} must be a finite sigma >= 0 (in units of each window)")
        steps = self.time_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= 1 << 16):
            raise FineTuneError(f"time steps: {steps!r} is not an integer in 2..65536")
        bits = self.weight_bits
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16):
            raise FineTuneError(f"weight bits: {bits!r} is not an integer in 2..16")
        quantile = self.latency_quantile
        if quantile is not None and not (isinstance(quantile, (int, float)) and 0 < quantile <= 1):
            raise FineTuneError(f"latency quantile: {quantile!r} must be in (0, 1]")

    @property
    def active(self) -> bool:
        """True when any imperfection is switched on."""
        return bool(self.noise) or any(v is not None for v in (self.time_steps, self.weight_bits, self.latency_quantile))

    @property
    def window_quantile(self) -> float | None:
        """The quantile windows are shrunk to before fine-tuning (None: windows as trained)."""
        if self.latency_quantile is not None:
            return float(self.latency_quantile)
        return DEFAULT_TIME_QUANTILE if self.time_steps is not None else None

    def describe(self) -> str:
        """A short label, e.g. "noise 0.05, T=16, 4-bit weights"."""
        parts = []
        if self.noise:
            parts.append(f"noise {self.noise:g}")
        if self.time_steps is not None:
            parts.append(f"T={self.time_steps}")
        if self.weight_bits is not None:
            parts.append(f"{self.weight_bits}-bit weights")
        if self.latency_quantile is not None:
            parts.append(f"windows at quantile {self.latency_quantile:g}")
        return ", ".join(parts) or "ideal"


def weight_scale(weight: torch.Tensor, bits: int) -> float:
    """The power-of-two scale 2^ceil(log2(max|W| / (2^(B-1) - 1))) that fits the largest weight."""
    largest = float(weight.detach().abs().max())
    if largest == 0:
        return 1.0
    return 2.0 ** math.ceil(math.log2(largest / signed_range(bits)[1]))


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """B-bit signed integers times a power-of-two scale, with straight-through gradients."""
    scale = weight_scale(weight, bits)
    levels = torch.clamp(round_half_up(weight.detach() / scale), *signed_range(bits))
    return straight_through(weight, levels * scale)


def quantize_activation(activation: torch.Tensor, window: torch.Tensor, steps: int) -> torch.Tensor:
    """Activations in [0, window] on a grid of ``steps`` steps (round half up), straight-through."""
    step = window / steps
    levels = torch.clamp(round_half_up(activation.detach() / step), 0, steps)
    return straight_through(activation, levels * step)


def jitter_spike_times(
    times: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian jitter of std sigma x window on the neurons that fired; silent ones stay at t_max."""
    # Drawn on the CPU (the generator's device): the same noise on any device.
    noise = torch.randn(times.shape, generator=generator, dtype=times.dtype).to(times.device) * (sigma * (t_max - t_min))
    jittered = torch.minimum(torch.maximum(times + noise, t_min), t_max)
    return torch.where(times < t_max, jittered, times)


def check_network(model: nn.Module) -> None:
    """Refuse networks hardware_forward cannot run (alpha-1 layers, no layers)."""
    layers = getattr(model, "layers", None)
    if not layers:
        raise FineTuneError("network: expected a TTFS network with .layers")
    for index, layer in enumerate(layers):
        if isinstance(layer, Alpha1Dense):
            raise FineTuneError(f"layers[{index}]: alpha-1 layers are not fine-tuned for hardware (B1 only)")


def hardware_forward(
    model: nn.Module,
    images: torch.Tensor,
    settings: HardwareSettings,
    generator: torch.Generator | None = None,
    return_times: bool = False,
    *,
    drive_of: nn.Module | None = None,
):
    """Logits of ``model`` with the hardware imperfections of ``settings`` applied (windows fixed).

    Windows are used as they are (shrink them first with
    :func:`shrink_windows`); spikes before t_min are held at t_min (clipped
    ReLU).  With ``return_times`` also the spike times of the input and of
    every firing layer; with ``drive_of`` (one of the model's layers) only
    that layer's drive V(t_min) + b.  Differentiable (straight-through
    through rounding).
    """
    t = model.encode(images)
    if settings.time_steps is not None:
        input_window = model.input_t_max - model.input_t_min
        t = model.input_t_max - quantize_activation(model.input_t_max - t, input_window, settings.time_steps)
    times = [t]
    for layer in model.layers:
        if not isinstance(layer, WindowedLayer):
            t = layer(t)  # pool, flatten: spike routing, no window
            continue
        weight = layer.weight if settings.weight_bits is None else quantize_weight(layer.weight, settings.weight_bits)
        drive = layer.drive_at_t_min(t, weight)
        if layer is drive_of:
            return drive
        if layer.readout:
            return (drive, times) if return_times else drive
        t = layer.fire(drive, clip_early=True)
        if settings.noise:
            t = jitter_spike_times(t, layer.t_min, layer.t_max, settings.noise, generator)
        if settings.time_steps is not None:
            t = layer.t_max - quantize_activation(layer.t_max - t, layer.window, settings.time_steps)
        times.append(t)
    raise FineTuneError("network: the last layer must be a readout")


@torch.no_grad()
def shrink_windows(model: nn.Module, images: torch.Tensor, quantile: float) -> list[tuple[float, float]]:
    """Shrink every hidden window to the ``quantile`` of its layer's positive activations.

    Layer by layer, so each layer sees the clipped outputs of the shrunk
    layers before it; later windows shift so they stay chained.  Returns the
    new windows (``model.windows()``); a layer that never fires on
    ``images`` gets length 1.
    """
    check_network(model)
    model.eval()
    windowed = model.windowed_layers
    for index, layer in enumerate(windowed[:-1]):
        drive = hardware_forward(model, images, HardwareSettings(), drive_of=layer)
        positive = drive[drive > 0].double().cpu().numpy()
        length = float(np.quantile(positive, quantile)) if positive.size else 1.0
        shift = (layer.t_min + length) - layer.t_max
        for later in windowed[index:]:
            if later is not layer:
                later.t_min += shift
            later.t_max += shift
    return model.windows()


@torch.no_grad()
def hardware_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: HardwareSettings,
    *,
    seed: int = 0,
    repeats: int = 1,
    batch_size: int = EVAL_BATCH,
) -> dict[str, float]:
    """Accuracy under ``settings`` (windows as they are): mean and spread over ``repeats`` noise draws.

    Without noise the forward pass is deterministic and one draw is made.
    """
    check_network(model)
    model.eval()
    draws = repeats if settings.noise else 1
    accuracies, losses = [], []
    for draw in range(draws):
        generator = torch.Generator().manual_seed(seed + draw)
        correct, loss = 0, 0.0
        for start in range(0, len(labels), batch_size):
            batch_labels = labels[start : start + batch_size]
            logits = hardware_forward(model, images[start : start + batch_size], settings, generator)
            correct += int((logits.argmax(dim=1) == batch_labels).sum())
            loss += float(nn.functional.cross_entropy(logits, batch_labels, reduction="sum"))
        accuracies.append(correct / len(labels))
        losses.append(loss / len(labels))
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "loss": float(np.mean(losses)),
        "draws": draws,
        "latency": float(model.latency),
    }


def quantize_weights_in_place(model: nn.Module, bits: int) -> None:
    """Replace every weight by its B-bit power-of-two-scaled value (idempotent)."""
    with torch.no_grad():
        for layer in model.windowed_layers:
            layer.weight.copy_(quantize_weight(layer.weight, bits))


def finetune(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    settings: HardwareSettings,
    *,
    epochs: int = 5,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    repeats: int = 3,
    progress: bool = False,
    on_step: Callable[[float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``model`` under ``settings``; report accuracy and latency before and after.

    ``train`` and ``test`` are (images in [0, 1], labels).  Windows are
    first shrunk to ``settings.window_quantile`` (on up to
    :data:`QUANTILE_IMAGES` training images) if it is set; they stay fixed
    while Adam (``lr``) trains every weight and bias through
    :func:`hardware_forward` for ``epochs`` epochs.  Noise is drawn afresh
    every step (seeded).  With weight bits the returned network holds the
    quantised weights, so it is the network the hardware runs.

    The report has ``baseline`` (the model as given, no imperfection),
    ``before`` (imperfections on, before fine-tuning: what the untuned
    network loses), ``after`` (imperfections on, after), ``after_ideal``
    (the tuned network without noise or quantisation, in its windows) and
    ``latency_factor`` (baseline latency / tuned latency), and the
    per-epoch ``history`` (training loss and accuracy seen while training,
    test loss and accuracy with the imperfections, one noise draw).
    """
    from tqdm import tqdm

    check_network(model)
    fitting.check_fit_settings(FineTuneError, epochs, lr, batch_size)
    train_images, train_labels = train
    test_images, test_labels = test
    ideal = HardwareSettings()
    baseline = hardware_accuracy(model, test_images, test_labels, ideal)
    tuned = copy.deepcopy(model)
    if settings.window_quantile is not None:
        shrink_windows(tuned, train_images[:QUANTILE_IMAGES], settings.window_quantile)
    before = hardware_accuracy(tuned, test_images, test_labels, settings, seed=seed, repeats=repeats)

    noise_generator = torch.Generator().manual_seed(seed + 1_000_003)

    def loss_and_logits(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = hardware_forward(tuned, images, settings, noise_generator)
        return nn.functional.cross_entropy(logits, labels), logits

    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "train_accuracy": [], "test_loss": [], "test_accuracy": []}
    bar = tqdm(total=epochs, desc=f"fine-tune ({settings.describe()})", unit="epoch", disable=not progress)
    epoch_seconds = []
    start = time.perf_counter()
    for epoch, loss, accuracy in fitting.adam_epochs(
        tuned, loss_and_logits, train_images, train_labels, epochs, lr=lr, batch_size=batch_size, seed=seed, on_step=on_step
    ):
        epoch_seconds.append(time.perf_counter() - start)
        test = hardware_accuracy(tuned, test_images, test_labels, settings, seed=seed)
        for key, value in (
            ("epoch", epoch), ("train_loss", loss), ("train_accuracy", accuracy),
            ("test_loss", test["loss"]), ("test_accuracy", test["accuracy"]),
        ):  # fmt: skip
            history[key].append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", test=f"{100 * test['accuracy']:.2f}%")
        start = time.perf_counter()
    bar.close()
    tuned.eval()
    if settings.weight_bits is not None:
        quantize_weights_in_place(tuned, settings.weight_bits)
    after = hardware_accuracy(tuned, test_images, test_labels, settings, seed=seed, repeats=repeats)
    after_ideal = hardware_accuracy(tuned, test_images, test_labels, ideal)
    report = {
        "settings": asdict(settings),
        "label": settings.describe(),
        "window_quantile": settings.window_quantile,
        "baseline": baseline,
        "before": before,
        "after": after,
        "after_ideal": after_ideal,
        "recovered": after["accuracy"] - before["accuracy"],
        "latency_factor": baseline["latency"] / after["latency"],
        "windows_before": model.windows(),
        "windows_after": tuned.windows(),
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "epoch_seconds_each": epoch_seconds,
        "history": history,
    }
    return tuned, report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A readable before/after summary of a :func:`finetune` report."""
    def pct(entry: dict[str, float]) -> str:
        spread = f" +- {100 * entry['accuracy_std']:.2f}" if entry.get("draws", 1) > 1 else ""
        return f"{100 * entry['accuracy']:.2f} %{spread}"

    return [
        f"fine-tuning      {report['label']} ({report['epochs']} epochs, lr {report['lr']:g})",
        f"as trained       {pct(report['baseline'])} without imperfections, latency {report['baseline']['latency']:.3f}",
        f"before tuning    {pct(report['before'])} with them, latency {report['before']['latency']:.3f}",
        f"after tuning     {pct(report['after'])} with them ({100 * report['recovered']:+.2f} pp), "
        f"{pct(report['after_ideal'])} without",
        f"latency          {report['after']['latency']:.3f} ({report['latency_factor']:.2f}x shorter than as trained)",
    ]


#: The settings a sweep can vary.
SWEEP_KINDS = ("noise", "time_steps", "weight_bits")


def sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    kind: str,
    values: Sequence[float | int],
    *,
    base: HardwareSettings = HardwareSettings(),
    window_quantile: float | None = None,
    calibration_images: torch.Tensor | None = None,
    seed: int = 0,
    repeats: int = 3,
) -> dict[str, Any]:
    """Accuracy against one setting (``kind``: noise, time_steps or weight_bits) over ``values``.

    The other settings come from ``base``.  With ``window_quantile`` the
    windows of a copy are first shrunk to it on ``calibration_images`` (as
    :func:`finetune` does; a time-step sweep of a network with the window
    rule's long windows wants :data:`DEFAULT_TIME_QUANTILE`); the model
    itself is not changed.  One row per value (ttfs.sw.sweeps): ``value``,
    then :func:`hardware_accuracy`'s figures.
    """
    if kind not in SWEEP_KINDS:
        raise FineTuneError(f"sweep: {kind!r} is not one of {', '.join(SWEEP_KINDS)}")
    if not values:
        raise FineTuneError(f"sweep over {kind}: no values given")
    evaluated = model
    if window_quantile is not None:
        if calibration_images is None:
            raise FineTuneError("sweep: shrinking windows needs calibration images")
        evaluated = copy.deepcopy(model)
        shrink_windows(evaluated, calibration_images[:QUANTILE_IMAGES], window_quantile)

    def measure(value: float | int) -> dict[str, Any]:
        settings = HardwareSettings(**{**asdict(base), kind: value})
        return hardware_accuracy(evaluated, images, labels, settings, seed=seed, repeats=repeats)

    rows = sweeps.measure_points([{"value": value} for value in values], measure)
    return {"kind": kind, "base": asdict(base), "window_quantile": window_quantile, "rows": rows}


SWEEP_LABELS = {
    "noise": "spike-time noise sigma (fraction of the window)",
    "time_steps": "time steps T per window",
    "weight_bits": "weight bits B",
}


def _accuracy_cell(row: dict[str, Any]) -> str:
    spread = f" +- {100 * row['accuracy_std']:.2f}" if row["draws"] > 1 else ""
    return f"{100 * row['accuracy']:6.2f} %{spread}"


def sweep_table(result: dict[str, Any]) -> list[str]:
    """The sweep as aligned text lines: a header, then one line per value."""
    return sweeps.table(result["rows"], "value", SWEEP_LABELS[result["kind"]], _accuracy_cell)


def plot_sweeps(results: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """One panel per sweep: accuracy (%) against the swept setting (ttfs.sw.sweeps.plot)."""
    panels = []
    for result in results:
        rows = result["rows"]
        curve = sweeps.Curve([row["value"] for row in rows], [100 * row["accuracy"] for row in rows],
                             spread=[100 * row["accuracy_std"] for row in rows])  # fmt: skip
        # The settings held while this one varied (the swept one back at its default, "off").
        held = HardwareSettings(**{**result["base"], result["kind"]: getattr(HardwareSettings(), result["kind"])})
        panels.append(sweeps.Panel([curve], SWEEP_LABELS[result["kind"]], title=f"held: {held.describe()}" if held.active else "",
                                   log2_x=result["kind"] == "time_steps"))  # fmt: skip
    sweeps.plot(path, panels, title=title)

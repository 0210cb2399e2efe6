"""Time-to-first-spike (TTFS) layers in spike-time form (Stanojevic et al. 2024).

Every neuron fires at most once.  Layer n owns a coding window
[t_min(n), t_max(n)]; windows are chained, t_min(n) = t_max(n-1).  An
activation x of layer n is a spike at t_max(n) - x; a silent neuron is
represented by a spike time of t_max(n) (activation 0).  The input layer
(layer 0) uses the window [0, 1]: a pixel x in [0, 1] spikes at 1 - x.

Dense layer, B1 ("identity") mapping.  Each input spike j at t_j adds W_ij
to the slope of neuron i's membrane from t_j on.  At t_min(n) every input
has spiked (silent inputs count as spiking at t_max(n-1) = t_min(n), where
they contribute nothing yet), so

    V_i(t_min(n)) = sum_j W_ij (t_min(n) - t_j) = sum_j W_ij x_j.

From t_min(n) on, B1 corrects the input term so the slope is exactly 1.
The threshold is theta_i = (t_max(n) - t_min(n)) - b_i, so the neuron
reaches it at

    t_i = t_min(n) + theta_i - V_i(t_min(n)) = t_max(n) - (W x + b)_i,

and t_i >= t_max(n) means no spike (t_i := t_max(n)).  The layer therefore
computes exactly ReLU(W x + b) as t_max(n) - t_i, and so do its gradients.
A spike that would come before t_min(n) is held at t_min(n) (the activation
saturates at the window length, as the fixed-point contract's clip to T);
the training window rule (:class:`WindowedNetwork`) grows windows so this
never happens on training batches.

The older "alpha-1" parametrisation (:class:`Alpha1Dense`) keeps the input
slopes after t_min(n): the slope at threshold is 1 + sum_j W_ij, the spike
time t_i = t_min(n) + (theta_i - V_i(t_min(n))) / (1 + sum_j W_ij), and
every gradient through neuron i is scaled by 1 / (1 + sum_j W_ij).

The readout layer never fires: its logits are the membrane read at its
t_min, V_i(t_min) + b_i = (W x + b)_i.

What every weighted layer shares (dense here, conv in ttfs.sw.conv: the
window buffers, the firing rule, the initialisation) is :class:`WindowedLayer`;
what every network shares (dense ttfs.sw.models.TTFSNetwork, conv
ttfs.sw.conv.TTFSLayerNetwork: the input window, chained windows, the window
rule, the latency, the forward pass) is :class:`WindowedNetwork`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from ttfs.contract.errors import TTFSError

#: The input coding window [t_min(0), t_max(0)]: pixel x in [0, 1] spikes at 1 - x.
INPUT_WINDOW = (0.0, 1.0)

#: Upper bound on a layer's width or channel count; far above anything that trains on a CPU.
MAX_WIDTH = 1 << 16

#: The paper's window rule: a hidden window grows to at least this many times
#: the largest activation of its layer seen in a training batch.
DEFAULT_WINDOW_FACTOR = 10.0


class ModelError(TTFSError):
    """A network description or a run directory is invalid."""


def check_chained(input_t_max: float, windows: Sequence[tuple[float, float]]) -> None:
    """Check windows chain from the input window: t_min(n) = t_max(n-1), hidden t_max > t_min,
    readout t_max = t_min, all finite."""
    previous_t_max = input_t_max
    last = len(windows) - 1
    for index, (t_min, t_max) in enumerate(windows):
        if not (math.isfinite(t_min) and math.isfinite(t_max)):
            raise ModelError(f"layers[{index}] window: [{t_min}, {t_max}] is not finite")
        if t_min != previous_t_max:
            raise ModelError(f"layers[{index}].t_min: {t_min} does not equal the previous layer's t_max {previous_t_max}")
        if index == last and t_max != t_min:
            raise ModelError(f"layers[{index}] (readout) t_max: {t_max} must equal its t_min {t_min}")
        if index < last and not t_max > t_min:
            raise ModelError(f"layers[{index}] window: t_max {t_max} must exceed t_min {t_min}")
        previous_t_max = t_max


def encode_input(pixels: torch.Tensor, t_max: torch.Tensor | float = INPUT_WINDOW[1]) -> torch.Tensor:
    """Spike times of the input layer: pixel value x in [0, 1] spikes at t_max(0) - x.

    ``pixels`` is any float tensor of values in [0, 1] (pixel 0 is silent:
    it "spikes" at t_max(0), which encodes activation 0).
    """
    return t_max - pixels


def copy_weight_and_bias(source: nn.Module, target: nn.Module) -> None:
    """Copy ``weight`` and ``bias`` from one layer into another of the same shape (B1 keeps them)."""
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)


class WindowedLayer(nn.Module):
    """A weighted TTFS layer (B1 mapping) that owns a coding window: dense, or conv (ttfs.sw.conv).

    Subclasses create the parameters ``weight`` and ``bias`` (the ReLU
    network's, unchanged), call :meth:`_register_window` and
    :meth:`reset_parameters`, set ``readout`` and define
    ``drive_at_t_min(t_in, weight=None)``.  Buffers ``t_min`` and ``t_max``
    (0-dim tensors) hold the window; the owning network keeps them chained.
    """

    readout: bool

    def _register_window(self, t_min: float, t_max: float) -> None:
        self.register_buffer("t_min", torch.tensor(t_min, dtype=self.weight.dtype))
        self.register_buffer("t_max", torch.tensor(t_max, dtype=self.weight.dtype))

    def reset_parameters(self) -> None:
        """torch's default for nn.Linear and nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weight then bias."""
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    @property
    def window(self) -> torch.Tensor:
        """The coding window's length t_max - t_min (0 for a readout)."""
        return self.t_max - self.t_min

    def spike_time(self, drive: torch.Tensor) -> torch.Tensor:
        """B1's threshold crossing for the drive V(t_min) + b, t_max where there is none.

        With slope 1 from t_min on and threshold theta = (t_max - t_min) - b,
        the crossing is at t_min + theta - V(t_min) = t_max - (V(t_min) + b).
        No crossing before t_max (drive <= 0) means no spike, coded as t_max.
        """
        crossing = self.t_max - drive
        # The mask is drive > 0, exactly ReLU's, so gradients vanish where ReLU's do.
        return torch.where(drive > 0, crossing, self.t_max)

    def fire(self, drive: torch.Tensor, clip_early: bool = True) -> torch.Tensor:
        """Spike times from the drive V(t_min) + b (hidden layers only).

        :meth:`spike_time`; with ``clip_early`` a crossing before t_min is
        held at t_min (the network's window rule makes that impossible on
        training batches, so it skips the clip there).
        """
        spike_time = self.spike_time(drive)
        if clip_early:
            spike_time = torch.where(spike_time > self.t_min, spike_time, self.t_min)
        return spike_time

    def forward(self, t_in: torch.Tensor) -> torch.Tensor:
        """Output spike times, or logits for a readout layer."""
        drive = self.drive_at_t_min(t_in)
        return drive if self.readout else self.fire(drive)


class TTFSDense(WindowedLayer):
    """A dense TTFS layer with the B1 (identity) mapping, in spike-time form.

    Parameters ``weight`` (outputs, inputs) and ``bias`` (outputs,) are the
    ReLU network's weights and biases, unchanged (B1).  Buffers ``t_min`` and
    ``t_max`` hold the layer's coding window.  A ``readout`` layer does not
    fire: its forward returns the logits W x + b read at t_min, and its
    ``t_max`` equals its ``t_min``.
    """

    def __init__(
        self,
        inputs: int,
        outputs: int,
        *,
        readout: bool = False,
        t_min: float = 1.0,
        t_max: float = 2.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if readout:
            t_max = t_min
        elif not t_max > t_min:
            raise ValueError(f"a spiking layer needs t_max > t_min, got [{t_min}, {t_max}]")
        self.inputs = inputs
        self.outputs = outputs
        self.readout = readout
        self.weight = nn.Parameter(torch.empty(outputs, inputs, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(outputs, dtype=dtype))
        self._register_window(t_min, t_max)
        self.reset_parameters()

    def drive_at_t_min(self, t_in: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """V_i(t_min) + b_i for input spike times ``t_in`` (batch, inputs), one fused product.

        V_i(t_min) = sum_j W_ij (t_min - t_j): the inputs' window ends at this
        layer's t_min (chained windows), so t_min - t_j is input activation
        x_j >= 0 and the drive is (W x + b)_i.  For a readout these are the
        logits.  ``weight`` replaces the layer's weight (the hardware
        fine-tuning's quantised weights go through here).
        """
        return nn.functional.linear(self.t_min - t_in, self.weight if weight is None else weight, self.bias)

    def extra_repr(self) -> str:
        kind = "readout" if self.readout else "spiking"
        return f"inputs={self.inputs}, outputs={self.outputs}, {kind}"


class Alpha1Dense(TTFSDense):
    """The older alpha-1 parametrisation, kept for comparison with B1.

    After t_min the input slopes stay: the slope at threshold is
    1 + sum_j W_ij, the crossing is at t_min + (theta - V(t_min)) / slope,
    and a neuron whose slope is not positive never reaches threshold.  With
    the same parameters and inputs, the gradient through neuron i is the
    B1 gradient scaled by 1 / slope_i (where neither is saturated).
    """

    def slope(self) -> torch.Tensor:
        """The membrane slope at threshold, 1 + sum_j W_ij, per neuron."""
        return 1.0 + self.weight.sum(dim=1)

    def spike_time(self, drive: torch.Tensor) -> torch.Tensor:
        slope = self.slope()
        rises = slope > 0
        safe_slope = torch.where(rises, slope, torch.ones_like(slope))
        # theta - V(t_min) = (t_max - t_min) - b - V(t_min) = window - drive
        crossing = self.t_min + ((self.t_max - self.t_min) - drive) / safe_slope
        return torch.where(rises & (crossing < self.t_max), crossing, self.t_max)


class WindowedNetwork(nn.Module):
    """What every TTFS network shares: the input window, chained layer windows, the window rule, the forward pass.

    ``layers`` (an nn.ModuleList) runs from the first layer to the readout.
    The :class:`WindowedLayer` among them own windows (the firing layers,
    then the readout); any other layer (pool, flatten) passes spike times on
    inside the window of the layer before it.  The input window is [0, 1]
    (buffers ``input_t_min``, ``input_t_max``); every firing window starts
    with length 1 and the windows are chained.  In training mode each forward
    applies the window rule before a layer fires: its window grows (never
    shrinks) to ``window_factor`` times the largest activation of the batch,
    and later windows shift with it.  Subclasses define :meth:`encode`.
    """

    #: The error a bad network description raises (subclasses name their own).
    description_error: type[TTFSError] = ModelError

    #: How the window rule combines a batch's largest activation with those of the other
    #: processes that train this network (ttfs.sw.distributed sets it; None: one process).
    reduce_batch_max: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        layers: Sequence[nn.Module],
        *,
        window_factor: float = DEFAULT_WINDOW_FACTOR,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not window_factor > 1.0:
            raise self.description_error(f"window_factor: {window_factor} must be above 1 so no spike precedes its window")
        super().__init__()
        self.window_factor = float(window_factor)
        input_t_min, input_t_max = INPUT_WINDOW
        self.register_buffer("input_t_min", torch.tensor(input_t_min, dtype=dtype))
        self.register_buffer("input_t_max", torch.tensor(input_t_max, dtype=dtype))
        self.layers = nn.ModuleList(layers)
        t_min = input_t_max
        with torch.no_grad():
            for layer in self.windowed_layers:
                layer.t_min.fill_(t_min)
                layer.t_max.fill_(t_min if layer.readout else t_min + 1.0)
                t_min = float(layer.t_max)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input spike times, shaped as the first layer expects, for images with values in [0, 1]."""
        raise NotImplementedError

    @property
    def windowed_layers(self) -> list[WindowedLayer]:
        """Layers that own a window: the firing layers, then the readout."""
        return [layer for layer in self.layers if isinstance(layer, WindowedLayer)]

    @property
    def hidden_layers(self) -> list[WindowedLayer]:
        """The firing layers, in order."""
        return [layer for layer in self.windowed_layers if not layer.readout]

    @property
    def latency(self) -> float:
        """The readout's t_min: the time at which the logits are read."""
        return float(self.layers[-1].t_min)

    def windows(self) -> list[tuple[float, float]]:
        """(t_min, t_max) of every windowed layer, in order (readout: t_min == t_max)."""
        return [(float(layer.t_min), float(layer.t_max)) for layer in self.windowed_layers]

    def set_windows(self, windows: Sequence[tuple[float, float]]) -> None:
        """Set every windowed layer's (t_min, t_max); they must chain and firing windows be non-empty."""
        layers = self.windowed_layers
        if len(windows) != len(layers):
            raise ModelError(f"windows: expected {len(layers)} (t_min, t_max) pairs, got {len(windows)}")
        check_chained(float(self.input_t_max), windows)
        with torch.no_grad():
            for layer, (t_min, t_max) in zip(layers, windows):
                layer.t_min.fill_(t_min)
                layer.t_max.fill_(t_max)

    def _apply_window_rule(self, layer: WindowedLayer, drive: torch.Tensor) -> None:
        """Grow ``layer``'s window to window_factor x the batch's largest activation; shift the later ones.

        With several processes the largest activation is that of the global
        batch, so every process grows the same windows.
        """
        largest = drive.detach().max() if drive.numel() else drive.new_full((), -math.inf)
        if self.reduce_batch_max is not None:
            largest = self.reduce_batch_max(largest)
        # Python floats: one reduction per batch; windows rarely grow after the first epochs.
        needed = self.window_factor * float(largest)
        growth = needed - (float(layer.t_max) - float(layer.t_min))
        if growth > 0:
            layers = self.windowed_layers
            with torch.no_grad():
                # The same addition on equal values keeps t_min(n+1) == t_max(n) exactly.
                layer.t_max.add_(growth)
                for later in layers[layers.index(layer) + 1 :]:
                    later.t_min.add_(growth)
                    later.t_max.add_(growth)

    def forward(self, images: torch.Tensor, return_times: bool = False):
        """Logits (batch, classes) for images (batch, ...) with values in [0, 1].

        With ``return_times`` also the spike times of the input and of every
        firing layer, input first, each in its layer's own shape.
        """
        t = self.encode(images)
        times = [t]
        for layer in self.layers:
            if not isinstance(layer, WindowedLayer):
                t = layer(t)  # pool, flatten: spike routing, no window
                continue
            drive = layer.drive_at_t_min(t)
            if layer.readout:
                logits = drive
                break
            if self.training:
                self._apply_window_rule(layer, drive)
            t = layer.fire(drive, clip_early=not self.training)
            times.append(t)
        return (logits, times) if return_times else logits

    def _t_maxes(self) -> list[torch.Tensor]:
        return [self.input_t_max, *(layer.t_max for layer in self.hidden_layers)]

    def activations(self, times: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Spike times back to activations, t_max(n) - t, for the input and every firing layer."""
        return [t_max - t for t_max, t in zip(self._t_maxes(), times)]

    def fired(self, times: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Boolean masks of the neurons that spike (t < t_max), input and firing layers."""
        return [t < t_max for t_max, t in zip(self._t_maxes(), times)]

    def saturated(self, times: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Masks of firing neurons held at t_min (activation clipped at the window length)."""
        return [t <= layer.t_min for layer, t in zip(self.hidden_layers, times[1:])]

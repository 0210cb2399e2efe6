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
the training window rule (sw.models.TTFSNetwork) grows windows so this
never happens on training batches.

The older "alpha-1" parametrisation (:class:`Alpha1Dense`) keeps the input
slopes after t_min(n): the slope at threshold is 1 + sum_j W_ij, the spike
time t_i = t_min(n) + (theta_i - V_i(t_min(n))) / (1 + sum_j W_ij), and
every gradient through neuron i is scaled by 1 / (1 + sum_j W_ij).

The readout layer never fires: its logits are the membrane read at its
t_min, V_i(t_min) + b_i = (W x + b)_i.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: The input coding window [t_min(0), t_max(0)]: pixel x in [0, 1] spikes at 1 - x.
INPUT_WINDOW = (0.0, 1.0)


def encode_input(pixels: torch.Tensor, t_max: torch.Tensor | float = INPUT_WINDOW[1]) -> torch.Tensor:
    """Spike times of the input layer: pixel value x in [0, 1] spikes at t_max(0) - x.

    ``pixels`` is any float tensor of values in [0, 1] (pixel 0 is silent:
    it "spikes" at t_max(0), which encodes activation 0).
    """
    return t_max - pixels


class TTFSDense(nn.Module):
    """A dense TTFS layer with the B1 (identity) mapping, in spike-time form.

    Parameters ``weight`` (outputs, inputs) and ``bias`` (outputs,) are the
    ReLU network's weights and biases, unchanged (B1).  Buffers ``t_min`` and
    ``t_max`` (0-dim tensors) hold the layer's coding window; the owning
    network keeps them chained.  A ``readout`` layer does not fire: its
    forward returns the logits W x + b read at t_min, and its ``t_max``
    equals its ``t_min``.
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
        self.register_buffer("t_min", torch.tensor(t_min, dtype=self.weight.dtype))
        self.register_buffer("t_max", torch.tensor(t_max, dtype=self.weight.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.Linear's default initialisation: U(-1/sqrt(inputs), 1/sqrt(inputs))."""
        bound = 1.0 / math.sqrt(self.inputs)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)

    @property
    def window(self) -> torch.Tensor:
        """The coding window's length t_max - t_min (0 for a readout)."""
        return self.t_max - self.t_min

    def drive_at_t_min(self, t_in: torch.Tensor) -> torch.Tensor:
        """V_i(t_min) + b_i for input spike times ``t_in`` (batch, inputs), one fused product.

        V_i(t_min) = sum_j W_ij (t_min - t_j): the inputs' window ends at this
        layer's t_min (chained windows), so t_min - t_j is input activation
        x_j >= 0 and the drive is (W x + b)_i.  For a readout these are the logits.
        """
        return nn.functional.linear(self.t_min - t_in, self.weight, self.bias)

    def fire(self, drive: torch.Tensor, clip_early: bool = True) -> torch.Tensor:
        """Spike times from the drive V(t_min) + b (hidden layers only).

        With slope 1 from t_min on and threshold theta = (t_max - t_min) - b,
        the crossing is at t_min + theta - V(t_min) = t_max - (V(t_min) + b).
        No crossing before t_max (drive <= 0) means no spike, coded as t_max;
        with ``clip_early`` a crossing before t_min is held at t_min (the
        network's window rule makes that impossible on training batches, so
        it skips the clip there).
        """
        crossing = self.t_max - drive
        # The mask is drive > 0, exactly ReLU's, so gradients vanish where ReLU's do.
        spike_time = torch.where(drive > 0, crossing, self.t_max)
        if clip_early:
            spike_time = torch.where(spike_time > self.t_min, spike_time, self.t_min)
        return spike_time

    def forward(self, t_in: torch.Tensor) -> torch.Tensor:
        """Output spike times (batch, outputs), or logits for a readout layer."""
        drive = self.drive_at_t_min(t_in)
        return drive if self.readout else self.fire(drive)

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

    def fire(self, drive: torch.Tensor, clip_early: bool = True) -> torch.Tensor:
        slope = self.slope()
        rises = slope > 0
        safe_slope = torch.where(rises, slope, torch.ones_like(slope))
        # theta - V(t_min) = (t_max - t_min) - b - V(t_min) = window - drive
        crossing = self.t_min + ((self.t_max - self.t_min) - drive) / safe_slope
        spike_time = torch.where(rises & (crossing < self.t_max), crossing, self.t_max)
        if clip_early:
            spike_time = torch.where(spike_time > self.t_min, spike_time, self.t_min)
        return spike_time

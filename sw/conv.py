"""Convolutional TTFS layers in spike-time form, and networks built from lists of layers.

The dense B1 layer (ttfs.sw.ttfs.TTFSDense) carries over to convolutions
unchanged: every output neuron (channel o, row y, column x) integrates the
spikes of its receptive field during the previous window, so at t_min(n)

    V(o, y, x) = sum_{i, ky, kx} W[o, i, ky, kx] (t_min(n) - t_in[i, y+ky-p, x+kx-p]),

which is the convolution of the input activations t_min(n) - t_in (a silent
input spikes at t_max(n-1) = t_min(n) and contributes 0).  With slope 1 from
t_min(n) on the neuron fires at t_max(n) - (V + b), the ReLU of the
convolution, exactly as the dense layer.

- Padding: 'same' pads the input with "no spike", i.e. a spike time of
  t_max(n-1) = t_min(n), which is activation 0: exactly the zero padding of
  the ReLU network.  'valid' does not pad.  Stride is 1.
- Border bias: folding a batch-norm shift or an input normalisation across
  'same' zero padding (ttfs.sw.folding) makes the bias depend on the position,
  because padded positions see 0, not the shift.  A conv layer therefore
  holds, besides its per-channel ``bias`` (the value where the whole kernel
  lies inside the image), a buffer ``border_bias`` (out_channels, H, W) that
  is zero wherever the kernel lies inside and corrects the border positions.
  It is zero unless a fold wrote it.
- Max pooling is the EARLIEST spike of each block: min over spike times =
  max over activations.  Pooling is instantaneous: its output lives in the
  same window as its input.  A pool can also take the LATEST spike (max over
  spike times = min over activations; a silent input wins, as activation 0
  is the minimum) on channels flagged in its ``min_channels`` buffer: that is
  how a folded negative batch-norm scale stays exact (max-pool followed by a
  negative scale equals the scale followed by a min-pool).
- Flatten turns (C, H, W) spike maps into the C*H*W inputs of a dense layer
  (C, H, W order, as the contract flattens images).

:class:`TTFSLayerNetwork` chains such layers (conv, pool, flatten, dense,
readout) with the windows and window rule every TTFS network shares
(ttfs.sw.ttfs.WindowedNetwork).  The ReLU twin's
modules (:class:`BorderBiasConv2d`, :class:`SignedMaxPool2d`) are ordinary
torch modules with the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from ttfs.contract.errors import TTFSError
from ttfs.sw.ttfs import (
    DEFAULT_WINDOW_FACTOR,
    TTFSDense,
    WindowedLayer,
    WindowedNetwork,
    encode_input,
)

PADDINGS = ("same", "valid")


class ConvError(TTFSError):
    """A convolutional layer or network description is invalid."""


def same_padding(kernel_size: int) -> tuple[int, int]:
    """(before, after) zero padding of one spatial axis for 'same': torch's split, extra after."""
    total = kernel_size - 1
    return total // 2, total - total // 2


def conv_output_size(size: int, kernel_size: int, padding: str) -> int:
    """Output rows (or columns) of a stride-1 convolution."""
    return size if padding == "same" else size - kernel_size + 1


def check_conv_shape(in_channels: int, out_channels: int, kernel_size: int, padding: str, input_size: Sequence[int]) -> tuple[int, int]:
    """Validate a conv layer's shape; return its output (height, width)."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConvError(f"{name}: {value!r} is not a positive integer")
    if padding not in PADDINGS:
        raise ConvError(f"padding: {padding!r} is not one of {', '.join(PADDINGS)}")
    height, width = input_size
    out = (conv_output_size(height, kernel_size, padding), conv_output_size(width, kernel_size, padding))
    if min(out) < 1:
        raise ConvError(f"a {kernel_size}x{kernel_size} 'valid' convolution does not fit a {height}x{width} input")
    return out


class TTFSConv2d(WindowedLayer):
    """A 2-D convolutional TTFS layer (B1 mapping, stride 1) in spike-time form.

    Input: spike times (batch, in_channels, H, W) of the previous window,
    which ends at this layer's ``t_min``.  Output: spike times (batch,
    out_channels, H', W') in [t_min, t_max]; t_max means no spike.
    Parameters ``weight`` (out, in, k, k) and ``bias`` (out,) are the ReLU
    network's (B1 keeps them); buffers ``t_min``, ``t_max`` the window and
    ``border_bias`` (out, H', W') the position-dependent bias of folded
    'same' layers (zero otherwise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: Sequence[int],
        *,
        padding: str = "same",
        t_min: float = 1.0,
        t_max: float = 2.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.output_size = check_conv_shape(in_channels, out_channels, kernel_size, padding, input_size)
        if not t_max > t_min:
            raise ConvError(f"a spiking layer needs t_max > t_min, got [{t_min}, {t_max}]")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = padding
        self.input_size = tuple(input_size)
        self.readout = False
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, dtype=dtype))
        self.register_buffer("border_bias", torch.zeros(out_channels, *self.output_size, dtype=self.weight.dtype))
        self._register_window(t_min, t_max)
        self.reset_parameters()

    @property
    def outputs(self) -> int:
        """Number of output neurons (channels x rows x columns)."""
        return self.out_channels * self.output_size[0] * self.output_size[1]

    @property
    def pad_sizes(self) -> tuple[int, int, int, int]:
        """The (left, right, top, bottom) sizes nn.functional.pad takes for 'same' padding."""
        before, after = same_padding(self.kernel_size)
        return before, after, before, after

    def pad_spike_times(self, t_in: torch.Tensor) -> torch.Tensor:
        """Pad with "no spike" (a spike at t_max(n-1) = t_min(n), activation 0) for 'same'."""
        if self.padding == "valid":
            return t_in
        return nn.functional.pad(t_in, self.pad_sizes, value=float(self.t_min))

    def drive_at_t_min(self, t_in: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """V(t_min) + bias for input spike times ``t_in`` (batch, in, H, W).

        ``weight`` replaces the layer's weight (the fine-tuning's quantised
        weights go through here).
        """
        weight = self.weight if weight is None else weight
        activations = self.t_min - self.pad_spike_times(t_in)
        return nn.functional.conv2d(activations, weight, self.bias) + self.border_bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding!r}, "
            f"input_size={self.input_size}"
        )


def _max_or_min_pool(values: torch.Tensor, size: int, take_min: torch.Tensor) -> torch.Tensor:
    """Max-pool each channel, or min-pool the channels where ``take_min`` is True."""
    largest = nn.functional.max_pool2d(values, size)
    if not bool(take_min.any()):
        return largest
    smallest = -nn.functional.max_pool2d(-values, size)
    return torch.where(take_min[:, None, None], smallest, largest)


def check_pool(channels: int, size: int, input_size: Sequence[int]) -> tuple[int, int]:
    """Validate a pooling layer; return its output (height, width) (floor, as torch)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConvError(f"pool size: {size!r} is not a positive integer")
    height, width = input_size
    if height < size or width < size:
        raise ConvError(f"a {size}x{size} pool does not fit a {height}x{width} input")
    return height // size, width // size


class _BlockPool(nn.Module):
    """What the spiking pool and its ReLU twin share: the size x size blocks of
    ``channels`` maps of ``input_size``, and the ``min_channels`` buffer that
    flags channels pooled the other way (a folded negative batch-norm scale)."""

    def __init__(self, channels: int, input_size: Sequence[int], size: int = 2) -> None:
        super().__init__()
        self.output_size = check_pool(channels, size, input_size)
        self.channels = channels
        self.size = size
        self.input_size = tuple(input_size)
        self.register_buffer("min_channels", torch.zeros(channels, dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}, input_size={self.input_size}"


class TTFSMaxPool2d(_BlockPool):
    """Max pooling in spike time: the earliest spike of each size x size block.

    Min over spike times is max over activations; the output stays in the
    input's window.  Channels flagged in the ``min_channels`` buffer take the
    latest spike instead (min over activations), which keeps a folded
    negative batch-norm scale exact.
    """

    def forward(self, t_in: torch.Tensor) -> torch.Tensor:
        # Earliest spike = -max(-t); latest spike (min activation) = max(t).
        return -_max_or_min_pool(-t_in, self.size, self.min_channels)


class TTFSFlatten(nn.Module):
    """(batch, C, H, W) spike maps -> (batch, C*H*W) in C, H, W order; times unchanged."""

    def forward(self, t_in: torch.Tensor) -> torch.Tensor:
        return t_in.flatten(1)


class BorderBiasConv2d(nn.Conv2d):
    """nn.Conv2d (stride 1) plus the ``border_bias`` buffer of a folded 'same' layer: the ReLU twin of TTFSConv2d."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        input_size: Sequence[int],
        *,
        padding: str = "same",
        dtype: torch.dtype | None = None,
    ) -> None:
        output_size = check_conv_shape(in_channels, out_channels, kernel_size, padding, input_size)
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, dtype=dtype)
        self.input_size = tuple(input_size)
        self.output_size = output_size
        self.register_buffer("border_bias", torch.zeros(out_channels, *output_size, dtype=self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.border_bias


class SignedMaxPool2d(_BlockPool):
    """Max pooling, or min pooling on the channels flagged in ``min_channels``: the ReLU twin of TTFSMaxPool2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _max_or_min_pool(x, self.size, self.min_channels)


def is_firing(layer: nn.Module) -> bool:
    """True for a layer that fires (conv, or dense that is not the readout)."""
    return isinstance(layer, WindowedLayer) and not layer.readout


class TTFSLayerNetwork(WindowedNetwork):
    """A TTFS network given as a list of layers: conv, pool, flatten, dense, then a dense readout.

    Windows, the window rule, ``hidden_layers`` (the firing layers),
    ``windowed_layers`` (the firing layers then the readout), ``latency``,
    ``windows()``/``set_windows()``, ``forward(images, return_times)``,
    ``activations``, ``fired`` and ``saturated`` are those of every TTFS
    network (ttfs.sw.ttfs.WindowedNetwork); pools and flatten pass spike
    times through and have no window.
    """

    description_error = ConvError

    def __init__(
        self,
        layers: Sequence[nn.Module],
        input_shape: Sequence[int],
        *,
        window_factor: float = DEFAULT_WINDOW_FACTOR,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not layers or not isinstance(layers[-1], TTFSDense) or not layers[-1].readout:
            raise ConvError("the last layer of a TTFS network must be a dense readout")
        if sum(isinstance(layer, TTFSDense) and layer.readout for layer in layers) != 1:
            raise ConvError("a TTFS network has exactly one readout, the last layer")
        super().__init__(layers, window_factor=window_factor, dtype=dtype)
        self.input_shape = tuple(input_shape)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Input spike times (batch, C, H, W) for images with values in [0, 1]."""
        return encode_input(images.reshape(images.shape[0], *self.input_shape), self.input_t_max)

    def neuron_counts(self) -> list[int]:
        """Neurons of the input and of every firing layer."""
        channels, height, width = self.input_shape
        return [channels * height * width, *(layer.outputs for layer in self.hidden_layers)]

    @property
    def sizes(self) -> list[int]:
        """[input neurons, neurons of every firing layer..., classes], as TTFSNetwork.sizes."""
        return [*self.neuron_counts(), self.layers[-1].outputs]

    def synaptic_events(self, times: Sequence[torch.Tensor]) -> torch.Tensor:
        """Synaptic events summed over the batch: every (input spike, weight) pair that a
        weighted layer integrates, after pooling (only the pooled spike travels on)."""
        total = torch.zeros((), dtype=torch.float64, device=times[0].device)
        t = times[0]
        fired_index = 1
        previous_t_max = self.input_t_max
        for layer in self.layers:
            if isinstance(layer, TTFSConv2d):
                spikes = (t < previous_t_max).to(layer.weight.dtype)
                # Every output neuron integrates the spikes inside its receptive field.
                ones = torch.ones(1, layer.in_channels, layer.kernel_size, layer.kernel_size, dtype=spikes.dtype, device=spikes.device)
                padded = nn.functional.pad(spikes, layer.pad_sizes) if layer.padding == "same" else spikes
                total += nn.functional.conv2d(padded, ones).sum().double() * layer.out_channels
            elif isinstance(layer, TTFSDense):
                total += (t < previous_t_max).sum().double() * layer.outputs
            if is_firing(layer):
                t = times[fired_index]
                previous_t_max = layer.t_max
                fired_index += 1
            elif not isinstance(layer, WindowedLayer):
                t = layer(t)
        return total

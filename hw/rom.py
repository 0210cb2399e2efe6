"""Weight and bias ROM contents of a layer, packed P lanes wide.

The lanes run over a dense layer's N neurons, or over a conv2d layer's N =
out_channels output channels (:func:`lane_neurons`).  N on P lanes are cut
into G = ceil(N / P) lane groups; group g holds neurons (channels)
g*P .. g*P + P - 1 (the last group is padded with zero weights and zero
biases).  One ROM word holds the P values of one group, lane 0 in the least
significant bits, each value in two's complement:

- weight ROM: word ``j * G + g`` holds W[g*P + lane][j] for every lane, so
  one read gives everything an input spike j adds to group g's slopes;
  ``weight_bits`` bits per lane.  For a conv2d layer j is the kernel tap
  ``c*k*k + ky*k + kx`` (the weight flattened per output channel).
- bias ROM: word ``s * G + g`` holds Bias[g*P + lane][s], ``layer.bias_bits``
  bits per lane, where s is 0 for a dense layer or a per-channel conv2d bias
  (G words), and the output position y*W_out + x for a per-position one.

The same words initialise the ``amaranth.lib.memory.Memory`` ROMs of
:mod:`ttfs.hw.layer` and are written as ``$readmemh`` images (formatted by
``ttfs.contract.readmemh.format_words``) by :func:`write_rom_images`, so a synthesised
ROM can be re-initialised from a bundle without regenerating the Verilog.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ttfs.contract.bundle import Layer
from ttfs.contract.paths import inside
from ttfs.contract.readmemh import format_words
from ttfs.hw.errors import HardwareError


@dataclass(frozen=True)
class LaneGeometry:
    """How a layer's neurons map onto lanes: ``lanes`` P used, ``groups`` G."""

    lanes: int
    groups: int

    @classmethod
    def of(cls, outputs: int, lanes: int) -> "LaneGeometry":
        """Geometry for ``outputs`` neurons on at most ``lanes`` lanes (min(P, N) are used)."""
        if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)):
            raise HardwareError(f"lanes: expected an integer, got {lanes!r}")
        if lanes < 1:
            raise HardwareError(f"lanes: {lanes} is below 1")
        used = min(int(lanes), outputs)
        return cls(used, -(-outputs // used))


def lane_neurons(layer: Layer) -> int:
    """What the lanes run over: a dense layer's neurons, a conv2d layer's output channels."""
    return layer.out_channels if layer.is_conv else layer.outputs


def _pack_rows(values: np.ndarray, width: int) -> list[int]:
    """Pack each row of an int array (rows, lanes) into one word, lane 0 lowest."""
    mask = (1 << width) - 1
    words = []
    for row in values:
        word = 0
        for lane, value in enumerate(row.tolist()):
            word |= (int(value) & mask) << (lane * width)
        words.append(word)
    return words


def _grouped(matrix: np.ndarray, geometry: LaneGeometry) -> np.ndarray:
    """(N, ...) -> (G, P, ...) with zero rows padding the last group."""
    padded_rows = geometry.groups * geometry.lanes
    padded = np.zeros((padded_rows,) + matrix.shape[1:], dtype=np.int64)
    padded[: matrix.shape[0]] = matrix
    return padded.reshape((geometry.groups, geometry.lanes) + matrix.shape[1:])


def pack_weights(layer: Layer, lanes: int) -> list[int]:
    """Weight ROM words (depth J * G, J = inputs, or C*k*k taps for conv2d): word ``j * G + g``
    = group g's weights for input (tap) j."""
    geometry = LaneGeometry.of(lane_neurons(layer), lanes)
    weight = np.asarray(layer.weight, dtype=np.int64)
    grouped = _grouped(weight.reshape(weight.shape[0], -1), geometry)  # (G, P, J)
    by_input = grouped.transpose(2, 0, 1).reshape(-1, geometry.lanes)  # (J * G, P)
    return _pack_rows(by_input, layer.weight_bits)


def pack_biases(layer: Layer, lanes: int) -> list[int]:
    """Bias ROM words (depth S * G): word ``s * G + g`` = the biases of group g at position s
    (S = 1 except for a per-position conv2d bias), ``layer.bias_bits`` per lane."""
    geometry = LaneGeometry.of(lane_neurons(layer), lanes)
    bias = np.asarray(layer.bias, dtype=np.int64)
    grouped = _grouped(bias.reshape(bias.shape[0], -1), geometry)  # (G, P, S)
    return _pack_rows(grouped.transpose(2, 0, 1).reshape(-1, geometry.lanes), layer.bias_bits)


def write_rom_images(layer: Layer, lanes: int, directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``<name>.weight.p<P>.hex`` and ``<name>.bias.p<P>.hex`` ($readmemh) for a layer.

    P is the number of lanes the layer uses, min(lanes, :func:`lane_neurons`); the name
    carries it because these words are lane-packed, unlike the bundle's
    row-major ``<name>.weight.hex`` (``ttfs export``).  Returns
    {"weight": path, "bias": path}.  Word widths are P * weight_bits and
    P * layer.bias_bits; the word order is the one described in this
    module's docstring.
    """
    geometry = LaneGeometry.of(lane_neurons(layer), lanes)
    # Format both images before writing either: a bad width leaves no file behind.
    texts = {
        "weight": format_words(pack_weights(layer, lanes), geometry.lanes * layer.weight_bits),
        "bias": format_words(pack_biases(layer, lanes), geometry.lanes * layer.bias_bits),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, text in texts.items():
        # The name comes from a bundle: the file must stay inside the directory, whatever the name.
        paths[kind] = inside(directory, f"{layer.name}.{kind}.p{geometry.lanes}.hex")
        paths[kind].write_text(text, encoding="ascii")
    return paths

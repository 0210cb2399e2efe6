"""Scoreboard: hardware results against the golden model, spike for spike.

Contract section 9: for one image the hardware equals the golden model when
every spiking layer's trace (layer 0 = the input encoder, then every hidden
layer) is identical *as a sequence* to the golden one, and the readout
logits and class are identical.  The scoreboard checks exactly that and, for
a debugging engineer, points at the **first divergence**: the lowest image,
then the lowest layer (a wrong spike in layer n disturbs every later layer,
so the earliest layer is where the fault is), then the first position in the
layer's canonical sequence where the two traces part.

Plain Python and numpy (no amaranth, no cocotb): the cocotb testbench, the
``ttfs sim`` command and the unit tests all use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from ttfs.contract.bundle import Bundle
from ttfs.contract.errors import TTFSError
from ttfs.sim.golden import GoldenResult

# Events shown on each side of the divergence in a report.
CONTEXT_EVENTS = 4
# Logits shown in a readout divergence report (wider readouts are cut).
CONTEXT_LOGITS = 16


class ScoreboardError(TTFSError):
    """Hardware results the scoreboard cannot compare (wrong image index, malformed traces)."""


@dataclass
class HardwareResult:
    """What the monitors saw of one image.

    ``traces[k]`` is an integer (K, 2) array of (step, neuron) for spiking
    layer k, in the order the events left the hardware (ticks removed);
    ``logits`` the readout's logits; ``cls`` its class; ``cycles`` the
    core's cycle count for the image (not compared: timing is free).
    """

    traces: list[np.ndarray]
    logits: np.ndarray
    cls: int
    cycles: int | None = None


@dataclass(frozen=True)
class Divergence:
    """Where hardware and golden model first part for one image.

    ``layer`` is the spiking layer index (0 = encoder) or, for the readout,
    the number of spiking layers; ``neuron`` and ``step`` locate the event
    (``step`` is None for the readout); ``kind`` is one of "missing spike",
    "extra spike", "wrong step", "order", "logit", "class", "no result".
    ``position`` is the neuron's (channel, row, column) when the layer's
    events form a map (the encoder's image, a conv2d layer's pooled output),
    else None.
    """

    image: int
    layer: int
    layer_name: str
    kind: str
    neuron: int | None
    step: int | None
    detail: str
    context: str = ""
    position: tuple[int, int, int] | None = None

    def __str__(self) -> str:
        where = f"image {self.image}, layer {self.layer} ({self.layer_name})"
        if self.neuron is not None:
            where += f", neuron {self.neuron}"
        if self.position is not None:
            channel, row, column = self.position
            where += f" (channel {channel}, row {row}, column {column})"
        if self.step is not None:
            where += f", step {self.step}"
        text = f"first divergence: {where}: {self.kind}: {self.detail}"
        if self.context:
            text += "\n" + self.context
        return text


def layer_names(bundle: Bundle) -> list[str]:
    """Names of the compared layers: "input" (the encoder), every hidden layer, the readout."""
    return bundle.spiking_layer_names + [bundle.readout.name]


def map_shapes(bundle: Bundle) -> list[tuple[int, int, int] | None]:
    """Per spiking layer, the (C, H, W) map its events index (flattened c*H*W + y*W + x):
    the image for the encoder, the pooled output for a conv2d layer; None for a dense layer."""
    return [bundle.input_shape] + [layer.output_shape if layer.is_conv else None
                                   for layer in bundle.hidden_layers]


def map_position(shape: tuple[int, int, int] | None, neuron: int) -> tuple[int, int, int] | None:
    """(channel, row, column) of flattened index ``neuron`` in a (C, H, W) map; None without a
    map or outside it."""
    if shape is None or not 0 <= neuron < shape[0] * shape[1] * shape[2]:
        return None
    _, height, width = shape
    return (neuron // (height * width), neuron // width % height, neuron % width)


def _as_events(trace, what: str) -> np.ndarray:
    events = np.asarray(trace, dtype=np.int64)
    if events.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if events.ndim != 2 or events.shape[1] != 2:
        raise ScoreboardError(f"{what}: expected a (K, 2) array of (step, neuron), got shape {events.shape}")
    return events


def _format_events(events: np.ndarray, start: int, stop: int, mark: int) -> str:
    """Events start..stop-1 as "(s, i)", the one at ``mark`` in brackets, "end" past the last."""
    parts = ["..."] if start > 0 else []
    for position in range(start, stop):
        if position < len(events):
            text = f"({events[position, 0]}, {events[position, 1]})"
        else:
            text = "end"
        parts.append(f"[{text}]" if position == mark else text)
        if position >= len(events):
            break
    if stop < len(events):
        parts.append("...")
    return " ".join(parts)


def _neuron_steps(events: np.ndarray, neuron: int) -> list[int]:
    return [int(s) for s in events[events[:, 1] == neuron, 0]] if len(events) else []


def _describe_steps(steps: list[int]) -> str:
    if not steps:
        return "no spike"
    if len(steps) == 1:
        return f"spike at step {steps[0]}"
    return "spikes at steps " + ", ".join(str(s) for s in steps)


def first_trace_divergence(expected: np.ndarray, got: np.ndarray) -> tuple[str, int, int, str, str] | None:
    """First difference between two traces compared as sequences, or None when equal.

    Returns (kind, neuron, step, detail, context): the event at the first
    differing position that comes first in canonical order (the golden
    spike the hardware missed or moved, or the hardware's extra spike).
    """
    expected = _as_events(expected, "golden trace")
    got = _as_events(got, "hardware trace")
    common = min(len(expected), len(got))
    differs = np.flatnonzero(np.any(expected[:common] != got[:common], axis=1))
    if differs.size:
        position = int(differs[0])
    elif len(expected) != len(got):
        position = common
    else:
        return None

    golden_event = tuple(int(v) for v in expected[position]) if position < len(expected) else None
    hardware_event = tuple(int(v) for v in got[position]) if position < len(got) else None
    same_events = len(expected) == len(got) and np.array_equal(
        expected[np.lexsort((expected[:, 1], expected[:, 0]))],
        got[np.lexsort((got[:, 1], got[:, 0]))],
    )
    if same_events:
        step, neuron = hardware_event
        kind = "order"
        detail = (f"the hardware emits the right spikes in non-canonical order: "
                  f"({step}, {neuron}) where the golden model has {golden_event}")
    elif hardware_event is None or (golden_event is not None and golden_event < hardware_event):
        # The golden model's spike comes first: the hardware lacks it here.
        step, neuron = golden_event
        elsewhere = _neuron_steps(got, neuron)
        kind = "wrong step" if elsewhere else "missing spike"
        detail = f"golden: spike at step {step}; hardware: {_describe_steps(elsewhere)}"
    else:
        step, neuron = hardware_event
        wanted = _neuron_steps(expected, neuron)
        kind = "wrong step" if wanted else "extra spike"
        detail = f"golden: {_describe_steps(wanted)}; hardware: {_describe_steps(_neuron_steps(got, neuron))}"

    start = max(0, position - CONTEXT_EVENTS)
    stop = position + CONTEXT_EVENTS + 1
    context = (f"  golden   (step, neuron): {_format_events(expected, start, stop, position)}\n"
               f"  hardware (step, neuron): {_format_events(got, start, stop, position)}")
    return kind, neuron, step, detail, context


def mismatched_neurons(expected_activations: np.ndarray, got: np.ndarray, time_steps: int) -> int:
    """Neurons of one layer whose hardware spikes differ from the golden spike.

    A neuron matches when the hardware emits exactly the golden spike (or
    nothing for a silent neuron); a missing, moved, extra or repeated spike
    counts once.  Events naming a neuron outside the layer count once each.
    """
    width = len(expected_activations)
    events = _as_events(got, "hardware trace")
    neurons = events[:, 1]
    inside = (neurons >= 0) & (neurons < width)
    outside = int(np.count_nonzero(~inside))
    neurons, steps = neurons[inside], events[inside, 0]
    counts = np.bincount(neurons, minlength=width)
    hardware_step = np.full(width, -1, dtype=np.int64)
    hardware_step[neurons] = steps
    expected = np.asarray(expected_activations, dtype=np.int64)
    expected_step = np.where(expected > 0, time_steps - expected, -1)
    expected_count = (expected > 0).astype(np.int64)
    wrong = (counts != expected_count) | ((counts == 1) & (hardware_step != expected_step))
    return int(np.count_nonzero(wrong)) + outside


def golden_arrays(golden: GoldenResult) -> dict[str, np.ndarray]:
    """A golden run as plain arrays, for an npz: every field under its name, every item
    of a list field as ``<field>_<k>`` (``activations_<k>``, as in a fixture's ``vectors.npz``)."""
    arrays = {}
    for spec in dataclasses.fields(golden):
        value = getattr(golden, spec.name)
        if isinstance(value, list):
            arrays.update({f"{spec.name}_{k}": np.asarray(item) for k, item in enumerate(value)})
        elif value is not None:
            arrays[spec.name] = np.asarray(value)
    return arrays


def golden_from_arrays(arrays) -> GoldenResult:
    """The inverse of :func:`golden_arrays` (``arrays``: a mapping such as an open npz)."""
    def plain(array):
        # A 0-d array was a Python int (time_steps, a layer's neuron count).
        return array.item() if array.ndim == 0 else array

    values = {}
    for spec in dataclasses.fields(GoldenResult):
        if spec.name in arrays:
            values[spec.name] = plain(np.asarray(arrays[spec.name]))
            continue
        items = []
        while f"{spec.name}_{len(items)}" in arrays:
            items.append(plain(np.asarray(arrays[f"{spec.name}_{len(items)}"])))
        if items:
            values[spec.name] = items
    return GoldenResult(**values)


def golden_images(golden: GoldenResult, images: slice) -> GoldenResult:
    """The part of a golden run that covers ``images``: every array of it is per image
    (its first axis), everything else (T, the neuron counts) is kept."""
    def cut(value):
        if isinstance(value, np.ndarray):
            return value[images]
        if isinstance(value, list):
            return [cut(item) for item in value]
        return value

    return GoldenResult(**{spec.name: cut(getattr(golden, spec.name)) for spec in dataclasses.fields(golden)})


@dataclass
class Scoreboard:
    """Checks hardware images one by one against a golden run of the same images.

    ``golden`` is ``ttfs.sim.golden.run(bundle, images)`` of the *reference*
    bundle; :meth:`check` takes image ``k``'s :class:`HardwareResult`.
    Results accumulate: ``divergences`` (image -> its first divergence),
    ``spike_mismatches`` (neurons, summed over images and spiking layers),
    ``logit_mismatches`` (images), and :attr:`first_divergence`.
    """

    bundle: Bundle
    golden: GoldenResult
    divergences: dict[int, Divergence] = field(default_factory=dict)
    checked: set[int] = field(default_factory=set)
    spike_mismatches: int = 0
    logit_mismatches: int = 0

    def __post_init__(self):
        self.names = layer_names(self.bundle)
        self.widths = self.bundle.spiking_widths
        self.shapes = map_shapes(self.bundle)

    def check(self, image: int, hardware: HardwareResult) -> Divergence | None:
        """Compare image ``image``; return (and record) its first divergence, or None."""
        count = len(self.golden.classes)
        if not 0 <= image < count:
            raise ScoreboardError(f"image: {image} is outside the golden run's 0..{count - 1}")
        if image in self.checked:
            raise ScoreboardError(f"image {image}: checked twice")
        if len(hardware.traces) != len(self.widths):
            raise ScoreboardError(
                f"image {image}: {len(hardware.traces)} hardware traces, expected {len(self.widths)} "
                f"(the encoder and {len(self.widths) - 1} hidden layers)")
        self.checked.add(image)
        steps = self.golden.time_steps
        divergence = None
        for layer, (expected, got) in enumerate(zip(self.golden.traces(image), hardware.traces)):
            self.spike_mismatches += mismatched_neurons(self.golden.activations[layer][image], got, steps)
            found = first_trace_divergence(expected, got) if divergence is None else None
            if found is not None:
                kind, neuron, step, detail, context = found
                divergence = Divergence(image, layer, self.names[layer], kind, neuron, step, detail, context,
                                        map_position(self.shapes[layer], neuron))
        readout = self._check_readout(image, hardware)
        if readout is not None:
            self.logit_mismatches += 1
            divergence = divergence or readout
        if divergence is not None:
            self.divergences[image] = divergence
        return divergence

    def _check_readout(self, image: int, hardware: HardwareResult) -> Divergence | None:
        layer = len(self.widths)
        expected = self.golden.logits[image]
        got = np.asarray(hardware.logits, dtype=np.int64).reshape(-1)
        expected_class = int(self.golden.classes[image])
        if got.shape != expected.shape:
            return Divergence(image, layer, self.names[layer], "logit", None, None,
                              f"{got.size} hardware logits, golden has {expected.size}")
        differs = np.flatnonzero(got != expected)
        if differs.size:
            neuron = int(differs[0])
            shown = slice(0, CONTEXT_LOGITS)
            more = " ..." if expected.size > CONTEXT_LOGITS else ""
            context = (f"  golden   logits: {expected[shown].tolist()}{more}\n"
                       f"  hardware logits: {got[shown].tolist()}{more}")
            return Divergence(image, layer, self.names[layer], "logit", neuron, None,
                              f"golden {int(expected[neuron])}, hardware {int(got[neuron])} "
                              f"({differs.size} of {expected.size} logits differ)", context)
        if int(hardware.cls) != expected_class:
            return Divergence(image, layer, self.names[layer], "class", None, None,
                              f"golden class {expected_class}, hardware class {int(hardware.cls)} "
                              f"with identical logits {expected.tolist()[:CONTEXT_LOGITS]}")
        return None

    def missing(self, image: int, reason: str) -> Divergence:
        """Record that image ``image`` produced no (complete) hardware result."""
        layer = len(self.widths)
        divergence = Divergence(image, layer, self.names[layer], "no result", None, None, reason)
        self.checked.add(image)
        self.divergences[image] = divergence
        return divergence

    @property
    def first_divergence(self) -> Divergence | None:
        """The divergence of the lowest mismatching image, or None when all match."""
        return self.divergences[min(self.divergences)] if self.divergences else None

    @property
    def mismatched_images(self) -> list[int]:
        """Images whose traces, logits or class differ, in ascending order."""
        return sorted(self.divergences)

    @property
    def passed(self) -> bool:
        """True when every checked image matched."""
        return not self.divergences

    def summary(self) -> str:
        """One line per finding: counts, then the first divergence report."""
        line = (f"{len(self.checked)} images checked, {len(self.divergences)} mismatched, "
                f"{self.spike_mismatches} spike mismatches, {self.logit_mismatches} readout mismatches")
        first = self.first_divergence
        return line if first is None else f"{line}\n{first}"


__all__ = [
    "Divergence",
    "HardwareResult",
    "Scoreboard",
    "ScoreboardError",
    "first_trace_divergence",
    "golden_arrays",
    "golden_from_arrays",
    "golden_images",
    "layer_names",
    "mismatched_neurons",
]

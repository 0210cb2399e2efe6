"""Export a trained run as a contract bundle with ROM images, a report and test vectors.

A dense run becomes a contract-v1 bundle, a conv run (``--arch vgg``, batch
norm folded or not) a contract-v2 bundle whose conv2d layers carry their
pools and, where a fold left a border bias, one bias per position.
``export_run`` loads a run (``ttfs.sw.models.load_run``), maps it onto the
contract (``ttfs.sw.quantize.check_expressible``, which refuses what the
contract cannot express, such as a min-pool), chooses the scales on
calibration images (``ttfs.sw.quantize.calibrate``), optionally fine-tunes
with the integer forward (``ttfs.sw.quantize.finetune``), converts to
integers and checks the result against the golden model on the run's test
split.  ``write_export`` saves the bundle atomically
(``ttfs.contract.bundle.save_bundle``) with these extra files (layouts in
docs/export.md):

- ``<layer>.weight.hex``: $readmemh, one weight per line, row-major over the
  weight's shape (dense: word i*inputs + j is W[i][j]; conv2d: word
  ((o*C + c)*k + ky)*k + kx is W[o][c][ky][kx]), weight_bits wide, two's
  complement;
- ``<layer>.bias.hex``: one bias per line, row-major over the bias's shape
  (word i = Bias[i]; per position word (o*H_out + y)*W_out + x), as wide as
  the layer's biases need (two's complement), width in report.json;
- ``input.lut.hex``: the input table, channel-major (word 256*c + v), unsigned;
- ``report.json``: accuracies, per-layer figures, ROM sizes, board fit;
- ``vectors.npz``: the first test images with the golden activations,
  traces, logits and classes.

Everything written is a function of the run, the settings and the seed, and
npz archives carry fixed timestamps, so an export repeats byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ttfs.contract.boards import BOARDS, KBIT, BlockMemory
from ttfs.contract.bundle import (
    MAX_POTENTIAL_BITS,
    Bundle,
    Layer,
    conv2d_layer,
    describe,
    layer_potential_bounds,
    npz_bytes,
    save_bundle,
    signed_bits,
)
from ttfs.contract.datasets import Dataset
from ttfs.contract.errors import TTFSError
from ttfs.contract.readmemh import format_words
from ttfs.sim import golden
from ttfs.sw import sweeps

REPORT_FILE = "report.json"
VECTORS_FILE = "vectors.npz"
LUT_ROM_FILE = "input.lut.hex"
DEFAULT_VECTORS = 64
DEFAULT_CALIBRATION_IMAGES = 1000
DEFAULT_QAT_LR = 1e-4
DEFAULT_QAT_BATCH = 32

class ExportError(TTFSError):
    """An export request that cannot be carried out (bad settings, inexpressible network)."""


@dataclass
class ExportResult:
    """A finished export: the bundle, its report and the extra files to write beside it."""

    bundle: Bundle
    report: dict[str, Any]
    extra_files: dict[str, bytes]


# ---------------------------------------------------------------------------
# files


def rom_images(bundle: Bundle) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """($readmemh files by name, one description per ROM) for every weight and bias matrix and the input table."""
    files: dict[str, bytes] = {}
    roms: list[dict[str, Any]] = []

    def add(name: str, array: str, values: np.ndarray, width: int, signed: bool, layout: str) -> None:
        files[name] = format_words(values, width, signed).encode("ascii")
        roms.append({
            "file": name, "array": array, "width": width, "depth": int(values.size),
            "bits": int(values.size) * width, "signed": signed, "layout": layout,
        })  # fmt: skip

    lut_width = int(bundle.time_steps).bit_length()
    add(LUT_ROM_FILE, "input.lut", bundle.lut, lut_width, False, "word 256*c + v = lut[c][v]")
    for layer in bundle.layers:
        weight_layout, bias_layout = rom_layouts(layer)
        add(f"{layer.name}.weight.hex", f"{layer.name}.weight", layer.weight, layer.weight_bits, True, weight_layout)
        add(f"{layer.name}.bias.hex", f"{layer.name}.bias", layer.bias, layer.bias_bits, True, bias_layout)
    return files, roms


def rom_layouts(layer: Layer) -> tuple[str, str]:
    """How ``layer``'s weight and bias ROM words map to the arrays: row-major over each array's shape."""
    if not layer.is_conv:
        return "row-major: word i*inputs + j = W[i][j]", "word i = Bias[i]"
    weight = "row-major: word ((o*C + c)*k + ky)*k + kx = W[o][c][ky][kx]"
    if layer.bias_per == "position":
        return weight, "row-major: word (o*H_out + y)*W_out + x = Bias[o][y][x]"
    return weight, "word o = Bias[o]"


def board_fit(roms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which boards of ttfs.contract.boards hold every ROM in their block memories.

    Each ROM takes ceil(bits / block bits) whole blocks (data packed densely
    into words, as the hardware's lanes do); nothing shares a block.  On a
    board with an overflow memory (the iCE40UP5K's 256 Kbit SPRAMs) the
    largest ROMs go there first when block RAM does not suffice (SPRAM is
    RAM: it is filled at start-up).
    """
    sizes = sorted((rom["bits"] for rom in roms), reverse=True)

    def blocks(sizes: Sequence[int], memory: BlockMemory) -> int:
        return sum(math.ceil(bits / memory.bits) for bits in sizes)

    fits = []
    for board in BOARDS.values():
        block_ram, overflow = board.memories[0], board.overflow_memory
        needed = blocks(sizes, block_ram)
        entry: dict[str, Any] = {
            "board": board.label,
            "budget": " + ".join(f"{m.count} x {m.bits // KBIT} Kbit {m.kind}" for m in board.memories),
            "blocks_needed": {block_ram.kind: needed},
            "fits": needed <= block_ram.count,
        }
        if not entry["fits"] and overflow is not None:
            overflow_used = 0
            remaining = list(sizes)
            while remaining and blocks(remaining, block_ram) > block_ram.count:
                more = math.ceil(remaining[0] / overflow.bits)
                if overflow_used + more > overflow.count:
                    break
                overflow_used += more
                remaining.pop(0)
            block_ram_used = blocks(remaining, block_ram)
            entry["blocks_needed"] = {block_ram.kind: block_ram_used, overflow.kind: overflow_used}
            entry["fits"] = block_ram_used <= block_ram.count
        fits.append(entry)
    return fits


def vectors_arrays(bundle: Bundle, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Test vectors: images, labels, golden activations and traces per spiking layer, logits, classes.

    Spiking layer k (0 = input encoder, then the hidden layers, named in
    ``layers``) gets ``activations_<k>`` (N, width), the key the edge fixtures
    use too, and ``trace_<k>``, int64 (K, 3) of (image, step, neuron): every
    image's canonical trace, images in order.
    """
    result = golden.run(bundle, images)
    names = bundle.spiking_layer_names
    arrays: dict[str, np.ndarray] = {"images": np.asarray(images, dtype=np.uint8)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    arrays["layers"] = np.array(names)
    for index, activations in enumerate(result.activations):
        arrays[f"activations_{index}"] = activations
        traces = []
        for image, row in enumerate(activations):
            trace = golden.trace_from_activations(row, bundle.time_steps)
            traces.append(np.concatenate([np.full((len(trace), 1), image, dtype=np.int64), trace], axis=1))
        arrays[f"trace_{index}"] = np.concatenate(traces).reshape(-1, 3)
    arrays["logits"] = result.logits
    arrays["classes"] = result.classes
    return arrays


# ---------------------------------------------------------------------------
# the export


def build_bundle(plan, arrays: Sequence[tuple[np.ndarray, np.ndarray]], input_shape: Sequence[int],
                 classes: Sequence[str] | None, meta: dict[str, Any]) -> Bundle:  # fmt: skip
    """The bundle of integer ``arrays`` (W, Bias per layer) under ``plan`` (ttfs.sw.quantize.QuantPlan).

    Raises ExportError naming the layer whose potential bound needs more than 48 bits.
    """
    channels, height, width = (int(v) for v in input_shape)
    layers = []
    for scales, (weight, bias) in zip(plan.layers, arrays):
        weight, bias = np.asarray(weight, dtype=np.int64), np.asarray(bias, dtype=np.int64)
        if scales.conv is not None:
            conv = scales.conv
            layer = conv2d_layer(scales.name, conv.input_shape, weight, bias, weight_bits=scales.weight_bits,
                                 ramp_shift=scales.ramp_shift, padding=conv.padding, pool_size=conv.pool_size)  # fmt: skip
        else:
            layer = Layer(
                name=scales.name, kind="dense", inputs=int(weight.shape[1]), outputs=int(weight.shape[0]),
                weight_bits=scales.weight_bits, ramp_shift=scales.ramp_shift, readout=scales.readout,
                weight=weight, bias=bias,
            )  # fmt: skip
        bound = int(layer_potential_bounds(layer, plan.time_steps).max())
        if signed_bits(bound) > MAX_POTENTIAL_BITS:
            raise ExportError(
                f"layer {layer.name}: potential bound {bound} needs {signed_bits(bound)} bits, more than "
                f"{MAX_POTENTIAL_BITS} (contract section 6); the network cannot be expressed at these scales"
            )
        layers.append(layer)
    return Bundle(
        time_steps=plan.time_steps, channels=channels, height=height, width=width,
        lut=np.asarray(plan.lut, dtype=np.int64), layers=tuple(layers),
        classes=tuple(classes) if classes is not None else None, meta=meta,
    )  # fmt: skip


def calibration_subset(count: int, available: int, seed: int) -> np.ndarray:
    """Sorted indices of ``count`` calibration images drawn without replacement by ``seed``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ExportError(f"calibrate: {count!r} is not a positive number of images")
    if count >= available:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, size=count, replace=False))


def clipped_fractions(bundle: Bundle, activations: Sequence[np.ndarray]) -> list[float]:
    """Per hidden layer, the fraction of its neurons (a conv2d layer's before pooling) whose unclipped
    value floor((V+Bias)/R) exceeds T; ``activations[k]`` enters hidden layer k (golden activations)."""
    from ttfs.sw import quantize

    return quantize.IntegerNetwork.from_bundle(bundle).clipped_fractions(activations)


def _clip_percentile(clip_percentile: float | None) -> float:
    """The checked clip percentile, ttfs.sw.quantize's default when None."""
    from ttfs.sw import quantize

    return quantize.check_percentile(quantize.DEFAULT_CLIP_PERCENTILE if clip_percentile is None else clip_percentile)


@dataclass
class RunData:
    """A trained run with what an export needs: its float network (contract-expressible), config and
    name, the data set's train and test splits, and the float network's test accuracy."""

    model: Any  # ttfs.sw.models.TTFSNetwork (torch stays out of this module's imports)
    config: dict[str, Any]
    name: str
    train_set: Dataset
    test_set: Dataset
    float_accuracy: float


def load_run_data(run_dir: str | Path) -> RunData:
    """Load the run in ``run_dir`` and its data set, read as the run was trained on it (ttfs.sw.training.load_split)."""
    from ttfs.sw import models, quantize, training

    model, config = models.load_run(run_dir)
    quantize.check_expressible(model)
    train_set, test_set = (training.load_split(config, split) for split in ("train", "test"))
    float_images, float_labels = training.to_tensors(test_set, models.DTYPES[config["dtype"]])
    float_accuracy = training.evaluate(model, float_images, float_labels)["accuracy"]
    return RunData(model, config, config.get("name", Path(run_dir).name), train_set, test_set, float_accuracy)


def export_run(
    run_dir: str | Path,
    weight_bits: int,
    time_steps: int,
    *,
    calibrate: int = DEFAULT_CALIBRATION_IMAGES,
    qat_epochs: int = 0,
    seed: int = 0,
    clip_percentile: float | None = None,
    qat_lr: float = DEFAULT_QAT_LR,
    qat_batch_size: int = DEFAULT_QAT_BATCH,
    vectors: int = DEFAULT_VECTORS,
    device: str = "auto",
    progress: bool = False,
) -> ExportResult:
    """Quantise the run in ``run_dir`` and check it; nothing is written (see :func:`write_export`).

    ``device`` (auto, cpu or cuda) is where the quantisation-aware fine-tuning
    runs; calibration, the checks and the bundle are computed on the CPU.
    """
    from ttfs.sw import quantize
    from ttfs.sw.distributed import resolve_device

    bits = quantize.check_weight_bits(weight_bits)
    steps = quantize.check_time_steps(time_steps)
    percentile = _clip_percentile(clip_percentile)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ExportError(f"seed: {seed!r} is not an integer >= 0")
    if isinstance(vectors, bool) or not isinstance(vectors, int) or vectors < 1:
        raise ExportError(f"vectors: {vectors!r} is not a positive number of images")
    torch_device = resolve_device(device)
    run = load_run_data(run_dir)
    model, config, train_set, test_set = run.model, run.config, run.train_set, run.test_set

    subset = calibration_subset(calibrate, len(train_set.labels), seed)
    plan = quantize.calibrate(model, train_set.images[subset], bits, steps, percentile)
    network = quantize.IntegerNetwork.from_float(model, plan)
    calibrated_accuracy = network.accuracy(test_set.images, test_set.labels)
    history = []
    if qat_epochs:
        from tqdm import tqdm

        bar = tqdm(total=qat_epochs, desc="qat", unit="epoch", disable=not progress)

        def on_epoch(epoch: int, loss: float, accuracy: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", train=f"{100 * accuracy:.2f}%")

        history = quantize.finetune(network, train_set.images, train_set.labels, qat_epochs, lr=qat_lr,
                                    batch_size=qat_batch_size, seed=seed, on_epoch=on_epoch,
                                    device=torch_device)  # fmt: skip
        bar.close()

    meta = {
        "source": {"run": run.name, "dataset": config["dataset"], "sizes": model.sizes},
        "exporter": "sw.export (ttfs export)",
        "settings": {"calibrate": len(subset), "clip_percentile": percentile, "qat_epochs": qat_epochs,
                     "qat_lr": qat_lr, "qat_batch_size": qat_batch_size, "seed": seed, "bias_rounding": True},
        "input_step": 1.0 / steps,
        "scales": [{"layer": s.name, "weight_scale": s.weight_scale, "input_step": s.input_step,
                    "activation_step": s.activation_step, "bias_scale": s.bias_scale, "bias_offset": s.bias_offset}
                   for s in plan.layers],
    }  # fmt: skip
    try:
        arrays = network.integer_arrays()
    except quantize.QuantizeError as err:
        raise ExportError(str(err)) from None
    bundle = build_bundle(plan, arrays, config["input_shape"], config["classes"], meta)

    result = golden.run(bundle, test_set.images, pre_pool=True)
    integer_accuracy = float(np.mean(result.classes == test_set.labels))
    # The fine-tuned (or calibrated) integer forward must be the network the golden model runs.
    torch_logits, torch_activations = network.predict(test_set.images)
    matches = np.array_equal(torch_logits, result.logits) and all(
        np.array_equal(a, b) for a, b in zip(torch_activations, result.activations)
    )
    if not matches:
        raise ExportError("internal: the integer torch forward differs from the golden model; please report this")

    bounds = golden.potential_bounds(bundle)
    spikes = result.spikes_per_neuron()
    events = result.events_per_output()
    clipped = clipped_fractions(bundle, result.activations[:-1])
    files, roms = rom_images(bundle)
    layer_rows = []
    for index, (layer, scales, bound) in enumerate(zip(bundle.layers, plan.layers, bounds)):
        row = {"name": layer.name, "inputs": layer.inputs, "outputs": layer.outputs}
        if layer.is_conv:
            row.update(conv_shapes(layer))
        row.update({
            "readout": layer.readout,
            "weight_bits": layer.weight_bits, "ramp_shift": None if layer.readout else layer.ramp_shift,
            "weight_min": int(layer.weight.min()), "weight_max": int(layer.weight.max()),
            "bias_bits": layer.bias_bits,
            "potential_bound": bound.bound, "register_bits": bound.bits,
            "activation_step": scales.activation_step, "weight_scale": scales.weight_scale,
        })  # fmt: skip
        if not layer.readout:
            # A conv2d layer's neurons before pooling: the figures training reports.
            row["clipped_fraction"] = clipped[index]
            row["at_T_fraction"] = float(np.mean(result.pre_pool_activations[index + 1] == steps))
            row["spikes_per_neuron"] = spikes[index + 1]
            if layer.is_conv:
                row["events_per_output"] = events[index + 1]
        layer_rows.append(row)
    weight_rom_bits = sum(rom["bits"] for rom in roms if rom["array"].endswith(".weight"))
    report = {
        "bundle": describe(bundle),
        "source_run": meta["source"]["run"],
        "dataset": config["dataset"],
        "test_images": int(len(test_set.labels)),
        "sizes": model.sizes,
        "time_steps": steps,
        "weight_bits": bits,
        "float_accuracy": run.float_accuracy,
        "integer_accuracy": integer_accuracy,
        "calibrated_integer_accuracy": calibrated_accuracy,
        "accuracy_change_pp": 100 * (integer_accuracy - run.float_accuracy),
        "integer_torch_equals_golden": True,
        "calibration": {"images": int(len(subset)), "clip_percentile": percentile, "seed": seed, "bias_rounding": True},
        "qat": {"epochs": qat_epochs, "lr": qat_lr, "batch_size": qat_batch_size, "history": history},
        "input": {"width": bundle.input_size, "activation_step": 1.0 / steps, "spikes_per_neuron": spikes[0],
                  "at_T_fraction": float(np.mean(result.activations[0] == steps))},
        "layers": layer_rows,
        "weight_rom_bits": weight_rom_bits,
        "rom_bits": sum(rom["bits"] for rom in roms),
        "roms": roms,
        "boards": board_fit(roms),
        "board_fit_rule": "each ROM (weights, biases, input table) rounded up to whole blocks, densely packed words",
        "vectors": {"file": VECTORS_FILE, "images": min(vectors, len(test_set.labels))},
    }  # fmt: skip
    count = min(vectors, len(test_set.labels))
    files[VECTORS_FILE] = npz_bytes(vectors_arrays(bundle, test_set.images[:count], test_set.labels[:count]))
    files[REPORT_FILE] = (json.dumps(report, indent=2) + "\n").encode("utf-8")
    return ExportResult(bundle, report, files)


def conv_shapes(layer: Layer) -> dict[str, Any]:
    """A conv2d layer's shapes for the report: input map, convolution (before pooling), output
    map, kernel, padding, pool, bias layout and neuron count."""
    return {
        "kind": layer.kind,
        "input_shape": list(layer.input_shape),
        "conv_shape": list(layer.conv_shape),
        "output_shape": list(layer.output_shape),
        "kernel_size": layer.kernel_size,
        "padding": layer.padding,
        "pool_size": layer.pool_size,
        "bias_per": layer.bias_per,
        "neurons": layer.neurons,
    }


def write_export(result: ExportResult, out: str | Path) -> Path:
    """Write the bundle with its ROM images, report and vectors atomically to ``out``."""
    return save_bundle(result.bundle, out, extra_files=result.extra_files)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A readable table of an export report."""
    lines = [
        f"network      {report['bundle']} (from {report['source_run']})",
        f"accuracy     float SNN {100 * report['float_accuracy']:.2f} %, integer (golden) "
        f"{100 * report['integer_accuracy']:.2f} % ({report['accuracy_change_pp']:+.2f} pp) "
        f"on {report['dataset']} test, {report['test_images']} images",
    ]
    if report["qat"]["epochs"]:
        lines.append(f"             calibrated only {100 * report['calibrated_integer_accuracy']:.2f} %, "
                     f"then {report['qat']['epochs']} QAT epochs")  # fmt: skip
    lines.append(f"{'layer':<8}{'in':>6}{'out':>6}{'bits':>6}{'shift':>7}{'step':>10}{'clipped':>9}"
                 f"{'bound':>12}{'reg':>5}{'spikes/n':>10}")  # fmt: skip
    inputs = report["input"]
    lines.append(f"{'input':<8}{'':>6}{inputs['width']:>6}{'':>6}{'':>7}{inputs['activation_step']:>10.4g}"
                 f"{'':>9}{'':>12}{'':>5}{inputs['spikes_per_neuron']:>10.3f}")  # fmt: skip
    for row in report["layers"]:
        shift = "-" if row["ramp_shift"] is None else str(row["ramp_shift"])
        step = "-" if row["activation_step"] is None else f"{row['activation_step']:.4g}"
        clipped = f"{100 * row['clipped_fraction']:.3f}%" if "clipped_fraction" in row else "-"
        spikes = f"{row['spikes_per_neuron']:.3f}" if "spikes_per_neuron" in row else "-"
        lines.append(f"{row['name']:<8}{row['inputs']:>6}{row['outputs']:>6}{row['weight_bits']:>6}{shift:>7}"
                     f"{step:>10}{clipped:>9}{row['potential_bound']:>12}{row['register_bits']:>5}{spikes:>10}")  # fmt: skip
    for row in report["layers"]:
        if row.get("kind") == "conv2d":
            shapes = ["x".join(str(size) for size in row[key]) for key in ("input_shape", "conv_shape", "output_shape")]
            lines.append(f"{row['name']:<8}{shapes[0]} -> {row['kernel_size']}x{row['kernel_size']} {row['padding']} "
                         f"-> {shapes[1]} -> pool {row['pool_size']} -> {shapes[2]}; bias per {row['bias_per']}; "
                         f"spikes/n before the pool, events on {100 * row['events_per_output']:.1f} % of outputs")  # fmt: skip
    lines.append(f"ROMs         weights {report['weight_rom_bits']:,} bits; all ROMs {report['rom_bits']:,} bits")
    for board in report["boards"]:
        used = ", ".join(f"{count} {kind}" for kind, count in board["blocks_needed"].items())
        lines.append(f"  {board['board']:<22}{'fits' if board['fits'] else 'does not fit':<14}{used} of {board['budget']}")
    return lines


# ---------------------------------------------------------------------------
# sweep


def sweep(
    run_dir: str | Path,
    weight_bits: Sequence[int],
    time_steps: Sequence[int],
    *,
    calibrate: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    clip_percentile: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Integer (golden) test accuracy of the calibrated export for every (bits, T) pair.

    One row per pair (ttfs.sw.sweeps): ``weight_bits``, ``time_steps``,
    ``integer_accuracy`` and the hidden layers' ``ramp_shifts``.
    """
    from ttfs.sw import quantize

    bits_list = [quantize.check_weight_bits(b) for b in weight_bits]
    steps_list = [quantize.check_time_steps(t) for t in time_steps]
    percentile = _clip_percentile(clip_percentile)
    run = load_run_data(run_dir)
    test_set = run.test_set
    calibration = run.train_set.images[calibration_subset(calibrate, len(run.train_set.labels), seed)]

    def measure(weight_bits: int, time_steps: int) -> dict[str, Any]:
        plan = quantize.calibrate(run.model, calibration, weight_bits, time_steps, percentile)
        network = quantize.IntegerNetwork.from_float(run.model, plan)
        bundle = build_bundle(plan, network.integer_arrays(), run.config["input_shape"], run.config["classes"], {})
        result = golden.run(bundle, test_set.images)
        return {
            "integer_accuracy": float(np.mean(result.classes == test_set.labels)),
            "ramp_shifts": [layer.ramp_shift for layer in bundle.hidden_layers],
        }

    points = [{"weight_bits": bits, "time_steps": steps} for steps in steps_list for bits in bits_list]
    return {
        "source_run": run.name,
        "dataset": run.config["dataset"],
        "test_images": int(len(test_set.labels)),
        "float_accuracy": run.float_accuracy,
        "calibration": {"images": int(len(calibration)), "clip_percentile": percentile, "seed": seed},
        "results": sweeps.measure_points(points, measure, progress=progress, unit="export"),
    }


def sweep_table(sweep_report: dict[str, Any]) -> list[str]:
    """Accuracy table (rows: weight bits, columns: T) in percent."""
    title = (f"integer accuracy (%) of {sweep_report['source_run']} on {sweep_report['dataset']} test "
             f"({sweep_report['test_images']} images); float SNN {100 * sweep_report['float_accuracy']:.2f} %")  # fmt: skip
    return sweeps.table(sweep_report["results"], "weight_bits", "bits", lambda row: f"{100 * row['integer_accuracy']:6.2f}",
                        column_key="time_steps", column_header=lambda steps: f"T={steps}", title=title)  # fmt: skip


def plot_sweep(sweep_report: dict[str, Any], path: str | Path) -> None:
    """Accuracy against weight bits, one line per T, float SNN dashed (PNG, ttfs.sw.sweeps.plot).

    Two panels: the whole range, and a zoom on the 5 percentage points below the float accuracy.
    """
    rows = sweep_report["results"]
    float_percent = 100 * sweep_report["float_accuracy"]
    curves = []
    for steps in sorted({r["time_steps"] for r in rows}):
        points = sorted((r["weight_bits"], 100 * r["integer_accuracy"]) for r in rows if r["time_steps"] == steps)
        curves.append(sweeps.Curve([p[0] for p in points], [p[1] for p in points], label=f"T = {steps}"))
    common = {"xlabel": "weight bits", "ylabel": "integer test accuracy (%)", "reference": ("float SNN", float_percent)}
    panels = [
        sweeps.Panel(curves, title=f"{sweep_report['source_run']}: calibrated export", **common),
        sweeps.Panel(curves, title="zoom", ylim=(float_percent - 5, min(100.0, float_percent + 1)), legend=True, **common),
    ]
    sweeps.plot(path, panels, panel_size=(5, 4))

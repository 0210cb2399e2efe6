"""Export a trained run as a contract-v1 bundle with ROM images, a report and test vectors.

``export_run`` loads a run (``sw.models.load_run``), chooses the scales on
calibration images (``sw.quantize.calibrate``), optionally fine-tunes with
the integer forward (``sw.quantize.finetune``), converts to integers and
checks the result against the golden model on the run's test split.
``write_export`` saves the bundle atomically (``sim.bundle.save_bundle``)
with these extra files (layouts in docs/export.md):

- ``<layer>.weight.hex``: $readmemh, one weight per line, row-major
  (word i*inputs + j is W[i][j]), weight_bits wide, two's complement;
- ``<layer>.bias.hex``: one bias per line, as wide as the layer's biases need
  (two's complement), width in report.json;
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

from sim import golden
from sim.bundle import (
    MAX_POTENTIAL_BITS,
    Bundle,
    Layer,
    describe,
    layer_potential_bounds,
    npz_bytes,
    save_bundle,
    signed_bits,
)
from sim.errors import TTFSError
from sim.readmemh import format_words

REPORT_FILE = "report.json"
VECTORS_FILE = "vectors.npz"
LUT_ROM_FILE = "input.lut.hex"
DEFAULT_VECTORS = 64
DEFAULT_CALIBRATION_IMAGES = 1000
DEFAULT_QAT_LR = 1e-4
DEFAULT_QAT_BATCH = 32

#: Block-RAM budgets: (board, memory kind, count, bits per block).  Xilinx
#: 36 Kbit blocks count their parity bits (usable with 9/18/36-bit words).
BOARDS: tuple[dict[str, Any], ...] = (
    {"board": "Arty A7-35T", "memories": [("BRAM36", 50, 36 * 1024)]},
    {"board": "Arty A7-100T", "memories": [("BRAM36", 135, 36 * 1024)]},
    {"board": "ULX3S ECP5-85F", "memories": [("EBR18", 208, 18 * 1024)]},
    {"board": "iCEBreaker iCE40UP5K", "memories": [("EBR4", 30, 4 * 1024), ("SPRAM256", 4, 256 * 1024)]},
)


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


def bias_width(bias: np.ndarray) -> int:
    """Signed width of a bias vector: the smallest two's-complement width holding every entry (at least 2)."""
    largest = max(int(np.max(bias)), -int(np.min(bias)) - 1, 1)
    return largest.bit_length() + 1


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
        add(f"{layer.name}.weight.hex", f"{layer.name}.weight", layer.weight, layer.weight_bits, True,
            "row-major: word i*inputs + j = W[i][j]")
        add(f"{layer.name}.bias.hex", f"{layer.name}.bias", layer.bias, bias_width(layer.bias), True,
            "word i = Bias[i]")  # fmt: skip
    return files, roms


def board_fit(roms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which boards hold every ROM in block RAM.

    Each ROM takes ceil(bits / block bits) whole blocks (data packed densely
    into words, as the hardware's lanes do); nothing shares a block.  On
    the iCE40UP5K the largest ROMs go to the 256 Kbit SPRAMs first when the
    4 Kbit EBRs do not suffice (SPRAM is RAM: it is filled at start-up).
    """
    sizes = sorted((rom["bits"] for rom in roms), reverse=True)
    fits = []
    for board in BOARDS:
        memories = board["memories"]
        primary_kind, primary_count, primary_bits = memories[0]
        primary_needed = sum(math.ceil(bits / primary_bits) for bits in sizes)
        entry: dict[str, Any] = {
            "board": board["board"],
            "budget": " + ".join(f"{count} x {bits // 1024} Kbit {kind}" for kind, count, bits in memories),
            "blocks_needed": {primary_kind: primary_needed},
            "fits": primary_needed <= primary_count,
        }
        if not entry["fits"] and len(memories) > 1:
            _, spare_count, spare_bits = memories[1]
            spare_used = 0
            remaining = list(sizes)
            while remaining and sum(math.ceil(b / primary_bits) for b in remaining) > primary_count:
                needed = math.ceil(remaining[0] / spare_bits)
                if spare_used + needed > spare_count:
                    break
                spare_used += needed
                remaining.pop(0)
            primary_used = sum(math.ceil(b / primary_bits) for b in remaining)
            entry["blocks_needed"] = {primary_kind: primary_used, memories[1][0]: spare_used}
            entry["fits"] = primary_used <= primary_count
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
    names = ["input"] + [layer.name for layer in bundle.hidden_layers]
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
    """The bundle of integer ``arrays`` (W, Bias per layer) under ``plan`` (sw.quantize.QuantPlan).

    Raises ExportError naming the layer whose potential bound needs more than 48 bits.
    """
    channels, height, width = (int(v) for v in input_shape)
    layers = []
    for scales, (weight, bias) in zip(plan.layers, arrays):
        layer = Layer(
            name=scales.name, kind="dense", inputs=int(weight.shape[1]), outputs=int(weight.shape[0]),
            weight_bits=scales.weight_bits, ramp_shift=scales.ramp_shift, readout=scales.readout,
            weight=np.asarray(weight, dtype=np.int64), bias=np.asarray(bias, dtype=np.int64),
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
    """Per hidden layer, the fraction of activations whose unclipped value floor((V+Bias)/R) exceeds T."""
    fractions = []
    for layer, inputs in zip(bundle.hidden_layers, activations):
        # float64 holds these integers exactly (bounds are below 2^48).
        potential = inputs.astype(np.float64) @ layer.weight.T.astype(np.float64) + layer.bias
        fractions.append(float(np.mean(np.floor(potential / layer.ramp) > bundle.time_steps)))
    return fractions


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
    progress: bool = False,
) -> ExportResult:
    """Quantise the run in ``run_dir`` and check it; nothing is written (see :func:`write_export`)."""
    from sw import models, quantize, training
    from sw.datasets import load_dataset

    bits = quantize.check_weight_bits(weight_bits)
    steps = quantize.check_time_steps(time_steps)
    percentile = quantize.check_percentile(quantize.DEFAULT_CLIP_PERCENTILE if clip_percentile is None else clip_percentile)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ExportError(f"seed: {seed!r} is not an integer >= 0")
    if isinstance(vectors, bool) or not isinstance(vectors, int) or vectors < 1:
        raise ExportError(f"vectors: {vectors!r} is not a positive number of images")
    model, config = models.load_run(run_dir)
    quantize.check_expressible(model)
    train_set = load_dataset(config["dataset"], "train", config.get("data_dir"))
    test_set = load_dataset(config["dataset"], "test", config.get("data_dir"))
    for split, dataset in (("train", train_set), ("test", test_set)):
        if list(dataset.images.shape[1:]) != config["input_shape"] or dataset.labels is None:
            raise ExportError(f"{config['dataset']} {split} split: images {list(dataset.images.shape[1:])} "
                              f"with labels do not match the run's input {config['input_shape']}")  # fmt: skip

    float_images, float_labels = training.to_tensors(test_set, models.DTYPES[config["dtype"]])
    float_accuracy = training.evaluate(model, float_images, float_labels)["accuracy"]

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
                                    batch_size=qat_batch_size, seed=seed, on_epoch=on_epoch)  # fmt: skip
        bar.close()

    meta = {
        "source": {"run": config.get("name", Path(run_dir).name), "dataset": config["dataset"], "sizes": model.sizes},
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

    result = golden.run(bundle, test_set.images)
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
    clipped = clipped_fractions(bundle, result.activations[:-1])
    files, roms = rom_images(bundle)
    layer_rows = []
    for index, (layer, scales, bound) in enumerate(zip(bundle.layers, plan.layers, bounds)):
        row = {
            "name": layer.name, "inputs": layer.inputs, "outputs": layer.outputs, "readout": layer.readout,
            "weight_bits": layer.weight_bits, "ramp_shift": None if layer.readout else layer.ramp_shift,
            "weight_min": int(layer.weight.min()), "weight_max": int(layer.weight.max()),
            "bias_bits": bias_width(layer.bias),
            "potential_bound": bound.bound, "register_bits": bound.bits,
            "activation_step": scales.activation_step, "weight_scale": scales.weight_scale,
        }  # fmt: skip
        if not layer.readout:
            row["clipped_fraction"] = clipped[index]
            row["at_T_fraction"] = float(np.mean(result.activations[index + 1] == steps))
            row["spikes_per_neuron"] = spikes[index + 1]
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
        "float_accuracy": float_accuracy,
        "integer_accuracy": integer_accuracy,
        "calibrated_integer_accuracy": calibrated_accuracy,
        "accuracy_change_pp": 100 * (integer_accuracy - float_accuracy),
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
    lines.append(f"ROMs         weights {report['weight_rom_bits']:,} bits; all ROMs {report['rom_bits']:,} bits")
    for board in report["boards"]:
        used = ", ".join(f"{count} {kind}" for kind, count in board["blocks_needed"].items())
        lines.append(f"  {board['board']:<22}{'fits' if board['fits'] else 'does not fit':<14}{used} of {board['budget']}")
    return lines


# ---------------------------------------------------------------------------
# sweep


def parse_int_list(text: str) -> list[int]:
    """"2..8" (inclusive range) or "4,8,16" or a mix "2..4,8" as a list of integers."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if ".." in part:
                low, high = (int(v) for v in part.split("..", 1))
                if high < low:
                    raise ValueError
                values.extend(range(low, high + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise ExportError(f"{text!r} is not a list like 2..8 or 4,8,16") from None
    if not values:
        raise ExportError(f"{text!r} names no values")
    return values


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
    """Integer (golden) test accuracy of the calibrated export for every (bits, T) pair."""
    from tqdm import tqdm

    from sw import models, quantize, training
    from sw.datasets import load_dataset

    bits_list = [quantize.check_weight_bits(b) for b in weight_bits]
    steps_list = [quantize.check_time_steps(t) for t in time_steps]
    percentile = quantize.check_percentile(quantize.DEFAULT_CLIP_PERCENTILE if clip_percentile is None else clip_percentile)
    model, config = models.load_run(run_dir)
    train_set = load_dataset(config["dataset"], "train", config.get("data_dir"))
    test_set = load_dataset(config["dataset"], "test", config.get("data_dir"))
    float_images, float_labels = training.to_tensors(test_set, models.DTYPES[config["dtype"]])
    float_accuracy = training.evaluate(model, float_images, float_labels)["accuracy"]
    calibration = train_set.images[calibration_subset(calibrate, len(train_set.labels), seed)]
    rows = []
    pairs = [(b, t) for t in steps_list for b in bits_list]
    for bits, steps in tqdm(pairs, desc="sweep", unit="export", disable=not progress):
        plan = quantize.calibrate(model, calibration, bits, steps, percentile)
        network = quantize.IntegerNetwork.from_float(model, plan)
        bundle = build_bundle(plan, network.integer_arrays(), config["input_shape"], config["classes"], {})
        result = golden.run(bundle, test_set.images)
        rows.append({
            "weight_bits": bits, "time_steps": steps,
            "integer_accuracy": float(np.mean(result.classes == test_set.labels)),
            "ramp_shifts": [layer.ramp_shift for layer in bundle.hidden_layers],
        })  # fmt: skip
    return {
        "source_run": config.get("name", Path(run_dir).name),
        "dataset": config["dataset"],
        "test_images": int(len(test_set.labels)),
        "float_accuracy": float_accuracy,
        "calibration": {"images": int(len(calibration)), "clip_percentile": percentile, "seed": seed},
        "results": rows,
    }


def sweep_table(sweep_report: dict[str, Any]) -> list[str]:
    """Accuracy table (rows: weight bits, columns: T) in percent."""
    rows = sweep_report["results"]
    bits_list = sorted({r["weight_bits"] for r in rows})
    steps_list = sorted({r["time_steps"] for r in rows})
    accuracy = {(r["weight_bits"], r["time_steps"]): r["integer_accuracy"] for r in rows}
    lines = [f"integer accuracy (%) of {sweep_report['source_run']} on {sweep_report['dataset']} test "
             f"({sweep_report['test_images']} images); float SNN {100 * sweep_report['float_accuracy']:.2f} %",
             f"{'bits':>5}" + "".join(f"{'T=' + str(t):>9}" for t in steps_list)]  # fmt: skip
    for bits in bits_list:
        lines.append(f"{bits:>5}" + "".join(f"{100 * accuracy[(bits, t)]:>9.2f}" for t in steps_list))
    return lines


def plot_sweep(sweep_report: dict[str, Any], path: str | Path) -> None:
    """Accuracy against weight bits, one line per T, float SNN dashed (PNG, Agg backend).

    Two panels: the whole range, and a zoom on the 5 percentage points below the float accuracy.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sweep_report["results"]
    float_percent = 100 * sweep_report["float_accuracy"]
    figure = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(figure)
    full, zoom = figure.subplots(1, 2)
    for axes in (full, zoom):
        for steps in sorted({r["time_steps"] for r in rows}):
            points = sorted((r["weight_bits"], 100 * r["integer_accuracy"]) for r in rows if r["time_steps"] == steps)
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"T = {steps}")
        axes.axhline(float_percent, color="black", linestyle="--", linewidth=1, label="float SNN")
        axes.set(xlabel="weight bits", ylabel="integer test accuracy (%)")
        axes.grid(alpha=0.3)
    zoom.set_ylim(float_percent - 5, min(100.0, float_percent + 1))
    zoom.set_title("zoom")
    zoom.legend()
    full.set_title(f"{sweep_report['source_run']}: calibrated export")
    figure.savefig(path, dpi=100)

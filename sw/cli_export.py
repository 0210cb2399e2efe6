"""``ttfs export`` and ``ttfs sweep``: quantise a trained run into a contract-v1 bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.reports import write_json

EXPORT_DESCRIPTION = """\
Quantise a run made by `ttfs train` into a network bundle (contract v1):
integer weights of --weight-bits bits, T = --time-steps steps per layer
window, power-of-two ramps.  Activation steps are calibrated on training
images (a high percentile of the float activations maps to T); weight scales
follow from the ramp shift that uses the weight range best without overflow.
--qat-epochs K fine-tunes the network through the exact integer forward pass
(straight-through gradients) before the conversion.

The bundle directory gets network.json and params.npz, $readmemh ROM images
(<layer>.weight.hex row-major, <layer>.bias.hex, input.lut.hex), report.json
(float and integer accuracy on the run's test split, per-layer ramp shifts,
clipping, potential bounds, spikes per neuron, ROM bits, board fit) and
vectors.npz (test images with golden activations, traces and logits).
Layouts: docs/export.md.  The same run, settings and seed give the same bytes.
"""

SWEEP_DESCRIPTION = """\
Integer (golden-model) test accuracy of the calibrated export of a run for
every pair of weight bits and time steps, as a table, optionally a JSON file
and a PNG (accuracy against bits, one line per T).
"""


def register(subparsers) -> None:
    """Add the ``export`` and ``sweep`` subcommands."""
    export = subparsers.add_parser(
        "export",
        help="quantise a trained run into a bundle (ROMs, report, test vectors)",
        description=EXPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    export.add_argument("--weight-bits", type=int, required=True, metavar="B", help="signed weight width, 2..16")
    export.add_argument("--time-steps", type=int, required=True, metavar="T", help="steps per window, a power of two in 2..256")
    export.add_argument("--calibrate", type=int, default=1000, metavar="N", help="training images used to calibrate the activation steps (default 1000)")
    export.add_argument("--clip-percentile", type=float, default=None, metavar="P",
                        help="percentile of the positive float activations mapped to T (default 99.99)")  # fmt: skip
    export.add_argument("--qat-epochs", type=int, default=0, metavar="K", help="quantisation-aware fine-tuning epochs (default 0)")
    export.add_argument("--qat-lr", type=float, default=1e-4, help="Adam learning rate of the fine-tuning (default 1e-4)")
    export.add_argument("--qat-batch-size", type=int, default=32, help="fine-tuning batch size (default 32)")
    export.add_argument("--seed", type=int, default=0, metavar="S", help="picks the calibration images and the fine-tuning batch order (default 0)")
    export.add_argument("--vectors", type=int, default=64, metavar="N", help="test images stored in vectors.npz (default 64)")
    export.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write (replaced atomically)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=run_export)

    sweep = subparsers.add_parser(
        "sweep",
        help="integer accuracy of a run's export over weight bits and time steps",
        description=SWEEP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("run", metavar="RUN", help="run directory made by `ttfs train`")
    sweep.add_argument("--weight-bits", default="2..8", metavar="LIST", help="e.g. 2..8 or 4,5,8 (default 2..8)")
    sweep.add_argument("--time-steps", default="4,8,16,32", metavar="LIST", help="e.g. 4,8,16,32 (default)")
    sweep.add_argument("--calibrate", type=int, default=1000, metavar="N", help="calibration images (default 1000)")
    sweep.add_argument("--clip-percentile", type=float, default=None, metavar="P", help="default 99.99")
    sweep.add_argument("--seed", type=int, default=0, metavar="S", help="picks the calibration images (default 0)")
    sweep.add_argument("--json", metavar="OUT", help="write the results as JSON")
    sweep.add_argument("--png", metavar="OUT", help="plot accuracy against bits, one line per T")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=run_sweep)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``ttfs export``."""
    from sw import export

    result = export.export_run(
        args.run, args.weight_bits, args.time_steps,
        calibrate=args.calibrate, qat_epochs=args.qat_epochs, seed=args.seed,
        clip_percentile=args.clip_percentile, qat_lr=args.qat_lr, qat_batch_size=args.qat_batch_size,
        vectors=args.vectors, progress=not args.quiet,
    )  # fmt: skip
    path = export.write_export(result, args.out)
    print(f"bundle {path}")
    for line in export.summary_lines(result.report):
        print(line)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Handler of ``ttfs sweep``."""
    from sw import export

    report = export.sweep(
        args.run, export.parse_int_list(args.weight_bits), export.parse_int_list(args.time_steps),
        calibrate=args.calibrate, seed=args.seed, clip_percentile=args.clip_percentile, progress=not args.quiet,
    )  # fmt: skip
    for line in export.sweep_table(report):
        print(line)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        export.plot_sweep(report, args.png)
        print(f"wrote {args.png}")
    return 0

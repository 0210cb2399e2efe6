"""``ttfs export`` and ``ttfs sweep``: quantise a trained run into a contract bundle (v1 dense, v2 conv)."""

from __future__ import annotations

import argparse

from ttfs.contract.paths import BUNDLE, check_output
from ttfs.contract.reports import write_json
from ttfs.sw import export


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``ttfs export``."""
    check_output(args.out, "--out", kind=BUNDLE, inputs=[args.run])
    result = export.export_run(
        args.run, args.weight_bits, args.time_steps,
        calibrate=args.calibrate, qat_epochs=args.qat_epochs, seed=args.seed,
        clip_percentile=args.clip_percentile, qat_lr=args.qat_lr, qat_batch_size=args.qat_batch_size,
        vectors=args.vectors, device=args.device, progress=not args.quiet,
    )  # fmt: skip
    path = export.write_export(result, args.out)
    print(f"bundle {path}")
    for line in export.summary_lines(result.report):
        print(line)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Handler of ``ttfs sweep``."""
    for option, path in (("--json", args.json), ("--png", args.png)):
        if path:
            check_output(path, option, inputs=[args.run])
    report = export.sweep(
        args.run, args.weight_bits, args.time_steps,
        calibrate=args.calibrate, seed=args.seed, clip_percentile=args.clip_percentile, progress=not args.quiet,
    )  # fmt: skip
    for line in export.sweep_table(report):
        print(line)
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    if args.png:
        export.plot_sweep(report, args.png)
        print(f"wrote {args.png}")
    return 0

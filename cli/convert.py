"""``ttfs convert``: a trained PyTorch ReLU network (state_dict + architecture description) as a TTFS run."""

from __future__ import annotations

import argparse

from ttfs.contract.datasets import user_data_path
from ttfs.contract.paths import RUN, check_output
from ttfs.sw import convert, training


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``ttfs convert``."""
    if (args.mean is None) != (args.std is None):
        raise convert.ConversionError("--mean and --std: give both (the input normalisation) or neither")
    check_output(args.out, "--out", kind=RUN,
                 inputs=[args.checkpoint, args.architecture, user_data_path(args.dataset), args.data_dir])
    model = convert.load_model(args.checkpoint, args.architecture)
    _, config, report = convert.convert_run(
        model, args.input_shape, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
        input_norm=None if args.mean is None else (args.mean, args.std), dtype=args.dtype,
        window_factor=args.window_factor, device=args.device, source=str(args.checkpoint),
    )  # fmt: skip
    print(f"run {config['out']}")
    for line in training.summary_lines(report):
        print(line)
    return 0

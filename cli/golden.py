"""``ttfs golden``: run the golden model on a bundle and report accuracy and spike rates."""

from __future__ import annotations

import argparse

import numpy as np
from ttfs.contract.bundle import describe, load_bundle
from ttfs.contract.datasets import load_dataset, load_for_input, load_images_npz, user_data_path
from ttfs.contract.errors import TTFSError
from ttfs.contract.paths import check_output
from ttfs.contract.reports import write_json
from ttfs.contract.resources import bundle_location
from ttfs.sim.golden import as_image_batch, run


class GoldenCliError(TTFSError):
    """A request the golden command cannot satisfy (bad --images, shape mismatch)."""


def run_golden(args: argparse.Namespace) -> int:
    """Load the bundle and the images, run the golden model, print and write the report."""
    bundle_dir = bundle_location(args.bundle)
    if args.json is not None:
        check_output(args.json, "--json", inputs=[bundle_dir, args.input, user_data_path(args.dataset), args.data_dir])
    bundle = load_bundle(bundle_dir)
    if args.input is not None:
        dataset = load_images_npz(args.input)
        source = args.input
    elif args.dataset is not None:
        # A folder of images is read at the bundle's input size and channels.
        dataset = load_for_input(args.dataset, args.split, args.data_dir, bundle.input_shape)
        source = f"{args.dataset} ({args.split} split)"
    else:
        dataset = load_dataset("mnist-sample", split=args.split)
        source = f"mnist-sample ({args.split} split)"
    images, labels = dataset.images, dataset.labels
    if args.images is not None:
        images = images[: args.images]
        labels = None if labels is None else labels[: args.images]
    try:
        images = as_image_batch(bundle, images)
    except TTFSError as err:
        raise GoldenCliError(f"{source}: images do not fit bundle {args.bundle}: {err}") from None

    result = run(bundle, images, progress=len(images) > 20000)
    accuracy = None if labels is None else float(np.mean(result.classes == labels))
    spikes = result.spikes_per_neuron()
    report = {
        "images": int(len(images)),
        "accuracy": accuracy,
        "classes": result.classes.tolist(),
        "spikes_per_neuron": spikes,
    }

    print(f"bundle:   {args.bundle} ({describe(bundle)})")
    print(f"images:   {len(images)} from {source}")
    print("accuracy: " + ("n/a (no labels)" if accuracy is None else f"{accuracy:.2%}"))
    print("spikes per neuron (fraction of neurons that fire, mean over images):")
    for name, fraction in zip(bundle.spiking_layer_names, spikes):
        print(f"  {name:<12} {fraction:.4f}")
    if args.json is not None:
        print(f"report:   {write_json(args.json, report)}")
    return 0

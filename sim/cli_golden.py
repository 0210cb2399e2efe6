"""``ttfs golden``: run the golden model on a bundle and report accuracy and spike rates."""

from __future__ import annotations

import argparse

from sim.errors import TTFSError
from sim.reports import write_json

DESCRIPTION = """\
Run the exact golden model of a network bundle on images and report the
accuracy (when labels are known) and the fraction of neurons that spike in
each layer (layer 0 is the input encoder).

Images come from the embedded MNIST sample's test split (1,000 images) or,
with --input, from an .npz file holding `images` (uint8, (N, C, H, W) or
(N, H, W)) and optionally `labels`.
"""


class GoldenCliError(TTFSError):
    """A request the golden command cannot satisfy (bad --images, shape mismatch)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``golden`` subcommand."""
    parser = subparsers.add_parser(
        "golden",
        help="run the golden model on a bundle (accuracy, spikes per neuron)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory (network.json + params.npz)")
    parser.add_argument(
        "--images", type=int, metavar="N", default=None,
        help="run only the first N images (default: all)",
    )
    parser.add_argument(
        "--input", metavar="FILE.npz", default=None,
        help="images to run instead of the MNIST sample's test split",
    )
    parser.add_argument("--json", metavar="OUT", default=None, help="write a JSON report to OUT")
    parser.set_defaults(func=handle)


def _layer_names(bundle) -> list[str]:
    return ["input"] + [layer.name for layer in bundle.hidden_layers]


def handle(args: argparse.Namespace) -> int:
    """Load the bundle and the images, run the golden model, print and write the report."""
    import numpy as np

    from sim.bundle import describe, load_bundle
    from sim.golden import as_image_batch, run
    from sw.datasets import load_dataset, load_images_npz

    bundle = load_bundle(args.bundle)
    if args.input is not None:
        dataset = load_images_npz(args.input)
        source = args.input
    else:
        dataset = load_dataset("mnist-sample", split="test")
        source = "mnist-sample (test split)"
    images, labels = dataset.images, dataset.labels
    if args.images is not None:
        if args.images < 1:
            raise GoldenCliError(f"--images: {args.images} must be at least 1")
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
    for name, fraction in zip(_layer_names(bundle), spikes):
        print(f"  {name:<12} {fraction:.4f}")
    if args.json is not None:
        print(f"report:   {write_json(args.json, report)}")
    return 0

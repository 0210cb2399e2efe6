"""``ttfs sim``: run a bundle's hardware core in a Verilog simulator and check it spike for spike.

Builds ``hw.core.NetworkCore`` for the bundle, simulates it with cocotb
(Verilator by default, Icarus as the second simulator), drives N images,
compares every layer's spike trace, the logits and the class with the golden
model, and writes ``<out>/report.json``, ``<out>/raster.png`` and
``<out>/results.xml``.  Exit status 0 when everything matches, 1 on any
mismatch, 2 when the bundle or the simulator is unusable.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from sim.errors import TTFSError
from sim.reports import write_json

DEFAULT_BUNDLE = "fixtures/bundles/mnist-fc2"
DEFAULT_IMAGES = 100
DEFAULT_LANES = 16
DEFAULT_PIXELS_PER_BEAT = 8
DEFAULT_OUT = "build/sim"
MNIST_SHAPE = (1, 28, 28)

DESCRIPTION = """\
Simulate a bundle's hardware core (hw.core.NetworkCore as Verilog) with cocotb
and check it spike for spike against the golden model: every layer's spike
trace, the logits and the class of every image.

Writes OUT/report.json, OUT/raster.png (hardware spikes over golden ones) and
OUT/results.xml (JUnit).  Exit status 0 when everything matches, 1 on any
mismatch, 2 when the bundle or the simulator is unusable.
"""

EPILOG = """\
examples:
  ttfs sim                                   # default bundle, 100 MNIST test images, Verilator
  ttfs sim --bundle fixtures/bundles/edge-deep --sim icarus --images 20
  ttfs sim --images 5 --waves                # waves in build/sim/run-verilator/dump.vcd

Images: a bundle with a 1x28x28 input takes the embedded MNIST test images;
any other takes the images of its vectors.npz, then seeded random images;
--input FILE.npz (array "images", optional "labels") overrides both.
On a mismatch the first failing image is simulated again, alone, with waves.
"""


def register(subparsers) -> None:
    """Add the ``sim`` subcommand."""
    parser = subparsers.add_parser(
        "sim",
        help="simulate the hardware core (cocotb) and check it spike for spike",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, metavar="N",
                        help=f"number of images to simulate (default {DEFAULT_IMAGES})")
    parser.add_argument("--input", metavar="FILE.npz", help="images to use instead of the embedded ones")
    parser.add_argument("--sim", choices=("verilator", "icarus"), default="verilator",
                        help="Verilog simulator (default verilator)")
    parser.add_argument("--lanes", type=int, default=DEFAULT_LANES, metavar="P",
                        help=f"neurons integrated in parallel per layer (default {DEFAULT_LANES})")
    parser.add_argument("--pixels-per-beat", type=int, default=DEFAULT_PIXELS_PER_BEAT, metavar="K",
                        help=f"pixels per input beat (default {DEFAULT_PIXELS_PER_BEAT})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the stalls and of random images (default 1)")
    parser.add_argument("--stall", type=float, default=0.1, metavar="P",
                        help="per-cycle probability of an input gap and of result/trace back-pressure "
                             "(default 0.1)")
    parser.add_argument("--no-reset-test", action="store_true",
                        help="skip the reset in the middle of a frame before the images")
    parser.add_argument("--waves", action="store_true", help="record waves of the whole run")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"build and report folder (default {DEFAULT_OUT})")
    parser.set_defaults(func=handle)


def _select_images(bundle, bundle_dir: Path, count: int, input_file: str | None, seed: int):
    """(images uint8 (N, C, H, W), labels or None, source description)."""
    from sim.golden import as_image_batch
    from sim.random_bundle import random_images
    from sw.datasets import load_dataset, load_images_npz

    if input_file is not None:
        data = load_images_npz(input_file)
        images = as_image_batch(bundle, data.images)[:count]
        labels = None if data.labels is None else data.labels[:count]
        return images, labels, f"{input_file} ({len(images)} images)"
    if bundle.input_shape == MNIST_SHAPE:
        data = load_dataset("mnist-sample", "test")
        images = data.images[:count]
        return images, data.labels[:count], f"embedded MNIST test images 0..{len(images) - 1}"
    parts, source = [], []
    vectors = bundle_dir / "vectors.npz"
    if vectors.is_file():
        with np.load(vectors, allow_pickle=False) as archive:
            if "images" in archive:
                parts.append(as_image_batch(bundle, archive["images"])[:count])
                source.append(f"{len(parts[0])} images of vectors.npz")
    have = sum(len(p) for p in parts)
    if have < count:
        parts.append(random_images(seed, bundle, count - have))
        source.append(f"{count - have} random images (seed {seed})")
    return np.concatenate(parts), None, " + ".join(source)


def _cycles_summary(values: list[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def handle(args) -> int:
    """Build, simulate, check and report; see the module docstring for the exit status."""
    from tqdm import tqdm

    from sim.bundle import load_bundle
    from sim.cocotb_flow import SimulationError, StimulusSettings, build_core, check_run, run_core
    from sim.golden import run as golden_run
    from sim.raster import save_raster
    from sim.scoreboard import layer_names

    if args.images < 1:
        raise SimulationError(f"--images: {args.images} must be at least 1")
    for name, value in (("--stall", args.stall),):
        if not 0.0 <= value < 1.0:
            raise SimulationError(f"{name}: {value} must lie in 0 <= p < 1")
    bundle_dir = Path(args.bundle)
    bundle = load_bundle(bundle_dir)
    images, labels, source = _select_images(bundle, bundle_dir, args.images, args.input, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = bundle_dir.resolve().name
    settings = StimulusSettings(seed=args.seed, input_gap=args.stall, result_stall=args.stall,
                                trace_stall=args.stall, reset_mid_frame=not args.no_reset_test)

    print(f"ttfs sim: {name}, {len(images)} images ({source}), {args.sim}, "
          f"lanes {args.lanes}, {args.pixels_per_beat} pixels/beat")
    try:
        build = build_core(bundle, name, args.lanes, args.sim, out, args.pixels_per_beat, waves=args.waves)
    except TTFSError:
        raise
    except Exception as err:  # an elaboration failure of the generator, as one line
        raise SimulationError(f"the core cannot be built for {bundle_dir}: {type(err).__name__}: {err}") from None
    print(f"build: {build.directory} ({'cached' if build.cached else f'{build.build_seconds:.1f} s'})")

    bar = tqdm(total=len(images), desc=f"sim {args.sim}", unit="image")

    def progress(done):
        bar.update(done - bar.n)

    try:
        run = run_core(build, bundle, images, out / f"run-{args.sim}", settings, progress=progress)
    finally:
        bar.close()
    scoreboard = check_run(bundle, images, run)
    golden = golden_run(bundle, images)
    shutil.copyfile(run.results_xml, out / "results.xml")

    names = layer_names(bundle)
    widths = [bundle.input_size] + [layer.outputs for layer in bundle.hidden_layers]
    finished = [h for h in run.hardware if h is not None]
    hw_classes = np.array([h.cls if h is not None else -1 for h in run.hardware])
    cycles = [h.cycles for h in finished]
    spikes = {names[k]: (sum(len(h.traces[k]) for h in finished) / (widths[k] * len(finished)))
              if finished else None for k in range(len(widths))}
    report = {
        "bundle": str(bundle_dir),
        "images": len(images),
        "image_source": source,
        "hw_accuracy": None if labels is None else float(np.mean(hw_classes == labels)),
        "golden_accuracy": None if labels is None else float(np.mean(golden.classes == labels)),
        "mismatched_images": len(scoreboard.mismatched_images),
        "mismatched_image_indices": scoreboard.mismatched_images,
        "spike_mismatches": scoreboard.spike_mismatches,
        "protocol_errors": run.protocol_errors,
        "first_divergence": None if scoreboard.passed else str(scoreboard.first_divergence),
        "cycles_per_image": _cycles_summary(cycles),
        "spikes_per_neuron": spikes,
        "simulator": args.sim,
        "lanes": args.lanes,
        "pixels_per_beat": args.pixels_per_beat,
        "seed": args.seed,
        "stall_probability": args.stall,
        "reset_mid_frame": settings.reset_mid_frame,
        "build_seconds": round(build.build_seconds, 2),
        "build_cached": build.cached,
        "simulation_seconds": round(run.seconds, 2),
        "simulated_cycles": run.simulated_cycles,
        "results_xml": str(out / "results.xml"),
        "waves": str(run.waves) if run.waves else None,
        "raster": str(out / "raster.png"),
    }

    ok = scoreboard.passed and not run.protocol_errors and run.cocotb_passed
    raster_image = scoreboard.mismatched_images[0] if scoreboard.mismatched_images else 0
    hardware = run.hardware[raster_image]
    save_raster(out / "raster.png", golden.traces(raster_image),
                hardware.traces if hardware is not None else [], names[:-1], widths, bundle.time_steps,
                title=f"{name}, image {raster_image}: hardware ({args.sim}) over golden")
    if not ok and not args.waves:
        report["waves"] = _rerun_with_waves(bundle, name, images, raster_image, args, out, settings)

    write_json(out / "report.json", report, what="--out")
    _print_summary(report, scoreboard, run)
    return 0 if ok else 1


def _rerun_with_waves(bundle, name, images, image, args, out, settings) -> str | None:
    """Simulate the failing image alone with waves; return the waves file (None if that fails)."""
    from sim.cocotb_flow import SimulationError, build_core, check_run, run_core

    print(f"rerunning image {image} alone with waves ...")
    try:
        build = build_core(bundle, name, args.lanes, args.sim, out, args.pixels_per_beat, waves=True)
        run = run_core(build, bundle, images[image:image + 1], out / f"waves-{args.sim}", settings)
    except SimulationError as err:
        print(f"ttfs sim: the rerun with waves failed: {err}".splitlines()[0])
        return None
    reproduced = not check_run(bundle, images[image:image + 1], run).passed
    print(f"waves: {run.waves} (mismatch {'reproduced' if reproduced else 'NOT reproduced'} alone)")
    return str(run.waves)


def _print_summary(report: dict, scoreboard, run) -> None:
    def percent(value):
        return "n/a (no labels)" if value is None else f"{100 * value:.2f} %"

    cycles = report["cycles_per_image"]
    lines = [
        f"images              {report['images']}",
        f"hw accuracy         {percent(report['hw_accuracy'])}",
        f"golden accuracy     {percent(report['golden_accuracy'])}",
        f"mismatched images   {report['mismatched_images']}",
        f"spike mismatches    {report['spike_mismatches']}",
        f"cycles per image    min {cycles['min']}, median {cycles['median']}, max {cycles['max']}",
        "spikes per neuron   " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                           for k, v in report["spikes_per_neuron"].items()),
        f"simulator           {report['simulator']} ({report['simulation_seconds']} s, "
        f"{report['simulated_cycles']} cycles)",
        f"lanes               {report['lanes']} ({report['pixels_per_beat']} pixels/beat)",
        f"report              {Path(report['raster']).parent / 'report.json'}, raster {report['raster']}",
    ]
    print("\n".join(lines))
    if run.protocol_errors:
        print("trace protocol errors: " + "; ".join(run.protocol_errors[:5]))
    if not scoreboard.passed:
        print(str(scoreboard.first_divergence))
    if report["waves"]:
        print(f"waves               {report['waves']}")
    print("PASS: hardware equals the golden model spike for spike" if scoreboard.passed and
          not run.protocol_errors and run.cocotb_passed else "FAIL: hardware differs from the golden model")

"""``ttfs sim``: run a bundle's hardware core in a Verilog simulator and check it spike for spike.

Builds ``ttfs.hw.core.NetworkCore`` for the bundle, simulates it with cocotb
(Verilator by default, Icarus as the second simulator), drives N images,
compares every layer's spike trace, the logits and the class with the golden
model, and writes ``<out>/report.json``, ``<out>/raster.png`` and
``<out>/results.xml``.  Exit status 0 when everything matches, 1 on any
mismatch, 2 when the bundle or the simulator is unusable.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm
from ttfs.contract.bundle import load_bundle
from ttfs.contract.datasets import load_dataset, load_images_npz, read_images_member
from ttfs.contract.errors import TTFSError
from ttfs.contract.paths import FOLDER, check_output
from ttfs.contract.reports import write_json
from ttfs.contract.resources import bundle_location
from ttfs.sim.golden import as_image_batch
from ttfs.sim.golden import run as golden_run
from ttfs.sim.random_bundle import random_images
from ttfs.sim.verify.flow import (
    SimulationError,
    StimulusSettings,
    build_core,
    check_run,
    run_core,
)
from ttfs.sim.verify.raster import save_raster
from ttfs.sim.verify.scoreboard import golden_images, layer_names

MNIST_SHAPE = (1, 28, 28)


def _select_images(bundle, bundle_dir: Path, count: int, input_file: str | None, seed: int):
    """(images uint8 (N, C, H, W), labels or None, source description)."""
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
    vectors = read_images_member(bundle_dir / "vectors.npz", "vectors.npz")
    if vectors is not None:
        parts.append(as_image_batch(bundle, vectors)[:count])
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


def run_sim(args) -> int:
    """Build, simulate, check and report; see the module docstring for the exit status."""
    bundle_dir = bundle_location(args.bundle)
    check_output(args.out, "--out", kind=FOLDER, inputs=[bundle_dir, args.input])
    bundle = load_bundle(bundle_dir)
    images, labels, source = _select_images(bundle, bundle_dir, args.images, args.input, args.seed)
    # The one golden run: the testbench, the scoreboard and the report all take it.
    golden = golden_run(bundle, images)
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
        run = run_core(build, bundle, images, out / f"run-{args.sim}", settings, progress=progress,
                       golden=golden)
    finally:
        bar.close()
    scoreboard = check_run(bundle, images, run, golden)
    shutil.copyfile(run.results_xml, out / "results.xml")

    names = layer_names(bundle)
    widths = bundle.spiking_widths
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
        report["waves"] = _rerun_with_waves(bundle, name, images, golden, raster_image, args, out, settings)

    write_json(out / "report.json", report, what="--out")
    _print_summary(report, scoreboard, run)
    return 0 if ok else 1


def _rerun_with_waves(bundle, name, images, golden, image, args, out, settings) -> str | None:
    """Simulate the failing image alone with waves; return the waves file (None if that fails)."""
    print(f"rerunning image {image} alone with waves ...")
    alone = slice(image, image + 1)
    golden = golden_images(golden, alone)
    try:
        build = build_core(bundle, name, args.lanes, args.sim, out, args.pixels_per_beat, waves=True)
        run = run_core(build, bundle, images[alone], out / f"waves-{args.sim}", settings, golden=golden)
    except SimulationError as err:
        print(f"ttfs sim: the rerun with waves failed: {err}".splitlines()[0])
        return None
    reproduced = not check_run(bundle, images[alone], run, golden).passed
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

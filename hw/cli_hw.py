"""``ttfs hw``: hardware generation commands (``ttfs hw verilog``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from sim.errors import TTFSError

VERILOG_NAME = "ttfs_core"

VERILOG_DESCRIPTION = """\
Elaborate the NetworkCore of a bundle and write it as Verilog:

  DIR/ttfs_core.v           the core (module ttfs_core; ports clk, rst and
                            the stream ports, nested names joined with __)
  DIR/input.lut.hex         the encoder LUT, one word per (channel, pixel)
  DIR/<layer>.weight.hex    weight and bias ROM images per layer ($readmemh,
  DIR/<layer>.bias.hex      packed P lanes wide; see hw/rom.py)
  DIR/ports.json            every port with direction and width, the payload
                            fields with their bit offsets, and the parameters

The ROM contents are also inlined in the Verilog; the .hex images let a
bitstream be re-initialised with new weights without regenerating it.  DIR
is written atomically (a temporary directory, then a rename) and must not
exist yet, or be empty.
"""


class VerilogError(TTFSError):
    """The Verilog output cannot be written (bad --out, bad parameters)."""


def add_core_arguments(parser: argparse.ArgumentParser) -> None:
    """The core parameters shared by ``hw verilog`` and the hardware benchmarks."""
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory (network.json + params.npz)")
    parser.add_argument("--lanes", type=int, metavar="P", required=True,
                        help="neurons integrated in parallel per layer (each layer uses min(P, width))")
    parser.add_argument("--pixels-per-beat", type=int, metavar="K", default=1,
                        help="pixels per input beat (default 1)")
    parser.add_argument("--no-trace", action="store_true",
                        help="leave out the trace port (nothing can stall on it)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``hw`` command and its ``verilog`` subcommand."""
    parser = subparsers.add_parser(
        "hw",
        help="generate the hardware core (Verilog)",
        description="Hardware generation: turn a bundle into the NetworkCore circuit.",
    )
    commands = parser.add_subparsers(dest="hw_command", metavar="HWCOMMAND", required=True)
    verilog = commands.add_parser(
        "verilog",
        help="write the core of a bundle as Verilog, ROM images and ports.json",
        description=VERILOG_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_core_arguments(verilog)
    verilog.add_argument("--out", metavar="DIR", required=True, help="output directory (created)")
    verilog.set_defaults(func=handle_verilog)


def build_core(bundle, lanes: int, pixels_per_beat: int, trace: bool):
    """A NetworkCore for ``bundle``; bad parameters raise HardwareError."""
    from hw.core import NetworkCore

    return NetworkCore(bundle, lanes, pixels_per_beat=pixels_per_beat, trace=trace)


def convert(core) -> str:
    """The Verilog text of ``core`` (top module ``ttfs_core``)."""
    from amaranth.back import verilog

    return verilog.convert(core, name=VERILOG_NAME)


def _layout_fields(layout, offset: int = 0) -> list[dict]:
    """Flat list of leaf fields of a data layout with bit offsets (LSB = 0)."""
    from amaranth import Shape
    from amaranth.lib import data

    fields = []
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            for leaf in _layout_fields(field.shape, offset + field.offset):
                leaf["name"] = name if not leaf["name"] else f"{name}.{leaf['name']}"
                fields.append(leaf)
        return fields
    if isinstance(layout, data.ArrayLayout):
        element = Shape.cast(layout.elem_shape)
        for index in range(layout.length):
            for leaf in _layout_fields(layout.elem_shape, offset + index * element.width):
                leaf["name"] = f"{index}" if not leaf["name"] else f"{index}.{leaf['name']}"
                fields.append(leaf)
        return fields
    shape = Shape.cast(layout)
    return [{"name": "", "offset": offset, "width": shape.width, "signed": shape.signed}]


def ports_description(core) -> dict:
    """Ports of the Verilog module (name, direction, width) and the stream payload fields."""
    from amaranth.lib import wiring

    ports = [
        {"name": "clk", "direction": "input", "width": 1},
        {"name": "rst", "direction": "input", "width": 1},
    ]
    for path, member, value in core.signature.flatten(core):
        ports.append({
            "name": "__".join(str(part) for part in path),
            "direction": "input" if member.flow == wiring.In else "output",
            "width": len(value.as_value()) if hasattr(value, "as_value") else len(value),
        })
    payloads = {}
    for name in ("pixels", "result", "trace"):
        if name in core.signature.members:
            layout = getattr(core, name).payload.shape()
            payloads[name] = _layout_fields(layout)
    bundle = core.bundle
    return {
        "module": VERILOG_NAME,
        "parameters": {
            "lanes": core.lanes,
            "pixels_per_beat": core.pixels_per_beat,
            "trace": core.has_trace,
            "time_steps": bundle.time_steps,
            "input_shape": [bundle.channels, bundle.height, bundle.width],
            "layers": [{"name": layer.name, "inputs": layer.inputs, "outputs": layer.outputs,
                        "readout": bool(layer.readout)} for layer in bundle.layers],
            "beats_per_image": -(-bundle.input_size // core.pixels_per_beat),
        },
        "ports": ports,
        "payload_fields": payloads,
    }


def write_outputs(core, directory: Path) -> list[Path]:
    """Write the Verilog, the ROM images and ports.json into ``directory`` (which exists)."""
    from hw.events import bits_for
    from hw.rom import write_rom_images
    from sim.readmemh import write_readmemh

    bundle = core.bundle
    written = []
    verilog_path = directory / f"{VERILOG_NAME}.v"
    verilog_path.write_text(convert(core), encoding="utf-8")
    written.append(verilog_path)
    lut_path = directory / "input.lut.hex"
    write_readmemh(lut_path, [int(a) for row in bundle.lut for a in row], bits_for(bundle.time_steps))
    written.append(lut_path)
    for layer in bundle.layers:
        written += list(write_rom_images(layer, core.lanes, directory).values())
    ports_path = directory / "ports.json"
    ports_path.write_text(json.dumps(ports_description(core), indent=2) + "\n", encoding="utf-8")
    written.append(ports_path)
    return written


def handle_verilog(args: argparse.Namespace) -> int:
    """``ttfs hw verilog``: elaborate, convert, write atomically, print a summary."""
    from sim.bundle import load_bundle

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VerilogError(f"--out {out}: exists and is not an empty directory")
    bundle = load_bundle(args.bundle)
    core = build_core(bundle, args.lanes, args.pixels_per_beat, not args.no_trace)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # mkdtemp makes the directory private; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        written = write_outputs(core, staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"ttfs hw verilog: {len(written)} files in {out}")
    for path in written:
        print(f"  {out / path.name}  ({(out / path.name).stat().st_size} bytes)")
    return 0

"""The core as Verilog: the text, its ROM images and a description of its ports.

``ttfs hw verilog`` writes these files; the cocotb flow, the resource
estimate and the board builds convert the core the same way, so the module
name and the port description are defined here once.
"""

from __future__ import annotations

import json
from pathlib import Path

from amaranth import Shape
from amaranth.back import verilog
from amaranth.lib import data, wiring
from ttfs.contract.readmemh import write_readmemh
from ttfs.contract.streams import beats_per_image, bits_for
from ttfs.hw.rom import write_rom_images

MODULE_NAME = "ttfs_core"


def convert(core) -> str:
    """The Verilog text of ``core`` (top module ``ttfs_core``)."""
    return verilog.convert(core, name=MODULE_NAME)


def layout_fields(layout, offset: int = 0) -> list[dict]:
    """Flat list of leaf fields of a data layout with bit offsets (LSB = 0).

    Each leaf is ``{"name", "offset", "width", "signed"}``; names join struct
    fields and array indices with dots ("logits.3").
    """
    fields = []
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            for leaf in layout_fields(field.shape, offset + field.offset):
                leaf["name"] = name if not leaf["name"] else f"{name}.{leaf['name']}"
                fields.append(leaf)
        return fields
    if isinstance(layout, data.ArrayLayout):
        element = Shape.cast(layout.elem_shape)
        for index in range(layout.length):
            for leaf in layout_fields(layout.elem_shape, offset + index * element.width):
                leaf["name"] = f"{index}" if not leaf["name"] else f"{index}.{leaf['name']}"
                fields.append(leaf)
        return fields
    shape = Shape.cast(layout)
    return [{"name": "", "offset": offset, "width": shape.width, "signed": shape.signed}]


def ports_description(core) -> dict:
    """Ports of the Verilog module (name, direction, width) and the stream payload fields."""
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
            payloads[name] = layout_fields(layout)
    bundle = core.bundle
    return {
        "module": MODULE_NAME,
        "parameters": {
            "lanes": core.lanes,
            "pixels_per_beat": core.pixels_per_beat,
            "trace": core.has_trace,
            "time_steps": bundle.time_steps,
            "input_shape": [bundle.channels, bundle.height, bundle.width],
            "layers": [layer_parameters(layer) for layer in bundle.layers],
            "beats_per_image": beats_per_image(bundle.input_size, core.pixels_per_beat),
        },
        "ports": ports,
        "payload_fields": payloads,
    }


def layer_parameters(layer) -> dict:
    """A layer as ports.json describes it: name, kind, sizes, readout; a conv2d layer's
    shapes (input, before pooling, pooled), kernel, padding and pool too."""
    described = {"name": layer.name, "kind": layer.kind, "inputs": layer.inputs, "outputs": layer.outputs,
                 "readout": bool(layer.readout)}
    if layer.is_conv:
        described.update({
            "input_shape": list(layer.input_shape), "conv_shape": list(layer.conv_shape),
            "output_shape": list(layer.output_shape), "kernel_size": layer.kernel_size,
            "padding": layer.padding, "pool_size": layer.pool_size, "bias_per": layer.bias_per,
        })
    return described


def write_outputs(core, directory: Path) -> list[Path]:
    """Write the Verilog, the ROM images and ports.json into ``directory`` (which exists)."""
    bundle = core.bundle
    written = []
    verilog_path = directory / f"{MODULE_NAME}.v"
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

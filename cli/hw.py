"""``ttfs hw verilog``: write a bundle's core as Verilog, ROM images and ports.json."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ttfs.contract.bundle import load_bundle
from ttfs.contract.errors import TTFSError
from ttfs.contract.paths import FOLDER, check_output
from ttfs.contract.resources import bundle_location
from ttfs.hw.core import NetworkCore
from ttfs.hw.verilog import write_outputs


class VerilogError(TTFSError):
    """The Verilog output cannot be written (bad --out, bad parameters)."""


def run_hw_verilog(args: argparse.Namespace) -> int:
    """``ttfs hw verilog``: elaborate, convert, write atomically, print a summary."""
    bundle_dir = bundle_location(args.bundle)
    out = check_output(args.out, "--out", kind=FOLDER, inputs=[bundle_dir])
    if out.exists() and any(out.iterdir()):
        raise VerilogError(f"--out {out}: exists and is not an empty directory")
    bundle = load_bundle(bundle_dir)
    core = NetworkCore(bundle, args.lanes, pixels_per_beat=args.pixels_per_beat, trace=not args.no_trace)
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

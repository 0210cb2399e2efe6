"""Accuracy sweeps: measure a list of settings, print the results as a table, plot them.

Two commands sweep: ``ttfs eval --noise/--time-steps/--weight-bits`` (the
float network under one hardware setting at a time, ttfs.sw.finetune.sweep)
and ``ttfs sweep`` (the calibrated integer export over weight bits x time
steps, ttfs.sw.export.sweep).  Either result is a list of rows, one per
point: the point's settings, then what was measured there.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttfs.contract.reports import write_file

Row = dict[str, Any]


def measure_points(
    points: Sequence[Row], measure: Callable[..., Row], *, progress: bool = False, unit: str = "point"
) -> list[Row]:
    """One row per point, in order: the point's settings, then the figures ``measure(**point)`` returns."""
    from tqdm import tqdm

    return [{**point, **measure(**point)} for point in tqdm(points, desc="sweep", unit=unit, disable=not progress)]


def _distinct(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def table(
    rows: Sequence[Row],
    row_key: str,
    row_header: str,
    cell: Callable[[Row], str],
    *,
    column_key: str | None = None,
    column_header: Callable[[Any], str] | str = "accuracy",
    title: str | None = None,
) -> list[str]:
    """The rows as aligned text lines, left-aligned columns two spaces apart.

    One line per value of ``row_key`` (in order of first appearance) under
    ``row_header``; one column per value of ``column_key``, headed
    ``column_header(value)``, or without ``column_key`` a single column
    headed ``column_header``; ``cell(row)`` in each place.  ``title``, if
    given, is the first line.
    """
    row_values = _distinct([row[row_key] for row in rows])
    if column_key is None:
        columns = [None]
        headers = [str(column_header)]
        cells = {(row[row_key], None): cell(row) for row in rows}
    else:
        columns = _distinct([row[column_key] for row in rows])
        headers = [column_header(value) for value in columns]
        cells = {(row[row_key], row[column_key]): cell(row) for row in rows}
    grid = [[row_header, *headers]]
    grid += [[str(value), *(cells.get((value, column), "-") for column in columns)] for value in row_values]
    widths = [max(len(line[index]) for line in grid) for index in range(len(grid[0]))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in grid]
    return ([title] if title else []) + lines


@dataclass(frozen=True)
class Curve:
    """One line of a panel: accuracies in percent at ``x``, with error bars ``spread`` and a legend ``label`` if given."""

    x: Sequence[float]
    accuracy: Sequence[float]
    spread: Sequence[float] | None = None
    label: str | None = None


@dataclass(frozen=True)
class Panel:
    """One panel of a sweep plot: its curves, axis labels, and optionally a log2 x axis, a dashed
    reference line (label, accuracy in percent), y limits and a legend."""

    curves: Sequence[Curve]
    xlabel: str
    ylabel: str = "accuracy (%)"
    title: str = ""
    log2_x: bool = False
    reference: tuple[str, float] | None = None
    ylim: tuple[float, float] | None = None
    legend: bool = False


def plot(path: str | Path, panels: Sequence[Panel], *, title: str = "", panel_size: tuple[float, float] = (4.2, 3.4)) -> None:
    """The panels side by side as a PNG (matplotlib's Agg backend), ``panel_size`` inches each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = panel_size
    figure = Figure(figsize=(width * len(panels), height), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, panel in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for curve in panel.curves:
            axes.errorbar(curve.x, curve.accuracy, yerr=curve.spread, marker="o", capsize=3, label=curve.label)
        if panel.reference is not None:
            label, accuracy = panel.reference
            axes.axhline(accuracy, color="black", linestyle="--", linewidth=1, label=label)
        if panel.log2_x:
            axes.set_xscale("log", base=2)
        axes.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
        if panel.ylim is not None:
            axes.set_ylim(*panel.ylim)
        if panel.legend:
            axes.legend()
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    write_file(path, image.getvalue(), what=str(path))

"""The PNG of a bench result: img/s against batch size, one line per provider and precision, one
panel per model (and image size). matplotlib is imported only here, without pyplot."""

from __future__ import annotations

import os
from pathlib import Path

LINE_STYLES = {"bf16": "-", "fp16": "--", "fp32": ":", "fp16 autocast": "-."}


class PlotUnavailableError(RuntimeError):
    """matplotlib is missing; the message says how to get it."""


def plot_result(result: dict, path: str | os.PathLike) -> None:
    """Draw ``result`` (a ``bench`` result document) to the PNG ``path``: log-log img/s against
    batch size, colour per provider, line style per precision, one legend below the panels;
    entries that were not measured (skipped, wrong, error) are left out."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotUnavailableError("matplotlib is not installed (pip install matplotlib); the JSON is "
                                   "written all the same") from error

    panels: dict[tuple[str, int], dict[tuple[str, str], dict[int, float]]] = {}
    for workload in result["workloads"]:  # (a panel only where something was measured)
        for name, entry in workload["providers"].items():
            if entry["status"] == "ok":
                series = panels.setdefault((workload["model"], workload["image_size"]), {})
                series.setdefault((name, entry["precision"]), {})[workload["batch"]] = entry["img_per_s"]
    if not panels:
        raise PlotUnavailableError("no provider was measured: nothing to plot")

    names = list(result["providers"])
    colours = matplotlib.colormaps["tab20"]
    legend_columns = min(4, len({label for series in panels.values() for label in series}))
    # Wide enough for the legend's columns and the title however few the panels (one, on a CPU run).
    figure = Figure(figsize=(max(6.0 * len(panels), 2.6 * legend_columns, 10.0), 7.5), layout="constrained")
    grid = figure.add_gridspec(2, len(panels), height_ratios=(4, 1))
    lines = {}  # legend label -> line, the same in every panel
    for column, ((model, image_size), series) in enumerate(panels.items()):
        ax = figure.add_subplot(grid[0, column])
        for (name, precision), points in sorted(series.items(), key=lambda item: names.index(item[0][0])):
            xs = sorted(points)
            label = f"{name} ({precision})"
            (lines[label],) = ax.plot(xs, [points[x] for x in xs], LINE_STYLES.get(precision, "-"), marker="o",
                                      color=colours(names.index(name) % colours.N), label=label)
        batches = sorted({batch for points in series.values() for batch in points})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{model}, {image_size}x{image_size}")
        ax.grid(True, which="both", alpha=0.3)
    legend = figure.add_subplot(grid[1, :])
    legend.axis("off")
    legend.legend(list(lines.values()), list(lines), loc="center", ncol=legend_columns, fontsize="small",
                  frameon=False)
    run = result["runs"][-1]
    figure.suptitle(f"{result['device'].get('name')}: torch {run['versions']['torch']}, {run['date']}, "
                    f"commit {(run.get('commit') or 'unknown')[:12]}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)

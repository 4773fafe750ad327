"""The table and plots of ``python -m benchmarks.families`` from its ``results.json``.

- ``results.md``: per task, one row per family: its scores, parameters, training minutes,
  inference seconds (per 1000x1000 px, or per mm² of slide) and peak memory; the best value of
  every column in bold (highest score; fewest parameters, minutes, seconds and MiB).
- ``plots/<task>_<score>.png``: one bar chart per score and cost with the families side by side
  (the columns of one score, e.g. the per-type PQ or the per-stage mIoU, share one grouped chart).
- ``plots/<task>_overlays.png``: the task's first validation image and every family's overlay of it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from misc.io import atomic_write, read_image

#: Cost columns (lower is better): key in a row -> (header, format).
COSTS = {
    "parameters": ("parameters", "{:,.0f}"),
    "train_minutes": ("training (min)", "{:.1f}"),
    "infer_seconds_per_1000x1000": ("inference (s per 1000² px)", "{:.2f}"),
    "infer_seconds_per_mm2": ("inference (s per mm²)", "{:.2f}"),
    "peak_memory_mb": ("peak memory (MiB)", "{:,.0f}"),
}


def score_columns(rows: list[dict]) -> list[str]:
    """Score columns of the task's finished rows, in first-seen order."""
    return list(dict.fromkeys(key for row in rows if row["status"] == "done" for key in row["scores"]))


def cost_columns(task: dict) -> list[str]:
    """The cost keys shown for a task (the inference unit follows ``per``)."""
    hidden = "infer_seconds_per_1000x1000" if task["per"] == "mm2" else "infer_seconds_per_mm2"
    return [key for key in COSTS if key != hidden]


def best_values(rows: list[dict], scores: list[str], costs: list[str]) -> dict[str, float]:
    """Column -> best value over the finished rows (max for scores, min for costs)."""
    done = [row for row in rows if row["status"] == "done"]
    best = {}
    for column in scores:
        values = [row["scores"].get(column) for row in done if row["scores"].get(column) is not None]
        if values:
            best[column] = max(values)
    for key in costs:
        values = [row[key] for row in done if row.get(key) is not None]
        if values:
            best[key] = min(values)
    return best


def _cell(value: float | None, text: str, best: float | None) -> str:
    if value is None:
        return "–"
    return f"**{text}**" if best is not None and value == best else text


def task_table(task: dict) -> list[str]:
    """Markdown lines of one task's table."""
    rows = task["rows"]
    scores, costs = score_columns(rows), cost_columns(task)
    best = best_values(rows, scores, costs)
    header = ["family", "profile", *scores, *(COSTS[key][0] for key in costs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row["status"] != "done":
            cells = [row["family"], row["profile"], f"failed: {row['error']}", *[""] * (len(header) - 3)]
        else:
            cells = [row["family"], row["profile"]]
            cells += [_cell(row["scores"].get(c), f"{row['scores'][c]:.3f}" if row["scores"].get(c) is not None else "",
                            best.get(c)) for c in scores]
            cells += [_cell(row.get(key), COSTS[key][1].format(row[key]) if row.get(key) is not None else "",
                            best.get(key)) for key in costs]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """``results.md``: the command, the machine, then one table per task."""
    machine = results["machine"]
    described = ", ".join(f"{key} {value}" for key, value in machine.items())
    lines = ["# Families on the same data", "", f"Command: `{results['command']}`", "", f"Machine: {described}", ""]
    for name, task in results["tasks"].items():
        lines += [f"## {task['title']} (`{name}`)", "", *task_table(task), ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def chart_groups(rows: list[dict], specs: list[str]) -> dict[str, list[str]]:
    """Chart title -> its columns: the columns of one score of the task (``specs``, e.g. ``PQ
    type`` -> ``PQ type 1..4``, ``mIoU`` -> one per stage) share one chart."""
    groups: dict[str, list[str]] = {}
    for column in score_columns(rows):
        spec = next((s for s in sorted(specs, key=len, reverse=True) if column == s or column.startswith(f"{s} ")), column)
        groups.setdefault(spec, []).append(column)
    return groups


def bar_chart(path: Path, title: str, families: list[str], columns: list[str], values: np.ndarray) -> Path:
    """A bar chart of ``values`` (families x columns; NaN = missing): one bar per family, grouped
    by column when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(columns) * len(families) ** 0.5 + 2), 3.2))
    width = 0.8 / len(families)
    positions = np.arange(len(columns))
    for index, family in enumerate(families):
        bars = ax.bar(positions + (index - (len(families) - 1) / 2) * width, np.nan_to_num(values[index]), width, label=family)
        ax.bar_label(bars, labels=["–" if np.isnan(v) else f"{v:.3g}" for v in values[index]], fontsize=7)
    ax.set_xticks(positions, columns if len(columns) > 1 else [""])
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return path


def task_charts(name: str, task: dict, plots: Path) -> list[Path]:
    """One bar chart per score (grouped per spec) and per cost column of a task."""
    done = [row for row in task["rows"] if row["status"] == "done"]
    if not done:
        return []
    families = [row["family"] for row in done]
    written = []
    for title, columns in chart_groups(done, task.get("scores", [])).items():
        values = np.array([[row["scores"].get(c) if row["scores"].get(c) is not None else np.nan for c in columns]
                           for row in done], float)
        written.append(bar_chart(plots / f"{name}_{_slug(title)}.png", f"{task['title']}: {title}", families, columns, values))
    for key in cost_columns(task):
        values = np.array([[row.get(key) if row.get(key) is not None else np.nan] for row in done], float)
        header = COSTS[key][0]
        written.append(bar_chart(plots / f"{name}_{_slug(header)}.png", f"{task['title']}: {header}", families, [header], values))
    return written


def overlay_panel(name: str, task: dict, out: Path, plots: Path) -> Path | None:
    """The task's first validation image beside every family's overlay of it (None without overlays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(row["family"], out / row["overlay"]) for row in task["rows"]
             if row["status"] == "done" and row.get("overlay") and (out / row["overlay"]).is_file()]
    if not shown:
        return None
    images = sorted((out / name / "images").iterdir())
    panels = [(f"image {images[0].stem}", images[0]), *shown] if images else shown
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, path) in zip(axes[0], panels):
        ax.imshow(read_image(path))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path = plots / f"{name}_overlays.png"
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``results.md`` and the plots of ``results`` (``results.json``'s content) under ``out``."""
    with atomic_write(out / "results.md", "w") as handle:
        handle.write(markdown(results))
    written = [out / "results.md"]
    plots = out / "plots"
    for name, task in results["tasks"].items():
        written += task_charts(name, task, plots)
        panel = overlay_panel(name, task, out, plots)
        if panel is not None:
            written.append(panel)
    return written

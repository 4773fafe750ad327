"""Choose one post-processing option by its score against a ground truth (``process.py --sweep``).

The raw maps are post-processed and scored once per candidate value of one ``postproc`` key,
each value's results and metrics kept in ``DIR/sweep/<key>=<value>/``; ``DIR/sweep.csv`` and
``DIR/sweep.json`` list the score of every value, and the best value's results (the largest
score; the first value listed on a tie) are then written to ``DIR`` itself as a plain
``process.py --set <key>=<best>`` would. Tune on images you do not report: a value chosen on the
images it is scored on overstates what other images will get.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from inference.processing import ProcessReport, check_postproc_overrides, process_folder
from misc.errors import UserError
from misc.io import atomic_write

log = logging.getLogger(__name__)

#: The score each task's sweep maximises by default: a dotted path into ``metrics.json``.
DEFAULT_SCORES = {"instance": "mean.pq.mean", "semantic": "pooled.miou", "patch": "pooled.macro_f1"}


@dataclass(frozen=True)
class Sweep:
    """One post-processing key and the values to try (``postproc.h=5,10,20``)."""

    key: str
    values: tuple[Any, ...]

    def override(self, value: Any) -> str:
        """``KEY=VALUE`` for one candidate, the value written back as YAML."""
        return f"{self.key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


@dataclass(frozen=True)
class SweepResult:
    """The scores of a :class:`Sweep` (one per value, NaN where undefined) and its best value."""

    sweep: Sweep
    score: str
    scores: tuple[float, ...]
    best: Any
    report: ProcessReport


def parse_sweep(text: str) -> Sweep:
    """``postproc.KEY=V1,V2,...`` as a :class:`Sweep`; each value parsed as YAML.

    Raises:
        UserError: not ``postproc.KEY=`` followed by at least two distinct values.
    """
    key, _, values = text.partition("=")
    candidates = [part.strip() for part in values.split(",")]
    if not key or any(not part for part in candidates) or len(candidates) < 2:
        raise UserError(f"--sweep '{text}': expected postproc.KEY=V1,V2,... with two or more values, "
                        "e.g. postproc.h=10,40,150")
    check_postproc_overrides([f"{key}={value}" for value in candidates])
    parsed = tuple(yaml.safe_load(value) for value in candidates)
    if len({json.dumps(value, sort_keys=True) for value in parsed}) < len(parsed):
        raise UserError(f"--sweep '{text}': a value is listed twice")
    return Sweep(key, parsed)


def read_score(metrics_path: Path, score: str) -> float:
    """The number at the dotted path ``score`` of a ``metrics.json`` (NaN where it is null).

    Raises:
        UserError: the path names no number there (lists the keys at the level it stopped).
    """
    node: Any = json.loads(metrics_path.read_text())
    for part in score.split("."):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise UserError(f"--sweep-score {score}: {metrics_path} has no '{part}' there (it has {have})")
        node = node[part]
    if node is None:
        return math.nan
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise UserError(f"--sweep-score {score}: {metrics_path} holds {node!r} there, not a number")
    return float(node)


def best_value(sweep: Sweep, scores: Iterable[float]) -> Any:
    """The value of the largest finite score (the first listed on a tie).

    Raises:
        UserError: no value got a finite score.
    """
    finite = [(score, -index) for index, score in enumerate(scores) if math.isfinite(score)]
    if not finite:
        raise UserError(f"--sweep {sweep.key}: no value gave a defined score")
    return sweep.values[-max(finite)[1]]


def write_sweep_table(output_dir: Path, sweep: Sweep, score: str, scores: tuple[float, ...], best: Any) -> list[Path]:
    """``sweep.csv`` (value, score) and ``sweep.json`` (key, score, values, scores, best)."""
    csv_path, json_path = output_dir / "sweep.csv", output_dir / "sweep.json"
    with atomic_write(csv_path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([sweep.key, score])
        writer.writerows([json.dumps(value), value_score] for value, value_score in zip(sweep.values, scores))
    content = {"key": sweep.key, "score": score, "values": list(sweep.values),
               "scores": [None if math.isnan(value) else value for value in scores], "best": best}
    with atomic_write(json_path, "w") as handle:
        json.dump(content, handle, indent=1)
    return [csv_path, json_path]


def run_sweep(
    input_path: str | os.PathLike, output_dir: str | os.PathLike, sweep: Sweep, gt: str,
    score: str | None = None, postproc: Iterable[str] = (), **options: Any,
) -> SweepResult:
    """Process and score the raw files once per value of ``sweep``, then once more with the best.

    Args:
        input_path, output_dir, gt: as :func:`inference.processing.process_folder`.
        sweep: the key and its candidate values.
        score: dotted path into ``metrics.json`` of the score to maximise (default by the
            results' task: :data:`DEFAULT_SCORES`).
        postproc: further ``postproc.KEY=VALUE`` overrides, kept for every value.
        options: the other keyword arguments of ``process_folder`` (formats, workers, ...).

    Returns:
        The scores and best value; its ``report`` is the final pass's, into ``output_dir``.
    """
    output_dir = Path(output_dir)
    fixed = list(check_postproc_overrides(postproc))
    scores: list[float] = []
    for value in sweep.values:
        override = sweep.override(value)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # one table per value: the csv
            report = process_folder(input_path, output_dir / "sweep" / override, gt=gt,
                                    postproc=[*fixed, override], **{**options, "show_progress": False})
        metrics = next((path for path in report.metric_files if path.name == "metrics.json"), None)
        if metrics is None:
            raise UserError(f"--sweep: no image of {input_path} could be scored against --gt {gt}")
        score = score or DEFAULT_SCORES[str(report.task)]
        scores.append(read_score(metrics, score))
        log.info("sweep %s: %s %.4f", override, score, scores[-1])
    best = best_value(sweep, scores)
    write_sweep_table(output_dir, sweep, score, tuple(scores), best)
    log.info("sweep: best %s (%s %.4f); its results in %s", sweep.override(best), score,
             scores[sweep.values.index(best)], output_dir)
    report = process_folder(input_path, output_dir, gt=gt, postproc=[*fixed, sweep.override(best)], **options)
    return SweepResult(sweep, score, tuple(scores), best, report)


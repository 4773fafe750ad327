"""Every family on the same data, trained, inferred and scored by the same scripts: one table.

    python -m benchmarks.families --data ../shared/data --out OUT [--budget-minutes M]
        [--families F ...] [--tasks T ...] [--device D] [--profile cpu|paper|demo] [--epochs N]

For each task of ``benchmarks/recipes/recipes.yaml`` (binary nuclei on MoNuSeg, typed nuclei and
weak tissue maps on CoNSeP, tumour regions on synthetic slides) and each of its families, one
*row*: the recipe's training data on the fixed split (``extract_patches.py`` first where the data
set says so), ``train.py`` with the family's profile and the recipe's options, ``infer.py`` on the
validation images (or test slides) and ``process.py --gt`` scoring them; every step is the
project's own script run as a subprocess, so each row's peak memory is its own. Without
``--epochs`` the training gets ``--budget-minutes`` per row (``python -m engine.budget
--seconds`` sets the scoring aside, then ``train.time_budget_s`` plans the epochs while
training), as the shell recipes do.

Everything goes to ``OUT/<task>/<recipe>/`` (``patches/``, ``run/``, ``raw/``, ``pred/``,
``log.txt``, ``steps.json``, ``row.json``). Run again with the same ``OUT``, finished rows are
kept, and an interrupted row resumes after its last finished step (training from its
``latest.pt`` with the budget of its first start; ``infer.py`` keeps the images already done).
``OUT/results.json``, ``OUT/results.md`` and ``OUT/plots/*.png`` are rewritten from every row
on disk (``benchmarks/family_report.py``). Exit 0 when every row asked for is done, 1 when some
failed (each failed row records its error line and the others still run), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from benchmarks.family_report import write_report
from benchmarks.recipes.settings import SETTINGS, Dataset, Recipe, Settings, Task, load_settings
from misc.errors import UserError, cli_main
from misc.io import atomic_write

log = logging.getLogger("benchmarks.families")

PROFILES = ("cpu", "paper", "demo")
#: Seconds of each row's budget kept for start-ups, post-processing and scoring (as the shell recipes).
SCORING_MARGIN_S = 60
ROW_FILE, STEPS_FILE, LOG_FILE = "row.json", "steps.json", "log.txt"


@dataclass(frozen=True)
class Options:
    """The command line, resolved (see :func:`parse_args`)."""

    data: Path
    out: Path
    budget_minutes: float
    families: tuple[str, ...]
    tasks: tuple[str, ...]
    device: str
    profile: str
    epochs: int | None
    threads: int
    settings: Path
    command: str


@dataclass(frozen=True)
class Measured:
    """One subprocess: wall seconds and peak resident memory (MiB, the process and its children)."""

    seconds: float
    peak_mb: float


class StepFailed(Exception):
    """A script of a row exited non-zero; ``line`` is its ``error:`` line (or its last line)."""

    def __init__(self, step: str, line: str) -> None:
        super().__init__(f"{step}: {line}")
        self.step, self.line = step, line


# --- subprocesses -----------------------------------------------------------------------------

def run_script(step: str, command: list[str], log_path: Path, threads: int, stdout: Path | None = None) -> Measured:
    """Run ``command`` from the repository root, its output appended to ``log_path`` (its
    standard output to ``stdout`` instead, when given), with ``OMP_NUM_THREADS=threads``.

    Returns:
        Its wall seconds and peak RSS (``wait4``'s ``ru_maxrss``, KiB on Linux, as MiB).

    Raises:
        StepFailed: a non-zero exit (with the command's last ``error:`` line, else its last line).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as handle, open(stdout or os.devnull, "w", encoding="utf-8") as out:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=out if stdout else handle, stderr=handle, cwd=REPO_ROOT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
    if process.returncode != 0:
        raise StepFailed(step, failure_line(log_path, process.returncode))
    return Measured(seconds=seconds, peak_mb=usage.ru_maxrss / 1024.0)


def failure_line(log_path: Path, code: int) -> str:
    """The last ``error:`` line of the log (else its last non-empty line), with the exit status."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return f"{(errors or lines or ['no output'])[-1]} (exit {code})"


REPO_ROOT = Path(__file__).resolve().parents[1]


# --- a row's state ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One family on one task: its folder and what it runs on."""

    task: Task
    recipe: Recipe
    folder: Path
    images: Path
    root: Path

    def steps(self) -> dict[str, Any]:
        """The finished steps recorded in ``steps.json`` (step -> its record)."""
        path = self.folder / STEPS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def record(self, step: str, value: Any) -> None:
        """Record a finished step (atomically)."""
        steps = self.steps() | {step: value}
        with atomic_write(self.folder / STEPS_FILE, "w") as handle:
            json.dump(steps, handle, indent=1)

    def fill(self, text: str) -> str:
        """``text`` with ``{root}``, ``{split}``, ``{patches}`` and ``{pred}`` replaced."""
        split = str(REPO_ROOT / self.recipe.dataset.split) if self.recipe.dataset.split else ""
        values = (("root", self.root), ("split", split), ("patches", self.folder / "patches"), ("pred", self.folder / "pred"))
        for name, value in values:
            text = text.replace(f"{{{name}}}", str(value))
        return text

    def checkpoint(self) -> Path:
        """The checkpoint to infer with: the recipe's, else ``best.pt`` of a staged run (it holds
        every stage), else ``latest.pt``."""
        run = self.folder / "run"
        name = self.recipe.checkpoint or ("best.pt" if (run / "stages").is_dir() else "latest.pt")
        return run / "checkpoints" / name

    def scores_file(self) -> Path:
        """Where the row's scores are read: the recipe's ``score`` output, else ``metrics.json``."""
        return self.folder / "pred" / ("scores.jsonl" if self.recipe.score else "metrics.json")


def dataset_root(dataset: Dataset, options: Options) -> Path:
    """The data set's folder: ``--data/<folder>``, or ``OUT/data/<name>`` for a generated cohort."""
    if dataset.cohort:
        return options.out / "data" / dataset.name
    if dataset.folder is None:
        raise UserError(f"{options.settings}: data set '{dataset.name}' needs a folder or a cohort")
    return options.data / dataset.folder


def split_part(dataset: Dataset, part: str) -> list[str]:
    """The image names of one part of the data set's split file."""
    path = REPO_ROOT / str(dataset.split)
    try:
        return list(json.loads(path.read_text())["parts"][part])
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise UserError(f"{path}: no part '{part}' in a split file ({type(err).__name__}: {err})") from None


def link_images(dataset: Dataset, root: Path, images: Path, log_path: Path, threads: int) -> list[Path]:
    """Symlink the images a task infers into ``images``: the split's ``valid`` part, or a
    cohort's ``test`` slides (the cohort is written first when absent). Returns the targets."""
    images.mkdir(parents=True, exist_ok=True)
    if dataset.cohort:
        if not (root / "cohort.json").is_file():
            options = [word for key, value in dataset.cohort.items() for word in (f"--{key}", str(value))]
            run_script("cohort", [sys.executable, "-m", "loader.synthetic_tumour", str(root), *options], log_path, threads)
        record = json.loads((root / "cohort.json").read_text())
        sources = [root / entry["slide"] for entry in record["slides"] if entry["split"] == "test"]
    else:
        sources = [root / "images" / f"{name}{dataset.suffix}" for name in split_part(dataset, "valid")]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) of data set '{dataset.name}' missing, e.g. {missing[0]}")
    for source in sources:
        link = images / source.name
        if not link.exists():
            link.symlink_to(source.resolve())
    return sources


# --- the steps of a row -----------------------------------------------------------------------

def extract(row: Row, options: Options) -> None:
    """Cut the split's training images into the recipe's windows (``extract_patches.py``; skips what exists)."""
    recipe = row.recipe
    if recipe.win is None or recipe.step is None:
        raise UserError(f"{options.settings}: recipe '{recipe.name}' on data set '{recipe.dataset.name}' needs win and step")
    run_script("extract", [
        sys.executable, "extract_patches.py", str(recipe.dataset.extract), str(row.root), str(row.folder / "patches"),
        "--win", str(recipe.win), "--step", str(recipe.step), "--mode", "valid",
        "--split", f"{REPO_ROOT / str(recipe.dataset.split)}:train", "--format", "h5", "--no-progress",
    ], row.folder / LOG_FILE, options.threads)


def base_train_command(row: Row, options: Options) -> list[str]:
    """The options ``train.py`` and its planner ``python -m engine.budget`` share: family, profile,
    data, device, threads and the recipe's ``--set`` options."""
    sets = [row.fill(text) for text in row.recipe.overrides(options.profile, planned=options.epochs is None)]
    return ["--model", row.recipe.family, "--profile", row.recipe.profile(options.profile),
            "--data", row.fill(row.recipe.dataset.train_data),
            "--device", options.device, "--num-threads", str(options.threads), *[w for s in sets for w in ("--set", s)]]


def plan_budget(row: Row, options: Options, started: float) -> float:
    """``train.time_budget_s`` for a fresh training: what is left of the row's budget once the
    scoring (timed by ``python -m engine.budget --seconds``) and :data:`SCORING_MARGIN_S` are set aside.

    A family the planner cannot time (several phases or stages, slides) gets the budget less the margin.
    """
    left = options.budget_minutes * 60 - (time.monotonic() - started) - SCORING_MARGIN_S
    command = [sys.executable, "-m", "engine.budget", *base_train_command(row, options), "--seconds",
               "--score-images", str(row.images), "--budget-s", str(int(left))]
    answer = row.folder / "plan.txt"
    try:
        run_script("plan", command, row.folder / LOG_FILE, options.threads, stdout=answer)
    except StepFailed as failed:
        log.warning("%s: the planner cannot time this family (%s); training gets %.0f s", row.recipe.name, failed.line, left)
        return max(1.0, left)
    return float(answer.read_text().split()[-1])


def train(row: Row, options: Options, started: float) -> dict:
    """Train (or resume) the recipe's family; returns the step's record."""
    steps = row.steps()
    resume = any((row.folder / "run").rglob("latest.pt"))
    if options.epochs is not None:
        plan = [f"train.phases.0.epochs={options.epochs}"]
    else:
        if "plan" not in steps:
            row.record("plan", {"time_budget_s": plan_budget(row, options, started)})
        plan = [f"train.time_budget_s={row.steps()['plan']['time_budget_s']}"]
    command = [sys.executable, "train.py", *base_train_command(row, options), "--out", str(row.folder / "run"), "--quiet",
               *[w for s in plan for w in ("--set", s)], *(["--resume"] if resume else [])]
    measured = run_script("train", command, row.folder / LOG_FILE, options.threads)
    return {"seconds": measured.seconds, "peak_mb": max(measured.peak_mb, steps.get("train", {}).get("peak_mb", 0.0))}


def image_megapixels(paths: Sequence[Path], slides: bool) -> float:
    """Megapixels of images, or of slides at level 0."""
    from loader.slide import open_slide
    from misc.io import read_image

    total = 0.0
    for path in paths:
        if slides:
            slide = open_slide(path, None)
            width, height = slide.dimensions
            slide.close()
        else:
            height, width = read_image(path).shape[:2]
        total += height * width / 1e6
    return total


def infer(row: Row, options: Options, sources: list[Path]) -> dict:
    """``infer.py`` on the task's images; the record holds the seconds per 1000x1000 px (or per
    mm² of slide) over the images inferred by this call (start-up included)."""
    raw = row.folder / "raw"
    before = set(raw.rglob("*")) if raw.is_dir() else set()
    measured = run_script("infer", [
        sys.executable, "infer.py", "--model-path", str(row.checkpoint()), "--input", str(row.images),
        "--output", str(raw), "--device", options.device, "--quiet",
    ], row.folder / LOG_FILE, options.threads)
    done_before = {p.stem for p in before} | {p.name for p in before}
    fresh = [path for path in sources if path.stem not in done_before]
    slides = row.task.per == "mm2"
    megapixels = image_megapixels(fresh, slides)
    record = {"seconds": measured.seconds, "peak_mb": measured.peak_mb, "images": len(fresh), "megapixels": megapixels}
    if slides:
        mpp = float(json.loads((row.root / "cohort.json").read_text())["mpp"])
        record["seconds_per_mm2"] = measured.seconds / (megapixels * mpp * mpp) if fresh else None
    else:
        record["seconds_per_megapixel"] = measured.seconds / megapixels if fresh else None
    return record


def process(row: Row, options: Options) -> dict:
    """``process.py --gt`` on the raw files; returns the step's record."""
    dataset = row.recipe.dataset
    if dataset.gt is None:
        raise UserError(f"{options.settings}: data set '{dataset.name}' has no gt to score against")
    command = [sys.executable, "process.py", "--input", str(row.folder / "raw"), "--output", str(row.folder / "pred"),
               "--gt", row.fill(dataset.gt), "--quiet"]
    if row.task.formats:
        command += ["--formats", row.task.formats]
    if row.task.type_info:
        command += ["--type-info", str(REPO_ROOT / row.task.type_info)]
    command += list(row.recipe.process)
    measured = run_script("process", command, row.folder / LOG_FILE, options.threads)
    if row.recipe.score:
        words = shlex.split(row.fill(row.recipe.score))
        words = [sys.executable if index == 0 and word == "python" else word for index, word in enumerate(words)]
        run_script("score", words, row.folder / LOG_FILE, options.threads, stdout=row.scores_file())
    return {"seconds": measured.seconds}


def read_metrics(path: Path) -> dict:
    """A row's scores: ``metrics.json``, or a score command's JSON lines as ``{"stages": {stage: line}}``."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"stages": {str(line.get("stage", index)): line for index, line in enumerate(lines)}}


# --- a row's results --------------------------------------------------------------------------

def _segment_regex(pattern: str) -> re.Pattern:
    """A path segment with ``*`` as a regex capturing what each ``*`` matched."""
    return re.compile("".join("(.*?)" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)) + "$")


def read_scores(metrics: dict, scores: dict[str, str]) -> dict[str, float | None]:
    """The task's score columns from a ``metrics.json``.

    Args:
        metrics: the parsed ``metrics.json`` of ``process.py``.
        scores: column -> ``section.key...`` path; a ``*`` in a segment matches several keys, each
            becoming a column named after what the ``*`` matched (``mean.pq_type*.mean`` gives
            ``PQ type 1``, ``PQ type 2``, ...).

    Returns:
        column -> value (None for NaN / null), in the order of ``scores`` and then of the keys.
    """
    found: dict[str, float | None] = {}
    for column, path in scores.items():
        matches: list[tuple[str, Any]] = [("", metrics)]
        for segment in path.split("."):
            regex = _segment_regex(segment)
            step = []
            for label, node in matches:
                if not isinstance(node, dict):
                    continue
                for key, value in node.items():
                    hit = regex.match(str(key))
                    if hit is not None:
                        captured = " ".join(g.strip("_: ") for g in hit.groups() if g.strip("_: "))
                        step.append((" ".join(p for p in (label, captured) if p), value))
            matches = step
        for label, value in matches:
            if isinstance(value, (int, float)) or value is None:
                found[f"{column} {label}".strip()] = None if value is None or value != value else float(value)
    return found


def parameter_count(checkpoint: Path) -> int:
    """Parameters of the checkpoint's network (every stage's, for a staged family)."""
    from models.checkpoint import load_checkpoint

    _, net, meta = load_checkpoint(checkpoint, "cpu")
    nets = [stage_net for _, stage_net in meta.get("stage_models") or [(None, net)]]
    return int(sum(p.numel() for module in nets for p in module.parameters()))


def training_seconds(checkpoint: Path, measured: float) -> float:
    """Wall seconds of the finished epochs over resumes (the checkpoint's ``train_seconds``), else ``measured``."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return float(state.get("train_seconds") or measured)


def finish_row(row: Row, options: Options) -> dict:
    """The row's record from its steps and ``pred/metrics.json``."""
    steps = row.steps()
    metrics = read_metrics(row.scores_file())
    checkpoint = row.checkpoint()
    infer_record = steps["infer"]
    return {
        "task": row.task.name, "family": row.recipe.family, "recipe": row.recipe.name, "status": "done",
        "profile": row.recipe.profile(options.profile), "device": options.device, "epochs": options.epochs,
        "budget_minutes": None if options.epochs is not None else options.budget_minutes,
        "scores": read_scores(metrics, row.task.scores),
        "parameters": parameter_count(checkpoint),
        "train_minutes": training_seconds(checkpoint, steps["train"]["seconds"]) / 60.0,
        "infer_seconds_per_1000x1000": infer_record.get("seconds_per_megapixel"),
        "infer_seconds_per_mm2": infer_record.get("seconds_per_mm2"),
        "peak_memory_mb": max(steps["train"]["peak_mb"], infer_record["peak_mb"]),
        "peak_memory_train_mb": steps["train"]["peak_mb"], "peak_memory_infer_mb": infer_record["peak_mb"],
        "images": len(list(row.images.iterdir())),
        "metrics_file": str(row.scores_file().relative_to(options.out)),
        "overlay": _overlay(row, options),
    }


def _overlay(row: Row, options: Options) -> str | None:
    """The overlay of the task's first image in the row's outputs (relative to OUT), if written."""
    names = sorted(path.stem for path in row.images.iterdir())
    if not row.task.overlay or not names:
        return None
    path = row.folder / "pred" / row.task.overlay.format(name=names[0])
    return str(path.relative_to(options.out)) if path.is_file() else None


def run_row(row: Row, options: Options) -> dict:
    """Run a row's unfinished steps and write its ``row.json`` (done, or failed with its error)."""
    row.folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log_path = row.folder / LOG_FILE
    try:
        sources = link_images(row.recipe.dataset, row.root, row.images, log_path, options.threads)
        steps = row.steps()
        if row.recipe.dataset.extract and "extract" not in steps:
            extract(row, options)
            row.record("extract", True)
        if "train" not in steps:
            row.record("train", train(row, options, started))
        if "infer" not in steps:
            row.record("infer", infer(row, options, sources))
        if "process" not in steps:
            row.record("process", process(row, options))
        result = finish_row(row, options)
    except (StepFailed, UserError) as err:
        result = {"task": row.task.name, "family": row.recipe.family, "recipe": row.recipe.name, "status": "failed",
                  "profile": row.recipe.profile(options.profile), "device": options.device, "error": str(err),
                  "log": str(log_path.relative_to(options.out))}
    with atomic_write(row.folder / ROW_FILE, "w") as handle:
        json.dump(result, handle, indent=1)
    return result


# --- the whole run ----------------------------------------------------------------------------

def selected_rows(settings: Settings, options: Options) -> list[Row]:
    """The rows asked for, in task then recipe order."""
    tasks = [settings.tasks[name] for name in (options.tasks or settings.tasks)]
    rows = []
    for task in tasks:
        for recipe in task.recipes:
            if options.families and recipe.family not in options.families:
                continue
            root = dataset_root(recipe.dataset, options)
            rows.append(Row(task, recipe, options.out / task.name / recipe.name, options.out / task.name / "images", root))
    return rows


def progress(index: int, total: int, row: Row, text: str) -> None:
    """One progress line on stderr."""
    print(f"[{index}/{total}] {row.task.name} {row.recipe.family}: {text}", file=sys.stderr, flush=True)


def eta_text(row_seconds: float, rows_left: int) -> str:
    """``ETA this row HH:MM UTC, all HH:MM UTC`` from a per-row estimate."""
    now = time.time()
    clock = lambda seconds: time.strftime("%H:%M UTC", time.gmtime(now + seconds))  # noqa: E731
    return f"ETA this row {clock(row_seconds)}, all {clock(row_seconds * rows_left)}"


def run_all(settings: Settings, options: Options) -> list[dict]:
    """Run every selected row (finished ones are kept), printing a progress line per row."""
    rows = selected_rows(settings, options)
    todo = [row for row in rows if not _done(row)]
    durations: list[float] = []
    results = []
    for index, row in enumerate(rows, start=1):
        if row not in todo:
            progress(index, len(rows), row, f"done earlier ({row.folder / ROW_FILE})")
            continue
        estimate = sum(durations) / len(durations) if durations else options.budget_minutes * 60 + SCORING_MARGIN_S
        left = len(todo) - len(durations)
        resumed = " (resuming)" if (row.folder / STEPS_FILE).is_file() else ""
        progress(index, len(rows), row, f"{row.recipe.name}, profile {options.profile}{resumed}; {eta_text(estimate, left)}")
        started = time.monotonic()
        result = run_row(row, options)
        durations.append(time.monotonic() - started)
        results.append(result)
        if result["status"] == "done":
            shown = ", ".join(f"{k} {v:.3f}" for k, v in list(result["scores"].items())[:3] if v is not None)
            progress(index, len(rows), row, f"done in {durations[-1] / 60:.1f} min: {shown}")
        else:
            progress(index, len(rows), row, f"failed: {result['error']} (see {result['log']})")
    return results


def _done(row: Row) -> bool:
    path = row.folder / ROW_FILE
    return path.is_file() and json.loads(path.read_text()).get("status") == "done"


def collect_rows(settings: Settings, options: Options) -> dict[str, Any]:
    """``results.json``: every row on disk under ``OUT``, by task, with the command and machine."""
    tasks = {}
    for task in settings.tasks.values():
        rows = [json.loads(path.read_text()) for recipe in task.recipes
                if (path := options.out / task.name / recipe.name / ROW_FILE).is_file()]
        if rows:
            tasks[task.name] = {"title": task.title, "per": task.per, "scores": list(task.scores), "rows": rows}
    return {"command": options.command, "machine": machine(options.device),
            "settings": str(options.settings), "tasks": tasks}


def machine(device: str) -> dict[str, Any]:
    """The host: CPU, cores, torch, and the GPU when one is used (torch is imported only then)."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count(), "torch": importlib.metadata.version("torch")}
    if device != "cpu" and _uses_gpu(device):
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: Sequence[str] | None) -> Options:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.families", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="data root holding monuseg/ and consep/ (../shared/data)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (rerun with the same one to resume)")
    parser.add_argument("--budget-minutes", type=float, default=30.0,
                        help="minutes per row for training and scoring (default 30, as the shell recipes)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train every row for N epochs instead of planning within the budget")
    parser.add_argument("--families", nargs="+", default=[], metavar="F", help="only these families (default all)")
    parser.add_argument("--tasks", nargs="+", default=[], metavar="T", help="only these tasks (default all)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="every family's profile (default: paper on a GPU, else cpu)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2),
                        help="torch CPU threads per script (default $OMP_NUM_THREADS, else 2)")
    parser.add_argument("--settings", type=Path, default=SETTINGS, help="recipe settings (default benchmarks/recipes/recipes.yaml)")
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0 or (args.epochs is not None and args.epochs < 1) or args.threads < 1:
        raise UserError("--budget-minutes must be > 0, --epochs and --threads >= 1")
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: no such folder; give the data root (e.g. ../shared/data)")
    profile = args.profile or ("paper" if _uses_gpu(args.device) else "cpu")
    return Options(data=args.data.resolve(), out=args.out.resolve(), budget_minutes=args.budget_minutes,
                   families=tuple(args.families), tasks=tuple(args.tasks), device=args.device, profile=profile,
                   epochs=args.epochs, threads=args.threads, settings=args.settings,
                   command=" ".join(["python -m benchmarks.families", *(sys.argv[1:] if argv is None else argv)]))


def _uses_gpu(device: str) -> bool:
    """Whether ``device`` is (or, for ``auto``, resolves to) a CUDA device that torch sees."""
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))


def check_selection(settings: Settings, options: Options) -> None:
    """Refuse unknown task and family names."""
    unknown = [name for name in options.tasks if name not in settings.tasks]
    if unknown:
        raise UserError(f"--tasks {unknown}: unknown; have {sorted(settings.tasks)}")
    families = {recipe.family for task in settings.tasks.values() for recipe in task.recipes}
    unknown = [name for name in options.families if name not in families]
    if unknown:
        raise UserError(f"--families {unknown}: no task runs them; have {sorted(families)}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows, then write results.json, results.md and the plots."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    options = parse_args(argv)
    settings = load_settings(options.settings)
    check_selection(settings, options)
    options.out.mkdir(parents=True, exist_ok=True)
    results = run_all(settings, options)
    collected = collect_rows(settings, options)
    with atomic_write(options.out / "results.json", "w") as handle:
        json.dump(collected, handle, indent=1)
    for path in write_report(collected, options.out):
        log.info("wrote %s", path)
    return 1 if any(result["status"] != "done" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Post-process raw prediction files with each file's family, write the output formats and the
cell composition, and optionally score them against a dataset (``process.py``)."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from config import last_stage_config, merge, parse_override
from inference.folder import write_failure
from inference.rawfile import RawPrediction, RawRef, find_raw
from inference.scoring import parse_gt, score_patches, score_semantic
from loader import read_dataset
from metrics import mean_rows
from metrics.scoring import LabelPair, central_crop, print_table, score_pairs, type_counts, write_results
from misc.errors import UserError
from misc.io import atomic_write
from models import get_family, load_plugins
from models.base import NoTruth
from models.tasks import (all_formats, patch_class_names, placed_class_map, semantic_class_info, stage_class_maps,
                          task_kind, with_class_grid)
from postproc.semantic import ClassIdError

log = logging.getLogger(__name__)


@dataclass
class ProcessReport:
    """Outcome of :func:`process_folder`: names done, failures, and metric files (with ``--gt``)."""

    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    metric_files: list[Path] = field(default_factory=list)
    table_files: list[Path] = field(default_factory=list)
    composition_file: Path | None = None
    task: str | None = None  # the results' task (the first processed image's)


def composition(inst_map: np.ndarray, type_map: np.ndarray | None, count_crop: int | None) -> np.ndarray | None:
    """Nuclei per type 1..max type of one image, in its central ``count_crop`` square (whole
    image when None), each nucleus typed by majority vote; (T,) int64, None when untyped."""
    if type_map is None:
        return None
    inst_map, type_map = central_crop(np.asarray(inst_map), count_crop), central_crop(np.asarray(type_map), count_crop)
    top = int(type_map.max(initial=0))
    return type_counts(inst_map, type_map, top) if top > 0 else np.zeros(0, np.int64)


def write_composition(path: Path, counts: dict[str, np.ndarray], type_info: dict | None) -> Path:
    """Write ``counts`` (image name -> (T_i,) counts of types 1..T_i) as a CSV: one row per image
    (sorted), one column per type 1..T (the largest T of the images and ``type_info``; named
    by ``type_info`` when given, else ``type<t>``) and their ``total``."""
    nr_types = max([len(c) for c in counts.values()] + [max((int(t) for t in type_info or {}), default=0)])
    names = [str((type_info or {}).get(t, (f"type{t}",))[0]) for t in range(1, nr_types + 1)]
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *names, "total"])
        for name in sorted(counts):
            row = np.zeros(nr_types, np.int64)
            row[: len(counts[name])] = counts[name]
            writer.writerow([name, *row.tolist(), int(row.sum())])
    return path


class PostprocOverrideError(UserError):
    """A ``--set postproc.KEY=VALUE`` the results' config does not accept (the run stops)."""


def check_postproc_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    """``overrides`` as a tuple once each is a ``postproc.KEY=VALUE`` (its value parsed as YAML).

    Raises:
        PostprocOverrideError: an override that is not ``KEY=VALUE`` or not under ``postproc``.
    """
    checked = tuple(overrides)
    for text in checked:
        parse_override(text)
        if not text.startswith("postproc."):
            raise PostprocOverrideError(f"--set {text}: process.py changes the post-processing only; "
                                        "give a postproc.KEY=VALUE (e.g. postproc.h=10)")
    return checked


def with_postproc_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """``cfg`` (a raw file's resolved config) with each ``postproc.KEY=VALUE`` merged in, checked
    like ``train.py --set`` (an unknown key or a value of another type raises
    :class:`PostprocOverrideError`)."""
    for text in overrides:
        try:
            cfg = merge(cfg, parse_override(text), f"--set {text}")
        except UserError as err:
            raise PostprocOverrideError(str(err)) from None
    return cfg


class TaskMismatch(UserError):
    """A request the results' task cannot serve (e.g. instance formats for a semantic family):
    the same for every image, so it stops the run instead of skipping an image."""


@dataclass
class ImageOutcome:
    """One processed image: its name, magnification and task, what scoring needs of its result
    (``keep``; None without ``--gt``), its rows of the set-level tables, and the class info it
    was written with (``info_source`` says where that came from)."""

    name: str
    mag: int
    task: str
    keep: Any = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    class_info: dict | None = None
    info_source: str = ""
    multilabel: bool = True
    counts: np.ndarray | None = None
    scores: dict[str, float] | None = None  # the family's own scores against --gt (Family.score_result), or None
    no_truth: str = ""  # why the family found no ground truth for it in --gt (it is left out of the scores)
    truth_error: str = ""  # why the family's ground truth cannot score it (the run stops with it)


def process_image(
    ref: RawRef,
    output_dir: Path,
    formats: tuple[str, ...] | None,
    type_info: dict | None,
    keep_maps: bool,
    mpp: float | None = None,
    count_crop: int | None = None,
    gt: str | None = None,
    postproc: tuple[str, ...] = (),
) -> ImageOutcome:
    """Post-process one raw prediction with its family's hook and write the formats of its task.

    The family is rebuilt from the name and config stored in the raw file (plugin families
    through ``$HISTOSEG_PLUGINS``; a staged family as its last stage) with its fitted state;
    the stored magnification is passed to ``postprocess`` as ``mag``.

    Args:
        formats: ``--formats`` (None: the task's defaults).
        type_info: ``--type-info`` (None: the family's class info).
        mpp: pixel size in µm (None: ``infer.mpp`` of the stored config, if any).
        count_crop: instance results count their nuclei per type (:func:`composition`) in the
            central square of this side (None: the whole image).
        gt: ``--gt``, for a family that scores its results itself (``Family.score_result``).
        postproc: ``postproc.KEY=VALUE`` overrides of the stored config's post-processing
            options (:func:`with_postproc_overrides`).

    Raises:
        UserError: formats the task does not write, class ids outside the class info, an
            override the config does not accept.
    """

    load_plugins()  # families registered by $HISTOSEG_PLUGINS modules (processes start fresh)
    raw = ref.load()
    family = get_family(raw.family)(with_postproc_overrides(last_stage_config(raw.config), postproc))
    family.extra_state = dict(raw.family_state)
    task = family.task_for("infer")
    kind = task_kind(task)
    formats = kind.default_formats if formats is None else formats
    wrong = [fmt for fmt in formats if fmt not in kind.formats]
    if wrong:
        raise TaskMismatch(f"--formats {','.join(wrong)}: not written for {task} results of family '{raw.family}'; "
                        f"choose from {','.join(kind.formats)}")
    result = family.postprocess(raw.maps, mag=raw.mag)
    where = f"{ref.path}" + (f":{ref.group}" if ref.group else "")
    info_source = "the --type-info file" if type_info is not None else "postproc.class_info"
    class_info = type_info
    if task == "semantic":
        result = with_class_grid(result, raw.maps, raw.grids)
        result = {**result, "class_map": placed_class_map(result, raw.image.shape[:2])}
        class_info = None
        for stage, class_map in stage_class_maps(result).items():
            info = semantic_class_info(family, class_map, type_info, f"{where} (class map{f' {stage}' if stage else ''})")
            class_info = info if class_info is None else {**info, **class_info}
    elif task == "patch":
        class_info = type_info if type_info is not None else family.class_info()
        patch_class_names(class_info, len(np.ravel(result["class_prob"])))
    if mpp is None:
        mpp = raw.config.get("infer", {}).get("mpp")
    if mpp is None and raw.slide:
        mpp = float(raw.slide["mpp"]) * float(raw.slide["map_downsample"])
    rows = kind.write(output_dir, raw.name, result, raw.image, raw.mag, formats, class_info, mpp)
    outcome = ImageOutcome(raw.name, raw.mag, task, rows=rows, class_info=class_info, info_source=info_source,
                           multilabel=family.multilabel)
    if task == "instance":
        outcome.counts = composition(result["inst_map"], result.get("type_map"), count_crop)
    if gt is not None:
        score_with_family(outcome, family, raw, gt)
    if keep_maps:
        if task == "instance":
            outcome.keep = (np.asarray(result["inst_map"]), result.get("type_map"))
        elif task == "semantic":
            outcome.keep = stage_class_maps(result)
        else:
            outcome.keep = (np.ravel(result["class_prob"]).astype(np.float64), np.ravel(result["labels"]).astype(np.int64))
    return outcome


def score_with_family(outcome: ImageOutcome, family: Any, raw: RawPrediction, gt: str) -> None:
    """Set ``outcome.scores`` to the family's own scores of ``raw`` against ``gt``
    (``Family.score_result``; None: its task's scorer scores it), or record why it has none:
    ``no_truth`` (:class:`models.base.NoTruth`) or ``truth_error`` (any other :class:`UserError`,
    raised by :func:`score_outcomes` once every image is written)."""
    try:
        outcome.scores = family.score_result(raw.maps, raw.name, gt, raw.slide)
    except NoTruth as err:
        outcome.no_truth = str(err)
    except UserError as err:
        outcome.truth_error = str(err)


def process_raw(
    ref: RawRef,
    output_dir: Path,
    formats: tuple[str, ...],
    type_info: dict | None,
    keep_maps: bool,
) -> tuple[str, int, np.ndarray | None, np.ndarray | None]:
    """:func:`process_image` of an instance result as ``(name, mag, inst_map, type_map)``;
    the maps only when ``keep_maps`` (for scoring)."""
    outcome = process_image(ref, output_dir, formats, type_info, keep_maps)
    if outcome.keep is None:
        return outcome.name, outcome.mag, None, None
    return outcome.name, outcome.mag, outcome.keep[0], outcome.keep[1]


def _guarded(ref: RawRef, *args: Any) -> ImageOutcome | tuple[str, UserError]:
    """:func:`process_image` returning a per-image :class:`UserError` instead of raising it."""
    try:
        return process_image(ref, *args)
    except (TaskMismatch, ClassIdError, PostprocOverrideError):
        raise
    except UserError as err:
        return ref.name, err


def score_predictions(
    gt: str, predictions: dict[str, tuple[np.ndarray, np.ndarray | None]], output_dir: Path, mag: int,
    count_crop: int | None = None,
) -> list[Path]:
    """Score predicted maps against a dataset with the metrics library; print and write its table.

    Args:
        gt: ``KIND:ROOT`` for ``loader.read_dataset``; samples are paired by name with the
            predictions (unpaired ones are reported and left out).
        predictions: name → ((H, W) instance map, (H, W) type map or None).
        output_dir: receives ``metrics.csv`` and ``metrics.json``.
        mag: magnification; the centroid pairing radius is 12 px at 40x, scaled by mag / 40.
        count_crop: side of the central square whose nuclei count for the multi-class R²
            (CoNIC: 224 of 256); None = the whole image.

    Returns:
        The metric files written. Types are scored when every pair has true and predicted
        type maps (type ids 1..the largest one seen): per-type PQ per image, and pooled over
        the set mPQ+, R² of the per-type counts, detection and type F1.
    """
    kind, root = parse_gt(gt)
    pairs = []
    for sample in read_dataset(kind, root):
        if sample.name not in predictions:
            continue
        pred_inst, pred_type = predictions[sample.name]
        if sample.inst_map is None:
            raise UserError(f"--gt {gt}: '{sample.name}' has no instance map; an instance result is scored against "
                            "a dataset with instance maps")
        if pred_inst.shape != sample.inst_map.shape:
            raise UserError(
                f"--gt {gt}: '{sample.name}' has shape {sample.inst_map.shape}, the prediction {pred_inst.shape}"
            )
        pairs.append(LabelPair(sample.name, sample.inst_map, pred_inst, sample.type_map, pred_type))
    unpaired = sorted(set(predictions) - {p.name for p in pairs})
    warn_unpaired(gt, unpaired)
    if not pairs:
        raise UserError(f"--gt {gt}: no sample name matches a processed image (e.g. '{next(iter(predictions))}')")
    typed = all(p.true_type is not None and p.pred_type is not None for p in pairs)
    nr_types = max(max(int(p.true_type.max(initial=0)), int(p.pred_type.max(initial=0))) for p in pairs) if typed else None
    radius = 12.0 * mag / 40.0
    rows, pooled = score_pairs(pairs, nr_types or None, radius, count_crop, False)
    means = mean_rows({k: v for k, v in row.items() if k != "name"} for row in rows)
    print_table(rows, means, pooled)
    csv_path = output_dir / "metrics.csv"
    options = {"gt": gt, "types": nr_types or None, "radius": radius, "count_crop": count_crop, "unpaired": unpaired}
    json_path = write_results(csv_path, rows, means, pooled, options)
    return [csv_path, json_path]


def write_set_tables(output_dir: Path, outcomes: list[ImageOutcome]) -> list[Path]:
    """Write the set-level tables (``areas.csv``, ``predictions.csv``): the images' rows in name order."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for outcome in sorted(outcomes, key=lambda o: o.name):
        for file_name, rows in outcome.rows.items():
            tables.setdefault(file_name, []).extend(rows)
    written = []
    for file_name, rows in tables.items():
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with atomic_write(output_dir / file_name, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        written.append(output_dir / file_name)
    return written


def warn_unpaired(gt: str, unpaired: list[str]) -> None:
    """Log the images ``gt`` holds no ground truth for (they are left out of the scores)."""
    if unpaired:
        log.warning("no ground truth in %s for %d image(s): %s", gt, len(unpaired), unpaired[:5])


def score_family_rows(gt: str, outcomes: list[ImageOutcome], output_dir: Path) -> list[Path]:
    """The families' own per-image scores (``Family.score_result``), their means over images
    (NaN left out), printed and written to ``metrics.csv`` and ``metrics.json``; the images
    without ground truth are listed (``unpaired``) and left out.

    Raises:
        UserError: no image has ground truth in ``gt``.
    """
    outcomes = sorted(outcomes, key=lambda o: o.name)
    unpaired = [o.name for o in outcomes if o.scores is None]
    if len(unpaired) == len(outcomes):
        raise UserError(f"{outcomes[0].no_truth}; none of the {len(outcomes)} processed image(s) has ground "
                        "truth there")
    warn_unpaired(gt, unpaired)
    rows = [{"name": o.name, **o.scores} for o in outcomes if o.scores is not None]
    means = mean_rows({k: v for k, v in row.items() if k != "name"} for row in rows)
    print_table(rows, means, {})
    csv_path = output_dir / "metrics.csv"
    options = {"gt": gt, "scored_by": "family", "unpaired": unpaired}
    return [csv_path, write_results(csv_path, rows, means, {}, options)]


def score_outcomes(gt: str, outcomes: list[ImageOutcome], output_dir: Path, count_crop: int | None = None) -> list[Path]:
    """Score the processed images against ``gt`` with their task's scorer (one task per run);
    ``count_crop`` is the central square whose nuclei count for the R² of typed instances.

    Raises:
        UserError: a ground truth that cannot score an image (the first by name), or one that
            does not fit the task.
    """
    errors = [o.truth_error for o in sorted(outcomes, key=lambda o: o.name) if o.truth_error]
    if errors:
        raise UserError(errors[0])
    own = [o for o in outcomes if o.scores is not None or o.no_truth]
    if own:
        if len(own) != len(outcomes):
            raise UserError("some raw files are scored by their family and others by their task; score them apart")
        return score_family_rows(gt, own, output_dir)
    tasks = sorted({o.task for o in outcomes})
    if len(tasks) > 1:
        raise UserError(f"the raw files hold results of several tasks {tasks}; score one task per run")
    task = tasks[0]
    if task == "instance":
        mags = {o.mag for o in outcomes}
        if len(mags) > 1:
            log.warning("images were taken at several magnifications %s; the pairing radius uses %d", sorted(mags), max(mags))
        return score_predictions(gt, {o.name: o.keep for o in outcomes}, output_dir, max(mags), count_crop)
    first = outcomes[0]
    if task == "semantic":
        info = first.class_info
        for outcome in outcomes:
            info = {**outcome.class_info, **info}
        return score_semantic(gt, {o.name: o.keep for o in outcomes}, info, first.info_source, output_dir)
    names = patch_class_names(first.class_info, len(first.keep[0]))
    return score_patches(gt, {o.name: o.keep for o in outcomes}, names, first.multilabel, output_dir)


def process_folder(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Iterable[str] | None = None,
    gt: str | None = None,
    workers: int = 1,
    type_info: dict | None = None,
    show_progress: bool = True,
    mpp: float | None = None,
    count_crop: int | None = None,
    postproc: Iterable[str] = (),
) -> ProcessReport:
    """Post-process every raw prediction under ``input_path`` and write the chosen formats.

    Args:
        input_path: folder of ``.npz`` / ``raw.h5`` from ``infer.py`` (or one such file).
        output_dir: receives ``<format>/<name>.<ext>``, the set-level tables (``areas.csv``,
            ``predictions.csv``) and, with ``gt``, ``metrics.csv``/``.json``.
        formats: formats of the results' task (``models.tasks``): instance ``mat``, ``json``,
            ``geojson``, ``png``, ``tif``; semantic ``label``, ``overlay``, ``geojson``,
            ``areas``; patch ``csv``. None: the task's defaults.
        gt: the ground truth to score against (see :mod:`inference.scoring`).
        workers: images post-processed in parallel processes.
        type_info: ``{type: (name, (r, g, b))}`` for classes and colours (overrides the family's).
        show_progress: draw a progress bar.
        mpp: pixel size in µm for the areas in mm² (default ``infer.mpp`` of the raw config).
        count_crop: count nuclei in the central square of this side only (CoNIC: 224), for
            ``composition.csv`` and the R² of ``gt``; None = the whole image.
        postproc: ``postproc.KEY=VALUE`` overrides of the post-processing options the raw
            files' config holds (``process.py --set``).

    Returns:
        The :class:`ProcessReport`; unreadable raw files are listed in ``failed``. With typed
        results ``composition.csv`` (:func:`write_composition`) is written too.

    Raises:
        UserError: bad arguments, or an output that cannot be written (e.g. a full disk).
    """
    formats = tuple(formats) if formats is not None else None
    unknown = [fmt for fmt in formats or () if fmt not in all_formats()]
    if unknown or formats == ():
        raise UserError(f"--formats {','.join(formats or ())}: choose one or more of {','.join(all_formats())}")
    if count_crop is not None and count_crop < 1:
        raise UserError(f"--count-crop must be >= 1 pixel, got {count_crop}")
    postproc = check_postproc_overrides(postproc)
    refs = find_raw(input_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = (output_dir, formats, type_info, gt is not None, mpp, count_crop, gt, postproc)
    report = ProcessReport()
    outcomes: list[ImageOutcome] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(refs), unit="image", disable=not show_progress))
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            results = (f.result() for f in as_completed([pool.submit(_guarded, ref, *args) for ref in refs]))
        else:
            results = (_guarded(ref, *args) for ref in refs)
        try:
            for outcome in results:
                bar.update(1)
                if isinstance(outcome, tuple):
                    log.warning("skipping %s: %s", outcome[0], outcome[1])
                    report.failed.append((outcome[0], str(outcome[1])))
                    continue
                report.done.append(outcome.name)
                outcomes.append(outcome)
        except OSError as err:
            raise write_failure(Path(err.filename or output_dir), err) from None
    report.done.sort()
    report.task = outcomes[0].task if outcomes else None
    try:
        report.table_files = write_set_tables(output_dir, outcomes)
    except OSError as err:
        raise write_failure(Path(err.filename or output_dir), err) from None
    counts = {o.name: o.counts for o in outcomes if o.counts is not None}
    if counts:
        report.composition_file = write_composition(output_dir / "composition.csv", counts, type_info)
    if gt is not None and outcomes:
        report.metric_files = score_outcomes(gt, outcomes, output_dir, count_crop)
    return report

"""Post-process raw prediction files with each file's family, write the output formats and the
cell composition, and optionally score them against a dataset (``process.py``)."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from inference.folder import write_failure
from inference.rawfile import RawRef, find_raw
from loader import read_dataset
from metrics import mean_rows
from metrics.scoring import LabelPair, central_crop, print_table, score_pairs, type_counts, write_results
from misc.errors import UserError
from misc.io import atomic_write
from models import get_family, load_plugins
from postproc.formats import DEFAULT_FORMATS, FORMATS, write_outputs

log = logging.getLogger(__name__)


@dataclass
class ProcessReport:
    """Outcome of :func:`process_folder`: names done, failures, and metric files (with ``--gt``)."""

    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    metric_files: list[Path] = field(default_factory=list)
    composition_file: Path | None = None


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


def process_raw(
    ref: RawRef,
    output_dir: Path,
    formats: tuple[str, ...],
    type_info: dict | None,
    keep_maps: bool,
    count_crop: int | None = None,
) -> tuple[str, int, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Post-process one raw prediction with its family's hook and write ``formats``.

    The family is rebuilt from the name and config stored in the raw file (plugin families
    through ``$HISTOSEG_PLUGINS``); the stored magnification is passed to ``postprocess`` as ``mag``.

    Returns:
        ``(name, mag, inst_map, type_map, counts)``; the maps only when ``keep_maps`` (for
        scoring); ``counts`` the :func:`composition` with ``count_crop`` (None when untyped).
    """
    load_plugins()  # families registered by $HISTOSEG_PLUGINS modules (processes start fresh)
    raw = ref.load()
    family = get_family(raw.family)(raw.config)
    result = family.postprocess(raw.maps, mag=raw.mag)
    write_outputs(output_dir, raw.name, result, raw.image, raw.mag, formats, type_info)
    counts = composition(result["inst_map"], result.get("type_map"), count_crop)
    if not keep_maps:
        return raw.name, raw.mag, None, None, counts
    return raw.name, raw.mag, np.asarray(result["inst_map"]), result.get("type_map"), counts


def _guarded(ref: RawRef, *args: Any) -> tuple[str, int, Any, Any, Any] | tuple[str, UserError]:
    """:func:`process_raw` returning a per-image :class:`UserError` instead of raising it."""
    try:
        return process_raw(ref, *args)
    except UserError as err:
        return ref.name, err


def parse_gt(spec: str) -> tuple[str, str]:
    """Split ``KIND:ROOT`` (the root may itself hold ':')."""
    kind, sep, root = spec.partition(":")
    if not sep or not kind or not root:
        raise UserError(f"--gt '{spec}': expected KIND:ROOT, e.g. monuseg:/data/monuseg")
    return kind, root


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
        if pred_inst.shape != sample.inst_map.shape:
            raise UserError(
                f"--gt {gt}: '{sample.name}' has shape {sample.inst_map.shape}, the prediction {pred_inst.shape}"
            )
        pairs.append(LabelPair(sample.name, sample.inst_map, pred_inst, sample.type_map, pred_type))
    unpaired = sorted(set(predictions) - {p.name for p in pairs})
    if unpaired:
        log.warning("no ground truth in %s for %d image(s): %s", gt, len(unpaired), unpaired[:5])
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


def process_folder(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Iterable[str] = DEFAULT_FORMATS,
    gt: str | None = None,
    workers: int = 1,
    type_info: dict | None = None,
    show_progress: bool = True,
    count_crop: int | None = None,
) -> ProcessReport:
    """Post-process every raw prediction under ``input_path`` and write the chosen formats.

    Args:
        input_path: folder of ``.npz`` / ``raw.h5`` from ``infer.py`` (or one such file).
        output_dir: receives ``<format>/<name>.<ext>`` and, with ``gt``, ``metrics.csv``/``.json``.
        formats: any of ``mat``, ``json``, ``geojson``, ``png``.
        gt: ``KIND:ROOT`` to score the results against (see :func:`score_predictions`).
        workers: images post-processed in parallel processes.
        type_info: ``{type: (name, (r, g, b))}`` for GeoJSON classes and overlay colours.
        show_progress: draw a progress bar.
        count_crop: count nuclei in the central square of this side only (CoNIC: 224), for
            ``composition.csv`` and the R² of ``gt``; None = the whole image.

    Returns:
        The :class:`ProcessReport`; unreadable raw files are listed in ``failed``. With typed
        results ``composition.csv`` (:func:`write_composition`) is written too.

    Raises:
        UserError: bad arguments, or an output that cannot be written (e.g. a full disk).
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed

    formats = tuple(formats)
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown or not formats:
        raise UserError(f"--formats {','.join(formats)}: choose one or more of {','.join(FORMATS)}")
    if gt is not None:
        parse_gt(gt)
    if count_crop is not None and count_crop < 1:
        raise UserError(f"--count-crop must be >= 1 pixel, got {count_crop}")
    refs = find_raw(input_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = (output_dir, formats, type_info, gt is not None, count_crop)
    report = ProcessReport()
    predictions: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    counts: dict[str, np.ndarray] = {}
    mags: set[int] = set()
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(refs), unit="image", disable=not show_progress))
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
            outcomes = (f.result() for f in as_completed([pool.submit(_guarded, ref, *args) for ref in refs]))
        else:
            outcomes = (_guarded(ref, *args) for ref in refs)
        try:
            for outcome in outcomes:
                bar.update(1)
                if isinstance(outcome[1], UserError):
                    log.warning("skipping %s: %s", outcome[0], outcome[1])
                    report.failed.append((outcome[0], str(outcome[1])))
                    continue
                name, mag, inst_map, type_map, image_counts = outcome
                report.done.append(name)
                mags.add(mag)
                if inst_map is not None:
                    predictions[name] = (inst_map, type_map)
                if image_counts is not None:
                    counts[name] = image_counts
        except OSError as err:
            raise write_failure(Path(err.filename or output_dir), err) from None
    report.done.sort()
    if counts:
        report.composition_file = write_composition(output_dir / "composition.csv", counts, type_info)
    if gt is not None and predictions:
        if len(mags) > 1:
            log.warning("images were taken at several magnifications %s; the pairing radius uses %d", sorted(mags), max(mags))
        report.metric_files = score_predictions(gt, predictions, output_dir, max(mags), count_crop)
    return report

"""What follows from a family's task (``Family.task``): the per-image output formats of
``process.py`` and their writers, the set-level tables, the validation scores, the overlay and
the default ``train.select_metric``. One small table, :data:`TASK_KINDS`; shared code looks a
task up here and never branches on a family's name.

Results (what ``Family.postprocess`` returns) per task:

- ``instance``: ``{'inst_map': (H, W) int32, 'type_map': (H, W) int32 or None, 'inst_info'}``;
- ``semantic``: ``{'class_map': (H, W) int32 class ids}``;
- ``patch``: ``{'class_prob': (C,) float, 'labels': (C,) 0/1}`` (``'thresholds'``: (C,), optional).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from misc.errors import UserError
from misc.io import write_image
from postproc.formats import FORMATS as INSTANCE_FORMATS
from postproc.formats import DEFAULT_FORMATS as INSTANCE_DEFAULTS
from postproc.formats import TypeInfo, write_outputs

#: Set-level tables: file name under the output folder → rows (dicts) of every image.
SetRows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class TaskKind:
    """How results of one task are written, drawn and scored.

    Attributes:
        name: the task (``models.base.TASKS``).
        formats: the ``process.py --formats`` it accepts.
        default_formats: those written without ``--formats``.
        select_metric: the default ``train.select_metric`` (a validation score, larger is better).
        write: ``(output_dir, name, result, image, mag, formats, class_info, mpp) -> SetRows``
            writes one image's per-image files and returns its rows of the set-level tables.
        evaluate: ``(family, result, sample) -> scores`` of one validation image.
        overlay: ``(family, image, result) -> (H, W, 3) uint8 or None``.
    """

    name: str
    formats: tuple[str, ...]
    default_formats: tuple[str, ...]
    select_metric: str
    write: Callable[..., SetRows]
    evaluate: Callable[[Any, dict, dict], dict[str, float]]
    overlay: Callable[[Any, np.ndarray, dict], np.ndarray | None]


# --- instance ---------------------------------------------------------------------------------

def _write_instance(output_dir: Path, name: str, result: dict, image: np.ndarray, mag: int | None,
                    formats: tuple[str, ...], class_info: TypeInfo | None, mpp: float | None) -> SetRows:
    write_outputs(output_dir, name, result, image, mag, formats, class_info)
    return {}


def _evaluate_instance(family: Any, result: dict, sample: dict) -> dict[str, float]:
    from metrics import instance_stats

    return {key: float(value) for key, value in instance_stats(sample["inst_map"], result["inst_map"]).items()}


def _overlay_instance(family: Any, image: np.ndarray, result: dict) -> np.ndarray | None:
    if "inst_map" not in result:
        return None
    from skimage.segmentation import find_boundaries

    picture = image.copy()
    picture[find_boundaries(result["inst_map"], mode="inner")] = (255, 255, 0)
    return picture


# --- semantic ---------------------------------------------------------------------------------

def default_class_info(class_ids: np.ndarray) -> TypeInfo:
    """``class N`` names and palette colours for the ids present, when no class info is given."""
    from postproc.semantic import generic_class_info

    return generic_class_info(class_ids)


def semantic_class_info(family: Any, class_map: np.ndarray, given: TypeInfo | None, source: str) -> TypeInfo:
    """The class info a semantic result is written with: ``given`` (``process.py --type-info``),
    else the family's, else generic names; ids outside it are refused (:class:`UserError`)."""
    from postproc.semantic import check_class_ids

    info = given if given is not None else family.class_info()
    if info is None:
        return default_class_info(class_map)
    check_class_ids(class_map, info, source, "the --type-info file" if given is not None else "postproc.class_info")
    return info


def _write_semantic(output_dir: Path, name: str, result: dict, image: np.ndarray, mag: int | None,
                    formats: tuple[str, ...], class_info: TypeInfo | None, mpp: float | None) -> SetRows:
    from postproc.semantic import class_areas, colour_overlay, label_path, write_class_geojson, write_label_image

    class_map = np.asarray(result["class_map"])
    rows: SetRows = {}
    for fmt in formats:
        if fmt == "label":
            write_label_image(label_path(output_dir / "label", name, class_map.shape), class_map, class_info)
        elif fmt == "overlay":
            write_image(output_dir / "overlay" / f"{name}.png", colour_overlay(image, class_map, class_info))
        elif fmt == "geojson":
            write_class_geojson(output_dir / "geojson" / f"{name}.geojson", class_map, class_info)
        elif fmt == "areas":
            rows["areas.csv"] = class_areas(name, class_map, class_info, mpp)
    return rows


def _evaluate_semantic(family: Any, result: dict, sample: dict) -> dict[str, float]:
    from metrics.semantic import confusion_matrix, confusion_scores

    truth = np.asarray(family.class_truth(sample))
    pred = np.asarray(result["class_map"])
    classes = int(max(truth.max(initial=0), pred.max(initial=0))) + 1
    scores = confusion_scores(confusion_matrix(truth, pred, classes))
    return {key: scores[key] for key in ("miou", "fiou", "mdice", "pixel_accuracy")}


def semantic_truth(family: Any, sample: dict) -> np.ndarray:
    """A sample's true (H, W) class map: ``class_map``, else its ``type_map``."""
    for key in ("class_map", "type_map"):
        if sample.get(key) is not None:
            return np.asarray(sample[key])
    raise UserError(f"sample '{sample.get('name', '')}' has no class map (only instances); "
                    "a semantic family is scored against per-pixel class maps")


def with_class_grid(result: dict, maps: dict[str, np.ndarray], grids: dict[str, Any]) -> dict:
    """``result`` with ``class_grid`` set when its class map has one value per window: the
    geometry of the grid map of the same (R, K) shape among ``maps`` (``grids``: their geometry)."""
    class_map = result.get("class_map")
    if class_map is None or "class_grid" in result:
        return result
    shape = np.shape(class_map)[:2]
    for name, geometry in grids.items():
        if name in maps and np.shape(maps[name])[:2] == shape:
            return {**result, "class_grid": geometry}
    return result


def placed_class_map(result: dict, shape: tuple[int, int]) -> np.ndarray:
    """The result's class map on an image of ``shape`` (H, W): placed by its ``class_grid``
    geometry when it has one value per window (:func:`postproc.grid.place_grid`), else as it is."""
    from postproc.grid import place_grid

    class_map = np.asarray(result["class_map"])
    if result.get("class_grid") is None or class_map.shape[:2] == tuple(shape):
        return class_map
    return place_grid(class_map, result["class_grid"], shape)


def _overlay_semantic(family: Any, image: np.ndarray, result: dict) -> np.ndarray | None:
    if "class_map" not in result:
        return None
    from postproc.semantic import colour_overlay

    class_map = placed_class_map(result, image.shape[:2])
    info = family.class_info() or default_class_info(class_map)
    return colour_overlay(image, class_map, {**default_class_info(class_map), **info})


# --- patch ------------------------------------------------------------------------------------

def patch_class_names(class_info: TypeInfo | None, classes: int) -> list[str]:
    """Names of the C patch classes: class info ids 0..C-1, else ``class 0``, ``class 1``, ..."""
    if class_info is None:
        return [f"class {c}" for c in range(classes)]
    missing = [c for c in range(classes) if c not in class_info]
    if missing:
        raise UserError(f"class info names ids {sorted(class_info)}; a result of {classes} classes needs ids 0..{classes - 1}")
    return [class_info[c][0] for c in range(classes)]


def _write_patch(output_dir: Path, name: str, result: dict, image: np.ndarray, mag: int | None,
                 formats: tuple[str, ...], class_info: TypeInfo | None, mpp: float | None) -> SetRows:
    probs = np.asarray(result["class_prob"], np.float64).ravel()
    labels = np.asarray(result["labels"]).ravel()
    names = patch_class_names(class_info, len(probs))
    row: dict[str, Any] = {"name": name}
    row.update({f"prob:{n}": float(p) for n, p in zip(names, probs)})
    row.update({f"label:{n}": int(v) for n, v in zip(names, labels)})
    return {"predictions.csv": [row]} if "csv" in formats else {}


def _evaluate_patch(family: Any, result: dict, sample: dict) -> dict[str, float]:
    from metrics.patch import image_scores

    truth = np.asarray(family.image_labels(sample)).reshape(1, -1) > 0.5
    labels = np.asarray(result["labels"]).reshape(1, -1) > 0.5
    probs = np.asarray(result["class_prob"], np.float64).reshape(1, -1)
    tp = float((truth & labels).sum())
    denominator = float(truth.sum() + labels.sum())
    scores = {"f1": 2 * tp / denominator if denominator else 1.0}
    scores.update(image_scores(truth, probs, labels, family.multilabel))
    return scores


def _no_overlay(family: Any, image: np.ndarray, result: dict) -> None:
    return None


TASK_KINDS: dict[str, TaskKind] = {
    "instance": TaskKind("instance", INSTANCE_FORMATS, INSTANCE_DEFAULTS, "pq",
                         _write_instance, _evaluate_instance, _overlay_instance),
    "semantic": TaskKind("semantic", ("label", "overlay", "geojson", "areas"), ("label", "overlay", "geojson", "areas"),
                         "miou", _write_semantic, _evaluate_semantic, _overlay_semantic),
    "patch": TaskKind("patch", ("csv",), ("csv",), "f1", _write_patch, _evaluate_patch, _no_overlay),
}


def task_kind(task: str) -> TaskKind:
    """The :class:`TaskKind` of ``task``.

    Raises:
        UserError: an unknown task (a family declaring something else).
    """
    if task not in TASK_KINDS:
        raise UserError(f"unknown task '{task}'; a family's task is one of {sorted(TASK_KINDS)}")
    return TASK_KINDS[task]


def all_formats() -> tuple[str, ...]:
    """Every ``--formats`` name of any task, in table order."""
    return tuple(dict.fromkeys(fmt for kind in TASK_KINDS.values() for fmt in kind.formats))

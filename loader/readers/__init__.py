"""Dataset readers for the public nucleus/gland/patch formats: ``read_dataset(kind, root, split, **options)``.

Every kind returns a lazy :class:`Dataset` of :class:`Sample` (``.name``, ``.image``,
``.inst_map``, ``.type_map``, ``.mpp``, ``.source``, ``.tissue``, ``.class_names``, ``.group``,
``.labels``, ``.meta``). Options common to all kinds: ``class_map`` (YAML path or mapping:
merge/rename classes), ``target_mpp`` (resample: bilinear image, nearest labels), ``mpp``
(override the pixel size) and ``allow_grey``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from loader.readers.annotations import read_aperio_xml, read_cpm_mask, read_geojson
from loader.readers.arrays import read_conic, read_pannuke
from loader.readers.core import Arrays, ClassMap, Dataset, Record, Sample, parse_options, read_split_file, resample_arrays
from loader.readers.files import child_dir
from loader.readers.patches import read_patch_labels
from loader.readers.tiles import (
    read_consep_mat,
    read_cpm15,
    read_folder,
    read_geojson_dataset,
    read_glas,
    read_monuseg,
    read_rcc,
)
from misc.errors import UserError

__all__ = [
    "KINDS",
    "Arrays",
    "Dataset",
    "Sample",
    "parse_options",
    "read_aperio_xml",
    "read_cpm_mask",
    "read_dataset",
    "read_geojson",
]


class Kind(NamedTuple):
    """A format: its reader, its fixed native split names, and whether sub-folders are splits too."""

    reader: Callable[..., list[Record]]
    native_splits: tuple[str, ...] = ()
    folder_splits: bool = False


KINDS: dict[str, Kind] = {
    "consep_mat": Kind(read_consep_mat, ("train", "test")),
    "monuseg": Kind(read_monuseg, ("train", "test")),
    "cpm15": Kind(read_cpm15),
    "pannuke": Kind(read_pannuke, ("fold1", "fold2", "fold3")),
    "conic": Kind(read_conic),
    "glas": Kind(read_glas, ("train", "testA", "testB")),
    "rcc": Kind(read_rcc, ("train", "val", "test")),
    "geojson": Kind(read_geojson_dataset, folder_splits=True),
    "folder": Kind(read_folder, folder_splits=True),
    "patch_labels": Kind(read_patch_labels, folder_splits=True),
}
COMMON_OPTIONS = ("class_map", "target_mpp", "mpp", "allow_grey")


def _closest(word: str, choices: list[str]) -> str:
    return (difflib.get_close_matches(word, choices, n=1, cutoff=0.0) or choices)[0]


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind '{kind}'; did you mean '{_closest(kind, list(KINDS))}'? (kinds: {', '.join(KINDS)})")
    return KINDS[kind]


def _reader_options(kind: str, reader: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Options ``reader`` accepts; UserError naming the closest valid option for an unknown one."""
    accepted = [name for name, p in inspect.signature(reader).parameters.items() if p.kind is p.KEYWORD_ONLY]
    valid = sorted(set(accepted) | set(COMMON_OPTIONS))
    for name in options:
        if name not in valid:
            raise UserError(f"unknown option '{name}' for kind '{kind}'; did you mean '{_closest(name, valid)}'? (options: {', '.join(valid)})")
    return {k: v for k, v in options.items() if k in accepted and k not in COMMON_OPTIONS}


def _is_native(kind: Kind, root: Path, split: str) -> bool:
    return split in kind.native_splits or (kind.folder_splits and child_dir(root, split) is not None)


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise UserError(f"option {name}={value!r}: expected a positive number of µm per pixel")
    return number


def _relabel(records: list[Record], class_map: ClassMap | None, mpp: float | None) -> list[Record]:
    """Records with overridden ``mpp`` and class names after ``class_map``."""
    updates: dict[str, Any] = {}
    if mpp is not None:
        updates["mpp"] = mpp
    out = []
    for record in records:
        changes = dict(updates)
        if class_map is not None:
            if record.class_names is not None:
                changes["class_names"] = class_map.class_names(record.class_names)
            else:
                ordered = [class_map.mapping[k] for k in sorted(class_map.mapping, key=lambda k: int(k))] if all(
                    str(k).isdigit() for k in class_map.mapping
                ) else []
                changes["class_names"] = tuple(dict.fromkeys(ordered)) or None
        out.append(dataclasses.replace(record, **changes) if changes else record)
    return out


def _make_transform(class_map: ClassMap | None, target_mpp: float | None, originals: dict[str, Any]) -> Callable[[Arrays, Record], Arrays]:
    """The per-sample transform: class map (on the record's original class names), then resampling."""

    def transform(arrays: Arrays, record: Record) -> Arrays:
        if class_map is not None:
            arrays = class_map.apply(arrays, originals.get(record.name))[0]
        if target_mpp is not None and record.mpp != target_mpp:
            if record.mpp is None:
                raise UserError(f"{record.source}: pixel size unknown, cannot resample to target_mpp={target_mpp}; pass mpp=")
            arrays = resample_arrays(arrays, record.mpp / target_mpp)
        return arrays

    return transform


def read_dataset(kind: str, root: str | os.PathLike, split: str | None = None, **options: Any) -> Dataset:
    """Open a dataset lazily.

    Args:
        kind: one of :data:`KINDS` (``consep_mat``, ``monuseg``, ``cpm15``, ``pannuke``,
            ``conic``, ``glas``, ``rcc``, ``geojson``, ``folder``, ``patch_labels``).
        root: dataset folder.
        split: None (all samples), a native split name (PanNuke ``fold1..3``, GlaS
            ``train/testA/testB``, ``train``/``test`` sub-folders ...), or a split file
            (``names.txt``, or ``splits.json:PART`` as written by :mod:`loader.splits`).
        options: ``class_map`` (YAML path or ``{old name or id: new name}``), ``target_mpp``,
            ``mpp`` (override), ``allow_grey``, and the kind's own options (see its reader).

    Returns:
        :class:`Dataset`: ``len``, indexing, iteration; pixels are read on access.

    Raises:
        UserError: unknown kind/option (naming the closest valid one), bad root, missing pairs,
            unknown split.
    """
    spec = _kind(kind)
    root = Path(root)
    reader_options = _reader_options(kind, spec.reader, options)
    allow_grey = bool(options.get("allow_grey", False))
    class_map = ClassMap.load(options["class_map"]) if options.get("class_map") is not None else None
    target_mpp = _positive(options.get("target_mpp"), "target_mpp")
    mpp = _positive(options.get("mpp"), "mpp")
    if split is None or _is_native(spec, root, split):
        records = spec.reader(root, split, allow_grey=allow_grey, **reader_options)
        names, what = None, ""
    else:
        if not Path(split).is_file() and ":" not in split:
            choices = list(spec.native_splits) or ["<sub-folder>"] * spec.folder_splits
            raise UserError(f"split '{split}' for kind '{kind}': not a native split {choices} and no such split file")
        names, what = read_split_file(split)
        records = spec.reader(root, None, allow_grey=allow_grey, **reader_options)
    originals = {r.name: r.class_names for r in records}
    records = _relabel(records, class_map, mpp)
    dataset = Dataset(kind, root, records, _make_transform(class_map, target_mpp, originals), target_mpp)
    return dataset.subset(names, what) if names is not None else dataset

"""Where H2G-Net's slides and tumour annotations come from: a cohort (``cohort.json`` of
:mod:`loader.synthetic_tumour`, or one written the same way for real slides), or a synthetic
cohort generated once into the run folder (``data.source: synthetic``), and the ground truth of
a slide for ``process.py --gt``.

A cohort record lists per slide its ``name``, ``split`` (``train``, ``val``, ``test``), ``slide``
file, ``annotation`` (QuPath GeoJSON) and ``mask`` (tumour mask image covering the slide);
``data.label`` picks the annotation or the mask as the truth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from loader.synthetic_tumour import CohortSlide, read_cohort, write_cohort
from misc.errors import UserError
from models.base import NoTruth

COHORT_FILE = "cohort.json"
SYNTHETIC_FOLDER = "cohort"
LABELS = ("annotation", "mask")
#: Suffixes of a per-slide truth file in a ``--gt`` folder, tried in order.
TRUTH_SUFFIXES = (".geojson", ".json", ".png", ".tif", ".tiff", ".npy")


def synthetic_cohort(spec: dict, folder: Path) -> Path:
    """The ``cohort.json`` of the synthetic cohort ``data.synthetic`` describes ({train, val,
    test, size, mpp, seed}), written into ``folder`` unless it is there already."""
    record = folder / COHORT_FILE
    if not record.is_file():
        counts = {split: int(spec[split]) for split in ("train", "val", "test") if int(spec[split]) > 0}
        size = int(spec["size"])
        write_cohort(folder, counts, (size, size), int(spec["seed"]), float(spec["mpp"]))
    return record


def cohort_file(data_cfg: dict, shared_dir: Path) -> Path:
    """The cohort of ``data.source``: the synthetic one (generated into
    ``shared_dir/cohort`` once), or the ``cohort.json`` (or folder holding one) it names."""
    source = str(data_cfg["source"])
    if source == "synthetic":
        return synthetic_cohort(data_cfg["synthetic"], shared_dir / SYNTHETIC_FOLDER)
    path = Path(source)
    path = path / COHORT_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"data.source '{source}': H2G-Net trains on 'synthetic' or a cohort.json "
                        "(python -m loader.synthetic_tumour writes one; docs/families/h2gnet.md)")
    return path


def split_slides(path: Path, splits: Sequence[str]) -> dict[str, list[CohortSlide]]:
    """The cohort's slides of each of ``splits`` (an empty list for a split it does not have)."""
    _, slides = read_cohort(path)
    return {split: [entry for entry in slides if entry.split == split] for split in splits}


def truth_file(entry: CohortSlide, label: str) -> str:
    """The truth ``data.label`` names for a cohort slide: its annotation or its mask file."""
    if label not in LABELS:
        raise UserError(f"data.label '{label}' is not one of {list(LABELS)}")
    return str(getattr(entry, label))


def find_truth(gt: str | os.PathLike, name: str, label: str) -> str:
    """The truth of slide ``name`` in ``--gt``: a cohort (``cohort.json`` or its folder; the
    slide's annotation or mask per ``label``) or a folder of per-slide files ``<name>.geojson``
    (or ``.json``, ``.png``, ``.tif``, ``.tiff``, ``.npy``).

    Raises:
        NoTruth: no such cohort slide or file (names what was looked for).
        UserError: ``gt`` is neither a cohort nor a folder.
    """
    gt = Path(gt)
    record = gt / COHORT_FILE if gt.is_dir() else gt
    if record.is_file() and record.suffix.lower() == ".json" and record.name == COHORT_FILE:
        _, slides = read_cohort(record)
        for entry in slides:
            if entry.name == name:
                return truth_file(entry, label)
        raise NoTruth(f"--gt {record}: no slide '{name}' in the cohort (it has {[s.name for s in slides][:8]})")
    if not gt.is_dir():
        raise UserError(f"--gt {gt}: expected a cohort.json, its folder, or a folder of per-slide annotations or masks")
    for suffix in TRUTH_SUFFIXES:
        if (gt / f"{name}{suffix}").is_file():
            return str(gt / f"{name}{suffix}")
    raise NoTruth(f"--gt {gt}: no annotation or mask of slide '{name}' ({name}.geojson, {name}.png, ...)")

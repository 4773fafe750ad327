"""Helpers of the whole-slide tests: synthetic slides, filled instance maps, output comparison."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np

from loader.synthetic_slide import SyntheticSlide, disc_tissue, write_synthetic_slide

COMPARED = ("geojson", "json", "overlay.tif", "thumbnail.png", "tissue.png")


def make_slide(path: Path, shape: tuple[int, int], tissue: float = 0.5, mpp: float = 0.25, cell: int = 256,
               with_mpp: bool = True, seed: int = 0) -> SyntheticSlide:
    """Write a synthetic pyramidal TIFF slide at ``path`` and return its layout."""
    slide = SyntheticSlide(shape, disc_tissue(shape, cell, tissue), cell=cell, mpp=mpp, pool_size=2, seed=seed)
    write_synthetic_slide(path, slide, tile=128, with_mpp=with_mpp)
    return slide


def fill_contours(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 map with contour k ((K, 2) int (x, y) pixel centres) filled with id k + 1."""
    inst = np.zeros(shape, np.int32)
    for k, contour in enumerate(contours):
        cv2.drawContours(inst, [np.asarray(contour, np.int32).reshape(-1, 1, 2)], -1, k + 1, thickness=cv2.FILLED)
    return inst


def hovernet_json_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The nuclei of a slide's HoVer-Net JSON filled into an instance map (ids in JSON order)."""
    nuclei = json.loads(path.read_text())["nuc"]
    return fill_contours([np.asarray(n["contour"]) for n in nuclei.values()], shape)


def db_rows(path: Path) -> list[tuple]:
    """Every nucleus row of a nuclei database, by id."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM nuclei ORDER BY id").fetchall()


def assert_same_outputs(first: Path, second: Path, stem: str) -> None:
    """Two runs' outputs of slide ``stem`` are equal (bytes; database rows; summary but its timings)."""
    for suffix in COMPARED:
        a, b = (first / f"{stem}.{suffix}").read_bytes(), (second / f"{stem}.{suffix}").read_bytes()
        assert a == b, f"{stem}.{suffix} differs"
    assert db_rows(first / f"{stem}.db") == db_rows(second / f"{stem}.db")
    summaries = [json.loads((d / f"{stem}.summary.json").read_text()) for d in (first, second)]
    for summary in summaries:
        summary.pop("seconds")
    assert summaries[0] == summaries[1]

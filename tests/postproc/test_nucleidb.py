"""Nuclei database: schema, R*Tree box query, GeoJSON helper, atomic write."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from misc.errors import UserError
from postproc.nucleidb import NucleiWriter, bbox_geojson, main, polygon_wkb, query_bbox


def _row(nid: int, x: float, y: float, kind: int | None) -> tuple:
    ring = np.array([[x - 2, y - 2], [x + 2, y - 2], [x + 2, y + 2], [x - 2, y + 2]])
    return (nid, x, y, x - 2, y - 2, x + 2, y + 2, kind, None if kind is None else 0.8, 16.0, 1.0, polygon_wkb(ring))


def _write(path: Path) -> None:
    with NucleiWriter(path, {"slide": "s.svs", "mpp": 0.25}, {1: ("tumour", (255, 0, 0))}) as writer:
        writer.add([_row(i + 1, 10.0 * i, 5.0, 1 if i % 2 else None) for i in range(100)])
        writer.commit()


def test_box_query_uses_the_index_and_round_trips_contours(tmp_path: Path) -> None:
    _write(tmp_path / "n.db")
    found = list(query_bbox(tmp_path / "n.db", 95, 0, 125, 10))
    assert [r["id"] for r in found] == [11, 12, 13]  # boxes [x-2, x+2] (x = 100, 110, 120) meet [95, 125]
    np.testing.assert_allclose(found[0]["contour"][0], [98, 3])
    db = sqlite3.connect(tmp_path / "n.db")
    plan = " ".join(str(r) for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT n.id FROM nuclei n JOIN nuclei_index i ON n.id = i.id WHERE i.x1 >= 1"))
    assert "SCAN i VIRTUAL TABLE INDEX" in plan  # the R*Tree answers the box
    assert db.execute("SELECT count(*) FROM nuclei").fetchone() == (100,)


def test_geojson_helper_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path / "n.db")
    collection = bbox_geojson(tmp_path / "n.db", 0, 0, 12, 10)
    assert [f["id"] for f in collection["features"]] == ["1", "2"]
    assert collection["features"][1]["properties"]["classification"] == {"name": "tumour", "color": [255, 0, 0]}
    assert main([str(tmp_path / "n.db"), "--bbox", "0", "0", "12", "10"]) == 0
    assert json.loads(capsys.readouterr().out) == collection


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with NucleiWriter(tmp_path / "n.db", {}, None) as writer:
            writer.add([_row(1, 5, 5, None)])
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="no such nuclei database"):
        list(query_bbox(tmp_path / "n.db", 0, 0, 1, 1))

"""An SQLite database of a slide's nuclei, spatially indexed, and a query helper.

Schema (all coordinates in level-0 pixels, pixel-corner convention as in QuPath and the
GeoJSON output: pixel (x, y) covers [x, x + 1) x [y, y + 1))::

    CREATE TABLE nuclei (
        id        INTEGER PRIMARY KEY,  -- 1..N, the same ids as the GeoJSON and HoVer-Net JSON
        x         REAL NOT NULL,        -- centroid
        y         REAL NOT NULL,
        x0        REAL NOT NULL,        -- bounding box of the contour
        y0        REAL NOT NULL,
        x1        REAL NOT NULL,
        y1        REAL NOT NULL,
        type      INTEGER,              -- type id (NULL: untyped family)
        type_prob REAL,                 -- fraction of the nucleus' pixels with that type
        area_px   REAL NOT NULL,        -- area in level-0 pixels
        area_um2  REAL NOT NULL,        -- area in µm²
        contour   BLOB NOT NULL         -- outline polygon as WKB (shapely.wkb.loads reads it)
    );
    CREATE VIRTUAL TABLE nuclei_index USING rtree(id, x0, x1, y0, y1);   -- the nuclei's boxes
    CREATE TABLE types (type INTEGER PRIMARY KEY, name TEXT, r INTEGER, g INTEGER, b INTEGER);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);  -- slide, mpp, schema_version, ...

A box query (``SELECT n.* FROM nuclei n JOIN nuclei_index i ON n.id = i.id WHERE i.x1 >= :x0
AND i.x0 <= :x1 AND i.y1 >= :y0 AND i.y0 <= :y1``) touches only the index pages it needs.

Command line (the nuclei whose box meets the query box, as a GeoJSON FeatureCollection)::

    python -m postproc.nucleidb SLIDE.db --bbox X0 Y0 X1 Y1 [--output OUT.geojson]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from misc.errors import UserError, cli_main
from misc.io import atomic_path

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE nuclei (
    id INTEGER PRIMARY KEY, x REAL NOT NULL, y REAL NOT NULL,
    x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
    type INTEGER, type_prob REAL, area_px REAL NOT NULL, area_um2 REAL NOT NULL, contour BLOB NOT NULL
);
CREATE VIRTUAL TABLE nuclei_index USING rtree(id, x0, x1, y0, y1);
CREATE TABLE types (type INTEGER PRIMARY KEY, name TEXT NOT NULL, r INTEGER, g INTEGER, b INTEGER);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""
COLUMNS = ("id", "x", "y", "x0", "y0", "x1", "y1", "type", "type_prob", "area_px", "area_um2", "contour")


def polygon_wkb(ring: np.ndarray) -> bytes:
    """WKB of the polygon with outer ring ``ring`` ((K, 2) float (x, y), not closed; K >= 3)."""
    import shapely

    return shapely.to_wkb(shapely.Polygon(np.asarray(ring, np.float64)))


class NucleiWriter:
    """Writes a nuclei database to a temporary file; :meth:`commit` moves it under its name.

    Use as a context manager: leaving it with an exception leaves nothing under ``path``.

    Args:
        path: the ``.db`` file.
        meta: ``{key: value}`` stored in ``meta`` (values as JSON text).
        type_info: ``{type: (name, (r, g, b))}`` stored in ``types``.
    """

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any],
                 type_info: Mapping[int, tuple[str, tuple[int, int, int]]] | None) -> None:
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._tmp.unlink()
        self.db = sqlite3.connect(self._tmp)
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.executescript(SCHEMA)
        rows = [(int(t), str(name), *map(int, colour)) for t, (name, colour) in sorted((type_info or {}).items())]
        self.db.executemany("INSERT INTO types VALUES (?, ?, ?, ?, ?)", rows)
        items = {"schema_version": SCHEMA_VERSION, **meta}
        self.db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in items.items()])
        self.count = 0

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert nuclei: each row holds the :data:`COLUMNS` values in order (contour as WKB bytes)."""
        rows = list(rows)
        self.db.executemany(f"INSERT INTO nuclei VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        self.db.executemany("INSERT INTO nuclei_index VALUES (?, ?, ?, ?, ?)",
                            [(r[0], r[3], r[5], r[4], r[6]) for r in rows])
        self.count += len(rows)

    def commit(self) -> None:
        """Finish the file and move it under its final name."""
        self.db.commit()
        self.db.close()
        with open(self._tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        self._stack.close()

    def __enter__(self) -> "NucleiWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        self._stack.__exit__(exc_type, exc, tb)


def _connect(path: str | os.PathLike) -> sqlite3.Connection:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such nuclei database")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as err:
        raise UserError(f"{path}: not a nuclei database ({err})") from None
    if version is None or json.loads(version[0]) != SCHEMA_VERSION:
        raise UserError(f"{path}: nuclei database schema {version} is not version {SCHEMA_VERSION}")
    return db


def query_bbox(path: str | os.PathLike, x0: float, y0: float, x1: float, y1: float) -> Iterator[dict[str, Any]]:
    """Nuclei whose bounding box meets the box [x0, x1] x [y0, y1] (level-0 px), by id.

    Yields:
        ``{column: value}`` per nucleus; ``contour`` is a (K, 2) float64 array of the ring.
    """
    import shapely

    if x1 < x0 or y1 < y0:
        raise UserError(f"--bbox {x0} {y0} {x1} {y1}: need x0 <= x1 and y0 <= y1")
    db = _connect(path)
    try:
        cursor = db.execute(
            f"SELECT {', '.join('n.' + c for c in COLUMNS)} FROM nuclei n JOIN nuclei_index i ON n.id = i.id "
            "WHERE i.x1 >= ? AND i.x0 <= ? AND i.y1 >= ? AND i.y0 <= ? ORDER BY n.id", (x0, x1, y0, y1))
        for row in cursor:
            record = dict(zip(COLUMNS, row))
            record["contour"] = np.asarray(shapely.from_wkb(record["contour"]).exterior.coords)[:-1]
            yield record
    finally:
        db.close()


def type_table(path: str | os.PathLike) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """The database's ``types`` as ``{type: (name, (r, g, b))}``."""
    db = _connect(path)
    try:
        return {t: (name, (r, g, b)) for t, name, r, g, b in db.execute("SELECT * FROM types")}
    finally:
        db.close()


def nucleus_feature(record: Mapping[str, Any], type_info: Mapping[int, tuple[str, tuple[int, int, int]]]) -> dict:
    """A QuPath GeoJSON detection Feature for one database record (closed ring)."""
    from postproc.formats import type_class

    ring = np.asarray(record["contour"], np.float64)
    name, colour = type_class(record["type"], dict(type_info))
    properties: dict[str, Any] = {"objectType": "detection", "classification": {"name": name, "color": list(colour)}}
    if record["type_prob"] is not None:
        properties["measurements"] = {"type_prob": float(record["type_prob"])}
    return {"type": "Feature", "id": str(record["id"]),
            "geometry": {"type": "Polygon", "coordinates": [np.vstack([ring, ring[:1]]).tolist()]},
            "properties": properties}


def bbox_geojson(path: str | os.PathLike, x0: float, y0: float, x1: float, y1: float) -> dict:
    """:func:`query_bbox` as a GeoJSON FeatureCollection (the format of the slide's GeoJSON)."""
    types = type_table(path)
    return {"type": "FeatureCollection",
            "features": [nucleus_feature(record, types) for record in query_bbox(path, x0, y0, x1, y1)]}


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Print (or write) the nuclei of a box of a slide as GeoJSON."""
    parser = argparse.ArgumentParser(prog="python -m postproc.nucleidb", description=main.__doc__)
    parser.add_argument("db", help="the slide's .db from infer.py")
    parser.add_argument("--bbox", type=float, nargs=4, required=True, metavar=("X0", "Y0", "X1", "Y1"),
                        help="level-0 pixel box")
    parser.add_argument("--output", default=None, help="write the GeoJSON here instead of stdout")
    args = parser.parse_args(argv)
    collection = bbox_geojson(args.db, *args.bbox)
    if args.output:
        from misc.io import atomic_write

        with atomic_write(args.output, "w") as handle:
            json.dump(collection, handle)
    else:
        json.dump(collection, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

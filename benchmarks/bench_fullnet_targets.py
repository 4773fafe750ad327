"""Benchmark of FullNet weight maps: a 1000x1000 instance map with 600 nuclei in under 2 s.

Run: ``python benchmarks/bench_fullnet_targets.py [--repeats 3] [--limit 2.0]``. It builds a
seeded synthetic map of 600 non-overlapping elliptical nuclei, times
:func:`models.fullnet.weights.weight_map` (w0 10, sigma 5), checks a random sample of
pixels against a brute-force per-object distance transform (max error <= 1e-6), and exits 1
when the best time exceeds ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.fullnet.weights import object_boundaries, weight_map  # noqa: E402

SIZE = 1000
NUCLEI = 600


def nuclei_map(seed: int = 0, size: int = SIZE, count: int = NUCLEI) -> np.ndarray:
    """(size, size) int32 map of ``count`` ellipses (semi-axes 4-11 px) on a jittered grid."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    pitch = size / side
    rows, cols = np.mgrid[0:size, 0:size]
    inst_map = np.zeros((size, size), np.int32)
    cells = rng.permutation(side * side)[:count]
    for label, cell in enumerate(cells, start=1):
        cy = (cell // side + 0.5) * pitch + rng.uniform(-0.15, 0.15) * pitch
        cx = (cell % side + 0.5) * pitch + rng.uniform(-0.15, 0.15) * pitch
        ay, ax = rng.uniform(4, 11, size=2)
        y0, y1 = int(max(cy - 12, 0)), int(min(cy + 13, size))
        x0, x1 = int(max(cx - 12, 0)), int(min(cx + 13, size))
        window = ((rows[y0:y1, x0:x1] - cy) / ay) ** 2 + ((cols[y0:y1, x0:x1] - cx) / ax) ** 2 <= 1
        inst_map[y0:y1, x0:x1][window] = label
    return inst_map


def brute_force_at(inst_map: np.ndarray, points: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Weights at (P, 2) pixel coordinates from the distances to every object's boundary pixels."""
    boundary = object_boundaries(inst_map)
    ids = np.unique(boundary[boundary > 0])
    coords = np.argwhere(boundary > 0)
    owner = boundary[boundary > 0]
    dists = np.full((len(points), ids.size), np.inf)
    for column, label in enumerate(ids):
        pts = coords[owner == label]
        delta = points[:, None, :] - pts[None, :, :]
        dists[:, column] = np.sqrt((delta ** 2).sum(-1)).min(1)
    dists.sort(axis=1)
    total = dists[:, 0] + dists[:, 1]
    return 1.0 + w0 * np.exp(-(total ** 2) / (2 * sigma ** 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=2.0, help="seconds allowed for the best run")
    args = parser.parse_args()
    inst_map = nuclei_map()
    present = np.unique(inst_map).size - 1
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        weights = weight_map(inst_map, w0=10.0, sigma=5.0)
        times.append(time.perf_counter() - start)
    points = np.random.default_rng(1).integers(0, SIZE, size=(2000, 2))
    expected = brute_force_at(inst_map, points, 10.0, 5.0)
    error = float(np.abs(weights[points[:, 0], points[:, 1]] - expected).max())
    best = min(times)
    print(f"weight_map {SIZE}x{SIZE}, {present} nuclei: best {best:.3f} s of {args.repeats} "
          f"(all: {', '.join(f'{t:.3f}' for t in times)}); max error on 2000 pixels {error:.2e}")
    ok = best < args.limit and error <= 1e-6
    if not ok:
        print(f"FAIL: need < {args.limit} s and error <= 1e-6")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

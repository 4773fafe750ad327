"""Speed and memory of all seven instance metrics (``metrics.instance_stats``) on large maps.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py``

Each case writes a synthetic true/pred instance-map pair to a temporary folder, then times
``instance_stats`` in a fresh subprocess that loads the pair, records its peak RSS so far
(``VmHWM`` from ``/proc/self/status``, Linux; the baseline: interpreter + imports + the two
maps), runs the metrics three times and reports the peak RSS growth above that baseline.
``ru_maxrss`` is not used: after fork + exec it keeps the parent's peak. One JSON line per case:
``{size, n_inst, seconds_median_of_3, peak_rss_mb}``. Asserts the targets:
1000x1000 / ~600 instances < 0.3 s; 2000x2000 / ~2,500 instances < 3 s and < 500 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

CASES = [
    {"size": 1000, "n_inst": 600, "max_seconds": 0.3, "max_rss_mb": None},
    {"size": 2000, "n_inst": 2500, "max_seconds": 3.0, "max_rss_mb": 500.0},
]

CHILD = r"""
import json, sys, time
import numpy as np
from metrics import instance_stats
def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
true_inst = np.load(sys.argv[1]); pred_inst = np.load(sys.argv[2])
base_kb = peak_kb()
times = []
for _ in range(3):
    start = time.perf_counter()
    stats = instance_stats(true_inst, pred_inst)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[1], "peak_rss_mb": (peak_kb() - base_kb) / 1024, "pq": stats["pq"]}))
"""


def blob_map(size: int, n_inst: int, rng: np.random.Generator, jitter: float = 0.0) -> np.ndarray:
    """(size, size) int32 map of ``n_inst`` blobs: pixels nearest each seed within its radius.

    ``jitter`` moves every seed by up to that many pixels (used to make the prediction).
    """
    seeds = rng.uniform(0, size - 1, size=(n_inst, 2))
    seeds += rng.uniform(-jitter, jitter, size=seeds.shape)
    seeds = np.clip(np.round(seeds), 0, size - 1).astype(np.int64)
    radius = rng.uniform(6, 14, size=n_inst)
    seed_label = np.zeros((size, size), dtype=np.int32)
    seed_label[seeds[:, 0], seeds[:, 1]] = np.arange(1, n_inst + 1)
    dist, (rows, cols) = ndimage.distance_transform_edt(seed_label == 0, return_indices=True)
    nearest = seed_label[rows, cols]
    return np.where(dist <= radius[np.maximum(nearest - 1, 0)], nearest, 0).astype(np.int32)


def run_case(case: dict, folder: Path) -> dict:
    """Write the maps of one case, time them in a subprocess and return its JSON record."""
    rng = np.random.default_rng(case["size"])
    true_inst = blob_map(case["size"], case["n_inst"], rng)
    rng_pred = np.random.default_rng(case["size"])
    pred_inst = blob_map(case["size"], case["n_inst"], rng_pred, jitter=3.0)
    true_path, pred_path = folder / "true.npy", folder / "pred.npy"
    np.save(true_path, true_inst)
    np.save(pred_path, pred_inst)
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(true_path), str(pred_path)],
        cwd=repo, check=True, capture_output=True, text=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "size": f"{case['size']}x{case['size']}",
        "n_inst": int(len(np.unique(true_inst)) - 1),
        "seconds_median_of_3": round(child["seconds"], 4),
        "peak_rss_mb": round(child["peak_rss_mb"], 1),
    }


def main() -> None:
    """Run every case, print one JSON line each, then assert the targets."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            record = run_case(case, Path(tmp))
            print(json.dumps(record), flush=True)
            records.append((case, record))
    for case, record in records:
        assert record["seconds_median_of_3"] < case["max_seconds"], (case, record)
        if case["max_rss_mb"] is not None:
            assert record["peak_rss_mb"] < case["max_rss_mb"], (case, record)


if __name__ == "__main__":
    main()

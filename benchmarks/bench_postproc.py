"""Time HoVer-Net post-processing on synthetic 1000×1000 maps with ~600 nuclei.

The NP and HV maps are built from a known instance map (``loader.synthetic``) plus noise: NP =
blurred foreground mask + Gaussian noise, HV = exact HV targets + Gaussian noise. Prints one
JSON line: median milliseconds of the watershed stage (``instances_from_np_hv``) and of the
whole post-processing (with bbox/centroid/contour/type per instance), the nucleus counts and
the PQ of the result against the known map. ``--reference`` also times, in the same process,
the published implementation's structure written plainly (the test oracle of ``tests/models/hovernet/test_postproc.py``,
scipy ``binary_fill_holes``, OpenCV ``Sobel``; per instance a full-image mask, bounding box,
``cv2.moments`` and ``cv2.findContours``, ``np.unique`` type vote), so both run under the same load.

    OMP_NUM_THREADS=2 python benchmarks/bench_postproc.py --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics import instance_stats  # noqa: E402
from misc.errors import cli_main  # noqa: E402
from loader.synthetic import generate_tile  # noqa: E402
from models.hovernet.postproc import PostprocParams, instances_from_np_hv  # noqa: E402
from models.hovernet.targets import hv_map  # noqa: E402
from postproc.instances import instance_info  # noqa: E402
from tests.models.hovernet.test_postproc import reference_instances  # noqa: E402  (the published steps, as the tests check them)


def synthetic_maps(seed: int, size: int, density: float, noise: float) -> dict[str, np.ndarray]:
    """Known instance map and noisy network-like maps built from it.

    Returns:
        ``inst_map`` (size, size) int32; ``np_prob`` (size, size, 1), ``hv`` (size, size, 2)
        and ``tp_prob`` (size, size, 4) float32.
    """
    rng = np.random.default_rng(seed)
    _, inst_map, type_map = generate_tile(seed, (size, size), nuclei_density=density)
    mask = cv2.GaussianBlur((inst_map > 0).astype(np.float32), (5, 5), 0)
    np_prob = np.clip(mask + rng.normal(0, noise, mask.shape), 0, 1).astype(np.float32)[..., None]
    hv = np.moveaxis(hv_map(inst_map), 0, -1) + rng.normal(0, noise, (size, size, 2))
    tp_prob = np.eye(4, dtype=np.float32)[type_map] + rng.uniform(0, noise, (size, size, 4)).astype(np.float32)
    return {"inst_map": inst_map, "np_prob": np_prob, "hv": hv.astype(np.float32), "tp_prob": tp_prob}


def reference_info(inst_map: np.ndarray, type_map: np.ndarray) -> dict[int, dict]:
    """Per-instance info by the published per-instance loop, written plainly."""
    info = {}
    for inst_id in np.unique(inst_map)[1:]:
        mask = inst_map == inst_id
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = mask[r0:r1, c0:c1].astype(np.uint8)
        moments = cv2.moments(crop)
        contour = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0][0][:, 0] + [c0, r0]
        types, counts = np.unique(type_map[r0:r1, c0:c1][crop > 0], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        inst_type = types[order[0]] if types[order[0]] != 0 or len(order) == 1 else types[order[1]]
        info[int(inst_id)] = {
            "bbox": [[r0, c0], [r1, c1]],
            "centroid": [moments["m10"] / moments["m00"] + c0, moments["m01"] / moments["m00"] + r0],
            "contour": contour,
            "type": int(inst_type),
        }
    return info


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="map side in pixels (default 1000)")
    parser.add_argument("--density", type=float, default=6.0, help="nuclei per 100×100 px (default 6 → ~600)")
    parser.add_argument("--noise", type=float, default=0.1, help="Gaussian noise std added to NP and HV")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", action="store_true", help="also time the published structure (same load)")
    args = parser.parse_args(argv)

    maps = synthetic_maps(args.seed, args.size, args.density, args.noise)
    params = PostprocParams()
    inst_map = instances_from_np_hv(maps["np_prob"], maps["hv"], params)
    watershed_ms = median_ms(lambda: instances_from_np_hv(maps["np_prob"], maps["hv"], params), args.repeats)
    full_ms = median_ms(
        lambda: instance_info(instances_from_np_hv(maps["np_prob"], maps["hv"], params), maps["tp_prob"]),
        args.repeats,
    )
    stats = instance_stats(maps["inst_map"], inst_map)
    reference = {}
    if args.reference:
        type_map = maps["tp_prob"].argmax(-1)
        reference = {
            "reference_watershed_ms": round(median_ms(lambda: reference_instances(maps["np_prob"][..., 0], maps["hv"]), args.repeats), 1),
            "reference_with_info_ms": round(median_ms(
                lambda: reference_info(reference_instances(maps["np_prob"][..., 0], maps["hv"]), type_map), args.repeats
            ), 1),
        }
    print(json.dumps({
        "bench": "hovernet_postproc",
        "size": args.size,
        "true_nuclei": int(maps["inst_map"].max()),
        "pred_nuclei": int(inst_map.max()),
        "pq": round(stats["pq"], 4),
        "watershed_ms": round(watershed_ms, 1),
        "with_info_ms": round(full_ms, 1),
        **reference,
        "repeats": args.repeats,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

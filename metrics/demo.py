"""Metrics demo: score perturbed copies of synthetic ground truth.

``python -m metrics.demo [--tiles 4] [--seed 0] [--size 256]``

Ground truth comes from :func:`loader.synthetic.generate_tile`. Each perturbation makes a
prediction from it (erode, dilate, merge touching pairs, drop and add objects, flip types,
all at once); every prediction is scored with :func:`metrics.instance_stats`,
:func:`metrics.pq_per_class` and :func:`metrics.type_f1`. Prints a table (means over tiles)
and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from metrics.aggregate import mean_rows, nanmean
from metrics.scoring import instance_types
from metrics.detection import type_f1
from metrics.instance import instance_stats, pq_per_class
from misc.errors import UserError, cli_main
from loader.synthetic import NUCLEUS_TYPES, generate_tile

NR_TYPES = max(NUCLEUS_TYPES)
Perturbation = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def instance_type_table(inst_map: np.ndarray, type_map: np.ndarray) -> np.ndarray:
    """(max_id + 1,) int64 majority type of each id of a contiguous instance map (index 0 = 0)."""
    _, types = instance_types(inst_map, type_map, NR_TYPES)
    return np.r_[0, types].astype(np.int64)


def erode(inst_map: np.ndarray, type_table: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shrink every instance by one pixel (3x3 label erosion)."""
    low = ndimage.grey_erosion(inst_map, size=3)
    high = ndimage.grey_dilation(inst_map, size=3)
    return np.where(low == high, inst_map, 0), type_table


def dilate(inst_map: np.ndarray, type_table: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grow every instance by two pixels into the background."""
    grown = inst_map
    for _ in range(2):
        grown = np.where(grown == 0, ndimage.grey_dilation(grown, size=3), grown)
    return grown, type_table


def merge_touching(inst_map: np.ndarray, type_table: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Merge half of the 4-connected touching instance pairs (each merged group keeps one id)."""
    a = np.concatenate([inst_map[:, :-1].ravel(), inst_map[:-1, :].ravel()])
    b = np.concatenate([inst_map[:, 1:].ravel(), inst_map[1:, :].ravel()])
    touching = (a > 0) & (b > 0) & (a != b)
    edges = np.unique(np.stack([np.minimum(a, b)[touching], np.maximum(a, b)[touching]], axis=1), axis=0)
    edges = edges[rng.random(len(edges)) < 0.5]
    n = int(inst_map.max()) + 1
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    keeper = np.full(group.max() + 1, n, dtype=np.int64)
    np.minimum.at(keeper, group, np.arange(n))
    new_id = keeper[group]
    new_id[0] = 0
    return new_id[inst_map], type_table


def drop_and_add(inst_map: np.ndarray, type_table: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop 15 % of the instances and add 5 random discs (radius 6 px) in the background."""
    n = int(inst_map.max())
    keep = np.r_[False, rng.random(n) >= 0.15]
    out = np.where(keep[inst_map], inst_map, 0)
    rows, cols = np.indices(inst_map.shape)
    centres = rng.integers(6, np.array(inst_map.shape) - 6, size=(5, 2))
    for k, (r, c) in enumerate(centres, start=n + 1):
        disc = ((rows - r) ** 2 + (cols - c) ** 2 <= 36) & (out == 0)
        out[disc] = k
    added_types = rng.integers(1, NR_TYPES + 1, size=5)
    return out, np.r_[type_table, added_types]


def flip_types(inst_map: np.ndarray, type_table: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Give 20 % of the instances another (random) type."""
    flipped = type_table.copy()
    change = np.r_[False, rng.random(len(type_table) - 1) < 0.2]
    shift = rng.integers(1, NR_TYPES, size=len(type_table))
    flipped[change] = (type_table[change] - 1 + shift[change]) % NR_TYPES + 1
    return inst_map, flipped


def everything(inst_map: np.ndarray, type_table: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dilate, merge touching pairs, drop and add, flip types, in that order."""
    for step in (dilate, merge_touching, drop_and_add, flip_types):
        inst_map, type_table = step(inst_map, type_table, rng)
    return inst_map, type_table


PERTURBATIONS: dict[str, Perturbation] = {
    "identity": lambda inst, table, rng: (inst, table),
    "erode_1px": erode,
    "dilate_2px": dilate,
    "merge_touching": merge_touching,
    "drop_and_add": drop_and_add,
    "flip_types": flip_types,
    "all_of_them": everything,
}


def score_perturbation(name: str, tiles: Sequence[tuple[np.ndarray, np.ndarray]], seed: int) -> dict[str, float]:
    """Mean Dice/AJI/PQ/mPQ over tiles and pooled F1 of one perturbation."""
    rows, true_pts, pred_pts = [], [], []
    for index, (inst_map, type_map) in enumerate(tiles):
        rng = np.random.default_rng([seed, index])
        table = instance_type_table(inst_map, type_map)
        pred_inst, pred_table = PERTURBATIONS[name](inst_map, table, rng)
        pred_type = pred_table[pred_inst]
        stats = instance_stats(inst_map, pred_inst)
        stats["mpq"] = nanmean(pq_per_class(inst_map, type_map, pred_inst, pred_type, NR_TYPES))
        rows.append(stats)
        true_pts.append(instance_types(inst_map, type_map, NR_TYPES))
        pred_pts.append(instance_types(pred_inst, pred_type, NR_TYPES))
    means = mean_rows(rows)
    f1 = type_f1([c for c, _ in true_pts], [t for _, t in true_pts], [c for c, _ in pred_pts],
                 [t for _, t in pred_pts], NR_TYPES)
    result = {k: round(means[k]["mean"], 4) for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "mpq")}
    return result | {"f1_d": round(f1["f1_d"], 4), "acc_type": round(f1["acc"], 4)}


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Generate tiles, score every perturbation, print the table and a final JSON line."""
    parser = argparse.ArgumentParser(prog="python -m metrics.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=4, help="number of synthetic tiles (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiles and perturbations")
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels (default 256)")
    args = parser.parse_args(argv)
    if args.tiles < 1 or args.size < 32:
        raise UserError(f"--tiles must be >= 1 and --size >= 32; got {args.tiles} and {args.size}")
    tiles = [generate_tile(args.seed + i, (args.size, args.size))[1:] for i in range(args.tiles)]
    results = {name: score_perturbation(name, tiles, args.seed) for name in PERTURBATIONS}
    columns = list(next(iter(results.values())))
    print(f"{'prediction':<16}" + "".join(f"{c:>9}" for c in columns))
    for name, row in results.items():
        print(f"{name:<16}" + "".join(f"{row[c]:>9.4f}" for c in columns))
    print(json.dumps({"tiles": args.tiles, "size": args.size, "seed": args.seed, "results": results}))
    return 0


if __name__ == "__main__":
    main()

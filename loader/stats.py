"""Dataset statistics: ``python -m loader.stats KIND ROOT [--split S] [--option KEY=VALUE ...]``.

Prints images, instances, per-type counts, instance-area percentiles (pixels), pixel sizes and
the number of instances that are not one 8-connected piece.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from skimage.measure import label as connected_label

from loader.readers import Dataset, parse_options, read_dataset
from misc.errors import cli_main

AREA_PERCENTILES = (5, 25, 50, 75, 95)


def fragmented_ids(inst_map: np.ndarray) -> np.ndarray:
    """Ids of instances that are not one 8-connected piece.

    Args:
        inst_map: (H, W) int, 0 = background.

    Returns:
        sorted 1-D int64 array of ids with two or more 8-connected pieces.
    """
    inst_map = np.asarray(inst_map)
    mask = inst_map > 0
    pieces = connected_label(inst_map, background=0, connectivity=2)[mask].astype(np.int64)
    owners = inst_map[mask].astype(np.int64)
    keys = np.unique(owners * (int(pieces.max(initial=0)) + 1) + pieces)
    ids, counts = np.unique(keys // (int(pieces.max(initial=0)) + 1), return_counts=True)
    return ids[counts > 1]


def instance_areas(inst_map: np.ndarray) -> np.ndarray:
    """Pixel area of each instance present, in increasing id order: 1-D int64."""
    ids, counts = np.unique(inst_map, return_counts=True)
    return counts[ids != 0].astype(np.int64)


@dataclass
class DatasetStats:
    """Totals over a dataset; ``fragmented`` maps sample name -> ids in several pieces."""

    images: int = 0
    instances: int = 0
    type_counts: Counter = field(default_factory=Counter)
    areas: list[np.ndarray] = field(default_factory=list)
    mpps: Counter = field(default_factory=Counter)
    fragmented: dict[str, list[int]] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None


def _type_counts(inst_map: np.ndarray, type_map: np.ndarray) -> Counter:
    """Instances per type, each instance counted under its majority type (ties: lower type)."""
    mask = inst_map > 0
    n_types = int(type_map.max(initial=0)) + 1
    keys, votes = np.unique(inst_map[mask].astype(np.int64) * n_types + type_map[mask], return_counts=True)
    insts, types = keys // n_types, keys % n_types
    order = np.lexsort((types, -votes, insts))
    first = np.ones(order.size, dtype=bool)
    first[1:] = insts[order][1:] != insts[order][:-1]
    return Counter(types[order][first].tolist())


def collect_stats(dataset: Dataset) -> DatasetStats:
    """Read every sample of ``dataset`` once and total its statistics."""
    stats = DatasetStats()
    for sample in dataset:
        stats.images += 1
        stats.mpps[sample.mpp] += 1
        stats.class_names = stats.class_names or sample.class_names
        if sample.labels is not None:
            stats.type_counts.update(int(k) + 1 for k in np.flatnonzero(sample.labels))
        inst_map = sample.inst_map
        if inst_map is None:
            continue
        areas = instance_areas(inst_map)
        stats.instances += areas.size
        stats.areas.append(areas)
        if sample.type_map is not None and areas.size:
            stats.type_counts.update(_type_counts(inst_map, sample.type_map))
        broken = fragmented_ids(inst_map)
        if broken.size:
            stats.fragmented[sample.name] = broken.tolist()
    return stats


def format_stats(stats: DatasetStats) -> str:
    """Human-readable report of :func:`collect_stats`."""
    lines = [f"images: {stats.images}", f"instances: {stats.instances}"]
    names = stats.class_names or ()
    for type_id, count in sorted(stats.type_counts.items()):
        label = names[type_id - 1] if 0 < type_id <= len(names) else f"type {type_id}"
        lines.append(f"  {type_id} {label}: {count}")
    if stats.areas:
        areas = np.concatenate(stats.areas)
        if areas.size:
            values = np.percentile(areas, AREA_PERCENTILES)
            lines.append("area px: " + ", ".join(f"p{p} {v:.0f}" for p, v in zip(AREA_PERCENTILES, values)))
    lines.append("mpp: " + ", ".join(f"{m} ({n} images)" for m, n in stats.mpps.items()))
    n_broken = sum(len(v) for v in stats.fragmented.values())
    share = f" ({100 * n_broken / stats.instances:.2f} %)" if stats.instances else ""
    lines.append(f"not one 8-connected piece: {n_broken}{share}")
    return "\n".join(lines)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m loader.stats KIND ROOT [--split S] [--option KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m loader.stats", description=__doc__.splitlines()[0])
    parser.add_argument("kind")
    parser.add_argument("root")
    parser.add_argument("--split", default=None)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option, repeatable")
    args = parser.parse_args(argv)
    dataset = read_dataset(args.kind, args.root, args.split, **parse_options(args.option))
    print(format_stats(collect_stats(dataset)))
    return 0


if __name__ == "__main__":
    main()

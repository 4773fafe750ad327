"""Grouped k-fold and train/validation splits, written to a JSON split file.

Samples are grouped by source image (``Sample.group``: the file they came from, CoNIC's
``patch_info.csv`` source image, or a regex over names), never by patch, so patches of one
image never sit on both sides. Groups are shuffled with a fixed seed. With strata (a group's
cohort: CoNIC's ``meta['cohort']``, or a regex over names) the groups of each stratum are
shared out separately, so every part holds each cohort in proportion (CoNIC's published split
is stratified by cohort).

``python -m loader.splits KIND ROOT OUT.json [--folds K | --valid-fraction F] [--seed S]
[--group-regex RE] [--stratify-key KEY | --stratify-regex RE] [--split S]
[--option KEY=VALUE ...]``; read a part back with
``read_dataset(KIND, ROOT, split='OUT.json:fold0_train')``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from loader.readers import Dataset, parse_options, read_dataset
from misc.errors import UserError, cli_main
from misc.io import atomic_write


def source_groups(dataset: Dataset, group_regex: str | None = None) -> list[str]:
    """Group of each sample: ``dataset.groups``, or the regex's first capture (else whole match) on the name.

    Raises:
        UserError: the regex is invalid or does not match a name (naming it).
    """
    if group_regex is None:
        return dataset.groups
    try:
        pattern = re.compile(group_regex)
    except re.error as err:
        raise UserError(f"group regex '{group_regex}': {err}") from None
    groups = []
    for name in dataset.names:
        match = pattern.search(name)
        if match is None:
            raise UserError(f"group regex '{group_regex}' does not match sample '{name}'")
        groups.append(match.group(1) if pattern.groups else match.group(0))
    return groups


def source_strata(dataset: Dataset, key: str | None = None, regex: str | None = None) -> list[str] | None:
    """Stratum of each sample: its ``meta[key]`` (e.g. CoNIC's ``cohort``), or the regex's
    first capture (else whole match) on its name; None when neither is given.

    Raises:
        UserError: a sample without ``meta[key]``, or a regex that is invalid or does not match.
    """
    if regex is not None:
        return source_groups(dataset, regex)
    if key is None:
        return None
    strata = []
    for record in dataset.records:
        if key not in record.meta:
            raise UserError(f"sample '{record.name}' has no '{key}' to stratify by (the {dataset.kind} reader gives {sorted(record.meta) or 'none'})")
        strata.append(str(record.meta[key]))
    return strata


def _group_order(groups: Sequence[str], seed: int) -> np.ndarray:
    """Distinct groups (sorted, then shuffled by ``seed``)."""
    unique = np.array(sorted(set(groups)), dtype=object)
    return unique[np.random.default_rng(seed).permutation(unique.size)]


def _stratum_orders(groups: Sequence[str], strata: Sequence[str] | None, seed: int) -> list[np.ndarray]:
    """The shuffled distinct groups of each stratum (one stratum of all groups without strata).

    Raises:
        UserError: a group whose samples lie in several strata (names it).
    """
    if strata is None:
        return [_group_order(groups, seed)]
    stratum_of: dict[str, str] = {}
    for group, stratum in zip(groups, strata):
        if stratum_of.setdefault(group, stratum) != stratum:
            raise UserError(f"source group '{group}' lies in two strata ('{stratum_of[group]}' and '{stratum}'); "
                            "a stratum must hold whole groups")
    members: dict[str, list[str]] = {}
    for group, stratum in stratum_of.items():
        members.setdefault(stratum, []).append(group)
    return [_group_order(members[stratum], seed) for stratum in sorted(members)]


def kfold_splits(names: Sequence[str], groups: Sequence[str], folds: int, seed: int = 0,
                 strata: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Grouped k-fold: shuffled groups dealt round-robin into ``folds`` parts; with ``strata``
    (one per name) each stratum's groups are dealt in turn, the deal continuing where the last
    stratum stopped, so the folds hold every stratum in proportion and differ in size by at
    most one group.

    Returns:
        ``{'fold{i}_train': [...], 'fold{i}_valid': [...]}`` for i in 0..folds-1, names in input order.
    """
    order = np.concatenate(_stratum_orders(groups, strata, seed))
    if folds < 2 or folds > order.size:
        raise UserError(f"folds={folds}: need 2 <= folds <= number of source groups ({order.size})")
    fold_of = {group: i % folds for i, group in enumerate(order)}
    parts: dict[str, list[str]] = {}
    for fold in range(folds):
        parts[f"fold{fold}_train"] = [n for n, g in zip(names, groups) if fold_of[g] != fold]
        parts[f"fold{fold}_valid"] = [n for n, g in zip(names, groups) if fold_of[g] == fold]
    return parts


def train_valid_split(names: Sequence[str], groups: Sequence[str], valid_fraction: float, seed: int = 0,
                      strata: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Grouped train/validation split: ``round(valid_fraction * groups)`` (at least 1) shuffled
    groups go to validation; with ``strata`` (one per name) that share is taken from each
    stratum's groups separately (at least one from a stratum of two or more groups).

    Returns:
        ``{'train': [...], 'valid': [...]}``, names in input order.
    """
    orders = _stratum_orders(groups, strata, seed)
    total = sum(order.size for order in orders)
    if not 0 < valid_fraction < 1 or total < 2:
        raise UserError(f"valid_fraction={valid_fraction}: need 0 < fraction < 1 and at least 2 source groups (have {total})")
    valid = set()
    for order in orders:
        if order.size >= 2 or strata is None:
            valid.update(order[: min(max(1, round(valid_fraction * order.size)), order.size - 1)])
    if not valid:
        raise UserError(f"no stratum holds two source groups ({len(orders)} strata, {total} groups): nothing can go to validation")
    return {
        "train": [n for n, g in zip(names, groups) if g not in valid],
        "valid": [n for n, g in zip(names, groups) if g in valid],
    }


def write_splits(path: str | os.PathLike, parts: dict[str, list[str]], **info: Any) -> None:
    """Write ``{**info, 'parts': parts}`` as JSON, atomically."""
    with atomic_write(path, "w") as handle:
        json.dump({**info, "parts": parts}, handle, indent=1)
        handle.write("\n")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m loader.splits", description=__doc__.splitlines()[0])
    parser.add_argument("kind")
    parser.add_argument("root")
    parser.add_argument("out", help="JSON split file to write")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--folds", type=int, help="grouped k-fold with this many folds")
    how.add_argument("--valid-fraction", type=float, help="grouped train/validation split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-regex", default=None, help="group = first capture of this regex on the sample name")
    strata = parser.add_mutually_exclusive_group()
    strata.add_argument("--stratify-key", default=None, metavar="KEY",
                        help="stratify by this reader metadata of each sample (e.g. cohort for conic)")
    strata.add_argument("--stratify-regex", default=None, metavar="RE", help="stratify by the first capture of this regex on the name")
    parser.add_argument("--split", default=None, help="split the samples of this split only")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option, repeatable")
    args = parser.parse_args(argv)
    dataset = read_dataset(args.kind, args.root, args.split, **parse_options(args.option))
    groups = source_groups(dataset, args.group_regex)
    strata = source_strata(dataset, args.stratify_key, args.stratify_regex)
    if args.folds is not None:
        parts = kfold_splits(dataset.names, groups, args.folds, args.seed, strata)
    else:
        parts = train_valid_split(dataset.names, groups, args.valid_fraction, args.seed, strata)
    write_splits(args.out, parts, kind=args.kind, seed=args.seed, group_regex=args.group_regex, groups=len(set(groups)),
                 stratified_by=args.stratify_key or args.stratify_regex)
    print(f"{args.out}: " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    return 0


if __name__ == "__main__":
    main()

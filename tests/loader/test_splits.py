"""Grouped k-fold / train-validation splits and their split files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loader import read_dataset
from loader.splits import kfold_splits, main, source_groups, source_strata, train_valid_split, write_splits
from misc.errors import UserError

NAMES = [f"img{g}_p{p}" for g in range(6) for p in range(3)]
GROUPS = [n.split("_")[0] for n in NAMES]


def _groups_of(names: list[str]) -> set[str]:
    return {n.split("_")[0] for n in names}


def test_kfold_never_splits_a_group() -> None:
    parts = kfold_splits(NAMES, GROUPS, folds=3, seed=0)
    for fold in range(3):
        train, valid = parts[f"fold{fold}_train"], parts[f"fold{fold}_valid"]
        assert not _groups_of(train) & _groups_of(valid)
        assert sorted(train + valid) == sorted(NAMES)
        assert len(valid) == 6
    valids = [set(parts[f"fold{f}_valid"]) for f in range(3)]
    assert set().union(*valids) == set(NAMES) and sum(map(len, valids)) == len(NAMES)


def test_kfold_same_seed_same_split_other_seed_differs() -> None:
    assert kfold_splits(NAMES, GROUPS, 3, seed=1) == kfold_splits(NAMES, GROUPS, 3, seed=1)
    assert any(kfold_splits(NAMES, GROUPS, 3, seed=s) != kfold_splits(NAMES, GROUPS, 3, seed=1) for s in range(2, 6))


def test_kfold_more_folds_than_groups() -> None:
    with pytest.raises(UserError, match=r"folds=7: need 2 <= folds <= number of source groups \(6\)"):
        kfold_splits(NAMES, GROUPS, folds=7)


def test_train_valid_fraction_counts_groups() -> None:
    parts = train_valid_split(NAMES, GROUPS, valid_fraction=0.34, seed=5)
    assert len(_groups_of(parts["valid"])) == 2 and len(parts["valid"]) == 6
    assert not _groups_of(parts["train"]) & _groups_of(parts["valid"])


def test_group_regex_and_round_trip_through_read_dataset(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "inst").mkdir()
    from PIL import Image

    for name in NAMES:
        Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        np.save(root / "inst" / f"{name}.npy", np.zeros((2, 2), dtype=np.int32))
    dataset = read_dataset("folder", root)
    groups = source_groups(dataset, r"^(img\d+)_")
    assert groups == GROUPS
    out = tmp_path / "splits.json"
    write_splits(out, train_valid_split(dataset.names, groups, 0.5, seed=0), seed=0)
    assert json.loads(out.read_text())["seed"] == 0
    valid = read_dataset("folder", root, split=f"{out}:valid")
    train = read_dataset("folder", root, split=f"{out}:train")
    assert len(valid) == 9 and len(train) == 9 and not _groups_of(valid.names) & _groups_of(train.names)


def test_group_regex_without_match_names_sample() -> None:
    class Names:
        names = ["a_1", "b"]

    with pytest.raises(UserError, match="does not match sample 'b'"):
        source_groups(Names(), r"^(\w)_")  # type: ignore[arg-type]


def test_cli_writes_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "patch_info.csv").write_text("patch_info\n" + "".join(f"{g}-000{p}\n" for g in ("a_1", "a_2", "b_1") for p in (0, 1)))
    (tmp_path / "counts.csv").write_text("neutrophil\n" + "0\n" * 6)
    np.save(tmp_path / "images.npy", np.zeros((6, 2, 2, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((6, 2, 2, 2), dtype=np.int32))
    out = tmp_path / "s.json"
    assert main(["conic", str(tmp_path), str(out), "--folds", "3", "--seed", "5"]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert sorted(len(parts[f"fold{f}_valid"]) for f in range(3)) == [2, 2, 2]
    assert all(len({n.rsplit("-", 1)[0] for n in parts[f"fold{f}_valid"]}) == 1 for f in range(3))
    assert "fold0_train 4" in capsys.readouterr().out


# Twelve source groups in two cohorts of 8 and 4 groups, two patches each.
STRAT_GROUPS = [f"{c}_{g}" for c, n in (("crag", 8), ("glas", 4)) for g in range(n) for _ in range(2)]
STRAT_NAMES = [f"{g}-{i:02d}" for i, g in enumerate(STRAT_GROUPS)]
STRATA = [g.split("_")[0] for g in STRAT_GROUPS]


def _cohorts_of(names: list[str]) -> list[str]:
    return sorted({n.rsplit("-", 1)[0] for n in names})


def test_stratified_validation_takes_its_share_of_every_cohort() -> None:
    for seed in range(5):
        valid = _cohorts_of(train_valid_split(STRAT_NAMES, STRAT_GROUPS, 0.25, seed, strata=STRATA)["valid"])
        assert sum(g.startswith("crag") for g in valid) == 2 and sum(g.startswith("glas") for g in valid) == 1


def test_stratified_kfold_deals_each_cohort_across_folds() -> None:
    parts = kfold_splits(STRAT_NAMES, STRAT_GROUPS, folds=4, seed=3, strata=STRATA)
    for fold in range(4):
        valid = _cohorts_of(parts[f"fold{fold}_valid"])
        assert [sum(g.startswith(c) for g in valid) for c in ("crag", "glas")] == [2, 1]
        assert not set(valid) & set(_cohorts_of(parts[f"fold{fold}_train"]))


def test_group_in_two_strata_is_refused() -> None:
    with pytest.raises(UserError, match="source group 'a' lies in two strata"):
        train_valid_split(["x", "y", "z"], ["a", "a", "b"], 0.5, strata=["s", "t", "t"])


def test_strata_of_single_groups_leave_nothing_to_validate() -> None:
    with pytest.raises(UserError, match="no stratum holds two source groups"):
        train_valid_split(["x", "y"], ["a", "b"], 0.5, strata=["s", "t"])


def test_stratify_key_missing_from_reader_names_sample(tmp_path: Path) -> None:
    class Record:
        name, meta = "tile_1", {}

    class Folder:
        kind, records = "folder", [Record()]

    with pytest.raises(UserError, match="sample 'tile_1' has no 'cohort' to stratify by"):
        source_strata(Folder(), key="cohort")  # type: ignore[arg-type]


def test_cli_stratifies_conic_by_cohort(tmp_path: Path) -> None:
    sources = [f"{c}_{g}" for c, n in (("crag", 4), ("glas", 2)) for g in range(n)]
    (tmp_path / "patch_info.csv").write_text("patch_info\n" + "".join(f"{s}-000{p}\n" for s in sources for p in (0, 1)))
    (tmp_path / "counts.csv").write_text("neutrophil\n" + "0\n" * 12)
    np.save(tmp_path / "images.npy", np.zeros((12, 2, 2, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros((12, 2, 2, 2), dtype=np.int32))
    out = tmp_path / "s.json"
    assert main(["conic", str(tmp_path), str(out), "--valid-fraction", "0.5", "--stratify-key", "cohort"]) == 0
    record = json.loads(out.read_text())
    valid = _cohorts_of(record["parts"]["valid"])
    assert record["stratified_by"] == "cohort" and len(valid) == 3
    assert sum(g.startswith("crag") for g in valid) == 2 and sum(g.startswith("glas") for g in valid) == 1

"""Array-file readers on tiny fixtures: PanNuke folds (per-channel id trap) and CoNIC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loader import read_dataset
from loader.readers.arrays import pannuke_inst_type
from misc.errors import UserError


def _pannuke_masks() -> np.ndarray:
    """Two 4x4 patches. Patch 0: id 1 in channel 0 (neoplastic) AND id 1 in channel 1
    (inflammatory) are different nuclei; id 3 in channel 4 (epithelial); channel 5 background."""
    masks = np.zeros((2, 4, 4, 6), dtype=np.float64)
    masks[0, 0:2, 0:2, 0] = 1
    masks[0, 2:4, 2:4, 1] = 1
    masks[0, 0, 3, 4] = 3
    masks[1, 1:3, 1:3, 2] = 9
    masks[..., 5] = (masks[..., :5].sum(axis=-1) == 0).astype(np.float64)
    return masks


@pytest.fixture()
def pannuke_root(tmp_path: Path) -> Path:
    """Official layout: ``Fold N/images/foldN/{images,types}.npy`` + ``Fold N/masks/foldN/masks.npy``."""
    masks = _pannuke_masks()
    for fold, rows in ((1, slice(0, 2)), (2, slice(1, 2))):
        image_dir = tmp_path / f"Fold {fold}" / "images" / f"fold{fold}"
        mask_dir = tmp_path / f"Fold {fold}" / "masks" / f"fold{fold}"
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        images = np.full((2, 4, 4, 3), 200.0)[rows]
        np.save(image_dir / "images.npy", images)
        np.save(image_dir / "types.npy", np.array(["Breast", "Colon"])[rows])
        np.save(mask_dir / "masks.npy", masks[rows])
    return tmp_path


def test_pannuke_channel_ids_become_distinct_instances() -> None:
    inst_map, type_map = pannuke_inst_type(_pannuke_masks()[0], "masks.npy[0]")
    np.testing.assert_array_equal(inst_map, [[1, 1, 0, 3], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    np.testing.assert_array_equal(type_map, [[1, 1, 0, 5], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    assert inst_map.dtype == np.int32 and type_map.dtype == np.int32


def test_pannuke_folds_tissue_and_split(pannuke_root: Path) -> None:
    dataset = read_dataset("pannuke", pannuke_root)
    assert dataset.names == ["fold1_00000", "fold1_00001", "fold2_00000"]
    assert [s.tissue for s in dataset] == ["Breast", "Colon", "Colon"]
    fold2 = read_dataset("pannuke", pannuke_root, split="fold2")
    sample = fold2[0]
    assert sample.name == "fold2_00000" and sample.mpp == 0.25
    assert sample.image.dtype == np.uint8 and sample.image[0, 0].tolist() == [200, 200, 200]
    np.testing.assert_array_equal(sample.inst_map, [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    assert sample.type_map.max() == 3
    assert sample.class_names == ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def test_pannuke_unknown_fold_lists_found(pannuke_root: Path) -> None:
    with pytest.raises(UserError, match=r"no PanNuke fold 'fold3' \(found \['fold1', 'fold2'\]\)"):
        read_dataset("pannuke", pannuke_root, split="fold3")


def test_pannuke_missing_types_file(pannuke_root: Path) -> None:
    (pannuke_root / "Fold 2" / "images" / "fold2" / "types.npy").unlink()
    with pytest.raises(UserError, match=r"fold 'fold2' lacks \['types.npy'\]"):
        read_dataset("pannuke", pannuke_root)


@pytest.fixture()
def conic_root(tmp_path: Path) -> Path:
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    labels = np.zeros((3, 4, 4, 2), dtype=np.int32)
    labels[1, 0:2, 0:2] = (4, 2)
    labels[1, 3, 3] = (9, 6)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "patch_info.csv").write_text("patch_info\ncrag_1-0000\ncrag_1-0001\nglas_2-0000\n")
    header = "neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective\n"
    (tmp_path / "counts.csv").write_text(header + "0,0,0,0,0,0\n0,1,0,0,0,1\n0,0,0,0,0,0\n")
    return tmp_path


def test_conic_names_groups_counts(conic_root: Path) -> None:
    dataset = read_dataset("conic", conic_root)
    assert dataset.names == ["crag_1-0000", "crag_1-0001", "glas_2-0000"]
    assert dataset.groups == ["crag_1", "crag_1", "glas_2"]
    sample = dataset[1]
    assert sample.mpp == 0.5 and sample.meta["cohort"] == "crag"
    assert sample.meta["counts"] == {"neutrophil": 0, "epithelial": 1, "lymphocyte": 0, "plasma": 0, "eosinophil": 0, "connective": 1}
    np.testing.assert_array_equal(sample.inst_map, [[4, 4, 0, 0], [4, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 9]])
    np.testing.assert_array_equal(sample.type_map, [[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 6]])


def test_conic_row_count_mismatch(conic_root: Path) -> None:
    (conic_root / "patch_info.csv").write_text("patch_info\ncrag_1-0000\n")
    with pytest.raises(UserError, match="patch_info.csv has 1 rows, counts.csv 3, images.npy 3"):
        read_dataset("conic", conic_root)

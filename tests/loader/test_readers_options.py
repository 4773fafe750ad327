"""Options common to every kind (class map, resampling, mpp, splits), errors and patch labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loader import read_dataset
from misc.errors import UserError


def _write_folder(root: Path, stems: tuple[str, ...] = ("a", "b", "c")) -> Path:
    """``folder`` layout with 4x4 images, instance ids 1..4 in 2x2 blocks, types 1/2/3/1."""
    inst_map = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=np.int32)
    type_map = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 1, 1], [3, 3, 1, 1]], dtype=np.uint8)
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[..., 0] = np.array([0, 40, 80, 120], dtype=np.uint8)[None, :]
    for name in ("images", "inst", "types"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        np.save(root / "inst" / f"{stem}.npy", inst_map)
        Image.fromarray(type_map).save(root / "types" / f"{stem}.png")
    return root


def test_len_and_names_read_no_pixels(tmp_path: Path) -> None:
    root = _write_folder(tmp_path)
    dataset = read_dataset("folder", root)
    (root / "inst" / "a.npy").write_bytes(b"not an npy")
    assert len(dataset) == 3 and dataset.names == ["a", "b", "c"]
    assert [s.name for s in dataset] == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"a\.npy: cannot be read"):
        dataset[0].inst_map


def test_slice_gives_dataset(tmp_path: Path) -> None:
    dataset = read_dataset("folder", _write_folder(tmp_path))
    assert dataset[1:].names == ["b", "c"]
    assert dataset[-1].name == "c"


def test_class_map_yaml_merges_and_renames(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    yaml_file = tmp_path / "classes.yaml"
    yaml_file.write_text("tumour: cancer\nstroma: cancer\nimmune: lymphocyte\n")
    sample = read_dataset("folder", root, class_names=["tumour", "stroma", "immune"], class_map=str(yaml_file))[0]
    assert sample.class_names == ("cancer", "lymphocyte")
    np.testing.assert_array_equal(sample.type_map, [[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]])


def test_class_map_by_id_without_names(tmp_path: Path) -> None:
    sample = read_dataset("folder", _write_folder(tmp_path), class_map={1: "x", 2: "y", 3: "x"})[0]
    assert sample.class_names == ("x", "y")
    np.testing.assert_array_equal(sample.type_map[:, ::2], [[1, 2], [1, 2], [1, 1], [1, 1]])


def test_class_map_unknown_class_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"class\(es\) \['tumor'\] not in \['tumour', 'stroma', 'immune'\]"):
        read_dataset("folder", _write_folder(tmp_path), class_names=["tumour", "stroma", "immune"], class_map={"tumor": "t"})


def test_target_mpp_halves_size_bilinear_image_nearest_labels(tmp_path: Path) -> None:
    sample = read_dataset("folder", _write_folder(tmp_path), mpp=0.25, target_mpp=0.5)[0]
    assert sample.mpp == 0.5
    np.testing.assert_array_equal(sample.inst_map, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(sample.type_map, [[1, 2], [3, 1]])
    np.testing.assert_array_equal(sample.image[..., 0], [[20, 100], [20, 100]])


def test_target_mpp_needs_known_mpp(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pixel size unknown, cannot resample to target_mpp=0.5; pass mpp="):
        read_dataset("folder", _write_folder(tmp_path), target_mpp=0.5)[0].image


def test_split_text_file_and_json_part(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (tmp_path / "names.txt").write_text("c\na\n")
    assert read_dataset("folder", root, split=str(tmp_path / "names.txt")).names == ["a", "c"]
    (tmp_path / "s.json").write_text('{"parts": {"train": ["b"], "valid": ["a", "c"]}}')
    assert read_dataset("folder", root, split=f"{tmp_path / 's.json'}:train").names == ["b"]


def test_split_file_with_unknown_name(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    (tmp_path / "names.txt").write_text("a\nzz\n")
    with pytest.raises(UserError, match=r"names.txt: 1 name\(s\) not in the folder dataset .* \['zz'\]"):
        read_dataset("folder", root, split=str(tmp_path / "names.txt"))


def test_split_sub_folder_for_folder_kind(tmp_path: Path) -> None:
    _write_folder(tmp_path / "train", ("a",))
    _write_folder(tmp_path / "test", ("b", "c"))
    assert read_dataset("folder", tmp_path, split="test").names == ["b", "c"]


def test_unknown_split_names_choices(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"split 'fold9' for kind 'pannuke': not a native split \['fold1', 'fold2', 'fold3'\]"):
        read_dataset("pannuke", tmp_path, split="fold9")


def test_unknown_kind_names_closest() -> None:
    with pytest.raises(UserError, match="unknown dataset kind 'pannuk'; did you mean 'pannuke'"):
        read_dataset("pannuk", ".")


def test_unknown_option_names_closest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown option 'class_name' for kind 'folder'; did you mean 'class_names'"):
        read_dataset("folder", _write_folder(tmp_path), class_name=["x"])


def test_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere: no such folder"):
        read_dataset("glas", tmp_path / "nowhere")


def test_patch_labels_class_sub_folders(tmp_path: Path) -> None:
    for cls, stems in (("benign", ("p1",)), ("tumour", ("p2", "p3"))):
        (tmp_path / cls).mkdir()
        for stem in stems:
            Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / cls / f"{stem}.png")
    dataset = read_dataset("patch_labels", tmp_path)
    assert dataset.names == ["benign/p1", "tumour/p2", "tumour/p3"]
    sample = dataset[2]
    assert sample.class_names == ("benign", "tumour") and sample.labels.tolist() == [0, 1]
    assert sample.inst_map is None and sample.type_map is None and sample.image.shape == (2, 2, 3)


def test_patch_labels_csv_multi_hot_and_class_merge(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for stem in ("p1", "p2"):
        Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{stem}.jpg")
    (tmp_path / "labels.csv").write_text("name,E.M.S,C.D.I,H.E\np1.jpg,1,0,1\np2,0,1,0\n")
    dataset = read_dataset("patch_labels", tmp_path)
    assert dataset.names == ["p1.jpg", "p2"] and dataset[0].labels.tolist() == [1, 0, 1]
    merged = read_dataset("patch_labels", tmp_path, class_map={"E.M.S": "tissue", "C.D.I": "tissue", "H.E": "blood"})
    assert merged[0].class_names == ("tissue", "blood")
    assert merged[0].labels.tolist() == [1, 1] and merged[1].labels.tolist() == [1, 0]


def test_patch_labels_csv_bad_value(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("name,a,b\np1,1,2\n")
    with pytest.raises(UserError, match=r"labels.csv:2: row 'p1', column 'b' is '2'; expected 0 or 1"):
        read_dataset("patch_labels", tmp_path)
    (tmp_path / "labels.csv").write_text("name,a,b\np1,1\n")
    with pytest.raises(UserError, match=r"labels.csv:2: expected 2 columns of 0/1"):
        read_dataset("patch_labels", tmp_path)

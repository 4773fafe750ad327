"""File-per-image readers on tiny fixtures: CoNSeP .mat, MoNuSeg, CPM-15, GlaS, RCC, GeoJSON, folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from loader import read_dataset
from loader.readers import read_aperio_xml, read_geojson
from misc.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"


def _png(path: Path, shape: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    array = np.full((*shape, channels), 255, dtype=np.uint8)
    array[..., 0] = np.arange(shape[1], dtype=np.uint8)[None, :] * 10
    Image.fromarray(array, mode).save(path)


# ---------------------------------------------------------------- MoNuSeg (Aperio XML)

#: Three regions of (x, y) vertices: a rectangle, a 2-vertex region (skipped), an overlapping one.
MONUSEG_REGIONS = [[(1, 1), (4, 1), (4, 3), (1, 3)], [(0, 5), (1, 5)], [(3, 2), (6.5, 2), (6.5, 5), (3, 5)]]


def write_aperio_xml(path: Path, regions: list[list[tuple[float, float]]], mpp: float = 0.2527) -> Path:
    """An Aperio ImageScope XML file of the MoNuSeg layout with one Region per vertex list."""
    blocks = []
    for index, vertices in enumerate(regions, start=1):
        points = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in vertices)
        blocks.append(f'<Region Id="{index}" Type="0" Zoom="5"><Attributes/><Vertices>{points}</Vertices></Region>')
    path.write_text(
        f'<Annotations MicronsPerPixel="{mpp:.6f}"><Annotation Id="1" Name="" Type="4" LineColor="65280" Visible="1">'
        '<Regions><RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
        f'</RegionAttributeHeaders>{"".join(blocks)}</Regions></Annotation></Annotations>'
    )
    return path

#: Vertices in ImageScope's pixel-corner convention: the rectangle from corner (1, 1) to corner
#: (4, 3) covers exactly the 3 x 2 pixels of its area.
MONUSEG_EXPECTED = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 3, 3, 3, 3, 0],
        [0, 0, 0, 3, 3, 3, 3, 0],
        [0, 0, 0, 3, 3, 3, 3, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.int32,
)
#: The same vertices filled as pixel-centre coordinates (``vertex_offset=0``).
MONUSEG_EXPECTED_CENTRES = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 3, 3, 3, 3, 0],
        [0, 1, 1, 3, 3, 3, 3, 0],
        [0, 0, 0, 3, 3, 3, 3, 0],
        [0, 0, 0, 3, 3, 3, 3, 0],
    ],
    dtype=np.int32,
)


@pytest.fixture()
def monuseg_root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "tile.tif", np.zeros((6, 8, 3), dtype=np.uint8))
    (tmp_path / "annotations").mkdir()
    write_aperio_xml(tmp_path / "annotations" / "tile.xml", MONUSEG_REGIONS)
    return tmp_path


def test_aperio_xml_overwrites_and_skips_short_regions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    xml = write_aperio_xml(tmp_path / "tile.xml", MONUSEG_REGIONS)
    with caplog.at_level(logging.WARNING):
        inst_map = read_aperio_xml(xml, (6, 8))
    np.testing.assert_array_equal(inst_map, MONUSEG_EXPECTED)
    assert inst_map.dtype == np.int32
    assert "1 region(s) with fewer than 3 vertices skipped" in caplog.text


def test_aperio_xml_without_vertex_offset_fills_centre_coordinates(tmp_path: Path) -> None:
    xml = write_aperio_xml(tmp_path / "tile.xml", MONUSEG_REGIONS)
    np.testing.assert_array_equal(read_aperio_xml(xml, (6, 8), vertex_offset=0), MONUSEG_EXPECTED_CENTRES)


def test_monuseg_vertex_offset_reader_option(monuseg_root: Path) -> None:
    sample = read_dataset("monuseg", monuseg_root, vertex_offset=0)[0]
    np.testing.assert_array_equal(sample.inst_map, MONUSEG_EXPECTED_CENTRES)


def test_monuseg_reads_pair_with_xml_mpp(monuseg_root: Path) -> None:
    sample = read_dataset("monuseg", monuseg_root)[0]
    assert sample.name == "tile"
    assert sample.mpp == pytest.approx(0.2527)
    assert sample.image.shape == (6, 8, 3) and sample.type_map is None
    np.testing.assert_array_equal(sample.inst_map, MONUSEG_EXPECTED)


def test_monuseg_missing_xml_names_image(monuseg_root: Path) -> None:
    (monuseg_root / "annotations" / "tile.xml").unlink()
    with pytest.raises(UserError, match=r"tile\.tif: no annotation \.xml"):
        read_dataset("monuseg", monuseg_root)


# ---------------------------------------------------------------- CPM-15


@pytest.fixture()
def cpm_root(tmp_path: Path) -> Path:
    for stem in ("image01", "image08"):
        _png(tmp_path / f"{stem}.png", (2, 3), "RGBA")
        (tmp_path / f"{stem}_mask.txt").write_text("3 2\n0\n1\n1\n2\n0\n0\n")
    return tmp_path


def test_cpm15_mask_and_magnification_mpp(cpm_root: Path) -> None:
    dataset = read_dataset("cpm15", cpm_root)
    assert dataset.names == ["image01", "image08"]
    assert [s.mpp for s in dataset] == [0.5, 0.25]
    np.testing.assert_array_equal(dataset[0].inst_map, [[0, 1, 1], [2, 0, 0]])
    assert dataset[0].image.shape == (2, 3, 3)


def test_cpm15_readme_table_overrides_default(cpm_root: Path) -> None:
    (cpm_root / "README_training.txt").write_text("image01.png \t\t40x\nimage08.png\t\t\t20x\n")
    assert [s.mpp for s in read_dataset("cpm15", cpm_root)] == [0.25, 0.5]


def test_cpm15_wrong_value_count(cpm_root: Path) -> None:
    (cpm_root / "image01_mask.txt").write_text("3 2\n0\n1\n")
    with pytest.raises(UserError, match="header says 3x2 = 6 values, file has 2"):
        read_dataset("cpm15", cpm_root)[0].inst_map


def test_cpm15_shape_mismatch_names_both_files(cpm_root: Path) -> None:
    (cpm_root / "image08_mask.txt").write_text("2 3\n0\n1\n1\n2\n0\n0\n")
    with pytest.raises(UserError, match=r"image08_mask\.txt: label shape \(3, 2\) differs from image .*image08\.png"):
        read_dataset("cpm15", cpm_root)[1].image


# ---------------------------------------------------------------- CoNSeP .mat


@pytest.fixture()
def consep_root(tmp_path: Path) -> Path:
    inst_map = np.array([[1, 1, 0], [2, 3, 3]])
    type_map = np.array([[4, 4, 0], [6, 7, 7]])
    for part in ("Train", "Test"):
        _png(tmp_path / part / "Images" / f"{part.lower()}_1.png", (2, 3), "RGBA")
        (tmp_path / part / "Labels").mkdir()
        scipy.io.savemat(
            tmp_path / part / "Labels" / f"{part.lower()}_1.mat",
            {"inst_map": inst_map.astype(float), "type_map": type_map.astype(float), "inst_type": np.array([[4], [6], [7]]),
             "inst_centroid": np.array([[0.5, 0.0], [0.0, 1.0], [1.5, 1.0]])},
        )
    return tmp_path


def test_consep_mat_raw_types_and_splits(consep_root: Path) -> None:
    dataset = read_dataset("consep_mat", consep_root)
    assert dataset.names == ["train_1", "test_1"]
    train = read_dataset("consep_mat", consep_root, split="train")
    assert len(train) == 1 and train[0].mpp == 0.25
    np.testing.assert_array_equal(train[0].inst_map, [[1, 1, 0], [2, 3, 3]])
    np.testing.assert_array_equal(train[0].type_map, [[4, 4, 0], [6, 7, 7]])
    assert train[0].class_names[3] == "dysplastic/malignant epithelial"


def test_consep_mat_merge_7_to_4(consep_root: Path) -> None:
    sample = read_dataset("consep_mat", consep_root, split="test", merge_classes=True)[0]
    np.testing.assert_array_equal(sample.type_map, [[3, 3, 0], [4, 4, 4]])
    assert sample.class_names == ("other", "inflammatory", "epithelial", "spindle-shaped")


# ---------------------------------------------------------------- GlaS


@pytest.fixture()
def glas_root(tmp_path: Path) -> Path:
    anno = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    for stem in ("train_1", "testA_1", "testA_2", "testB_1"):
        Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / f"{stem}.bmp")
        Image.fromarray(anno).save(tmp_path / f"{stem}_anno.bmp")
    (tmp_path / "Grade.csv").write_text("name,Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\ntestA_1,1, malignant, adenomatous\n")
    return tmp_path


def test_glas_splits_by_prefix(glas_root: Path) -> None:
    assert read_dataset("glas", glas_root).names == ["testA_1", "testA_2", "testB_1", "train_1"]
    assert read_dataset("glas", glas_root, split="testA").names == ["testA_1", "testA_2"]
    assert read_dataset("glas", glas_root, split="testB").names == ["testB_1"]


def test_glas_palette_annotation_gives_indices(glas_root: Path) -> None:
    anno = Image.fromarray(np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8), "P")
    anno.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    anno.save(glas_root / "train_1_anno.bmp")
    np.testing.assert_array_equal(read_dataset("glas", glas_root, split="train")[0].inst_map, [[0, 1, 1], [2, 2, 0]])


def test_glas_labels_grade_and_mpp(glas_root: Path) -> None:
    sample = read_dataset("glas", glas_root, split="testA")[0]
    np.testing.assert_array_equal(sample.inst_map, [[0, 1, 1], [2, 2, 0]])
    assert sample.meta == {"grade": "malignant"} and sample.mpp == 0.62


# ---------------------------------------------------------------- CHR-Net RCC


def _mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Minimal MATLAB v7.3 file: HDF5 with a 512-byte MATLAB header, arrays stored transposed."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for key, value in arrays.items():
            handle[key] = value.T
    with open(path, "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file".ljust(124, b" ") + b"\x00\x02IM")


def test_rcc_reads_v5_and_v73_mat(tmp_path: Path) -> None:
    inst_map = np.array([[1, 0, 2], [1, 0, 2]])
    class_map = np.array([[3, 0, 4], [3, 0, 4]])
    for split in ("train", "test"):
        _png(tmp_path / split / f"{split}_a.png", (2, 3))
    scipy.io.savemat(tmp_path / "train" / "train_a.mat", {"instance_map": inst_map, "class_map": class_map, "TCGA_file_name": "TCGA-X"})
    _mat73(tmp_path / "test" / "test_a.mat", {"instance_map": inst_map.astype(np.float64), "class_map": class_map.astype(np.float64)})
    dataset = read_dataset("rcc", tmp_path)
    assert dataset.names == ["train_a", "test_a"]
    for sample in dataset:
        np.testing.assert_array_equal(sample.inst_map, inst_map)
        np.testing.assert_array_equal(sample.type_map, class_map)
        assert sample.class_names == ("grade 1", "grade 2", "grade 3", "endothelial") and sample.mpp == 0.25
    assert read_dataset("rcc", tmp_path, split="test").names == ["test_a"]


def test_rcc_missing_key_names_file_and_keys(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (2, 3))
    scipy.io.savemat(tmp_path / "a.mat", {"inst_map": np.zeros((2, 3))})
    with pytest.raises(UserError, match=r"a\.mat: no variable\(s\) \['instance_map', 'class_map'\].*\['inst_map'\]"):
        read_dataset("rcc", tmp_path)[0].image


# ---------------------------------------------------------------- GeoJSON


def test_geojson_polygons_holes_multipolygon_classes(tmp_path: Path) -> None:
    _png(tmp_path / "tile.png", (6, 8))
    shutil.copy(FIXTURES / "qupath_tile.geojson", tmp_path / "tile.geojson")
    # the fixture's vertices are pixel centres, hence vertex_offset=0 (QuPath's own are corners)
    sample = read_dataset("geojson", tmp_path, class_names=["Stroma", "Tumor"], mpp=0.5, vertex_offset=0)[0]
    expected_inst = [
        [1, 1, 1, 1, 1, 0, 2, 2],
        [1, 1, 1, 1, 1, 0, 2, 2],
        [1, 1, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 3, 3, 3, 0, 0],
        [1, 1, 1, 3, 3, 3, 2, 2],
        [0, 0, 0, 3, 3, 3, 2, 2],
    ]
    np.testing.assert_array_equal(sample.inst_map, expected_inst)
    np.testing.assert_array_equal(sample.type_map, np.where(np.array(expected_inst) == 1, 2, np.array(expected_inst) > 0))
    assert sample.mpp == 0.5 and sample.class_names == ("Stroma", "Tumor")


def test_geojson_corner_coordinates_fill_the_pixels_they_enclose(tmp_path: Path) -> None:
    square = [[1, 1], [4, 1], [4, 3], [1, 3], [1, 1]]
    path = tmp_path / "tile.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}, "properties": {}}]}))
    inst_map, _ = read_geojson(path, (5, 6))
    expected = np.zeros((5, 6), np.int32)
    expected[1:3, 1:4] = 1
    np.testing.assert_array_equal(inst_map, expected)


def test_geojson_without_class_list_has_no_types(tmp_path: Path) -> None:
    _png(tmp_path / "tile.png", (6, 8))
    shutil.copy(FIXTURES / "qupath_tile.geojson", tmp_path / "tile.geojson")
    sample = read_dataset("geojson", tmp_path)[0]
    assert sample.type_map is None and sample.inst_map.max() == 3


def test_geojson_unknown_class_is_an_error(tmp_path: Path) -> None:
    _png(tmp_path / "tile.png", (6, 8))
    shutil.copy(FIXTURES / "qupath_tile.geojson", tmp_path / "tile.geojson")
    with pytest.raises(UserError, match="feature 1 has class 'Tumor'; expected one of \\['Stroma'\\]"):
        read_dataset("geojson", tmp_path, class_names=["Stroma"])[0].inst_map


# ---------------------------------------------------------------- folder


@pytest.fixture()
def folder_root(tmp_path: Path) -> Path:
    for stem in ("a", "b"):
        _png(tmp_path / "images" / f"{stem}.png", (2, 3))
        (tmp_path / "inst").mkdir(exist_ok=True)
        np.save(tmp_path / "inst" / f"{stem}.npy", np.array([[0, 5, 5], [7, 0, 0]], dtype=np.int32))
        (tmp_path / "types").mkdir(exist_ok=True)
        Image.fromarray(np.array([[0, 2, 2], [1, 0, 0]], dtype=np.uint8)).save(tmp_path / "types" / f"{stem}.png")
    return tmp_path


def test_folder_matches_by_stem_with_types(folder_root: Path) -> None:
    dataset = read_dataset("folder", folder_root, class_names=["x", "y"])
    assert dataset.names == ["a", "b"] and dataset[0].mpp is None
    np.testing.assert_array_equal(dataset[1].inst_map, [[0, 5, 5], [7, 0, 0]])
    np.testing.assert_array_equal(dataset[1].type_map, [[0, 2, 2], [1, 0, 0]])
    assert dataset[1].class_names == ("x", "y")


def test_folder_custom_folder_names_and_no_types(folder_root: Path) -> None:
    (folder_root / "inst").rename(folder_root / "labels")
    sample = read_dataset("folder", folder_root, inst="labels", types="none")[0]
    assert sample.type_map is None and sample.inst_map.shape == (2, 3)


def test_folder_missing_label_names_image(folder_root: Path) -> None:
    (folder_root / "inst" / "b.npy").unlink()
    with pytest.raises(UserError, match=r"images/b\.png: no instance label 'b\{"):
        read_dataset("folder", folder_root)


def test_folder_label_shape_mismatch_names_both_files(folder_root: Path) -> None:
    np.save(folder_root / "inst" / "a.npy", np.zeros((3, 3), dtype=np.int32))
    with pytest.raises(UserError, match=r"inst/a\.npy: label shape \(3, 3\) differs from image .*images/a\.png shape \(2, 3\)"):
        read_dataset("folder", folder_root)[0].inst_map


def test_folder_grey_image_refused_unless_allowed(folder_root: Path) -> None:
    Image.fromarray(np.zeros((2, 3), dtype=np.uint8)).save(folder_root / "images" / "a.png")
    with pytest.raises(UserError, match="greyscale"):
        read_dataset("folder", folder_root)[0].image
    assert read_dataset("folder", folder_root, allow_grey=True)[0].image.shape == (2, 3, 3)

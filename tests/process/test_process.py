"""process.py: family post-processing from raw files, output formats, --gt scoring."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from skimage.draw import polygon

import process
from misc.errors import UserError
from inference.folder import run_folder
from inference.processing import process_folder
from misc.io import read_image, write_image
from loader.readers import read_geojson
from postproc.formats import geojson_collection, pixel_edge_ring
from postproc.instances import instance_info
from tests.inference.toy_family import ToyFamily, nuclei_image, toy_family

TYPE_INFO = {0: ("background", (0, 0, 0)), 1: ("dark", (0, 255, 0)), 2: ("red", (0, 0, 255))}


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """Raw predictions of two toy images (mag 20) in ``tmp_path/raw``."""
    images = tmp_path / "images"
    for k in range(2):
        write_image(images / f"tile{k}.png", nuclei_image((72, 60), seed=k))
    family, net = toy_family()
    run_folder(family, net, images, tmp_path / "raw", "cpu", mag=20, show_progress=False)
    return tmp_path / "raw"


def expected_result(raw_dir: Path, name: str) -> dict:
    """The toy family's post-processing of one raw file, computed directly."""
    family, _ = toy_family()
    with np.load(raw_dir / f"{name}.npz") as data:
        return family.postprocess({key: data[key] for key in ("np_prob", "tp_prob")})


def test_all_formats_written_and_mag_passed(raw_dir: Path, tmp_path: Path) -> None:
    report = process_folder(raw_dir, tmp_path / "out", show_progress=False)
    assert report.done == ["tile0", "tile1"] and not report.failed
    for fmt in ("mat", "json", "geojson", "png"):
        assert sorted(p.name for p in (tmp_path / "out" / fmt).iterdir()) == [f"tile0.{fmt}", f"tile1.{fmt}"]
    assert ToyFamily.last_options == {"mag": 20}


def test_mat_has_hovernet_fields(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "out", formats=["mat"], show_progress=False)
    mat = scipy.io.loadmat(tmp_path / "out" / "mat" / "tile1.mat")
    expected = expected_result(raw_dir, "tile1")
    ids = sorted(expected["inst_info"])
    np.testing.assert_array_equal(mat["inst_map"], expected["inst_map"])
    np.testing.assert_array_equal(mat["type_map"], expected["type_map"])
    assert mat["inst_type"].shape == (len(ids), 1) and mat["inst_centroid"].shape == (len(ids), 2)
    assert mat["inst_type"][:, 0].tolist() == [expected["inst_info"][i]["type"] for i in ids]
    assert set(mat["inst_type"][:, 0]) == {1, 2}
    np.testing.assert_allclose(mat["inst_centroid"], [expected["inst_info"][i]["centroid"] for i in ids])
    assert mat["inst_uid"][:, 0].tolist() == ids


def test_json_has_hovernet_nucleus_dict(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "out", formats=["json"], show_progress=False)
    data = json.loads((tmp_path / "out" / "json" / "tile0.json").read_text())
    expected = expected_result(raw_dir, "tile0")["inst_info"]
    assert data["mag"] == 20
    assert list(data["nuc"]) == [str(i) for i in sorted(expected)]
    first = data["nuc"]["1"]
    assert sorted(first) == ["bbox", "centroid", "contour", "type", "type_prob"]
    assert first["bbox"] == expected[1]["bbox"] and first["contour"] == expected[1]["contour"]
    assert first["type"] == expected[1]["type"] and first["type_prob"] == pytest.approx(expected[1]["type_prob"])


def test_geojson_polygons_rasterise_to_the_instances(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "out", formats=["geojson"], type_info=TYPE_INFO, show_progress=False)
    collection = json.loads((tmp_path / "out" / "geojson" / "tile1.geojson").read_text())
    expected = expected_result(raw_dir, "tile1")
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(expected["inst_info"]) > 3
    for feature in collection["features"]:
        inst_id = int(feature["id"])
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and (ring[0] == ring[-1]).all()
        assert feature["properties"]["objectType"] == "detection"
        name, colour = TYPE_INFO[expected["inst_info"][inst_id]["type"]]
        assert feature["properties"]["classification"] == {"name": name, "color": list(colour)}
        rows, cols = polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=expected["inst_map"].shape)  # corners -> centres
        drawn = np.zeros(expected["inst_map"].shape, bool)
        drawn[rows, cols] = True
        truth = expected["inst_map"] == inst_id
        assert (drawn & truth).sum() / (drawn | truth).sum() >= 0.9


def test_geojson_round_trip_through_the_reader_gives_the_instances(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "out", formats=["geojson"], show_progress=False)
    expected = expected_result(raw_dir, "tile1")["inst_map"]
    inst_map, _ = read_geojson(tmp_path / "out" / "geojson" / "tile1.geojson", expected.shape)
    assert inst_map.max() == len(np.unique(expected)) - 1
    for found in np.unique(inst_map[inst_map > 0]):
        assert len(np.unique(expected[inst_map == found])) == 1
    np.testing.assert_array_equal(inst_map > 0, expected > 0)


def test_pixel_edge_ring_encloses_the_pixel_count() -> None:
    inst_map = np.zeros((40, 40), np.int32)
    cv2.circle(inst_map, (20, 18), 9, 1, -1)
    contour = instance_info(inst_map)[1]["contour"]
    ring = pixel_edge_ring(np.array(contour))
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
    assert abs(area - (inst_map == 1).sum()) / (inst_map == 1).sum() < 0.01
    assert x.min() == 11 and x.max() == 30 and y.min() == 9 and y.max() == 28


def test_geojson_untyped_nuclei_get_a_class_and_tiny_contours_are_skipped() -> None:
    info = {
        1: {"bbox": [[0, 0], [3, 3]], "centroid": [1, 1], "contour": [[0, 0], [0, 2], [2, 2], [2, 0]], "type": None,
            "type_prob": None},
        2: {"bbox": [[5, 5], [6, 7]], "centroid": [5.5, 5], "contour": [[5, 5], [6, 5]], "type": None, "type_prob": None},
    }
    features = geojson_collection(info)["features"]
    assert [f["id"] for f in features] == ["1"]
    assert features[0]["properties"]["classification"] == {"name": "nucleus", "color": [255, 255, 0]}
    assert features[0]["geometry"]["coordinates"] == [[[2.75, 3], [0.25, 3], [0, 2.75], [0, 0.25], [0.25, 0], [2.75, 0],
                                                       [3, 0.25], [3, 2.75], [2.75, 3]]]


def test_overlay_is_coloured_by_type(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "out", formats=["png"], type_info=TYPE_INFO, show_progress=False)
    overlay = read_image(tmp_path / "out" / "png" / "tile0.png")
    info = expected_result(raw_dir, "tile0")["inst_info"]
    assert overlay.shape == (72, 60, 3)
    for entry in info.values():
        x, y = entry["contour"][0]
        assert tuple(overlay[y, x]) == TYPE_INFO[entry["type"]][1]


def test_parallel_workers_give_the_same_files(raw_dir: Path, tmp_path: Path) -> None:
    process_folder(raw_dir, tmp_path / "one", formats=["json", "mat"], show_progress=False)
    report = process_folder(raw_dir, tmp_path / "two", formats=["json", "mat"], workers=2, show_progress=False)
    assert report.done == ["tile0", "tile1"]
    for name in ("tile0", "tile1"):
        assert (tmp_path / "one" / "json" / f"{name}.json").read_bytes() == (tmp_path / "two" / "json" / f"{name}.json").read_bytes()


def test_gt_writes_the_metrics_table(raw_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = tmp_path / "gt"
    for name in ("tile0", "tile1"):
        write_image(gt / "images" / f"{name}.png", np.zeros((72, 60, 3), np.uint8))
        (gt / "inst").mkdir(exist_ok=True)
        np.save(gt / "inst" / f"{name}.npy", expected_result(raw_dir, name)["inst_map"])
    report = process_folder(raw_dir, tmp_path / "out", formats=["json"], gt=f"folder:{gt}", show_progress=False)
    assert [p.name for p in report.metric_files] == ["metrics.csv", "metrics.json"]
    results = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [row["name"] for row in results["per_image"]] == ["tile0", "tile1"]
    assert results["mean"]["pq"]["mean"] == 1.0 and results["mean"]["aji"]["mean"] == 1.0
    assert "mean" in capsys.readouterr().out


def test_unreadable_raw_file_is_skipped_exit_code_1(raw_dir: Path, tmp_path: Path) -> None:
    (raw_dir / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    argv = ["--input", str(raw_dir), "--output", str(tmp_path / "out"), "--formats", "json", "--quiet"]
    assert process.main(argv) == 1
    assert sorted(p.name for p in (tmp_path / "out" / "json").iterdir()) == ["tile0.json", "tile1.json"]


def test_full_disk_leaves_no_partial_file(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write_then_fail(obj, handle, **kwargs):
        handle.write('{"mag": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", write_then_fail)
    with pytest.raises(UserError, match=r"tile0\.json: cannot write \(No space left on device\)"):
        process_folder(raw_dir, tmp_path / "out", formats=["json"], show_progress=False)
    assert list((tmp_path / "out" / "json").iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--formats", "mat,tiff"], "--formats mat,tiff: choose one or more of mat,json,geojson,png"),
        (["--gt", "monuseg"], "--gt 'monuseg': expected KIND:ROOT"),
    ],
)
def test_bad_arguments_are_one_line_errors(raw_dir: Path, tmp_path: Path, capsys, argv: list, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        process.main(["--input", str(raw_dir), "--output", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tif_format_writes_the_instance_map_as_16_bit(tmp_path):
    import tifffile

    from postproc.formats import write_outputs

    inst_map = np.zeros((6, 7), np.int32)
    inst_map[1:3, 1:4] = 5
    result = {"inst_map": inst_map, "type_map": None, "inst_info": {}}
    (path,) = write_outputs(tmp_path, "a", result, np.zeros((6, 7, 3), np.uint8), 40, ["tif"])
    written = tifffile.imread(path)
    assert written.dtype == np.uint16 and np.array_equal(written, inst_map)

"""Whole-slide pipeline with the toy family: tiled result equals the whole image's, tissue-only
windows, no tissue, a slide smaller than a window, unreadable regions, outputs that open."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest

import loader.slide
from inference.slide import SlideOptions, run_slide
from loader.slide import open_slide
from metrics import pq_counts
from inference.predict import infer_image
from misc.io import write_image
from postproc.nucleidb import bbox_geojson
from tests.inference.toy_family import toy_family
from tests.inference.slide_helpers import db_rows, fill_contours, hovernet_json_map, make_slide

OPTIONS = dict(tile=256, margin=48, show_progress=False)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    make_slide(path, (640, 896), tissue=0.5)
    return path


def _toy():
    return toy_family(input_size=96, output_size=64, batch_size=8)


def test_tiled_slide_equals_whole_image(slide_path: Path, tmp_path: Path) -> None:
    family, net = _toy()
    result = run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS))
    summary = result.summary
    assert summary["windows"]["run"] < summary["windows"]["grid"]  # only windows touching tissue
    with open_slide(slide_path) as slide:
        image, _ = slide.view(0.25).read(0, 0, 896, 640)
    whole = family.postprocess(infer_image(family, net, image, "cpu"))
    # compare the nuclei wholly inside the tissue: outside it the slide run predicts nothing by design
    covered = _covered(result.output_dir / "s.tissue.png", (640, 896))
    tiled = hovernet_json_map(result.output_dir / "s.json", (640, 896))
    reference = fill_contours([np.asarray(e["contour"]) for e in whole["inst_info"].values()], (640, 896))
    reference = np.where(np.isin(reference, _inside(reference, covered)), reference, 0)
    tiled = np.where(np.isin(tiled, _inside(tiled, covered)), tiled, 0)
    counts = pq_counts(reference, tiled)
    pq = counts.iou_sum / max(1e-9, counts.tp + 0.5 * (counts.fp + counts.fn))
    assert counts.tp > 50 and pq >= 0.99, counts
    assert summary["nuclei"] == len(db_rows(result.output_dir / "s.db"))


def _covered(mask_png: Path, shape: tuple[int, int]) -> np.ndarray:
    """Network-resolution pixels well inside the tissue mask (16 px away from its edge)."""
    import cv2

    from misc.io import read_image

    mask = read_image(mask_png)[..., 0] > 0
    mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def _inside(inst: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Ids of instances lying wholly inside ``covered``."""
    outside = np.unique(inst[~covered])
    ids = np.unique(inst[inst > 0])
    return ids[~np.isin(ids, outside)]


def test_outputs_open_and_agree(slide_path: Path, tmp_path: Path) -> None:
    family, net = _toy()
    out = run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS)).output_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "s.db", "s.geojson", "s.json", "s.overlay.tif", "s.summary.json", "s.thumbnail.png", "s.tissue.png"]
    geojson = json.loads((out / "s.geojson").read_text())
    summary = json.loads((out / "s.summary.json").read_text())
    assert len(geojson["features"]) == summary["nuclei"] == sum(summary["nuclei_per_type"].values())
    feature = geojson["features"][0]
    assert feature["properties"]["objectType"] == "detection" and "color" in feature["properties"]["classification"]
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    assert (ring[0] == ring[-1]).all()
    x0, y0 = ring.min(axis=0)
    x1, y1 = ring.max(axis=0)
    found = bbox_geojson(out / "s.db", x0, y0, x1, y1)["features"]
    assert feature["id"] in [f["id"] for f in found]
    overlay = openslide.OpenSlide(out / "s.overlay.tif")
    assert overlay.dimensions == (112, 80) and float(overlay.properties["openslide.mpp-x"]) == pytest.approx(2.0)
    assert summary["unreadable_regions"] == [] and summary["mpp_source"] == "metadata"
    assert summary["nuclei_per_mm2"]["all"] == pytest.approx(summary["nuclei"] / summary["tissue_mm2"])
    assert not (out / ".work").exists()
    rows = db_rows(out / "s.db")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r[10] == pytest.approx(r[9] * 0.25**2) for r in rows)  # area µm² = level-0 px x mpp²
    again = run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS))
    assert again.skipped  # the summary marks the slide done


def test_no_tissue_gives_empty_outputs(tmp_path: Path) -> None:
    make_slide(tmp_path / "glass.tif", (512, 512), tissue=0.0)
    family, net = _toy()
    result = run_slide(family, net, tmp_path / "glass.tif", tmp_path / "out", "cpu", SlideOptions(**OPTIONS))
    summary = result.summary
    assert summary["tissue_found"] is False and summary["nuclei"] == 0 and summary["windows"]["run"] == 0
    assert json.loads((result.output_dir / "glass.geojson").read_text())["features"] == []
    assert json.loads((result.output_dir / "glass.json").read_text())["nuc"] == {}
    assert db_rows(result.output_dir / "glass.db") == []
    assert openslide.OpenSlide(result.output_dir / "glass.overlay.tif").level_count >= 1


def test_slide_smaller_than_a_window_with_a_user_mask(tmp_path: Path) -> None:
    make_slide(tmp_path / "tiny.tif", (40, 56), tissue=1.0, cell=64)
    write_image(tmp_path / "mask.png", np.full((10, 14, 3), 255, np.uint8))
    family, net = _toy()  # 96 px windows
    options = SlideOptions(**OPTIONS, mask=tmp_path / "mask.png")
    result = run_slide(family, net, tmp_path / "tiny.tif", tmp_path / "out", "cpu", options)
    assert result.summary["windows"]["run"] == 1 and result.summary["tissue_mask"]["source"].endswith("mask.png")
    with open_slide(tmp_path / "tiny.tif") as slide:
        image, _ = slide.view(0.25).read(0, 0, 56, 40)
    whole = family.postprocess(infer_image(family, net, image, "cpu"))
    assert result.summary["nuclei"] == len(whole["inst_info"])


def test_unreadable_regions_are_listed_and_the_slide_finishes(slide_path: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    original = loader.slide.OpenSlideBackend.read

    def flaky(self, level, x, y, width, height):
        if level == 0 and y < 64 and x < 400:
            raise OSError("corrupt JPEG tile")
        return original(self, level, x, y, width, height)

    monkeypatch.setattr(loader.slide.OpenSlideBackend, "read", flaky)
    family, net = _toy()
    summary = run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS)).summary
    errors = summary["unreadable_regions"]
    assert errors and all("corrupt JPEG tile" in e["reason"] and e["stage"] == "network" for e in errors)
    assert summary["nuclei"] > 0


def test_full_disk_names_the_file_and_leaves_nothing_partial(slide_path: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import postproc.nucleidb
    from misc.errors import UserError

    def no_space(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(postproc.nucleidb.NucleiWriter, "commit", no_space)
    family, net = _toy()
    with pytest.raises(UserError, match=r"s\.db: cannot write \(No space left on device\)"):
        run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS))
    out = tmp_path / "s"
    assert not (out / "s.db").exists() and not (out / "s.summary.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".s.")]  # no temporary file left
    monkeypatch.undo()
    assert run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS)).summary["nuclei"] > 0


def test_coordinates_are_level0_when_the_slide_is_resampled(tmp_path: Path) -> None:
    make_slide(tmp_path / "half.tif", (320, 448), tissue=1.0, mpp=0.5, cell=64)  # the network works at 0.25 µm
    family, net = _toy()
    result = run_slide(family, net, tmp_path / "half.tif", tmp_path / "out", "cpu", SlideOptions(**OPTIONS))
    assert result.summary["network_shape"] == [640, 896] and result.summary["nuclei"] > 0
    with open_slide(tmp_path / "half.tif") as slide:
        image, _ = slide.view(0.25).read(0, 0, 896, 640)
    whole = family.postprocess(infer_image(family, net, image, "cpu"))
    level0 = sorted((round(r[1]), round(r[2])) for r in db_rows(result.output_dir / "half.db"))
    expected = sorted((round((e["centroid"][0] + 0.5) / 2), round((e["centroid"][1] + 0.5) / 2))
                      for e in whole["inst_info"].values())
    matched = len(set(level0) & set(expected))
    assert matched >= 0.95 * len(expected)
    rings = [np.asarray(f["geometry"]["coordinates"][0]) for f in
             json.loads((result.output_dir / "half.geojson").read_text())["features"]]
    assert max(r[:, 0].max() for r in rings) <= 448 and max(r[:, 1].max() for r in rings) <= 320


@pytest.mark.timeout(120)
def test_failures_in_the_reader_or_writer_thread_reach_the_caller(slide_path: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import inference.slide
    from misc.errors import UserError

    commit = inference.slide.RawStore.commit

    def full_after_two(self, batch):
        if len(self.done) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        commit(self, batch)

    family, net = toy_family(input_size=96, output_size=64, batch_size=2)  # many small batches: a full queue
    monkeypatch.setattr(inference.slide.RawStore, "commit", full_after_two)
    with pytest.raises(UserError, match=r"raw\.h5: cannot write"):
        run_slide(family, net, slide_path, tmp_path / "a", "cpu", SlideOptions(**OPTIONS, prefetch=1))
    monkeypatch.undo()

    def unreadable(self, index):
        raise RuntimeError("reader broke")

    monkeypatch.setattr(inference.slide.WindowReader, "batch", unreadable)
    with pytest.raises(RuntimeError, match="reader broke"):
        run_slide(family, net, slide_path, tmp_path / "b", "cpu", SlideOptions(**OPTIONS))

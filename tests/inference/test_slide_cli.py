"""infer.py on slides with a HoVer-Net checkpoint (demo profile, trained for one step): outputs,
bad input (not a slide, no pixel size: one line, exit 2), no tissue (exit 0), sharding by rank,
and a folder of tiles still going to the raw-file path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import infer
from loader.slide import list_slides
from engine.run import RunRequest, run
from misc.io import write_image
from loader.synthetic import generate_tile
from tests.inference.slide_helpers import assert_same_outputs, make_slide

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HoVer-Net demo-profile checkpoint trained for one step on two synthetic tiles (typed)."""
    out = tmp_path_factory.mktemp("hovernet")
    run(RunRequest(model="hovernet", data="synthetic", profile="demo", out=str(out), device="cpu", num_threads=1,
                   quiet=True, overrides=["data.synthetic.n_train=2", "data.synthetic.n_val=1", "model.nr_types=4",
                                          "train.phases.0.epochs=1"]))
    return out / "checkpoints" / "best.pt"


def _infer(checkpoint: Path, *args: str) -> int:
    return infer.main(["--model-path", str(checkpoint), "--device", "cpu", "--quiet", *args])


def test_slide_end_to_end(checkpoint: Path, tmp_path: Path) -> None:
    make_slide(tmp_path / "s.tif", (256, 320), tissue=1.0, cell=64)
    assert _infer(checkpoint, "--input", str(tmp_path / "s.tif"), "--output", str(tmp_path / "out")) == 0
    out = tmp_path / "out" / "s"
    summary = json.loads((out / "s.summary.json").read_text())
    assert summary["windows"]["run"] == summary["windows"]["grid"] == 4  # 164 px windows, all tissue
    assert summary["tissue_found"] and summary["tissue_mm2"] == pytest.approx(256 * 320 * 0.25**2 / 1e6, rel=0.15)
    for suffix in ("geojson", "db", "json", "overlay.tif", "thumbnail.png", "tissue.png"):
        assert (out / f"s.{suffix}").is_file()
    assert set(summary["seconds"]) >= {"open", "tissue", "network", "outputs", "total"}


def test_not_a_slide_and_no_pixel_size(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.svs").write_bytes(b"\x00" * 64)
    with pytest.raises(SystemExit) as exit_info:
        _infer(checkpoint, "--input", str(tmp_path / "bad.svs"), "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "not a slide" in err[0]
    make_slide(tmp_path / "nompp.tif", (256, 256), tissue=1.0, cell=64, with_mpp=False)
    with pytest.raises(SystemExit) as exit_info:
        _infer(checkpoint, "--input", str(tmp_path / "nompp.tif"), "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "--slide-mpp" in err[0]
    assert not (tmp_path / "out").exists()


def test_no_tissue_exits_zero_with_a_summary(checkpoint: Path, tmp_path: Path) -> None:
    make_slide(tmp_path / "glass.tif", (512, 512), tissue=0.0)
    assert _infer(checkpoint, "--input", str(tmp_path / "glass.tif"), "--output", str(tmp_path / "out")) == 0
    summary = json.loads((tmp_path / "out" / "glass" / "glass.summary.json").read_text())
    assert summary["tissue_found"] is False and summary["nuclei"] == 0


def test_ranks_share_the_slides_and_match_one_process(checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for k in range(3):
        make_slide(slides / f"g{k}.tif", (384, 384), tissue=0.0, seed=k)
    assert _infer(checkpoint, "--input", str(slides), "--output", str(tmp_path / "one")) == 0
    for rank in (0, 1):  # what torchrun --nproc_per_node 2 sets for each process
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert _infer(checkpoint, "--input", str(slides), "--output", str(tmp_path / f"rank{rank}")) == 0
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["g0", "g2"]
    assert sorted(p.name for p in (tmp_path / "rank1").iterdir()) == ["g1"]
    for k in range(3):
        assert_same_outputs(tmp_path / "one" / f"g{k}", tmp_path / f"rank{k % 2}" / f"g{k}", f"g{k}")


def test_a_folder_of_tiles_is_not_a_slide_folder(checkpoint: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "tiles" / "t.png", generate_tile(0, (64, 64))[0])
    import tifffile
    tifffile.imwrite(tmp_path / "tiles" / "u.tif", generate_tile(1, (64, 64))[0])
    assert list_slides(tmp_path / "tiles") == []
    assert _infer(checkpoint, "--input", str(tmp_path / "tiles"), "--output", str(tmp_path / "raw")) == 0
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["t.npz", "u.npz"]
    with np.load(tmp_path / "raw" / "t.npz") as raw:
        assert raw["np_prob"].shape == (64, 64, 1)

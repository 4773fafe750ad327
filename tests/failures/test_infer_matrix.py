"""The failure matrix of ``infer.py`` over every registered family: unreadable images are
skipped and reported (exit 1) while the others are predicted; RGBA and 16-bit images read as
the same RGB picture; a missing or empty input, a missing or truncated checkpoint and a bad
slide give one ``error:`` line naming it (exit 2) and leave the output folder as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import infer
from tests.failures.conftest import (BUILT_IN, EQUIVALENT, IMAGE_FAMILIES, SLIDES_ONLY, UNREADABLE, run_main,
                                    truncated_copy)
from tests.inference.slide_helpers import make_slide

from tests.failures.conftest import tiles


def _maps(path: Path) -> dict[str, np.ndarray]:
    """Every array of a raw ``.npz`` but ``source`` (the image's path)."""
    with np.load(path) as raw:
        return {key: raw[key] for key in raw.files if key != "source"}


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_image_is_skipped_and_reported(family: str, case: str, infer_runs) -> None:
    run = infer_runs(family)
    name = UNREADABLE[case]
    assert run.outcome.code == 1, run.outcome.text
    assert "Traceback" not in run.outcome.text
    assert any(line.startswith("ERROR not predicted") and name in line for line in run.outcome.lines), run.outcome.text
    assert all(any(bad in line for bad in UNREADABLE.values()) for line in run.outcome.lines), run.outcome.text
    assert not (run.raw / f"{Path(name).stem}.npz").exists()
    assert not [p.name for p in run.raw.iterdir() if p.name.startswith(".")]  # no half-written buffer
    assert (run.raw / "good.npz").is_file()


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
@pytest.mark.parametrize("case", list(EQUIVALENT))
def test_rgba_and_16_bit_images_give_the_maps_of_the_rgb_image(family: str, case: str, infer_runs) -> None:
    run = infer_runs(family)
    good, other = _maps(run.raw / "good.npz"), _maps(run.raw / f"{Path(EQUIVALENT[case]).stem}.npz")
    assert good.keys() == other.keys()
    assert all(np.array_equal(good[key], other[key]) for key in good), case


def _previous_result(output: Path) -> bytes:
    """An output folder holding an earlier result (``earlier.npz``); returns its bytes."""
    output.mkdir(parents=True)
    (output / "earlier.npz").write_bytes(b"an earlier result")
    return (output / "earlier.npz").read_bytes()


@pytest.mark.parametrize("family", BUILT_IN)
@pytest.mark.parametrize("case", ["missing input", "empty folder", "missing checkpoint", "truncated checkpoint"])
def test_bad_input_or_checkpoint_is_one_error_line(family: str, case: str, checkpoints, tmp_path: Path) -> None:
    images, checkpoint = tmp_path / "images", checkpoints[family]
    if case != "missing input":
        images.mkdir()
    if case in ("missing checkpoint", "truncated checkpoint"):
        (images / "a.png").write_bytes(b"")  # never read: the checkpoint is refused first
    if case == "missing checkpoint":
        checkpoint = tmp_path / "nowhere.pt"
    if case == "truncated checkpoint":
        checkpoint = truncated_copy(checkpoints[family], tmp_path / "cut.pt")
    culprit = {"missing input": images, "empty folder": images}.get(case, checkpoint)
    before = _previous_result(tmp_path / "out")
    line = run_main(infer.main, ["--model-path", checkpoint, "--input", images, "--output", tmp_path / "out",
                                 "--device", "cpu", "--quiet"]).one_error()
    assert str(culprit) in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["earlier.npz"]
    assert (tmp_path / "out" / "earlier.npz").read_bytes() == before


@pytest.mark.parametrize("family", BUILT_IN)
@pytest.mark.parametrize("case", ["truncated slide", "missing mask", "truncated checkpoint"])
def test_whole_slide_path_refuses_bad_input_before_any_work(family: str, case: str, checkpoints, tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    make_slide(slides / "a.tif", (256, 256), tissue=1.0, cell=64)
    checkpoint, extra = checkpoints[family], []
    if case == "truncated slide":
        culprit = truncated_copy(slides / "a.tif", slides / "b.svs")  # a vendor suffix: always a slide
    elif case == "missing mask":
        culprit = tmp_path / "mask.png"
        extra = ["--mask", culprit, "--input", slides / "a.tif"]
    else:
        culprit = checkpoint = truncated_copy(checkpoints[family], tmp_path / "cut.pt")
    before = _previous_result(tmp_path / "out")
    line = run_main(infer.main, ["--model-path", checkpoint, "--input", slides, "--output", tmp_path / "out",
                                 "--device", "cpu", "--quiet", *extra]).one_error()
    assert str(culprit) in line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["earlier.npz"]
    assert (tmp_path / "out" / "earlier.npz").read_bytes() == before


@pytest.mark.parametrize("family", SLIDES_ONLY)
def test_slides_only_family_refuses_image_tiles(family: str, checkpoints, tmp_path: Path) -> None:
    images = tiles(tmp_path / "data") / "images"
    line = run_main(infer.main, ["--model-path", checkpoints[family], "--input", images, "--output", tmp_path / "out",
                                 "--device", "cpu", "--quiet"]).one_error()
    assert str(images) in line and "infers whole slides only" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

"""BatchNorm adaptation on slides (infer.bn_adapt): statistics of a bounded, evenly spread
sample of tissue windows, applied for the whole pass, trained statistics restored after."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import inference.slide
from inference.predict import with_infer_overrides
from inference.slide import SlideOptions, WindowReader, adaptation_cells, adapted_to_slide, plan_grid, run_slide
from inference.tiling import TileSpec
from loader.slide import open_slide
from misc.errors import UserError
from tests.inference.slide_helpers import assert_same_outputs, make_slide
from tests.inference.test_bn_adapt import bn_toy

OPTIONS = dict(tile=256, margin=48, show_progress=False, bn_adapt_windows=6)
INFER = dict(input_size=96, output_size=64, batch_size=3)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    make_slide(path, (384, 512), tissue=0.6)
    return path


def test_sample_is_bounded_and_spread_over_the_tissue_windows() -> None:
    windows = np.stack([np.repeat(np.arange(10), 10), np.tile(np.arange(10), 10)], 1)
    cells = adaptation_cells(windows, 6)
    assert len(cells) == 6 and cells[0].tolist() == [0, 0] and cells[-1].tolist() == [9, 9]
    assert np.array_equal(adaptation_cells(windows[:4], 6), windows[:4])


def test_batchnorm_normalises_with_the_sampled_windows_statistics(slide_path: Path) -> None:
    family, net = bn_toy(**INFER, bn_adapt=1.0)
    spec = dataclasses.replace(TileSpec.from_config(family.cfg["infer"]), scale=1.0)
    with open_slide(slide_path) as slide:
        view = slide.view(0.25)
        grid = plan_grid(view.shape, spec, np.ones((12, 16), bool), 12 / view.shape[0], 3, 256, 48)
        reader = WindowReader(view, grid, spec.input_size, 1)
        cells = adaptation_cells(grid.windows, 6)
        batches = [reader.cells(cells[k : k + 3])[0].astype(np.float64) for k in (0, 3)]
        with adapted_to_slide(family, net, torch.device("cpu"), None, reader, grid, 6):
            mean, var = net[0].running_mean.numpy().copy(), net[0].running_var.numpy().copy()
        reader.close()
    # momentum None: the running statistics are the plain averages of the two batches' statistics
    np.testing.assert_allclose(mean, np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(var, np.mean([b.reshape(-1, 3).var(axis=0, ddof=1) for b in batches], axis=0),
                               rtol=1e-4)
    assert torch.equal(net[0].running_mean, torch.full((3,), 128.0)) and not net.training  # restored


def test_slide_run_uses_the_adapted_statistics_for_every_window(slide_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    adapt = inference.slide.adapted_batchnorm

    def recording(net, weight, collect):
        def collect_and_record() -> None:
            collect()
            seen.update(mean=net[0].running_mean.clone(), var=net[0].running_var.clone())
        return adapt(net, weight, collect_and_record)

    monkeypatch.setattr(inference.slide, "adapted_batchnorm", recording)
    family, net = bn_toy(**INFER, bn_adapt=1.0)
    adapted = run_slide(family, net, slide_path, tmp_path / "adapted", "cpu", SlideOptions(**OPTIONS))
    assert torch.equal(net[0].running_mean, torch.full((3,), 128.0)) and not net.training
    assert "bn_adapt_busy" in adapted.summary["seconds"]
    # the same pass with those statistics set by hand (and no adaptation) writes the same files
    fixed_family = with_infer_overrides(family, bn_adapt=0.0)
    with torch.no_grad():
        net[0].running_mean.copy_(seen["mean"])
        net[0].running_var.copy_(seen["var"])
    by_hand = run_slide(fixed_family, net, slide_path, tmp_path / "by_hand", "cpu", SlideOptions(**OPTIONS))
    assert_same_outputs(adapted.output_dir, by_hand.output_dir, "s")
    plain_family, plain_net = bn_toy(**INFER)
    plain = run_slide(plain_family, plain_net, slide_path, tmp_path / "plain", "cpu", SlideOptions(**OPTIONS))
    assert (plain.output_dir / "s.overlay.tif").read_bytes() != (adapted.output_dir / "s.overlay.tif").read_bytes()


def test_weight_outside_0_1_is_refused_before_any_work(slide_path: Path, tmp_path: Path) -> None:
    family, net = bn_toy(**INFER, bn_adapt=2.0)
    with pytest.raises(UserError, match="infer.bn_adapt"):
        run_slide(family, net, slide_path, tmp_path, "cpu", SlideOptions(**OPTIONS))
    assert not (tmp_path / "s").exists()

"""BatchNorm adaptation to each image (infer.bn_adapt / --bn-adapt) through the inference paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import infer
from misc.errors import UserError
from inference.folder import run_folder
from inference.predict import infer_image
from inference.rawfile import find_raw
from misc.io import write_image
from tests.inference.toy_family import nuclei_image, toy_family

CHANNEL_SHIFT = np.array([10, 40, 70], np.uint8)


def bn_toy(**infer_options: object) -> tuple[object, nn.Module]:
    """The toy family with a BatchNorm layer (trained statistics: mean 128, std 60) before its conv."""
    family, conv = toy_family(**infer_options)
    norm = nn.BatchNorm2d(3)
    norm.running_mean.fill_(128.0)
    norm.running_var.fill_(3600.0)
    return family, nn.Sequential(norm, conv).eval()


def even_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A nuclei image with even values, so that halving it is exact."""
    return nuclei_image(shape, seed) & np.uint8(0xFE)


def stain_shifted(image: np.ndarray) -> np.ndarray:
    """The same image at half the contrast plus a per-channel offset (an affine stain change)."""
    return image // 2 + CHANNEL_SHIFT


@pytest.mark.parametrize("weight, invariant", [(1.0, True), (0.0, False), (0.5, False)])
def test_full_adaptation_makes_the_prediction_invariant_to_an_affine_stain_change(weight: float,
                                                                                   invariant: bool) -> None:
    family, net = bn_toy()
    image = even_image((45, 38))
    plain = infer_image(family, net, image, "cpu", batch_size=3, bn_adapt=weight)["np_prob"]
    shifted = infer_image(family, net, stain_shifted(image), "cpu", batch_size=3, bn_adapt=weight)["np_prob"]
    assert np.allclose(plain, shifted, atol=1e-4) is invariant


def test_config_value_applies_and_the_argument_overrides_it() -> None:
    family, net = bn_toy(bn_adapt=1.0)
    image = even_image((40, 40))
    configured = infer_image(family, net, image, "cpu")["np_prob"]
    np.testing.assert_allclose(configured, infer_image(family, net, image, "cpu", bn_adapt=1.0)["np_prob"])
    assert not np.allclose(configured, infer_image(family, net, image, "cpu", bn_adapt=0.0)["np_prob"], atol=1e-3)


def test_each_image_of_a_folder_is_adapted_on_its_own(tmp_path: Path) -> None:
    family, net = bn_toy()
    images = [even_image((40, 33), seed=0), stain_shifted(even_image((47, 33), seed=1))]
    for name, image in zip("ab", images):
        write_image(tmp_path / "in" / f"{name}.png", image)
    run_folder(family, net, tmp_path / "in", tmp_path / "out", "cpu", bn_adapt=1.0, show_progress=False)
    for ref, image in zip(find_raw(tmp_path / "out"), images):
        alone = infer_image(family, net, image, "cpu", bn_adapt=1.0)["np_prob"]
        np.testing.assert_allclose(ref.load().maps["np_prob"], alone, atol=1e-6)
    assert torch.equal(net[0].running_mean, torch.full((3,), 128.0)) and not net.training


def test_weight_outside_0_1_is_a_user_error(tmp_path: Path) -> None:
    family, net = bn_toy()
    write_image(tmp_path / "in" / "a.png", even_image((20, 20)))
    with pytest.raises(UserError, match="infer.bn_adapt"):
        run_folder(family, net, tmp_path / "in", tmp_path / "out", "cpu", bn_adapt=1.5, show_progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_flag_reaches_the_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(infer, "load_checkpoint", lambda path, device: (*bn_toy(), {}))
    image = even_image((36, 36))
    write_image(tmp_path / "in" / "a.png", image)
    argv = ["--model-path", "x.pt", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--quiet", "--bn-adapt", "1"]
    assert infer.main(argv) == 0
    family, net = bn_toy()
    expected = infer_image(family, net, image, "cpu", bn_adapt=1.0)["np_prob"]
    np.testing.assert_allclose(find_raw(tmp_path / "out")[0].load().maps["np_prob"], expected, atol=1e-6)

"""Inter-class adjustments: background, other, class subtraction (sequential and order-independent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from models.histosegnet.adjust import (
    adjust_pass,
    background_map,
    gaussian_smooth,
    gradcam_labels,
    subtract_classes,
)
from models.histosegnet.classes import GLAS, SegmentationPass, read_class_info, resolve_pass


def published_subtraction(maps: np.ndarray, exempt: int | None) -> np.ndarray:
    """The published loop, in place on one array (numpy transcription)."""
    cs = maps.copy()
    for c in range(cs.shape[0]):
        if c != exempt:
            cs[c] -= np.max(cs[np.delete(np.arange(cs.shape[0]), c)], axis=0)
    return cs


@pytest.mark.parametrize("shape", [(20, 30), (5, 7)])
def test_gaussian_smooth_is_scipy_reflect(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).random(shape)
    ours = gaussian_smooth(torch.from_numpy(x), 2.0).numpy()
    assert np.allclose(ours, gaussian_filter(x, sigma=2), atol=1e-10)


def test_background_from_brightness() -> None:
    image = np.full((16, 16, 3), 250, np.uint8)
    image[:, :8] = 120
    expected = gaussian_filter(0.75 * expit(4 * (image.mean(-1).astype(float) - 240)), sigma=2)
    ours = background_map(torch.from_numpy(image)).numpy()
    assert np.allclose(ours, expected, atol=1e-6)
    assert ours[:, -1].min() > 0.74 and ours[:, 0].max() < 1e-3


def test_sequential_subtraction_is_the_published_loop_and_differs_from_order_independent() -> None:
    maps = torch.tensor([[[0.9]], [[0.6]], [[0.8]]]).expand(3, 2, 2).clone()
    sequential = subtract_classes(maps, exempt=None, sequential=True)
    assert np.allclose(sequential.numpy(), published_subtraction(maps.numpy(), None))
    independent = subtract_classes(maps, exempt=None, sequential=False)
    # class 0: 0.9 - 0.8 in both; class 2 compares with the already-lowered class 0 only when sequential
    assert np.allclose(independent[:, 0, 0].numpy(), [0.1, -0.3, -0.1])
    assert np.allclose(sequential[:, 0, 0].numpy(), [0.1, -0.2, 0.8 - 0.1])
    exempted = subtract_classes(maps, exempt=1, sequential=True)
    assert np.allclose(exempted.numpy(), published_subtraction(maps.numpy(), 1))
    assert torch.equal(exempted[1], maps[1])


def test_morph_pass_background_minus_adipose_and_gradcam_stage() -> None:
    classes = ["E.M.S", "A.W", "A.B", "A.M"]
    spec = SegmentationPass(name="m", class_info="adp_morph", background="Background",
                            background_exceptions=("A.W", "A.B", "A.M"), gradcam_excluded=("Background",))
    morph_names = read_class_info("adp_morph").names[1:]
    resolved = resolve_pass(spec, classes + [n for n in morph_names if n not in classes])
    image = torch.full((8, 8, 3), 255, dtype=torch.uint8)
    cams = torch.zeros(len(resolved.source), 8, 8)
    aw = resolved.source[resolved.info.index("A.W")]
    cams[aw, :, 4:] = 0.6
    maps = adjust_pass(cams, image, resolved)
    bg = resolved.background
    assert torch.allclose(maps.raw[bg], torch.zeros(8, 8))
    assert float(maps.adjusted[bg, :, :4].min()) > 0.7  # bright, no adipose
    assert float(maps.adjusted[bg, :, 4:].max()) < 0.2  # adipose wins where it fires
    labels = gradcam_labels(maps.raw, resolved.excluded)
    assert int((labels == bg).sum()) == 0


def test_glas_other_is_five_percent_of_the_complement() -> None:
    resolved = resolve_pass(GLAS, ["G.O"])
    cams = torch.zeros(1, 4, 4)
    cams[0, :2] = 0.8
    maps = adjust_pass(cams, torch.zeros(4, 4, 3, dtype=torch.uint8), resolved)
    other, gland = resolved.other, resolved.info.index("G.O")
    assert torch.allclose(maps.adjusted[other, 2:], torch.full((2, 4), 0.05))
    assert torch.allclose(maps.adjusted[other, :2], torch.full((2, 4), 0.05 * 0.2))
    assert torch.allclose(maps.adjusted[gland, :2], torch.full((2, 4), 0.8 - 0.01))

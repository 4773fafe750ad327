"""Dense CRF in torch: lattice filtering, parameter checks, agreement with pydensecrf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from misc.errors import UserError
from postproc.crf import CRFParams, PermutohedralLattice, crf_labels, dense_crf


def scene(seed: int, shape: tuple[int, int] = (48, 64), classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of flat colour regions with noise, and noisy class scores that mostly
    follow the regions: (H, W, 3) uint8 and (C, H, W) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    regions = np.zeros(shape, np.int64)
    regions[:, w // 3 :] = 1
    regions[h // 2 :, 2 * w // 3 :] = 2
    palette = rng.integers(40, 230, size=(classes, 3))
    image = np.clip(palette[regions] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    scores = np.stack([gaussian_filter((regions == c).astype(float), 3) for c in range(classes)])
    scores = np.clip(scores + rng.normal(0, 0.35, scores.shape), 0, 1).astype(np.float32)
    return image, scores


def test_lattice_approximates_a_gaussian_filter() -> None:
    # 1-D points on a line with unit spacing / sigma: the lattice output is a blur whose
    # weights fall off with distance, close to the exact Gaussian up to the lattice's scale.
    x = torch.arange(200, dtype=torch.float32)[:, None] / 5.0
    values = torch.zeros(200, 1)
    values[100] = 1.0
    out = PermutohedralLattice(x).filter(values)[:, 0]
    assert int(out.argmax()) == 100
    assert out[95:106].sum() > 0.5 * out.sum()
    assert out[:80].abs().sum() < 1e-3 and out[121:].abs().sum() < 1e-3
    assert bool((out[100:115][1:] <= out[100:115][:-1] + 1e-6).all())  # decreasing away from the impulse


def test_zero_iterations_is_the_unary_argmax() -> None:
    image, scores = scene(0)
    unary = -torch.log(torch.from_numpy(scores).clamp(1e-5, 1))
    q = dense_crf(unary, image, CRFParams(iterations=0))
    assert torch.equal(q.argmax(0), unary.argmin(0))
    assert torch.allclose(q.sum(0), torch.ones(q.shape[1:]), atol=1e-5)


def test_crf_smooths_noisy_scores_towards_regions() -> None:
    image, scores = scene(1)
    raw = torch.from_numpy(scores).argmax(0)
    smoothed = crf_labels(torch.from_numpy(scores), image)
    truth = np.zeros(image.shape[:2], np.int64)
    truth[:, 64 // 3 :] = 1
    truth[24:, 2 * 64 // 3 :] = 2
    assert (smoothed.numpy() == truth).mean() > (raw.numpy() == truth).mean()


def test_classes_without_mass_take_no_part() -> None:
    image, scores = scene(2)
    scores = np.concatenate([scores[:1], np.zeros_like(scores[:1]), scores[1:]])
    labels = crf_labels(torch.from_numpy(scores), image)
    assert 1 not in labels.unique().tolist()
    assert crf_labels(torch.zeros(2, 8, 8), np.zeros((8, 8, 3), np.uint8)).sum() == 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gauss_sxy": 0}, "gauss_sxy"),
        ({"bilat_srgb": -1}, "bilat_srgb"),
        ({"bilat_compat": float("nan")}, "bilat_compat"),
        ({"iterations": -1}, "iterations"),
        ({"iterations": 1000}, "iterations"),
        ({"gauss_sigma": 3}, "unknown key"),
    ],
)
def test_parameters_out_of_range_are_refused(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        CRFParams.from_options(options)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(UserError, match=r"\(H, W, 3\)"):
        dense_crf(torch.zeros(2, 8, 8), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(UserError, match=r"\(C, H, W\)"):
        crf_labels(torch.zeros(8, 8), np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize(
    "seed, params",
    [
        (3, CRFParams()),
        (4, CRFParams(gauss_sxy=2.0, gauss_compat=5.0, bilat_sxy=20.0, bilat_srgb=8.0, bilat_compat=15.0, iterations=10)),
        (5, CRFParams(gauss_sxy=1.0, gauss_compat=3.0, bilat_sxy=5.0, bilat_srgb=40.0, bilat_compat=4.0, iterations=3)),
    ],
)
def test_labels_agree_with_pydensecrf(seed: int, params: CRFParams) -> None:
    dcrf = pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 (requirements-dev.txt) not installed")
    utils = pytest.importorskip("pydensecrf.utils")
    image, scores = scene(seed, shape=(40, 56), classes=4)
    crf = dcrf.DenseCRF2D(image.shape[1], image.shape[0], scores.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=params.gauss_sxy, compat=params.gauss_compat)
    crf.addPairwiseBilateral(sxy=params.bilat_sxy, srgb=params.bilat_srgb, rgbim=np.ascontiguousarray(image),
                             compat=params.bilat_compat)
    reference = np.array(crf.inference(params.iterations)).reshape(scores.shape)
    ours = dense_crf(-torch.log(torch.from_numpy(scores).clamp(1e-5, 1)), image, params).numpy()
    agree = (ours.argmax(0) == reference.argmax(0)).mean()
    assert agree >= 0.99, agree
    assert np.abs(ours - reference).max() < 1e-4  # same algorithm: marginals agree to float precision


@pytest.mark.cuda
def test_gpu_matches_cpu() -> None:
    image, scores = scene(6)
    unary = -torch.log(torch.from_numpy(scores).clamp(1e-5, 1))
    cpu = dense_crf(unary, image)
    gpu = dense_crf(unary.cuda(), torch.from_numpy(image).cuda()).cpu()
    assert (cpu.argmax(0) == gpu.argmax(0)).float().mean() >= 0.999
    assert torch.allclose(cpu, gpu, atol=1e-4)

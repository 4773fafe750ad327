"""HoVer-Net post-processing on analytic maps, its building blocks and magnification scaling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from misc.errors import UserError
from loader.synthetic import generate_tile
from misc.utils import remap_label
from models.hovernet.postproc import (
    PostprocParams,
    fill_holes,
    foreground_mask,
    instances_from_np_hv,
    normalise,
    scale_params,
    sobel,
)
from models.hovernet.targets import hv_map


def disc_scene(shape: tuple[int, int], discs: list[tuple[tuple[int, int], int]]) -> np.ndarray:
    """(H, W) int32 map of discs ``((row, col), radius)``, ids in order (later ones on top)."""
    rows, cols = np.indices(shape)
    inst_map = np.zeros(shape, np.int32)
    for inst_id, ((row, col), radius) in enumerate(discs, start=1):
        inst_map[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = inst_id
    return inst_map


def perfect_maps(inst_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NP probability (H, W, 1) = the mask and HV (H, W, 2) = the exact targets."""
    return (inst_map > 0).astype(np.float32)[..., None], np.moveaxis(hv_map(inst_map), 0, -1)


def test_touching_discs_are_separated():
    truth = disc_scene((64, 64), [((32, 22), 10), ((32, 41), 10)])
    result = instances_from_np_hv(*perfect_maps(truth))
    overlap = [[int(((result == p) & (truth == t)).sum()) for t in (1, 2)] for p in (1, 2)]
    assert result.max() == 2 and overlap[0][0] >= 300 and overlap[1][1] >= 300 and overlap[0][1] + overlap[1][0] <= 5


def test_ids_are_contiguous():
    truth = disc_scene((64, 64), [((12, 12), 8), ((40, 40), 9), ((12, 50), 7)])
    result = instances_from_np_hv(*perfect_maps(truth))
    assert sorted(np.unique(result)) == [0, 1, 2, 3]


def test_empty_probability_gives_an_empty_map():
    result = instances_from_np_hv(np.zeros((16, 16, 1), np.float32), np.zeros((16, 16, 2), np.float32))
    assert result.dtype == np.int32 and not result.any()


def test_foreground_components_below_the_minimum_area_are_removed():
    prob = np.zeros((10, 20), np.float32)
    prob[1:4, 1:4] = 0.9  # 9 px: removed
    prob[5:7, 10:15] = 0.5  # 10 px at the threshold: kept
    assert foreground_mask(prob, 0.5, 10).sum() == 10


def test_fill_holes_matches_scipy():
    mask = np.random.default_rng(0).random((40, 40)) > 0.45
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_sobel_matches_opencv_after_normalisation():
    image = np.random.default_rng(1).random((50, 60)).astype(np.float32)
    ours = normalise(sobel(image, 21, axis=1))
    opencv = normalise(cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=21))
    np.testing.assert_allclose(ours, opencv, atol=1e-4)


def test_sobel_accepts_kernels_larger_than_opencv_allows():
    ramp = np.tile(np.arange(80, dtype=np.float32), (80, 1))
    assert sobel(ramp, 41, axis=1)[40, 40] > 0 and abs(sobel(ramp, 41, axis=0)[40, 40]) < 1e-3


def reference_instances(np_prob: np.ndarray, hv: np.ndarray) -> np.ndarray:
    """The published __proc_np_hv steps written out plainly (cv2.Sobel, scipy hole filling)."""
    blb = ndimage.label(np_prob >= 0.5)[0]
    blb = np.isin(blb, np.nonzero(np.bincount(blb.ravel()) >= 10)[0][1:])
    h = cv2.normalize(hv[..., 0], None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    v = cv2.normalize(hv[..., 1], None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    sobel_h = 1 - cv2.normalize(cv2.Sobel(h, cv2.CV_64F, 1, 0, ksize=21), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    sobel_v = 1 - cv2.normalize(cv2.Sobel(v, cv2.CV_64F, 0, 1, ksize=21), None, 0, 1, cv2.NORM_MINMAX, cv2.CV_32F)
    overall = np.clip(np.maximum(sobel_h, sobel_v) - (1 - blb), 0, None)
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)
    marker = ndimage.binary_fill_holes(blb & (overall < 0.4)).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = ndimage.label(marker)[0]
    marker = np.where(np.bincount(marker.ravel())[marker] >= 10, marker, 0)
    return watershed(dist, marker, mask=blb)


def test_matches_the_published_steps_on_a_noisy_synthetic_tile():
    _, truth, _ = generate_tile(3, (128, 128))
    rng = np.random.default_rng(3)
    np_prob = np.clip((truth > 0) + rng.normal(0, 0.2, truth.shape), 0, 1).astype(np.float32)
    hv = np.moveaxis(hv_map(truth), 0, -1) + rng.normal(0, 0.1, (128, 128, 2)).astype(np.float32)
    ours = instances_from_np_hv(np_prob[..., None], hv)
    np.testing.assert_array_equal(ours, remap_label(reference_instances(np_prob, hv)))


def test_constants_at_20x():
    scaled = scale_params(PostprocParams(), 20)
    assert (scaled.min_area, scaled.min_marker_area, scaled.sobel_ksize, scaled.opening_radius) == (3, 3, 11, 1)


def test_constants_at_10x():
    scaled = scale_params(PostprocParams(), 10)
    assert (scaled.min_area, scaled.min_marker_area, scaled.sobel_ksize, scaled.opening_radius) == (1, 1, 7, 1)


def test_constants_at_40x_are_the_published_ones():
    assert scale_params(PostprocParams(), 40) == PostprocParams()


def test_small_nucleus_at_20x_is_kept_with_20x_constants():
    truth = disc_scene((24, 24), [((12, 12), 2)])
    result = instances_from_np_hv(*perfect_maps(truth), scale_params(PostprocParams(), 20))
    np.testing.assert_array_equal(result, truth)


def test_small_nucleus_at_20x_is_lost_with_40x_constants():
    truth = disc_scene((24, 24), [((12, 12), 2)])
    assert not instances_from_np_hv(*perfect_maps(truth), PostprocParams()).any()


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="sobel_size"):
        PostprocParams.from_options({"sobel_size": 21})


def test_even_sobel_kernel_is_a_user_error():
    with pytest.raises(UserError, match="postproc.sobel_ksize"):
        PostprocParams(sobel_ksize=20)


def test_hv_of_the_wrong_shape_is_a_user_error():
    with pytest.raises(UserError, match=r"hv must be \(H, W, 2\)"):
        instances_from_np_hv(np.zeros((8, 8, 1), np.float32), np.zeros((8, 8, 3), np.float32))

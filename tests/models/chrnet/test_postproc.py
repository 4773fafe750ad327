"""CHR-Net post-processing against the published sequence of skimage calls."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label
from skimage.morphology import dilation, erosion, reconstruction
from skimage.segmentation import watershed

from misc.errors import UserError
from loader.synthetic import generate_tile
from misc.utils import remap_label
from models.chrnet.postproc import (
    CHRNetPostprocParams,
    binary_mask,
    clear_watershed_lines,
    h_reconstruction,
    instances_from_marker,
    regional_minima,
    remove_small,
)
from models.chrnet.targets import marker_map


def published_gaussianmap2binary(marker: np.ndarray, prob: np.ndarray, h: int = 150, threshold: int = 40) -> np.ndarray:
    """``process_instance_hcnet`` -> ``gaussianmap2binary`` written out call by call (with the
    published "most frequent value is background" relabelling, which is 0 on these maps)."""
    pos_map, binary_map = (marker * 255).astype("uint8"), (prob * 255).astype("uint8")
    probs_inv = 255 - pos_map
    seed = np.minimum(probs_inv.astype(np.int64) + h, 255)  # np.vectorize(min(255, x + h)), NumPy 1 promotion
    hrecons = reconstruction(seed.copy(), probs_inv.copy(), method="erosion").astype(np.dtype("ubyte"))
    b_img = binary_map.copy()
    b_img[b_img > threshold] = 255
    b_img[b_img != 255] = 0
    seed1 = np.minimum(hrecons.astype(np.int64) + 1, 255)
    recons1 = reconstruction(seed1.copy(), hrecons.copy(), method="erosion").astype(np.dtype("ubyte"))
    maxima = recons1 - hrecons
    maxima[b_img == 0] = 0
    markers = label(maxima)
    ws_labels = watershed(probs_inv, markers, mask=b_img)
    values, counts = np.unique(ws_labels, return_counts=True)
    arrange = label(ws_labels, background=values[np.argmax(counts)])
    se = np.ones((3, 3), bool)  # square(3)
    ero = arrange.copy()
    ero[ero == 0] = ero.max() + 1
    ero = erosion(ero, se)
    ero[arrange == 0] = 0
    grad = dilation(arrange, se) - ero
    grad[arrange == 0] = 0
    arrange[grad > 0] = 0
    for i in range(1, np.max(np.unique(arrange)) + 1):
        if np.sum(arrange == i) <= 10:
            arrange[arrange == i] = 0
    return arrange


@pytest.mark.parametrize("seed", [0, 7])
def test_instances_equal_the_published_sequence_on_a_synthetic_map(seed):
    _, inst, _ = generate_tile(seed, (160, 160))
    rng = np.random.default_rng(seed)
    marker = np.clip(marker_map(inst) + rng.normal(0, 0.05, inst.shape), 0, 1)
    prob = np.clip((inst > 0) * 0.8 + rng.normal(0.1, 0.1, inst.shape), 0, 1)
    expected = published_gaussianmap2binary(marker, prob)
    ours = instances_from_marker(prob, marker, CHRNetPostprocParams())
    assert expected.max() > 3  # a real test: several nuclei found
    assert np.array_equal(ours, remap_label(expected))
    assert ours.dtype == np.int32


def test_binary_mask_truncates_to_uint8_before_comparing():
    prob = np.array([[40.9 / 255, 41.0 / 255 + 1e-6, 0.0, 1.0]])
    assert binary_mask(prob, 40).tolist() == [[False, True, False, True]]


def test_h_reconstruction_fills_shallow_minima_only():
    image = np.array([[200, 100, 200, 200, 30, 200]], np.uint8)
    # the minimum of depth 100 < h fills up to its rim (200); the deep one (170) rises by h to 180
    assert h_reconstruction(image, 150).tolist() == [[200, 200, 200, 200, 180, 200]]


def test_regional_minima_inside_the_mask_are_labelled_8_connected():
    image = np.array([
        [9, 9, 9, 9, 9],
        [9, 1, 9, 9, 9],
        [9, 9, 1, 9, 9],
        [9, 9, 9, 9, 2],
    ], np.uint8)
    mask = np.ones_like(image, bool)
    mask[3, 4] = False
    assert regional_minima(image, mask).tolist() == [
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],  # diagonal neighbours: one marker
        [0, 0, 0, 0, 0],  # outside the mask: none
    ]


def test_watershed_lines_are_cleared_between_touching_objects_only():
    labels = np.array([
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 2, 0],
        [0, 1, 1, 2, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ])
    # the pixels where 1 and 2 meet (3x3 windows) go; contact with background does not cut
    assert clear_watershed_lines(labels).tolist() == [
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 2, 2, 0],
        [0, 1, 0, 0, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0],
    ]


def test_objects_of_ten_pixels_or_fewer_are_removed():
    labels = np.zeros((6, 10), int)
    labels[0, :10] = 3  # 10 px: removed
    labels[2:4, :6] = 5  # 12 px: kept, renumbered 1
    labels[5, :] = 8  # 10 px: removed
    out = remove_small(labels, 10)
    assert out.max() == 1 and (out == 1).sum() == 12


def test_unknown_option_is_refused():
    with pytest.raises(UserError, match="unknown CHR-Net option"):
        CHRNetPostprocParams.from_options({"np_threshold": 0.5})

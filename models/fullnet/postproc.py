"""FullNet post-processing (published ``test.py``): probabilities -> instance map.

argmax over (background, inside, contour); keep the inside class; drop 4-connected objects
under ``min_area`` pixels; label 8-connected components; grow every label back by a disk of
``radius`` (grey dilation: where grown labels meet, the larger id wins).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import disk

from misc.errors import UserError

INSIDE, CONTOUR = 1, 2


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without its 4-connected components of fewer than ``min_area`` pixels ((H, W) bool)."""
    components, count = ndimage.label(mask)
    if count == 0 or min_area <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[components]


def instances_from_prob(prob: np.ndarray, min_area: int = 20, radius: int = 2) -> np.ndarray:
    """Instance map from class probabilities.

    Args:
        prob: (H, W, 3) float probabilities of background, inside, contour.
        min_area: smallest inside object kept, in pixels (published 20 nuclei, 100 glands).
        radius: disk radius the labels grow by, in pixels (published 2 nuclei, 4 glands).

    Returns:
        (H, W) int32 instance map, ids 1..N, 0 = background.

    Raises:
        UserError: ``prob`` is not (H, W, 3).
    """
    prob = np.asarray(prob)
    if prob.ndim != 3 or prob.shape[2] != 3:
        raise UserError(f"FullNet post-processing: prob map is {prob.shape}; expected (H, W, 3) "
                        "(background, inside, contour)")
    inside = remove_small(np.argmax(prob, axis=2) == INSIDE, int(min_area))
    labels = connected_components(inside, connectivity=2).astype(np.int32)
    if radius > 0 and labels.any():
        labels = ndimage.grey_dilation(labels, footprint=disk(int(radius)).astype(bool), mode="nearest")
    return labels


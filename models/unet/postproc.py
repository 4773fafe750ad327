"""U-Net post-processing: HoVer-Net's watershed at 40x, with the published 20x -> 40x detour.

The published ``process_segmentation`` (SEEDS 6.5) upsamples the 20x maps by 2 (NP and HV
bilinear, types nearest), runs HoVer-Net's ``_proc_np_hv`` with its 40x constants, types
each nucleus by majority vote, and downsamples the result by 0.5 (nearest) back to 20x.
:func:`instances_at_base_mag` does this for any image magnification ``mag``: the maps are
resampled by ``base_mag / mag`` (2 at 20x; nothing to do at 40x), the instances found with
:func:`models.hovernet.postproc.instances_from_np_hv` and typed with
:func:`postproc.instances.instance_info`, and the instance map is sampled back (nearest).
"""

from __future__ import annotations

import cv2
import numpy as np

from models.hovernet.postproc import PostprocParams, check_maps, instances_from_np_hv, remove_small_labels
from postproc.instances import instance_info


def resize_linear(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float maps resized to ``shape`` = (h, w) by bilinear interpolation (float32)."""
    maps = np.asarray(maps, np.float32)
    out = cv2.resize(maps, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return out.reshape(*shape, maps.shape[2])


def nearest_indices(size: int, new_size: int) -> np.ndarray:
    """Source index of each of ``new_size`` samples of an axis of ``size`` pixels (pixel
    centres aligned, as ``cv2.INTER_NEAREST_EXACT``)."""
    return np.minimum(((np.arange(new_size) + 0.5) * size / new_size).astype(np.int64), size - 1)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The first two axes of ``array`` resampled to ``shape`` by nearest neighbour (any dtype)."""
    rows = nearest_indices(array.shape[0], shape[0])
    cols = nearest_indices(array.shape[1], shape[1])
    return array[rows[:, None], cols[None, :]]


def base_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) at ``scale`` times the size, rounded, at least 1 px."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def instances_at_base_mag(
    np_prob: np.ndarray,
    hv: np.ndarray,
    tp_prob: np.ndarray | None,
    params: PostprocParams,
    mag: float | None,
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Instances and their majority types, found at ``params.base_mag``.

    Args:
        np_prob: (H, W) or (H, W, 1) float nuclear probability.
        hv: (H, W, 2) float HV maps (the network's tanh outputs).
        tp_prob: (H, W, T) float type probabilities (channel 0 = background), or None.
        params: HoVer-Net constants at ``params.base_mag`` (not scaled).
        mag: the image's magnification; None or ``base_mag``: no resampling.

    Returns:
        ``inst_map`` (H, W) int32 with ids 1..N, ``types`` {id: majority type} and
        ``type_probs`` {id: fraction of its pixels with that type} (both empty without
        ``tp_prob``); types are voted at ``base_mag``, where the instances were found.
    """
    np_prob, hv = check_maps(np_prob, hv)
    shape = np_prob.shape
    scale = 1.0 if mag is None else params.base_mag / float(mag)
    if scale != 1.0:
        big = base_shape(shape, scale)
        np_prob = resize_linear(np_prob[..., None], big)[..., 0]
        hv = resize_linear(hv, big)
        tp_prob = None if tp_prob is None else resize_nearest(np.asarray(tp_prob), big)
    inst_map = instances_from_np_hv(np_prob, hv, params)
    info = instance_info(inst_map, tp_prob) if tp_prob is not None else {}
    if scale != 1.0:
        inst_map = resize_nearest(inst_map, shape)
    kept = np.unique(inst_map)
    kept = kept[kept > 0]
    inst_map = remove_small_labels(inst_map, 1)  # renumbers the survivors 1..N in id order
    new_ids = range(1, kept.size + 1)
    types = {new: int(info[int(old)]["type"]) for new, old in zip(new_ids, kept)} if info else {}
    type_probs = {new: float(info[int(old)]["type_prob"]) for new, old in zip(new_ids, kept)} if info else {}
    return inst_map.astype(np.int32, copy=False), types, type_probs

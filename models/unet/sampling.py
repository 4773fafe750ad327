"""Class-aware resampling of training patches from their per-type nucleus counts.

The published code has a ``dataset_resample.py`` that re-samples patches by the nucleus
types they hold (SEEDS 6.4); its exact rule is not in the specification. This module uses
repeat-factor sampling (Gupta et al., LVIS, CVPR 2019), the standard rule of that kind for
instance tasks: with ``f_c`` the fraction of patches holding at least one nucleus of type
``c``, type ``c`` gets ``r_c = max(1, sqrt(t / f_c))`` and a patch the largest ``r_c`` of the
types it holds (1 for a patch without nuclei). A patch is then drawn with probability
proportional to its factor, so rare types are seen about ``r_c`` times as often.
"""

from __future__ import annotations

import numpy as np

from misc.errors import UserError
from postproc.instances import dense_labels, instance_types


def type_counts(inst_map: np.ndarray, type_map: np.ndarray, nr_types: int) -> np.ndarray:
    """Nuclei of each type in one patch (each nucleus typed by majority vote of its pixels).

    Args:
        inst_map: (H, W) int instance map, 0 = background.
        type_map: (H, W) int type map, 0 = background, < ``nr_types``.
        nr_types: types including background.

    Returns:
        (nr_types - 1,) int64 counts of types 1..nr_types-1.
    """
    labels, ids = dense_labels(np.asarray(inst_map))
    if ids.size == 0:
        return np.zeros(nr_types - 1, np.int64)
    types, _ = instance_types(labels, np.asarray(type_map), int(labels.max()))
    present = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1) > 0
    present[0] = False
    return np.bincount(types[present], minlength=nr_types)[1:nr_types].astype(np.int64)


def class_aware_weights(counts: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Repeat factors of patches from their per-type counts (see the module docstring).

    Args:
        counts: (P patches, C types) nucleus counts (background excluded).
        threshold: ``t``; types held by fewer than this fraction of patches are over-sampled.

    Returns:
        (P,) float64 factors >= 1 (sampling weights).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise UserError(f"type counts must be (patches, types), got shape {counts.shape}")
    if not threshold > 0:
        raise UserError(f"data.resample must be a positive repeat-factor threshold, got {threshold}")
    holds = counts > 0
    fraction = holds.mean(axis=0) if len(counts) else np.zeros(counts.shape[1])
    factor = np.where(fraction > 0, np.sqrt(threshold / np.where(fraction > 0, fraction, 1.0)), 1.0)
    factor = np.maximum(factor, 1.0)
    return np.max(np.where(holds, factor[None, :], 1.0), axis=1, initial=1.0)

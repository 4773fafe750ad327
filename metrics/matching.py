"""One-to-one matching of overlapping instances (Hungarian, split by connected component)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from metrics.overlap import Overlap


def hungarian_pairs(ov: Overlap, weight: np.ndarray) -> np.ndarray:
    """Indices (into the overlap's pair list) of a maximum-weight one-to-one matching.

    Equivalent to ``linear_sum_assignment(-W)`` on the dense (n_true, n_pred) weight matrix
    followed by dropping zero-weight pairs, but solved separately on each connected
    component of the overlap graph, so the cost stays near-linear in the number of pairs.

    Args:
        ov: the overlap table.
        weight: (K,) float64 positive weight of each overlapping pair (IoU).

    Returns:
        (M,) int64 sorted indices of the matched pairs.
    """
    k = ov.pair_true.size
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    nodes = ov.n_true + ov.n_pred
    graph = sparse.coo_matrix(
        (np.ones(k, dtype=np.int8), (ov.pair_true, ov.n_true + ov.pair_pred)), shape=(nodes, nodes)
    )
    _, label = connected_components(graph, directed=False)
    comp = label[ov.pair_true]
    pairs_in_comp = np.bincount(comp, minlength=label.max() + 1)
    single = pairs_in_comp[comp] == 1
    chosen = [np.flatnonzero(single)]
    multi = np.flatnonzero(~single)
    if multi.size:
        order = multi[np.argsort(comp[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[order])) + 1
        for group in np.split(order, bounds):
            chosen.append(_solve_component(ov, weight, group))
    return np.sort(np.concatenate(chosen))


def _solve_component(ov: Overlap, weight: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Hungarian matching of one connected component; returns indices into the pair list."""
    rows, row_pos = np.unique(ov.pair_true[group], return_inverse=True)
    cols, col_pos = np.unique(ov.pair_pred[group], return_inverse=True)
    sub = np.zeros((rows.size, cols.size), dtype=np.float64)
    index = np.full((rows.size, cols.size), -1, dtype=np.int64)
    sub[row_pos, col_pos] = weight[group]
    index[row_pos, col_pos] = group
    r, c = linear_sum_assignment(-sub)
    picked = index[r, c]
    return picked[picked >= 0]

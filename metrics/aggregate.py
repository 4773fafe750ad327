"""Aggregation of per-image metric rows into data-set means with NaN counts."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np


def nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean skipping NaN; NaN (without a warning) where every value is NaN or there are none."""
    values = np.asarray(values, dtype=np.float64)
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    result = np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)
    return float(result) if np.ndim(result) == 0 else result


def mean_rows(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean of per-image metric rows, skipping NaN, with the NaN count of each key.

    Args:
        rows: one ``{metric: value}`` dict per image (e.g. :func:`metrics.instance_stats`);
            keys missing from a row count as NaN for that row.

    Returns:
        ``{metric: {"mean": float, "n": int, "n_nan": int}}`` where ``n`` counts the
        images that contributed; key order follows first appearance.
    """
    rows = list(rows)
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    result = {}
    for key in keys:
        values = np.array([float(row.get(key, np.nan)) for row in rows], dtype=np.float64)
        n_nan = int(np.isnan(values).sum())
        result[key] = {"mean": nanmean(values), "n": int(values.size - n_nan), "n_nan": n_nan}
    return result

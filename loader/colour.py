"""Colour and stain normalisation of (H, W, 3) uint8 RGB images: Reinhard et al. (2001)
CIELAB statistics transfer and the Macenko et al. (2009) stain estimate. Used by the
``reinhard`` and ``macenko`` augmentation ops and by families that normalise their inputs."""

from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and clip float values to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def lab_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of an (H, W, 3) uint8 image in CIELAB
    (OpenCV float conversion: L in [0, 100], a and b about [-127, 127])."""
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_normalise(image: np.ndarray, target: Mapping[str, Any]) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer of an (H, W, 3) uint8 RGB image: its per-channel
    CIELAB mean and standard deviation (whole-image statistics) become ``target['mean']`` and
    ``target['std']`` (3 values each, :func:`lab_statistics` units); returns (H, W, 3) uint8."""
    goal_mean, goal_std = (np.asarray(target[key], dtype=np.float64) for key in ("mean", "std"))
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    mean, std = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
    lab = (lab - mean) / np.maximum(std, 1e-6) * goal_std + goal_mean
    return to_uint8(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0)


def macenko_stains(image: np.ndarray, io: float, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Macenko et al. (2009) stain estimate of an (H, W, 3) uint8 image.

    Returns:
        ``(stain_matrix (3, 2) columns H then E in optical density, max_conc (2,) 99th
        percentile concentrations)``, or None when fewer than 100 pixels have OD >= ``beta``.
    """
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    tissue = od[np.all(od >= beta, axis=1)]
    if len(tissue) < 100:
        return None
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]
    projected = tissue @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v_min = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_max = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v_min, v_max] if v_min[0] > v_max[0] else [v_max, v_min], axis=1)
    stains *= np.sign(stains.sum(axis=0, keepdims=True))
    conc = np.linalg.pinv(stains) @ od.T
    return stains, np.percentile(conc, 99, axis=1)

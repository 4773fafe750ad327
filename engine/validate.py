"""Validation during training: whole images through the tiled inference and the family's
post-processing and scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from engine.data import sample_dict
from inference.predict import predict_image
from loader.keys import sample_keys
from metrics import mean_rows
from models.base import Family
from models.tasks import with_class_grid

OVERLAY_IMAGES = 3


def validate(
    family: Family, net: nn.Module, samples: Any, cfg: dict, device: torch.device, amp_dtype: torch.dtype | None,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Score whole validation images with the tiled inference and post-processing of
    ``infer.py``/``process.py`` (``inference.predict.infer_image``, ``family.postprocess`` at
    ``infer.mag``), then ``family.evaluate`` (the scores of the family's training task). A
    family that overrides ``calibrate`` gets every result and truth afterwards (e.g. to fit
    decision thresholds for the next validation and the checkpoint).

    Returns:
        The mean of every score over images (NaN scores skipped) and up to
        :data:`OVERLAY_IMAGES` (H, W, 3) uint8 overlays for TensorBoard.
    """
    rows: list[dict[str, float]] = []
    overlays: list[np.ndarray] = []
    calibrates = type(family).calibrate is not Family.calibrate
    kept: tuple[list, list] = ([], [])
    for sample in samples:
        truth = sample_dict(sample, sample_keys(family.sample_keys))
        sink = predict_image(family, net, truth["image"], device, amp_dtype=amp_dtype)
        result = family.postprocess(sink.maps, mag=cfg["infer"].get("mag"))
        rows.append(family.evaluate(result, truth))
        if calibrates:
            kept[0].append(result)
            kept[1].append(truth)
        if len(overlays) < OVERLAY_IMAGES:
            picture = family.overlay(truth["image"], with_class_grid(result, sink.maps, sink.grids))
            if picture is not None:
                overlays.append(picture)
    if calibrates:
        family.calibrate(*kept)
    return {key: entry["mean"] for key, entry in mean_rows(rows).items()}, overlays

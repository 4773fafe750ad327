"""Two throw-away families that prove the engine serves any family, registered as a plugin.

``python train.py --plugin tests.engine.toy_families --model toy_patchcls --data synthetic``

- ``toy_patchcls``: a patch-label classifier (HistoSegNet-like): trained from image-level
  multi-hot labels only; standardises inputs with statistics fitted on the training images.
- ``toy_cascade``: a two-stage cascade (H2G-Net-like): a coarse detector on a downsampled
  image, then a refiner on the image plus the upsampled coarse map; phase 1 trains the
  detector, phase 2 the refiner.

Setting ``TOY_STEP_SLEEP`` (seconds) slows every training step, so that a test can kill a
run mid-epoch; it changes no number.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label
from torch import nn

from models import register_family
from models.base import Family

HERE = Path(__file__).resolve().parent


def _pause() -> None:
    delay = float(os.environ.get("TOY_STEP_SLEEP", "0"))
    if delay > 0:
        time.sleep(delay)


def present_types(type_map: np.ndarray, classes: int) -> np.ndarray:
    """(classes,) float32 multi-hot: whether type ``c + 1`` occurs in the (H, W) ``type_map``."""
    return np.isin(np.arange(1, classes + 1), type_map).astype(np.float32)


class PatchLabels:
    """Target builder of ``toy_patchcls``: image and multi-hot patch labels."""

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        labels = sample.get("labels")
        if labels is None:
            labels = present_types(sample["type_map"], self.classes)
        return {"image": np.ascontiguousarray(sample["image"]), "labels": np.asarray(labels, np.float32)}


class PatchClassifierFamily(Family):
    """Multi-label patch classifier: conv → pool → linear; BCE on patch labels."""

    name = "toy_patchcls"

    @classmethod
    def default_config_path(cls) -> Path:
        return HERE / "toy_patchcls.yaml"

    def build_network(self) -> nn.Module:
        width, classes = self.cfg["model"]["width"], self.cfg["model"]["classes"]
        return nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes),
        )

    def fit_norm_stats(self, images: Sequence[np.ndarray]) -> dict:
        pixels = np.concatenate([np.asarray(image, np.float64).reshape(-1, 3) for image in images])
        return {"mean": pixels.mean(0).tolist(), "std": (pixels.std(0) + 1e-6).tolist()}

    def _standardise(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.norm_stats["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.norm_stats["std"], device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return PatchLabels(self.cfg["model"]["classes"])

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _pause()
        return {"logits": net(self._standardise(batch["image"]))}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        bce = F.binary_cross_entropy_with_logits(outputs["logits"], batch["labels"])
        return weights["bce"] * bce, {"bce": bce}

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(net(self._standardise(images)))
        return {"class_prob": probs[:, :, None, None].expand(-1, -1, images.shape[2], images.shape[3])}

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        threshold = options.get("threshold", self.cfg["postproc"]["threshold"])
        probs = raw["class_prob"].reshape(-1, raw["class_prob"].shape[-1]).mean(0)
        return {"class_prob": probs, "labels": (probs >= threshold).astype(np.float32)}

    def evaluate(self, result: dict[str, Any], sample: dict[str, Any]) -> dict[str, float]:
        truth = sample.get("labels")
        if truth is None:
            truth = present_types(sample["type_map"], self.cfg["model"]["classes"])
        pred = result["labels"]
        tp = float((pred * truth).sum())
        denominator = float(pred.sum() + truth.sum())
        return {"accuracy": float((pred == truth).mean()), "f1": 2 * tp / denominator if denominator else 1.0}


class ForegroundTarget:
    """Target builder of ``toy_cascade``: image and (1, H, W) float foreground mask."""

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        foreground = (sample["inst_map"] > 0).astype(np.float32)[None]
        return {"image": np.ascontiguousarray(sample["image"]), "foreground": foreground}


class Cascade(nn.Module):
    """Stage 1 ``detect`` sees the image downsampled by ``factor``; stage 2 ``refine`` sees
    the full image plus the upsampled stage-1 probability. Input (N, 3, H, W) 0-255 float."""

    def __init__(self, width: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.detect = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(width, 1, 1)
        )
        self.refine = nn.Sequential(
            nn.Conv2d(4, width, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(width, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images / 255.0
        coarse = self.detect(F.avg_pool2d(x, self.factor))
        coarse = F.interpolate(coarse, size=x.shape[2:], mode="nearest")
        fine = self.refine(torch.cat([x, torch.sigmoid(coarse)], dim=1))
        return {"coarse": coarse, "fine": fine}


class CascadeFamily(Family):
    """Two-network cascade trained stage by stage through phases."""

    name = "toy_cascade"

    @classmethod
    def default_config_path(cls) -> Path:
        return HERE / "toy_cascade.yaml"

    def build_network(self) -> nn.Module:
        return Cascade(self.cfg["model"]["width"], self.cfg["model"]["factor"])

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return ForegroundTarget()

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _pause()
        return net(batch["image"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {
            name: F.binary_cross_entropy_with_logits(outputs[name], batch["foreground"]) for name in ("coarse", "fine")
        }
        return sum(weights[name] * value for name, value in terms.items()), terms

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fg_prob": torch.sigmoid(net(images)["fine"])}

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        threshold = options.get("threshold", self.cfg["postproc"]["threshold"])
        inst_map = label(raw["fg_prob"][..., 0] >= threshold).astype(np.int32)
        return {"inst_map": inst_map, "type_map": None, "inst_info": {}}


register_family(PatchClassifierFamily.name, PatchClassifierFamily)
register_family(CascadeFamily.name, CascadeFamily)

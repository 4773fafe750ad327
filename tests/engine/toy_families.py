"""Throw-away families that prove the engine serves any family, registered as a plugin.

``python train.py --plugin tests.engine.toy_families --model toy_patchcls --data synthetic``

- ``toy_patchcls`` (task ``patch``): a patch-label classifier (HistoSegNet-like) trained from
  image-level multi-hot labels only; standardises inputs with statistics fitted on the
  training images; emits one (C,) probability vector per window; fits per-class decision
  thresholds on the validation images (stored in checkpoints).
- ``toy_phases`` (task ``instance``): one network of two parts, a coarse detector on a
  downsampled image and a refiner on the image plus the upsampled coarse map; phase 1 trains
  the detector, phase 2 the refiner (frozen parts, per-phase optimisers and loss weights).
- ``toy_cascade`` (task ``semantic``): a real two-stage family (H2G-Net-like). Stage
  ``detect`` is a classifier of 8x8 windows slid over the image (a foreground heatmap with one
  value per window); stage ``refine`` segments foreground from the image plus the detect
  heatmap upsampled to it, with its own window, data crops and phases.

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
from models.base import Family, previous_at

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


def youden_thresholds(probs: np.ndarray, truth: np.ndarray, default: float) -> list[float]:
    """Per-class thresholds maximising Youden's J (TPR - FPR) over the (N, C) validation
    probabilities; ``default`` for a class without both labels."""
    thresholds = []
    for c in range(probs.shape[1]):
        pos, neg = truth[:, c] > 0.5, truth[:, c] <= 0.5
        if not pos.any() or not neg.any():
            thresholds.append(float(default))
            continue
        candidates = np.unique(probs[:, c])
        tpr = (probs[pos, c][None, :] >= candidates[:, None]).mean(1)
        fpr = (probs[neg, c][None, :] >= candidates[:, None]).mean(1)
        thresholds.append(float(candidates[int(np.argmax(tpr - fpr))]))
    return thresholds


class PatchClassifierFamily(Family):
    """Multi-label patch classifier: conv → pool → linear; BCE on patch labels."""

    name = "toy_patchcls"
    task = "patch"

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
        """(N, C) class probabilities of each window."""
        return {"class_prob": torch.sigmoid(net(self._standardise(images)))}

    def thresholds(self) -> np.ndarray:
        """(C,) decision thresholds: fitted ones (``extra_state``), else ``postproc.threshold``."""
        fitted = self.extra_state.get("thresholds")
        if fitted is not None:
            return np.asarray(fitted, np.float64)
        return np.full(self.cfg["model"]["classes"], float(self.cfg["postproc"]["threshold"]))

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        probs = raw["class_prob"].reshape(-1, raw["class_prob"].shape[-1]).mean(0)
        thresholds = self.thresholds()
        if "threshold" in options:
            thresholds = np.full_like(thresholds, float(options["threshold"]))
        return {"class_prob": probs, "labels": (probs >= thresholds).astype(np.float32), "thresholds": thresholds}

    def image_labels(self, sample: dict[str, Any]) -> np.ndarray:
        if sample.get("labels") is not None:
            return np.asarray(sample["labels"], np.float32)
        return present_types(sample["type_map"], self.cfg["model"]["classes"])

    def calibrate(self, results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
        probs = np.stack([result["class_prob"] for result in results])
        truth = np.stack([self.image_labels(sample) for sample in samples])
        self.extra_state["thresholds"] = youden_thresholds(probs, truth, self.cfg["postproc"]["threshold"])


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


class PhasedFamily(Family):
    """One network of two parts trained part by part through phases."""

    name = "toy_phases"

    @classmethod
    def default_config_path(cls) -> Path:
        return HERE / "toy_phases.yaml"

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


class CoverTarget:
    """Target builder of ``toy_cascade``'s ``detect`` stage: image and the window's foreground share."""

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        share = np.float32((sample["inst_map"] > 0).mean())
        return {"image": np.ascontiguousarray(sample["image"]), "cover": np.array([share], np.float32)}


class RefineTarget:
    """Target builder of ``toy_cascade``'s ``refine`` stage: a (4, H, W) float32 input (RGB and
    the detect heatmap x 255, as at inference) and the (1, H, W) foreground."""

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        image = np.asarray(sample["image"], np.float32).transpose(2, 0, 1)
        heat = np.asarray(sample["heat"], np.float32)[None] * 255.0
        foreground = (sample["inst_map"] > 0).astype(np.float32)[None]
        return {"image": np.ascontiguousarray(np.concatenate([image, heat])), "foreground": foreground}


class CascadeFamily(Family):
    """Two stages, each its own network, data crops, phases and window (see the module docstring)."""

    name = "toy_cascade"
    task = "semantic"

    @classmethod
    def default_config_path(cls) -> Path:
        return HERE / "toy_cascade.yaml"

    def build_network(self) -> nn.Module:
        width = self.cfg["model"]["width"]
        if self.stage == "detect":
            return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                 nn.Linear(width, 1))
        return nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(width, 1, 1))

    def example_input(self) -> torch.Tensor:
        size = int(self.cfg["infer"]["input_size"])
        return torch.zeros(1, 3 if self.stage == "detect" else 4, size, size)

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return CoverTarget() if self.stage == "detect" else RefineTarget()

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _pause()
        return {"logit": net(batch["image"] / 255.0)}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = batch["cover"] if self.stage == "detect" else batch["foreground"]
        bce = F.binary_cross_entropy_with_logits(outputs["logit"], target)
        return weights["bce"] * bce, {"bce": bce}

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """detect: (N, 1) ``heat`` per window; refine: (N, 1, H, W) ``fg_prob``."""
        probs = torch.sigmoid(net(images / 255.0))
        return {"heat": probs} if self.stage == "detect" else {"fg_prob": probs}

    def stage_input(self, image: np.ndarray, previous: dict[str, np.ndarray]) -> np.ndarray:
        """(H, W, 4) float32: RGB and the detect heatmap (placed by its window geometry) x 255."""
        heat = previous_at(previous, image.shape[:2])["heat"]
        return np.concatenate([np.asarray(image, np.float32), heat[..., None] * 255.0], axis=2)

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Foreground class map: at the heatmap's grid (one value per window) for detect, at
        the image's pixels for refine."""
        threshold = options.get("threshold", self.cfg["postproc"]["threshold"])
        values = raw["heat"] if self.stage == "detect" else raw["fg_prob"]
        return {"class_map": (values[..., 0] >= threshold).astype(np.int32)}

    def class_truth(self, sample: dict[str, Any]) -> np.ndarray:
        """Foreground (1) where the sample has a nucleus; for detect, where a window is mostly
        foreground (one value per ``infer.step`` x ``infer.step`` window, as the heatmap)."""
        foreground = (np.asarray(sample["inst_map"]) > 0).astype(np.float32)
        if self.stage != "detect":
            return foreground.astype(np.int32)
        step = int(self.cfg["infer"]["output_size"])
        rows, cols = -(-foreground.shape[0] // step), -(-foreground.shape[1] // step)
        padded = np.zeros((rows * step, cols * step), np.float32)
        padded[: foreground.shape[0], : foreground.shape[1]] = foreground
        return (padded.reshape(rows, step, cols, step).mean((1, 3)) >= 0.5).astype(np.int32)


register_family(PatchClassifierFamily.name, PatchClassifierFamily)
register_family(PhasedFamily.name, PhasedFamily)
register_family(CascadeFamily.name, CascadeFamily)

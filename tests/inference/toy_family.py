"""A throw-away family for inference tests: a fixed 1x1 convolution with a known output.

Per pixel, ``p = 1 - mean(r, g, b) / 255`` (dark = nucleus) and ``q = r / 255``.
``predict`` returns the centred output window of ``np_prob`` (p), ``hv`` (p, -p),
``tp_prob`` (1 - p, p (1 - q), p q), ``extra`` (p repeated ``model.extra_channels`` times,
when > 0) and ``tta`` (ones, only when ``infer.tta`` is on), after sleeping ``model.delay``
seconds. ``postprocess`` labels the connected components of ``np_prob > postproc.threshold``
(0.5) and types them by the arg-max of ``tp_prob``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import disk
from torch import nn

import models
from models.base import Family
from postproc.instances import instance_info, instance_type_map

TOY_CONFIG = {
    "model": {"extra_channels": 0, "delay": 0.0},
    "infer": {"input_size": 32, "output_size": 16, "batch_size": 4, "tta": False, "mag": 40},
    "postproc": {"threshold": 0.5},
    "family": "toy",
    "profile": "paper",
}


def toy_targets(sample: dict) -> dict[str, np.ndarray]:
    """Training arrays of the toy family: the image and its foreground."""
    return {"image": sample["image"], "fg": (sample["inst_map"] > 0).astype(np.float32)}


class ToyFamily(Family):
    """Fixed 1x1-conv family with a known output (see the module docstring)."""

    name = "toy"
    last_options: dict = {}

    def build_network(self) -> nn.Module:
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[-1 / 765, -1 / 765, -1 / 765], [1 / 255, 0, 0]]).reshape(2, 3, 1, 1))
            conv.bias.copy_(torch.tensor([1.0, 0.0]))
        return conv

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return toy_targets

    def loss(self, outputs, batch, weights) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        term = ((outputs[:, :1] - batch["fg"][:, None]) ** 2).mean()
        return term, {"mse": term}

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        time.sleep(self.cfg["model"]["delay"])
        infer = self.cfg["infer"]
        margin = (infer["input_size"] - infer["output_size"]) // 2
        out = net(images)[:, :, margin : margin + infer["output_size"], margin : margin + infer["output_size"]]
        p, q = out[:, :1], out[:, 1:]
        maps = {"np_prob": p, "hv": torch.cat([p, -p], 1), "tp_prob": torch.cat([1 - p, p * (1 - q), p * q], 1)}
        if self.cfg["model"]["extra_channels"]:
            maps["extra"] = p.repeat(1, self.cfg["model"]["extra_channels"], 1, 1)
        if infer["tta"]:
            maps["tta"] = torch.ones_like(p)
        return maps

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        ToyFamily.last_options = dict(options)
        inst_map = ndimage.label(raw["np_prob"][..., 0] > self.cfg["postproc"]["threshold"])[0].astype(np.int32)
        info = instance_info(inst_map, raw["tp_prob"])
        return {"inst_map": inst_map, "type_map": instance_type_map(inst_map, info), "inst_info": info}


TOY_CLASSES = {0: ("background", (255, 255, 255)), 1: ("tissue", (230, 150, 200)), 2: ("dark", (30, 30, 160))}


class ToySemanticFamily(ToyFamily):
    """The toy family as a semantic one: class 0 (background) where ``np_prob`` < 0.2, 1
    (tissue) below 0.4, 2 (dark) above (thresholds between the toy's 1/765 steps, so that
    float16 storage moves no pixel across); ``confidence`` is ``np_prob``."""

    name = "toy_semantic"
    task = "semantic"

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        ToyFamily.last_options = dict(options)
        prob = raw["np_prob"][..., 0]
        return {"class_map": np.digitize(prob, [0.2005, 0.4005]).astype(np.int32), "confidence": prob}


def toy_semantic_family(**infer: Any) -> tuple[ToySemanticFamily, nn.Module]:
    """A :class:`ToySemanticFamily` with :data:`TOY_CLASSES` as its class info, and its network."""
    cfg = {**TOY_CONFIG, "infer": {**TOY_CONFIG["infer"], **infer}, "model": dict(TOY_CONFIG["model"]),
           "postproc": {"class_info": {str(k): [name, list(colour)] for k, (name, colour) in TOY_CLASSES.items()}},
           "family": "toy_semantic"}
    family = ToySemanticFamily(cfg)
    return family, family.build_network().eval()


def expected_np_prob(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) float32 ``np_prob`` the toy family predicts for ``image``."""
    return (1 - image.astype(np.float64).mean(axis=2, keepdims=True) / 255).astype(np.float32)


def nuclei_image(shape: tuple[int, int] = (64, 48), seed: int = 0) -> np.ndarray:
    """Light background with dark discs (type 1) and red discs (type 2), (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    image = np.full((*shape, 3), 230, np.uint8)
    for k in range(max(2, shape[0] * shape[1] // 600)):
        centre = rng.integers(6, np.array(shape) - 6)
        rows, cols = disk(tuple(centre), int(rng.integers(3, 7)), shape=shape)
        image[rows, cols] = (200, 20, 20) if k % 2 else (20, 40, 60)
    return image


def toy_family(**infer: Any) -> tuple[ToyFamily, nn.Module]:
    """A toy family (its ``infer`` section updated by ``infer``) and its network."""
    cfg = {**TOY_CONFIG, "infer": {**TOY_CONFIG["infer"], **infer}, "model": dict(TOY_CONFIG["model"])}
    family = ToyFamily(cfg)
    return family, family.build_network().eval()


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the toy family under 'toy' for one test (process.py rebuilds families by name)."""
    monkeypatch.setitem(models.FAMILIES, "toy", ToyFamily)

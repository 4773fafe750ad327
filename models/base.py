"""The family interface: everything the engine, ``infer.py`` and ``process.py`` need.

A family subclasses :class:`Family` in ``models/<family>/`` and is registered by one line in
``models/__init__.py``. Shared code never branches on a family's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn


class Family(ABC):
    """Base class of a model family.

    Args:
        cfg: the resolved configuration (see ``config.load_config``).
    """

    name: ClassVar[str] = ""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg

    @abstractmethod
    def build_network(self) -> nn.Module:
        """Build the network from ``self.cfg['model']``."""

    @abstractmethod
    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        """A picklable callable turning one augmented sample into training arrays.

        The sample is ``{'image': (H, W, 3) uint8, 'inst_map': (H, W) int32,
        'type_map': (H, W) int32 (when typed)}`` (patch-label families get ``'labels'``).
        The result holds ``'image'`` and every target the loss reads, as numpy arrays.
        """

    @abstractmethod
    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its named terms for one batch.

        Args:
            outputs: the network's raw outputs (logits) for ``batch['image']``.
            batch: collated target arrays as tensors on the training device.
            weights: loss-term weights of the current phase.
        """

    @abstractmethod
    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference outputs for a batch of input windows.

        Args:
            images: (N, 3, H, W) float RGB in 0-255 on the network's device.

        Returns:
            Named (N, C, h, w) maps for the output window (probabilities, not logits),
            e.g. ``np_prob``, ``hv``, ``tp_prob``: what ``infer.py`` stores.
        """

    @abstractmethod
    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Turn one image's stored outputs into results.

        Args:
            raw: the named (H, W, C) float maps ``predict`` produced, stitched over the image.

        Returns:
            Instance families: ``{'inst_map': (H, W) int32, 'type_map': (H, W) int32 or None,
            'inst_info': {id: {'bbox', 'centroid', 'contour', 'type', 'type_prob'}}}``.
        """

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward pass; the default feeds ``batch['image']`` to the network."""
        return net(batch["image"])

    def parameter_groups(self, net: nn.Module, phase: dict) -> list[dict]:
        """Optimiser parameter groups for a phase; modules named in ``phase['freeze']`` are frozen.

        A frozen module also runs in eval mode (its batch-norm statistics stay fixed).
        """
        frozen = tuple(phase.get("freeze") or ())
        params = []
        for name, param in net.named_parameters():
            trainable = not any(name == prefix or name.startswith(prefix + ".") for prefix in frozen)
            param.requires_grad_(trainable)
            if trainable:
                params.append(param)
        return [{"params": params}]

"""The FullNet + varCE family (Qu et al., MICCAI 2019): network, targets, loss, prediction, post-processing.

Configuration (``opt/fullnet.yaml``): ``model`` {n_layers, growth, compression, drop_rate,
block_dilations, hybrid, pooling, memory_efficient, reinhard, reinhard_anchor};
``targets`` {radius, weight_map, w0, sigma}; ``loss`` {alpha}; ``infer`` {input_size,
output_size, keep_margin, pad_mode, batch_size, tta, mag}; ``postproc`` {min_area, radius}.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from loader.colour import reinhard_normalise
from misc.errors import UserError
from models.base import Family
from models.fullnet.loss import fullnet_loss
from models.fullnet.net import BLOCK_DILATIONS, FullNet
from models.fullnet.postproc import instances_from_prob
from models.fullnet.targets import FullNetTargets
from postproc.instances import instance_info

NUM_CLASSES = 3


class FullNetFamily(Family):
    """FullNet: 3-class (background, inside, contour) full-resolution segmentation; instances
    are the connected components of the inside class grown back by a disk."""

    name = "fullnet"

    def build_network(self) -> nn.Module:
        """:class:`models.fullnet.net.FullNet` from ``cfg['model']``."""
        model = self.cfg["model"]
        return FullNet(
            in_channels=3,
            num_classes=NUM_CLASSES,
            n_layers=int(model.get("n_layers", 6)),
            growth=int(model.get("growth", 24)),
            compression=float(model.get("compression", 0.5)),
            drop_rate=float(model.get("drop_rate", 0.1)),
            block_dilations=tuple(int(d) for d in model.get("block_dilations") or BLOCK_DILATIONS),
            hybrid=bool(model.get("hybrid", True)),
            pooling=bool(model.get("pooling", False)),
            memory_efficient=bool(model.get("memory_efficient", False)),
        )

    def target_builder(self) -> FullNetTargets:
        """:class:`models.fullnet.targets.FullNetTargets` from ``cfg['targets']`` and the Reinhard target."""
        targets = self.cfg.get("targets") or {}
        return FullNetTargets(
            radius=int(targets.get("radius", 1)),
            use_weight_map=bool(targets.get("weight_map", True)),
            w0=float(targets.get("w0", 10.0)),
            sigma=float(targets.get("sigma", 5.0)),
            reinhard=self.reinhard_target,
        )

    def fit_norm_stats(self, images: list[np.ndarray]) -> dict:
        """Per-channel mean/std (0-255 units) over all training images, after Reinhard
        normalisation, and the Reinhard target itself (``reinhard``, None when off; see
        :meth:`models.base.Family.fit_reinhard_target`), so that a checkpoint normalises
        colours without the anchor image."""
        target = self.fit_reinhard_target(images)
        total = np.zeros(3)
        squares = np.zeros(3)
        count = 0
        for image in images:
            image = np.asarray(image)
            pixels = (image if target is None else reinhard_normalise(image, target)).reshape(-1, 3).astype(np.float64)
            total += pixels.sum(0)
            squares += (pixels * pixels).sum(0)
            count += pixels.shape[0]
        if count == 0:
            raise UserError("FullNet: no training images to compute the input mean/std from")
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 1e-12))
        return {"mean": mean.tolist(), "std": std.tolist(), "reinhard": target}

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) 0-255 -> standardised with ``norm_stats`` (or scaled to 0-1 without them)."""
        if self.norm_stats is None:
            return images / 255.0
        mean = torch.tensor(self.norm_stats["mean"], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.norm_stats["std"], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Training forward pass: (N, 3, H, W) logits of the normalised ``batch['image']``."""
        return net(self.normalise(batch["image"]))

    def loss(
        self, outputs: torch.Tensor, batch: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss_weights.ce`` x ``ce`` + ``loss.alpha`` x ``loss_weights.var`` x ``var``
        (see :mod:`models.fullnet.loss`)."""
        alpha = float((self.cfg.get("loss") or {}).get("alpha", 1.0)) * float(weights.get("var", 1.0))
        return fullnet_loss(outputs, batch, alpha=alpha, ce_weight=float(weights.get("ce", 1.0)))

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``prob``: (N, 3, H, W) float32 probabilities of background, inside, contour for
        (N, 3, H, W) windows in 0-255 (the inference predictor averages them over ``infer.tta``'s
        transforms)."""
        with torch.no_grad():
            return {"prob": net(self.normalise(images)).float().softmax(1)}

    def postprocess(self, raw: dict[str, np.ndarray], mag: float | None = None, **options: Any) -> dict[str, Any]:
        """Instances from the stitched ``prob`` map.

        Args:
            raw: ``prob`` (H, W, 3) float.
            mag: unused (constants are in pixels at the training magnification).
            options: ``postproc`` keys (``min_area``, ``radius``) overriding the configuration.

        Returns:
            ``inst_map`` (H, W) int32, ``type_map`` None, ``inst_info`` (see
            :func:`postproc.instances.instance_info`), ``inside_prob`` and ``contour_prob``
            (H, W) float32.
        """
        if "prob" not in raw:
            raise UserError(f"FullNet post-processing needs the raw map 'prob' (have {sorted(raw)})")
        params = {**(self.cfg.get("postproc") or {}), **options}
        unknown = sorted(set(params) - {"min_area", "radius"})
        if unknown:
            raise UserError(f"postproc: unknown FullNet option(s) {unknown}; expected min_area, radius")
        prob = np.asarray(raw["prob"], dtype=np.float32)
        inst_map = instances_from_prob(prob, int(params.get("min_area", 20)), int(params.get("radius", 2)))
        return {
            "inst_map": inst_map,
            "type_map": None,
            "inst_info": instance_info(inst_map),
            "inside_prob": prob[..., 1],
            "contour_prob": prob[..., 2],
        }

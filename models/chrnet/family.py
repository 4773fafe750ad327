"""The CHR-Net family (Gao et al., MICCAI 2021): ccRCC nucleus grading with W-Net and two HRFEs.

Configuration (``opt/chrnet.yaml``): ``model`` {nr_types, groupings, encoder {units, width,
block_relu, gc}, width, pretrained, reinhard, reinhard_anchor}; ``loss`` {class_weights,
dice_smooth}; ``infer`` {input_size, output_size, keep_margin, step, pad_mode, batch_size,
mag}; ``postproc`` (see :class:`models.chrnet.postproc.CHRNetPostprocParams`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from misc.errors import UserError
from models.base import Family
from models.chrnet.loss import chrnet_loss
from models.chrnet.net import CHRNet, load_resnet34, output_size_for, read_resnet34
from models.chrnet.postproc import CHRNetPostprocParams, foreground_type_prob, instances_from_marker
from models.chrnet.targets import CHRNetTargets, grouping_lookups
from postproc.instances import instance_info, instance_type_map

ENCODER_PREFIX = "encoder"


class CHRNetFamily(Family):
    """CHR-Net: W-Net instances (binary map + marker watershed) typed by two HRFEs that learn
    the cross-category groupings of ``model.groupings`` and a 1x1 fusion to the fine types.

    ``freeze: [encoder]`` in a phase is the published phase-1 freeze: the encoder's residual
    branches and group outputs are detached (no gradients; the stem still trains), batch-norm
    statistics keep updating.
    """

    name = "chrnet"
    #: A reader may supply the marker map (H, W) float in [0, 1]; otherwise the target builder's
    #: ``precompute`` makes it before augmentation, as published.
    sample_keys = ("marker_map",)

    @property
    def nr_types(self) -> int:
        """Fine classes including background (ccRCC 5)."""
        nr_types = int(self.cfg["model"].get("nr_types") or 0)
        if nr_types < 2:
            raise UserError(f"model.nr_types is {nr_types}; CHR-Net classifies nuclei (types incl. background >= 2)")
        return nr_types

    def lookups(self) -> list[np.ndarray]:
        """The two fine-class -> group lookup tables (checked, see :func:`grouping_lookups`)."""
        return grouping_lookups(self.cfg["model"].get("groupings"), self.nr_types)

    def _check_windows(self) -> None:
        """Raise unless ``infer.output_size`` is ``infer.input_size - 6`` for a valid input size."""
        infer = self.cfg["infer"]
        expected = output_size_for(int(infer["input_size"]))
        if int(infer["output_size"]) != expected:
            raise UserError(f"infer.output_size is {infer['output_size']} but CHR-Net returns {expected} px for "
                            f"infer.input_size {infer['input_size']}; set infer.output_size: {expected}")

    def build_network(self) -> nn.Module:
        """:class:`models.chrnet.net.CHRNet` from ``cfg['model']``; ``model.pretrained`` (a local
        torchvision ResNet-34 state dict) initialises the encoder."""
        model = self.cfg["model"]
        self._check_windows()
        encoder = model.get("encoder") or {}
        net = CHRNet(
            nr_types=self.nr_types,
            group_sizes=[int(lut.max()) + 1 for lut in self.lookups()],
            units=tuple(int(n) for n in encoder.get("units", (3, 4, 6, 3))),
            encoder_width=float(encoder.get("width", 1.0)),
            width=float(model.get("width", 1.0)),
            block_relu=bool(encoder.get("block_relu", False)),
            gc=bool(encoder.get("gc", True)),
        )
        if model.get("pretrained"):
            source = str(model["pretrained"])
            load_resnet34(net.encoder, read_resnet34(source), f"model.pretrained '{source}'")
        return net

    def target_builder(self) -> CHRNetTargets:
        """Targets at ``infer.input_size`` / ``infer.output_size`` with the run's Reinhard target."""
        self._check_windows()
        return CHRNetTargets(
            input_size=int(self.cfg["infer"]["input_size"]),
            output_size=int(self.cfg["infer"]["output_size"]),
            nr_types=self.nr_types,
            lookups=tuple(tuple(int(v) for v in lut) for lut in self.lookups()),
            reinhard=self.reinhard_target,
        )

    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted CHR-Net terms (see :mod:`models.chrnet.loss`)."""
        options = self.cfg.get("loss") or {}
        return chrnet_loss(outputs, batch, weights, class_weights=options.get("class_weights"),
                           dice_smooth=float(options.get("dice_smooth", 1.0e-3)))

    @staticmethod
    def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> ``np_prob`` (N, 1, h, w) foreground probability, ``marker`` (N, 1, h, w)
        in [0, 1], ``tp_prob`` (N, T, h, w) type probabilities; float32."""
        return {
            "np_prob": logits["np"].float().softmax(1)[:, 1:2],
            "marker": torch.sigmoid(logits["marker"].float()),
            "tp_prob": logits["tp"].float().softmax(1),
        }

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``np_prob``, ``marker`` and ``tp_prob`` for (N, 3, S, S) windows in 0-255 (all scalar
        maps: ``infer.tta``, not published, averages them over the transformed windows)."""
        with torch.no_grad():
            return self.probabilities(net(images))

    def postprocess(self, raw: dict[str, np.ndarray], mag: float | None = None, **options: Any) -> dict[str, Any]:
        """Instances and types from stitched maps (see :mod:`models.chrnet.postproc`).

        Args:
            raw: ``np_prob`` (H, W, 1), ``marker`` (H, W, 1), ``tp_prob`` (H, W, T) float.
            mag: unused (the constants are the published 40x ones, in pixels).
            options: ``postproc`` keys overriding the configuration.

        Returns:
            ``inst_map`` (H, W) int32, ``type_map`` (H, W) int32, ``inst_info``.
        """
        for key in ("np_prob", "marker", "tp_prob"):
            if key not in raw:
                raise UserError(f"CHR-Net post-processing needs the raw map '{key}' (have {sorted(raw)})")
        params = CHRNetPostprocParams.from_options({**(self.cfg.get("postproc") or {}), **options})
        inst_map = instances_from_marker(raw["np_prob"], raw["marker"], params)
        info = instance_info(inst_map, foreground_type_prob(raw["tp_prob"]))
        return {"inst_map": inst_map, "type_map": instance_type_map(inst_map, info), "inst_info": info}

    def evaluate(self, result: dict[str, Any], sample: dict[str, Any]) -> dict[str, float]:
        """Validation scores of one image: :func:`metrics.instance_stats` (``dice`` first: the
        published checkpoint selection is by validation Dice), per-class ``pq_type<c>`` and
        their NaN-skipping mean ``mpq`` when the sample is typed."""
        from metrics import instance_stats, pq_per_class

        scores = {key: float(value) for key, value in instance_stats(sample["inst_map"], result["inst_map"]).items()}
        if sample.get("type_map") is not None and result.get("type_map") is not None:
            per_class = pq_per_class(sample["inst_map"], sample["type_map"], result["inst_map"], result["type_map"],
                                     self.nr_types - 1)
            scores |= {f"pq_type{c}": float(v) for c, v in enumerate(per_class, start=1)}
            scores["mpq"] = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
        return scores

    def frozen_prefixes(self, phase: dict) -> list[str]:
        """Prefixes frozen the generic way: all but ``encoder``, which uses the published freeze."""
        return [prefix for prefix in super().frozen_prefixes(phase) if prefix != ENCODER_PREFIX]

    def parameter_groups(self, net: nn.Module, phase: dict) -> list[dict]:
        """Trainable parameters of a phase; ``encoder`` in ``freeze`` switches the published freeze
        on and leaves the frozen encoder parameters out of the optimiser."""
        published = ENCODER_PREFIX in super().frozen_prefixes(phase)
        net.encoder.freeze(published)
        groups = super().parameter_groups(net, phase)
        if not published:
            return groups
        frozen = {id(param) for param in net.encoder.frozen_parameters()}
        for param in net.encoder.frozen_parameters():
            param.requires_grad_(False)
        return [{"params": [param for param in groups[0]["params"] if id(param) not in frozen]}]

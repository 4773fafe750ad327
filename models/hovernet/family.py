"""The HoVer-Net family: network, targets, loss, prediction (HV declared a vector field for TTA), post-processing.

Configuration (``opt/hovernet.yaml``): ``model`` {mode, nr_types, encoder {units, width},
decoder {width, shared}, pretrained, zero_init_hv, reinhard, reinhard_anchor}; ``targets``
{hv_min_area}; ``loss`` {dice_smooth, msge_kernel_size}; ``infer`` {input_size, output_size,
tta, mag}; ``postproc`` (see :class:`models.hovernet.postproc.PostprocParams`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from misc.errors import UserError
from models.base import Family
from models.hovernet.checkpoint import adopt_published_checkpoint, load_encoder_weights
from models.hovernet.loss import hovernet_loss
from models.hovernet.net import Geometry, HoVerNet, geometry_for
from models.hovernet.postproc import PostprocParams, instances_from_np_hv, scale_params
from models.hovernet.targets import HoVerTargets
from postproc.instances import instance_info, instance_type_map

ENCODER_PREFIX = "encoder"


def zero_init_hv_head(net: nn.Module) -> None:
    """Zero the HV branch's rows of its final 1x1 conv so training starts from HV = 0.

    The published (Kaiming fan-out) initialisation of the 2-channel head gives HV outputs of
    magnitude ~6 against targets in [-1, 1] (initial ``hv_msge`` ~400), which short CPU runs
    spend many steps undoing.
    """
    conv, rows = net.branch_head("hv")
    with torch.no_grad():
        conv.weight[rows] = 0.0
        conv.bias[rows] = 0.0


class HoVerNetFamily(Family):
    """HoVer-Net (Graham, Vu et al., MedIA 2019) in ``original`` or ``fast`` mode.

    ``freeze: [encoder]`` in a training phase freezes the encoder as published: its residual
    units get no gradients but the stem trains and batch-norm statistics keep updating.
    Other ``freeze`` prefixes freeze those modules and run them in eval mode.
    """

    name = "hovernet"
    vector_maps = {"hv": (0, 1)}  # channel 0: horizontal (x) distance, channel 1: vertical (y)

    @classmethod
    def adopt_checkpoint(cls, checkpoint: Any, source: str) -> tuple[list[str], dict[str, torch.Tensor]] | None:
        """Recognise the official HoVer-Net checkpoints (``{'desc': state}``, ``module.`` allowed)."""
        return adopt_published_checkpoint(checkpoint, source)

    def _geometry(self) -> Geometry:
        """The network's window geometry for ``model.mode``."""
        return geometry_for(str(self.cfg["model"]["mode"]))

    def _check_windows(self) -> None:
        """Raise unless ``infer.output_size`` is the network's output for ``infer.input_size``."""
        infer = self.cfg["infer"]
        expected = self._geometry().output_size_for(int(infer["input_size"]))
        if int(infer["output_size"]) != expected:
            raise UserError(
                f"infer.output_size is {infer['output_size']} but HoVer-Net '{self.cfg['model']['mode']}' mode "
                f"returns {expected} px for infer.input_size {infer['input_size']}; set infer.output_size: {expected}"
            )

    @property
    def nr_types(self) -> int:
        """Type channels including background; 0 = instance segmentation only."""
        return int(self.cfg["model"].get("nr_types") or 0)

    def build_network(self) -> nn.Module:
        """:class:`models.hovernet.net.HoVerNet` from ``cfg['model']``: the stem and encoder
        from ``model.pretrained`` (ImageNet pre-activation ResNet-50 weights as the official
        ``ImageNet-ResNet50-Preact_pytorch.tar`` stores them, read locally; None = random
        initialisation) and the HV head zeroed with ``model.zero_init_hv``."""
        model = self.cfg["model"]
        self._check_windows()
        encoder = model.get("encoder") or {}
        decoder = model.get("decoder") or {}
        net = HoVerNet(
            nr_types=self.nr_types,
            mode=str(model["mode"]),
            units=tuple(int(n) for n in encoder.get("units", (3, 4, 6, 3))),
            width=float(encoder.get("width", 1.0)),
            decoder_width=float(decoder.get("width", 1.0)),
            shared_decoder=bool(decoder.get("shared", False)),
        )
        if model.get("pretrained") is not None:
            load_encoder_weights(net, model["pretrained"])
        if model.get("zero_init_hv"):
            zero_init_hv_head(net)
        return net

    def target_builder(self) -> HoVerTargets:
        """Targets on the full patch, centre-cropped to ``infer.input_size`` / ``infer.output_size``,
        with the run's Reinhard target (:attr:`reinhard_target`) when colour normalisation is on.

        The builder returns ``image`` as (3, H, W) float32 RGB in 0-255.
        """
        self._check_windows()
        return HoVerTargets(
            input_size=int(self.cfg["infer"]["input_size"]),
            output_size=int(self.cfg["infer"]["output_size"]),
            typed=self.nr_types > 0,
            hv_min_area=int((self.cfg.get("targets") or {}).get("hv_min_area", 30)),
            reinhard=self.reinhard_target,
        )

    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted ``np_bce, np_dice, hv_mse, hv_msge, tp_bce, tp_dice`` (see :mod:`models.hovernet.loss`)."""
        options = self.cfg.get("loss") or {}
        return hovernet_loss(
            outputs,
            batch,
            weights,
            dice_smooth=float(options.get("dice_smooth", 1.0e-3)),
            msge_kernel_size=int(options.get("msge_kernel_size", 5)),
        )

    @staticmethod
    def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Network logits → ``np_prob`` (N, 1, h, w) foreground probability, ``hv`` (N, 2, h, w),
        ``tp_prob`` (N, T, h, w) type probabilities (when typed); float32."""
        out = {"np_prob": logits["np"].float().softmax(1)[:, 1:2], "hv": logits["hv"].float()}
        if "tp" in logits:
            out["tp_prob"] = logits["tp"].float().softmax(1)
        return out

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``np_prob``, ``hv`` and (typed) ``tp_prob`` for (N, 3, H, W) windows in 0-255.

        The inference predictor averages them over ``infer.tta``'s transforms, rotating ``hv``
        back as :attr:`vector_maps` declares.
        """
        with torch.no_grad():
            return self.probabilities(net(images))

    def postprocess(self, raw: dict[str, np.ndarray], mag: float | None = None, **options: Any) -> dict[str, Any]:
        """Instances from stitched maps.

        Args:
            raw: ``np_prob`` (H, W, 1), ``hv`` (H, W, 2), optional ``tp_prob`` (H, W, T) float.
            mag: the image's magnification; size constants scale by ``mag / base_mag``
                (default ``infer.mag``).
            options: ``postproc`` keys overriding the configuration.

        Returns:
            ``inst_map`` (H, W) int32 (ids 1..N), ``type_map`` (H, W) int32 (each instance
            painted with its type; None when untyped), ``inst_info`` (see
            :func:`postproc.instances.instance_info`).
        """
        for key in ("np_prob", "hv"):
            if key not in raw:
                raise UserError(f"HoVer-Net post-processing needs the raw map '{key}' (have {sorted(raw)})")
        params = PostprocParams.from_options({**(self.cfg.get("postproc") or {}), **options})
        params = scale_params(params, mag if mag is not None else self.cfg["infer"].get("mag"))
        inst_map = instances_from_np_hv(raw["np_prob"], raw["hv"], params)
        type_prob = raw.get("tp_prob")
        info = instance_info(inst_map, type_prob)
        type_map = instance_type_map(inst_map, info) if type_prob is not None else None
        return {"inst_map": inst_map, "type_map": type_map, "inst_info": info}

    def frozen_prefixes(self, phase: dict) -> list[str]:
        """Prefixes frozen the generic way: all but ``encoder``, which uses the published freeze."""
        return [prefix for prefix in super().frozen_prefixes(phase) if prefix != ENCODER_PREFIX]

    def parameter_groups(self, net: nn.Module, phase: dict) -> list[dict]:
        """Trainable parameters of a phase; ``encoder`` in ``freeze`` uses the net's published freeze."""
        published = ENCODER_PREFIX in super().frozen_prefixes(phase)
        net.freeze_encoder(published)
        groups = super().parameter_groups(net, phase)
        if not published:
            return groups
        frozen = list(net.frozen_encoder_parameters())
        frozen_ids = {id(param) for param in frozen}
        for param in frozen:
            param.requires_grad_(False)
        return [{"params": [param for param in groups[0]["params"] if id(param) not in frozen_ids]}]

"""The ``unet`` family: the CoNIC 2022 "winning approach" U-Net (SEEDS 6).

Configuration (``opt/unet.yaml``): ``model`` {nr_types, encoder {units, width, groups,
base_width, reduction}, decoder {width, dropout}, zero_init_hv, pretrained, reinhard,
reinhard_anchor}; ``targets`` {hv_min_area}; ``loss`` {focal_gamma, class_weights,
msge_kernel_size}; ``data`` {resample: class-aware patch weights, see
:mod:`models.unet.sampling`}; ``infer`` {input_size = output_size, tta, mag, ...};
``postproc`` (HoVer-Net's constants at ``base_mag`` and ``resample_to_base``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from misc.errors import UserError
from models.base import Family
from models.hovernet.postproc import PostprocParams, scale_params
from models.unet.loss import unet_loss
from models.unet.net import UNet
from models.unet.postproc import instances_at_base_mag
from models.unet.sampling import class_aware_weights, type_counts
from models.unet.targets import UNetTargets
from postproc.instances import instance_info, instance_type_map

class UNetFamily(Family):
    """U-Net with an SE-ResNeXt encoder and NP / HV / TP heads (Zhang et al., CoNIC 2022)."""

    name = "unet"
    #: ``hv``: channel 0 horizontal (x), channel 1 vertical (y); test-time augmentation
    #: (``infer.tta``, published: identity, hflip, vflip) negates them as it flips back.
    vector_maps = {"hv": (0, 1)}

    @property
    def nr_types(self) -> int:
        """Type channels of the ``tp`` head, including background."""
        return int(self.cfg["model"]["nr_types"])

    def _window(self) -> int:
        """The square inference/training window; the network's output window is the same."""
        infer = self.cfg["infer"]
        size, out = int(infer["input_size"]), int(infer["output_size"])
        if size != out:
            raise UserError(f"infer.output_size is {out} but the U-Net predicts its whole input; set it to {size}")
        if size % 8:
            raise UserError(f"infer.input_size must be a multiple of 8 (the encoder's downsampling), got {size}")
        return size

    def build_network(self) -> nn.Module:
        """:class:`models.unet.net.UNet` from ``cfg['model']``."""
        self._window()
        model = self.cfg["model"]
        encoder = model.get("encoder") or {}
        decoder = model.get("decoder") or {}
        return UNet(
            nr_types=self.nr_types,
            units=tuple(int(n) for n in encoder.get("units", (3, 4, 6, 3))),
            width=float(encoder.get("width", 1.0)),
            groups=int(encoder.get("groups", 32)),
            base_width=int(encoder.get("base_width", 4)),
            reduction=int(encoder.get("reduction", 16)),
            decoder_width=float(decoder.get("width", 1.0)),
            dropout=float(decoder.get("dropout", 0.5)),
            zero_init_hv=bool(model.get("zero_init_hv", False)),
            pretrained=model.get("pretrained"),
        )

    def target_builder(self) -> UNetTargets:
        """NP / HV (HoVer-Net's) and one-hot types on the ``infer.input_size`` window (centre crop)."""
        return UNetTargets(
            input_size=self._window(),
            nr_types=self.nr_types,
            hv_min_area=int((self.cfg.get("targets") or {}).get("hv_min_area", 30)),
            reinhard=self.reinhard_target,
        )

    def loss(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted terms of :mod:`models.unet.loss` (published: np_bce, np_dice, hv_mse,
        hv_msge, tp_focal, each 2)."""
        options = self.cfg.get("loss") or {}
        return unet_loss(
            outputs,
            batch,
            weights,
            focal_gamma=float(options.get("focal_gamma", 2.0)),
            class_weights=options.get("class_weights"),
            msge_kernel_size=int(options.get("msge_kernel_size", 5)),
        )

    @staticmethod
    def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits -> ``np_prob`` (N, 1, H, W) softmax foreground, ``hv`` (N, 2, H, W) tanh,
        ``tp_prob`` (N, T, H, W) softmax; float32."""
        return {
            "np_prob": logits["np"].float().softmax(1)[:, 1:2],
            "hv": torch.tanh(logits["hv"].float()),
            "tp_prob": logits["tp"].float().softmax(1),
        }

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``np_prob``, ``hv`` (tanh), ``tp_prob`` for (N, 3, H, W) windows in 0-255.

        The inference predictor averages these maps over the transforms of ``infer.tta``
        (published: ``[identity, hflip, vflip]``), bringing ``hv`` back as :attr:`vector_maps`.
        """
        with torch.no_grad():
            return self.probabilities(net(images))

    def postprocess(self, raw: dict[str, np.ndarray], mag: float | None = None, **options: Any) -> dict[str, Any]:
        """Instances and per-nucleus types from stitched maps.

        Args:
            raw: ``np_prob`` (H, W, 1), ``hv`` (H, W, 2), ``tp_prob`` (H, W, T) float.
            mag: the image's magnification (default ``infer.mag``). With
                ``postproc.resample_to_base`` (published) the maps are resampled to
                ``postproc.base_mag`` for the watershed and the result back (20x -> 40x -> 20x);
                otherwise the constants are scaled to ``mag`` as HoVer-Net's family does.
            options: ``postproc`` keys overriding the configuration.

        Returns:
            ``inst_map`` (H, W) int32 (ids 1..N), ``type_map`` (H, W) int32 (each nucleus
            painted with its majority type), ``inst_info`` (see
            :func:`postproc.instances.instance_info`).
        """
        for key in ("np_prob", "hv", "tp_prob"):
            if key not in raw:
                raise UserError(f"U-Net post-processing needs the raw map '{key}' (have {sorted(raw)})")
        settings = {**(self.cfg.get("postproc") or {}), **options}
        resample = bool(settings.pop("resample_to_base", True))
        params = PostprocParams.from_options(settings)
        mag = mag if mag is not None else self.cfg["infer"].get("mag")
        if not resample:
            params, mag = scale_params(params, mag), None
        inst_map, types, type_probs = instances_at_base_mag(raw["np_prob"], raw["hv"], raw["tp_prob"], params, mag)
        info = instance_info(inst_map)
        for inst_id, entry in info.items():
            entry["type"], entry["type_prob"] = types.get(inst_id, 0), type_probs.get(inst_id, 0.0)
        return {"inst_map": inst_map, "type_map": instance_type_map(inst_map, info), "inst_info": info}

    def sample_weights(self, samples: Sequence[Any]) -> np.ndarray | None:
        """Class-aware sampling weights of the training patches (``data.resample``), or None (off).

        Args:
            samples: training samples with ``inst_map`` and ``type_map`` (H, W) int (attributes
                or keys); each is read once.

        Returns:
            (P,) float64 repeat factors >= 1 with ``data.resample`` as the threshold (see
            :func:`models.unet.sampling.class_aware_weights`); None when ``data.resample`` is null.
        """
        threshold = (self.cfg.get("data") or {}).get("resample")
        if threshold is None:
            return None
        counts = []
        for sample in samples:
            inst_map, type_map = (_field(sample, key) for key in ("inst_map", "type_map"))
            if type_map is None:
                raise UserError("data.resample needs nucleus types but a training sample has no type_map")
            counts.append(type_counts(np.asarray(inst_map), np.asarray(type_map), self.nr_types))
        return class_aware_weights(np.stack(counts), float(threshold))


def _field(sample: Any, key: str) -> Any:
    """``sample[key]`` of a dict, else its attribute ``key`` (None when absent)."""
    return sample.get(key) if isinstance(sample, dict) else getattr(sample, key, None)

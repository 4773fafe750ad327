"""The H2G-Net family (Pedersen et al., Frontiers in Medicine 2022; SEEDS 5): whole-slide tumour
segmentation in two stages, one network each, held in one module (one checkpoint).

- Stage ``detect``: MobileNetV2 patch classifier (non-tumour / tumour) on non-overlapping
  patches of the tissue (``data.detect``), trained with the cluster-weighted cross-entropy on
  hierarchically balanced batches (slide -> class -> k-means cluster; ``sampler``).
- Stage ``refine``: a U-Net on the 4-channel refinement grid (thumbnail RGB 0-1 + heatmap),
  two-class softmax, trained with soft Dice on the tumour class and the published augmentations.

Configuration (``opt/h2gnet.yaml``): ``model`` {detect {width, hidden, dropout, pretrained},
refine {widths, encoder_dropout, decoder_dropout, grid}}; ``data`` {detect {mpp, size, points,
min_tissue, label_threshold, tumour_classes, augment}, tissue_mpp, refine_augment}; ``sampler``
{clusters, recluster_every, embed_size, feature_batch, pca_variance}; ``infer`` {batch_size,
threshold}; ``postproc`` {threshold}.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.region import region_scores
from misc.errors import UserError
from models.base import Family
from models.h2gnet.augment import Augment
from models.h2gnet.cascade import CascadeResult, CascadeSettings, run_cascade
from models.h2gnet.loss import cluster_weighted_ce, soft_dice_loss
from models.h2gnet.mobilenet import MobileNetV2, load_imagenet_weights
from models.h2gnet.patches import DetectPatches, PatchSettings, PatchTable, label_slide
from models.h2gnet.refine_data import RefineSamples, cached_example, make_example
from models.h2gnet.sampler import HierarchicalBatchSampler, kmeans, standardise_pca
from models.h2gnet.slides import SlideLike
from models.h2gnet.tissue import slide_tissue
from models.h2gnet.unet import INPUT_CHANNELS, RefineUNet

STAGES = ("detect", "refine")


class H2GNet(nn.Module):
    """Both stages: ``detect`` ((N, 3, P, P) RGB 0-255 -> (N, 2) logits) and ``refine``
    ((N, 4, S, S) grid input -> (N, 2, S, S) logits); ``forward`` picks the stage by the
    input's channels and returns ``{'detect': ...}`` or ``{'refine': ...}``."""

    def __init__(self, detect: MobileNetV2, refine: RefineUNet) -> None:
        super().__init__()
        self.detect = detect
        self.refine = refine

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 3:
            return {"detect": self.detect(x)}
        if x.shape[1] == INPUT_CHANNELS:
            return {"refine": self.refine(x)}
        raise UserError(f"H2G-Net takes 3-channel patches or {INPUT_CHANNELS}-channel refinement grids; got {tuple(x.shape)}")


class H2GTargets:
    """Target builder: a detection sample (``label``, ``cluster``) or a refinement sample (``mask``)
    passed through as arrays; anything else is not H2G-Net data."""

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        image = np.asarray(sample["image"], np.float32)
        if "mask" in sample:
            return {"image": image, "mask": np.asarray(sample["mask"], np.int64)}
        if "label" in sample and "cluster" in sample:
            return {"image": image, "label": np.asarray(sample["label"], np.int64),
                    "cluster": np.asarray(sample["cluster"], np.int64)}
        raise UserError("H2G-Net trains on whole slides with tumour annotations, stage by stage "
                        "(detection patches with labels and clusters, refinement grids with masks); "
                        f"got a sample with {sorted(sample)}")


class H2GNetFamily(Family):
    """H2G-Net: patch-wise MobileNetV2 heatmap refined by a U-Net on the slide thumbnail."""

    name = "h2gnet"
    task: ClassVar[str] = "semantic"
    stages: ClassVar[tuple[str, ...]] = STAGES
    class_names: ClassVar[tuple[str, ...]] = ("background", "tumour")

    def build_network(self) -> H2GNet:
        """Both stages from ``cfg['model']``; ImageNet weights into the detector when
        ``model.detect.pretrained`` names a file."""
        model = self.cfg["model"]
        detect_cfg, refine_cfg = model["detect"], model["refine"]
        hidden = detect_cfg.get("hidden")
        detector = MobileNetV2(num_classes=2, width=float(detect_cfg.get("width", 1.0)),
                               hidden=None if hidden is None else int(hidden), head_dropout=float(detect_cfg.get("dropout", 0.5)))
        if detect_cfg.get("pretrained"):
            load_imagenet_weights(detector, detect_cfg["pretrained"])
        refiner = RefineUNet(refine_cfg["widths"], classes=2, encoder_dropout=float(refine_cfg.get("encoder_dropout") or 0.0),
                             decoder_dropout=float(refine_cfg.get("decoder_dropout") or 0.0))
        grid = int(refine_cfg["grid"])
        if grid % refiner.multiple:
            raise UserError(f"model.refine.grid {grid} is not a multiple of {refiner.multiple} "
                            f"({len(refiner.widths)} U-Net levels in model.refine.widths)")
        return H2GNet(detector, refiner)

    def stage_network(self, net: H2GNet, stage: str) -> nn.Module:
        """The sub-network a stage trains (``net.detect`` or ``net.refine``)."""
        if stage not in STAGES:
            raise UserError(f"unknown H2G-Net stage '{stage}'; stages: {', '.join(STAGES)}")
        return getattr(net, stage)

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        """:class:`H2GTargets`."""
        return H2GTargets()

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``cwce`` (detection: cluster-weighted CE) or ``dice`` (refinement: soft Dice on tumour)."""
        if "detect" in outputs:
            term = cluster_weighted_ce(outputs["detect"], batch["label"], batch["cluster"])
            return weights.get("cwce", 1.0) * term, {"cwce": term}
        term = soft_dice_loss(outputs["refine"].float().softmax(dim=1), batch["mask"])
        return weights.get("dice", 1.0) * term, {"dice": term}

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``tumour_prob`` (N, 1) float32 per window: the detection stage on (N, 3, P, P) RGB 0-255
        patches (one heatmap value per patch)."""
        with torch.no_grad():
            detector = net.detect if isinstance(net, H2GNet) else net
            return {"tumour_prob": detector(images).float().softmax(dim=1)[:, 1:2]}

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Tumour class map of a probability map.

        Args:
            raw: ``tumour_prob`` (H, W, 1) or (H, W) float: the refined probability on the grid, or a heatmap.
            options: ``threshold`` overriding ``postproc.threshold``.

        Returns:
            ``{'class_map': (H, W) int32, 1 = tumour}``.
        """
        if "tumour_prob" not in raw:
            raise UserError(f"H2G-Net post-processing needs the map 'tumour_prob' (have {sorted(raw)})")
        threshold = float(options.get("threshold", (self.cfg.get("postproc") or {}).get("threshold", 0.5)))
        prob = np.asarray(raw["tumour_prob"])
        prob = prob[..., 0] if prob.ndim == 3 else prob
        return {"class_map": (prob >= threshold).astype(np.int32)}

    def evaluate(self, result: dict[str, Any], sample: dict[str, Any]) -> dict[str, float]:
        """DSC, precision and recall of ``result['class_map']`` against ``sample['mask']`` (one slide)."""
        return region_scores(sample["mask"], result["class_map"])

    def overlay(self, image: np.ndarray, result: dict[str, Any]) -> np.ndarray | None:
        """Tumour tinted red over ``image`` ((H, W, 3) uint8, the class map's shape)."""
        if "class_map" not in result or result["class_map"].shape != image.shape[:2]:
            return None
        tumour = result["class_map"] > 0
        picture = image.astype(np.float32)
        picture[tumour] = 0.55 * picture[tumour] + 0.45 * np.array([255.0, 0.0, 0.0])
        return picture.astype(np.uint8)

    def example_input(self) -> torch.Tensor:
        """A (1, 3, P, P) detection patch for ``--summary``."""
        size = int(self.cfg["data"]["detect"]["size"])
        return torch.zeros(1, 3, size, size)

    # --- settings -------------------------------------------------------------------------

    def patch_settings(self) -> PatchSettings:
        """:class:`PatchSettings` from ``data.detect``."""
        detect = self.cfg["data"]["detect"]
        return PatchSettings(mpp=float(detect["mpp"]), size=int(detect["size"]), points=int(detect["points"]),
                             min_tissue=float(detect["min_tissue"]), label_threshold=float(detect["label_threshold"]),
                             tumour_classes=tuple(str(c) for c in detect["tumour_classes"]))

    def cascade_settings(self) -> CascadeSettings:
        """:class:`CascadeSettings` from ``data.detect``, ``data.tissue_mpp``, ``model.refine.grid`` and ``infer``."""
        patches, infer = self.patch_settings(), self.cfg.get("infer") or {}
        return CascadeSettings(patch_mpp=patches.mpp, patch_size=patches.size, min_tissue=patches.min_tissue,
                               tissue_mpp=float(self.cfg["data"]["tissue_mpp"]), grid=int(self.cfg["model"]["refine"]["grid"]),
                               batch_size=int(infer.get("batch_size", 32)), threshold=float(infer.get("threshold", 0.5)))

    def refine_augment(self) -> Augment:
        """The refinement augmentations from ``data.refine_augment``."""
        return Augment.from_config(self.cfg["data"].get("refine_augment"))

    def detect_augment(self) -> Augment | None:
        """The detection patches' augmentations from ``data.detect.augment`` (None: off)."""
        options = self.cfg["data"]["detect"].get("augment")
        return None if options is None else Augment.from_config(options)

    # --- stage helpers ----------------------------------------------------------------------

    def detect_sampler(self, table: PatchTable, batch_size: int, batches: int, seed: int) -> HierarchicalBatchSampler:
        """Balanced batches over slide -> class -> cluster (clusters all 0 until :meth:`update_clusters`)."""
        return HierarchicalBatchSampler([table.slide, table.label, np.zeros(len(table), np.int64)], batch_size, batches, seed)

    def reclusters_at(self, epoch: int) -> bool:
        """Whether the clusters are recomputed before ``epoch`` (0-based): always before the first;
        then every ``sampler.recluster_every`` epochs (0 = never again)."""
        every = int(self.cfg["sampler"]["recluster_every"])
        return epoch == 0 or (every > 0 and epoch % every == 0)

    @torch.no_grad()
    def update_clusters(self, detector: MobileNetV2, data: DetectPatches, sampler: HierarchicalBatchSampler,
                        seed: int = 0) -> np.ndarray:
        """K-means over the detector's pooled features of every candidate patch (downsized to
        ``sampler.embed_size`` px), standardised and reduced by PCA to ``sampler.pca_variance``
        of their variance as in the published clustering model; the new clusters go to the
        dataset and the sampler.

        Returns:
            (N,) int64 cluster ids.
        """
        options = self.cfg["sampler"]
        size, batch = int(options["embed_size"]), int(options["feature_batch"])
        was_training = detector.training
        detector.eval()
        device = next(detector.parameters()).device
        features = []
        for start in range(0, len(data), batch):
            patches = np.stack([data.patch(i) for i in range(start, min(len(data), start + batch))])
            images = torch.from_numpy(patches.transpose(0, 3, 1, 2).copy()).float().to(device)
            if images.shape[-1] != size:
                images = F.interpolate(images, size=(size, size), mode="area")
            features.append(detector.embed(images).float().cpu())
        detector.train(was_training)
        projected = standardise_pca(torch.cat(features), options.get("pca_variance"))
        clusters = kmeans(projected, int(options["clusters"]), seed=seed).numpy()
        data.clusters = clusters
        sampler.set_levels([data.table.slide, data.table.label, clusters])
        return clusters

    def detect_data(self, slides: Sequence[SlideLike], annotations: Sequence[str | os.PathLike], phase: dict,
                    seed: int = 0) -> tuple[DetectPatches, HierarchicalBatchSampler]:
        """The detection stage's training set and its balanced batch sampler.

        Args:
            slides: the training slides.
            annotations: per slide, its QuPath GeoJSON or whole-slide tumour mask image.
            phase: the ``detect`` phase (``batch_size``, ``batches_per_epoch``).

        Raises:
            UserError: a bad annotation (see :func:`models.h2gnet.patches.tumour_polygons`), or no
                candidate patch of one of the two classes over all slides.
        """
        if len(slides) != len(annotations) or not slides:
            raise UserError(f"the detection stage needs one annotation per training slide; got {len(slides)} "
                            f"slides and {len(annotations)} annotations")
        settings = self.patch_settings()
        tissue_mpp = float(self.cfg["data"]["tissue_mpp"])
        table = PatchTable.concatenate([label_slide(i, slide, annotation, slide_tissue(slide, tissue_mpp), settings)
                                        for i, (slide, annotation) in enumerate(zip(slides, annotations))])
        counts = np.bincount(table.label, minlength=2)
        if counts.min() == 0:
            raise UserError(f"the training slides have {counts[0]} non-tumour and {counts[1]} tumour patches; "
                            "the detection stage needs both (check the annotations and data.detect)")
        data = DetectPatches(slides, table, settings.mpp, settings.size, self.detect_augment(), seed)
        return data, self.detect_sampler(table, int(phase["batch_size"]), int(phase["batches_per_epoch"]), seed)

    def refine_data(self, net: H2GNet, slides: Sequence[SlideLike], annotations: Sequence[str | os.PathLike],
                    cache: str | os.PathLike | None = None, names: Sequence[str] | None = None,
                    augment: bool = True, device: str | torch.device = "cpu") -> RefineSamples:
        """The refinement stage's samples: each slide's thumbnail, heatmap of the trained
        detector and true mask on the grid, cached as ``cache/<name>.npz`` when ``cache`` is given.

        Args:
            names: file stems for the cache, one per slide (default ``slide_<i>``).
            augment: the published augmentations (training) or none (validation).
        """
        settings = self.cascade_settings()
        classes = self.patch_settings().tumour_classes
        names = list(names) if names is not None else [f"slide_{i:04d}" for i in range(len(slides))]
        net.eval()
        examples = []
        for name, slide, annotation in zip(names, slides, annotations):
            compute = lambda slide=slide, annotation=annotation: make_example(  # noqa: E731
                net.detect, slide, annotation, slide_tissue(slide, settings.tissue_mpp), settings, classes, device)
            examples.append(cached_example(Path(cache) / f"{name}.npz", compute) if cache is not None else compute())
        return RefineSamples(examples, self.refine_augment() if augment else None, int(self.cfg["train"].get("seed", 0)))

    @staticmethod
    def check_refine_prerequisite(trained_stages: Sequence[str], source: str) -> None:
        """Refuse to train ``refine`` before ``detect``: its data are the detector's heatmaps.

        Raises:
            UserError: naming the command that trains the detection stage first.
        """
        if "detect" not in trained_stages:
            raise UserError(f"{source}: no trained H2G-Net detection stage; the refinement stage learns from its heatmaps. "
                            "Train it first: python train.py --model h2gnet --stage detect (same --data/--config/--profile)")

    def run_cascade(self, net: H2GNet, slide: SlideLike, device: str | torch.device = "cpu",
                    tissue: np.ndarray | None = None) -> CascadeResult:
        """Both stages on one slide with this configuration's settings (networks put in eval mode)."""
        net.eval()
        return run_cascade(net.detect, net.refine, slide, self.cascade_settings(), device, tissue)

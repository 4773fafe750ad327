"""The H2G-Net family (Pedersen et al., Frontiers in Medicine 2022; SEEDS 5): whole-slide tumour
segmentation in two stages, one network each, held in one module (one checkpoint).

- Stage ``detect``: MobileNetV2 patch classifier (non-tumour / tumour) on non-overlapping
  patches of the tissue (``data.detect``), trained with the cluster-weighted cross-entropy on
  hierarchically balanced batches (slide -> class -> k-means cluster; ``sampler``).
- Stage ``refine``: a U-Net on the 4-channel refinement grid (thumbnail RGB 0-1 + heatmap),
  two-class softmax, trained with soft Dice on the tumour class and the published augmentations.

Configuration (``opt/h2gnet.yaml``): ``model`` {detect {width, hidden, dropout, pretrained},
refine {widths, encoder_dropout, decoder_dropout, grid}}; ``data`` {source, label, synthetic,
slide_mpp, detect {mpp, size, points, min_tissue, label_threshold, tumour_classes, augment},
tissue_mpp, refine_augment}; ``sampler`` {clusters, recluster_every, embed_size, feature_batch,
pca_variance}; ``stages`` {detect, refine: their ``train`` phases}; ``infer`` {batch_size,
threshold, mask_mpp}; ``postproc`` {threshold, class_info}.

Through the scripts (engine hooks of :class:`models.base.Family`): :meth:`H2GNetFamily.training_data`
gives each stage its data from a cohort, :meth:`H2GNetFamily.begin_epoch` recomputes the
clusters, :meth:`H2GNetFamily.validate_item` scores a validation slide, :meth:`H2GNetFamily.infer_slide`
runs the cascade for ``infer.py`` and :meth:`H2GNetFamily.score_result` scores it for ``process.py``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loader.slide import open_slide
from metrics.region import region_scores
from misc.errors import UserError
from misc.io import atomic_path
from models.base import Family, SlideMaps, TrainingData
from models.h2gnet.augment import Augment
from models.h2gnet.cascade import (
    CascadeResult, CascadeSettings, detect_heatmap, heatmap_on_grid, refine, run_cascade, thumbnail_on_grid, truth_on_grid,
)
from models.h2gnet.cohort import cohort_file, find_truth, split_slides, truth_file
from models.h2gnet.grid import Placement
from models.h2gnet.loss import cluster_weighted_ce, soft_dice_loss
from models.h2gnet.mobilenet import MobileNetV2, load_imagenet_weights
from models.h2gnet.patches import DetectPatches, PatchSettings, PatchTable, label_slide
from models.h2gnet.refine_data import RefineSamples, cached_example, make_example
from models.h2gnet.sampler import HierarchicalBatchSampler, kmeans, standardise_pca
from models.h2gnet.slides import SlideLike, level0_shape
from models.h2gnet.tissue import slide_tissue
from models.h2gnet.unet import INPUT_CHANNELS, RefineUNet

STAGES = ("detect", "refine")

log = logging.getLogger(__name__)


@dataclass
class ValidationSlide:
    """A validation slide of the detection stage, with what does not change between epochs
    (tissue mask, thumbnail and truth on the refinement grid) computed at the first validation."""

    name: str
    slide: SlideLike
    annotation: str
    tissue: np.ndarray | None = None
    thumbnail: np.ndarray | None = None
    truth: np.ndarray | None = None


def state_digest(module: nn.Module) -> str:
    """12 hex digits identifying a module's weights (names, shapes and values)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()[:12]


def uint8_image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB 0-1 as uint8 0-255."""
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def heatmap_picture(values: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of an (H, W) 0-1 map: blue (0) through green to red (1)."""
    scaled = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
    rgb = np.stack([np.clip(2 * scaled - 1, 0, 1), 1 - np.abs(2 * scaled - 1), np.clip(1 - 2 * scaled, 0, 1)], axis=-1)
    return uint8_image(rgb)


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
    slides_only: ClassVar[bool] = True
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
        """For ``--summary``: a (1, 4, S, S) refinement grid for stage ``refine``, else a
        (1, 3, P, P) detection patch."""
        if self.stage == "refine":
            grid = int(self.cfg["model"]["refine"]["grid"])
            return torch.zeros(1, INPUT_CHANNELS, grid, grid)
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

    def detect_patches(self, slides: Sequence[SlideLike], annotations: Sequence[str | os.PathLike],
                       seed: int = 0) -> DetectPatches:
        """The detection stage's training set: the labelled candidate patches of the slides.

        Args:
            slides: the training slides.
            annotations: per slide, its QuPath GeoJSON or whole-slide tumour mask image.
            seed: augmentation seed.

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
        return DetectPatches(slides, table, settings.mpp, settings.size, self.detect_augment(), seed)

    def detect_data(self, slides: Sequence[SlideLike], annotations: Sequence[str | os.PathLike], phase: dict,
                    seed: int = 0) -> tuple[DetectPatches, HierarchicalBatchSampler]:
        """:meth:`detect_patches` and the balanced batch sampler of ``phase`` (:meth:`detect_batches`)."""
        data = self.detect_patches(slides, annotations, seed)
        return data, self.detect_batches(data, phase, seed)

    def detect_batches(self, data: DetectPatches, phase: dict, seed: int) -> HierarchicalBatchSampler:
        """The balanced batch sampler of a detection phase over ``data`` with its current clusters:
        ``batch_size`` patches a batch, ``batches_per_epoch`` batches (0: as many as make one
        pass over the candidate patches)."""
        size = int(phase["batch_size"])
        batches = int(phase.get("batches_per_epoch") or 0) or max(1, len(data) // size)
        table = data.table
        return HierarchicalBatchSampler([table.slide, table.label, data.clusters], size, batches, seed)

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

    # --- training through train.py (Family.training_data) -----------------------------------

    def training_data(self, net: nn.Module, run_dir: Path, shared_dir: Path, device: torch.device) -> TrainingData:
        """The stage's data from the cohort of ``data.source`` (a synthetic cohort is written once
        into ``shared_dir/cohort``): stage ``detect`` gets the training slides' candidate patches,
        its balanced batch sampler and the validation slides; stage ``refine`` the training and
        validation slides on the refinement grid with the detection stage's heatmaps (cached in
        ``run_dir/cache``).

        Raises:
            UserError: no training slides, bad annotations, or ``refine`` before ``detect``.
        """
        record = cohort_file(self.cfg["data"], shared_dir)
        splits = split_slides(record, ("train", "val"))
        if not splits["train"]:
            raise UserError(f"{record}: no training slides (split 'train')")
        label, mpp = str(self.cfg["data"]["label"]), self.cfg["data"].get("slide_mpp")
        train, val = ([(entry.name, open_slide(entry.slide, mpp), truth_file(entry, label)) for entry in splits[split]]
                      for split in ("train", "val"))
        if self.stage == "refine":
            return self._refine_training(net, run_dir, train, val, device)
        if self.stage != "detect":
            raise UserError(f"H2G-Net trains stage by stage ({', '.join(STAGES)}); got stage {self.stage!r}")
        return self._detect_training(run_dir, train, val)

    def _detect_training(self, run_dir: Path, train: list, val: list) -> TrainingData:
        """Candidate patches of the training slides, their batch sampler, the validation slides."""
        seed = int(self.cfg["train"]["seed"])
        data = self.detect_patches([slide for _, slide, _ in train], [truth for *_, truth in train], seed)
        self._clusters_file = run_dir / "cache" / "clusters.npz"
        self._clustered = False
        counts = {"training slides": len(train), "candidate patches": len(data),
                  "tumour patches": int(data.table.label.sum()), "validation slides": len(val)}
        batches = functools.partial(self._phase_batches, data)
        return TrainingData(data, [ValidationSlide(*entry) for entry in val], batches, counts)

    def _phase_batches(self, data: DetectPatches, phase: dict, seed: int, rank: int, world_size: int) -> HierarchicalBatchSampler:
        """:meth:`detect_batches` for process ``rank`` (its own draws)."""
        return self.detect_batches(data, phase, seed + 7919 * rank)

    def _refine_training(self, net: H2GNet, run_dir: Path, train: list, val: list, device: torch.device) -> TrainingData:
        """The refinement examples of the training (augmented) and validation slides, with the
        detector of the earlier stage (copied into ``net``, so the stage's checkpoint holds the
        whole cascade) and its heatmaps cached under ``run_dir/cache/heatmaps-<weights digest>``."""
        stages = getattr(self.previous, "stages", None)
        if not stages:
            self.check_refine_prerequisite([], str(run_dir))
        net.detect.load_state_dict(stages[-1][1].detect.state_dict())
        cache = run_dir / "cache" / f"heatmaps-{state_digest(net.detect)}"
        log.info("refinement grids of %d training and %d validation slides with the detection stage's heatmaps (cache %s)",
                 len(train), len(val), cache)
        samples = self.refine_data(net, [s for _, s, _ in train], [t for *_, t in train], cache, [n for n, *_ in train],
                                   augment=True, device=device)
        checks = self.refine_data(net, [s for _, s, _ in val], [t for *_, t in val], cache, [n for n, *_ in val],
                                  augment=False, device=device).examples if val else []
        counts = {"training slides": len(train), "validation slides": len(val)}
        return TrainingData(samples, checks, None, counts)

    def begin_epoch(self, net: nn.Module, train_set: Any, batch_sampler: Any, epoch: int) -> None:
        """Detection stage: the k-means clusters before ``epoch`` (:meth:`reclusters_at`), written
        to the run's ``cache/clusters.npz``; a resumed run reads the last ones back."""
        if not isinstance(train_set, DetectPatches):
            return
        path = self._clusters_file
        if not self.reclusters_at(epoch) and self._clustered:
            return
        if not self.reclusters_at(epoch) and path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                clusters = saved["clusters"]
            if len(clusters) == len(train_set):
                train_set.clusters = clusters.astype(np.int64)
                batch_sampler.set_levels([train_set.table.slide, train_set.table.label, train_set.clusters])
                self._clustered = True
                return
        clusters = self.update_clusters(net.detect, train_set, batch_sampler, seed=epoch)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, clusters=clusters, epoch=np.array(epoch))
        self._clustered = True
        log.info("k-means clusters before epoch %d: %s patches per cluster", epoch + 1,
                 np.bincount(clusters, minlength=int(self.cfg["sampler"]["clusters"])).tolist())

    def validate_item(self, net: nn.Module, item: Any, device: torch.device) -> tuple[dict[str, float], np.ndarray | None]:
        """DSC, precision and recall on the refinement grid of one validation slide: the
        patch-wise heatmap at ``infer.threshold`` (stage ``detect``) or the refined mask
        (stage ``refine``); and the slide's thumbnail with the tumour found tinted."""
        net.eval()
        settings = self.cascade_settings()
        if isinstance(item, ValidationSlide):
            if item.truth is None:
                item.tissue = slide_tissue(item.slide, settings.tissue_mpp)
                thumbnail, placement = thumbnail_on_grid(item.slide, settings.grid)
                item.thumbnail = uint8_image(thumbnail[: placement.rows, : placement.cols])
                item.truth = truth_on_grid(item.annotation, level0_shape(item.slide), placement,
                                           self.patch_settings().tumour_classes)
            heatmap, step0 = detect_heatmap(net.detect, item.slide, item.tissue, settings, device)
            grid_map, placement = heatmap_on_grid(heatmap, step0, level0_shape(item.slide), settings.grid)
            found = grid_map[: placement.rows, : placement.cols] >= settings.threshold
            return region_scores(item.truth, found), self.overlay(item.thumbnail, {"class_map": found})
        found = refine(net.refine, item.thumbnail, item.heatmap, device) >= settings.threshold
        return region_scores(item.mask, found), self.overlay(uint8_image(item.thumbnail), {"class_map": found})

    # --- slides through infer.py and process.py ---------------------------------------------

    def infer_slide(self, net: nn.Module, slide: Any, device: torch.device, tissue: np.ndarray | None = None) -> SlideMaps:
        """The cascade on one slide: the refined tumour mask on the grid (TIFF at ``infer.mask_mpp``),
        the grid's maps for ``process.py`` (``tumour_prob`` refined, ``heatmap`` patch-wise), the
        heatmap and tissue pictures, and the cascade's areas and seconds per stage."""
        result = self.run_cascade(net, slide, device, tissue)
        rows, cols = result.placement.rows, result.placement.cols
        downsample = max(level0_shape(slide)) / result.placement.size
        mask_mpp = float((self.cfg.get("infer") or {}).get("mask_mpp") or slide.mpp * downsample)
        summary = result.summary(slide)
        summary["seconds"] = {key: round(value, 3) for key, value in summary["seconds"].items()}
        summary["refinement_grid"] = {"size": result.placement.size, "rows": rows, "cols": cols, "downsample": downsample}
        return SlideMaps(
            class_map=result.refined_mask.astype(np.uint8), downsample=downsample, class_info=self.class_info() or {0: ("background", (0, 0, 0)), 1: ("Tumor", (200, 0, 0))},
            tiff_downsample=min(downsample, max(1.0, mask_mpp / slide.mpp)),
            maps={"tumour_prob": result.refined[:rows, :cols, None], "heatmap": result.heatmap_grid[:rows, :cols, None]},
            image=uint8_image(result.thumbnail[:rows, :cols]), map_downsample=downsample,
            pictures={"heatmap": heatmap_picture(result.heatmap), "tissue": np.uint8(255) * result.tissue.astype(np.uint8)},
            summary=summary)

    def score_result(self, maps: dict[str, np.ndarray], name: str, gt: str, slide: dict[str, Any]) -> dict[str, float]:
        """Per-slide DSC, precision and recall on the refinement grid (the paper's protocol) of
        the patch-wise heatmap at ``infer.threshold`` (``patchwise_*``) and of the refined mask
        (``refined_*``), against the slide's annotation or mask in ``gt`` (a cohort or a folder,
        see :func:`models.h2gnet.cohort.find_truth`).

        Raises:
            UserError: a raw file without the slide geometry or the maps, or no truth for the slide.
        """
        if not slide.get("dimensions") or "tumour_prob" not in maps or "heatmap" not in maps:
            raise UserError(f"'{name}': not an H2G-Net slide result (write it with infer.py --input SLIDE)")
        width, height = (int(v) for v in slide["dimensions"])
        rows, cols = maps["tumour_prob"].shape[:2]
        placement = Placement(int(self.cfg["model"]["refine"]["grid"]), rows, cols)
        truth = truth_on_grid(find_truth(gt, name, str(self.cfg["data"]["label"])), (height, width), placement,
                              self.patch_settings().tumour_classes)
        threshold = self.cascade_settings().threshold
        scores = {}
        for kind, key in (("patchwise", "heatmap"), ("refined", "tumour_prob")):
            found = maps[key][..., 0] >= threshold
            scores.update({f"{kind}_{metric}": value for metric, value in region_scores(truth, found).items()})
        return scores

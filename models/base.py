"""The family interface: everything the engine, ``infer.py`` and ``process.py`` need.

A family subclasses :class:`Family` in ``models/<family>/`` and is registered by one line in
``models/__init__.py``. Shared code never branches on a family's name.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from loader.colour import lab_statistics, reinhard_normalise
from misc.errors import UserError
from misc.io import read_image
from models.tasks import semantic_truth, task_kind
from postproc.grid import place_grid
from postproc.semantic import class_info_from


#: Task kinds a family's results can be (see ``models.tasks`` and docs/tasks.md).
TASKS = ("instance", "semantic", "patch")


class NoTruth(UserError):
    """``--gt`` holds no ground truth for an image (raised by :meth:`Family.score_result`)."""


def under_prefix(name: str, prefixes: Sequence[str]) -> bool:
    """Whether a dotted module/parameter ``name`` is one of ``prefixes`` or lies under one."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class StageMaps(dict):
    """Earlier stages' named maps of an image, ``{name: (h, w, C) array}``: dense maps at the
    image's pixels, or grid maps (R, K, C) with one value per window; ``grids`` holds each grid
    map's geometry (``{name: GridGeometry or {'step', 'size', 'offset'}}``, see
    :mod:`postproc.grid`) so that it can be placed on the image."""

    def __init__(self, maps: Mapping[str, np.ndarray] = (), grids: Mapping[str, Any] | None = None) -> None:
        super().__init__(maps)
        self.grids = dict(grids or {})


def previous_at(previous: Mapping[str, np.ndarray], shape: tuple[int, int],
                grids: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Earlier stages' maps at an image's size (H, W), one float32 (H, W) array per channel,
    keyed ``<name>`` (C = 1) or ``<name>_<c>``.

    A grid map (one value per window) is placed by its geometry (:func:`postproc.grid.place_grid`):
    ``grids``, else ``previous.grids`` of a :class:`StageMaps`. Any other map of another size
    is resized with nearest neighbours.
    """
    grids = grids if grids is not None else getattr(previous, "grids", {})
    out = {}
    for name, values in previous.items():
        values = np.asarray(values, np.float32)
        if name in grids:
            values = place_grid(values, grids[name], shape)
        elif values.shape[:2] != tuple(shape):
            values = cv2.resize(values, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).reshape(*shape, -1)
        for c in range(values.shape[2]):
            out[name if values.shape[2] == 1 else f"{name}_{c}"] = np.ascontiguousarray(values[..., c])
    return out


@dataclass
class TrainingData:
    """Training data a family builds itself (:meth:`Family.training_data`) instead of the
    engine's image samples (see docs/training.md, "Families that supply their own data").

    Attributes:
        train_set: a map-style dataset whose items are what a target builder returns: dicts
            of numpy arrays or tensors, ``image`` ((H, W, 3) uint8, or (C, H, W) float) and every
            target the loss reads; the engine collates them. A ``set_epoch(epoch)`` method, when
            there is one, is called before every epoch.
        val_items: what :meth:`Family.validate_item` scores after each epoch (empty: no validation).
        batch_sampler: None (each epoch a shuffled pass over ``train_set`` in batches of the
            phase's ``batch_size``), or ``(phase, seed, rank, world_size) -> batch sampler``: an
            iterable of index lists (with ``set_epoch(epoch)`` when it draws per epoch) serving
            this process, built at the start of every phase.
        counts: named counts for the run's log line, e.g. ``{'training slides': 4, 'patches': 900}``.
        norm_images: (H, W, 3) uint8 images for :meth:`Family.fit_norm_stats` (none: nothing to fit).
    """

    train_set: Any
    val_items: Sequence[Any] = ()
    batch_sampler: Callable[[dict, int, int, int], Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    norm_images: Sequence[np.ndarray] = ()


@dataclass
class SlideMaps:
    """What a family that infers whole slides itself (:meth:`Family.infer_slide`) found on one
    slide; ``infer.py`` writes it (``inference.slide_family``).

    Attributes:
        class_map: (h, w) integer class ids covering the whole slide at ``downsample``.
        downsample: level-0 pixels per ``class_map`` pixel (along both axes).
        tiff_downsample: level-0 pixels per pixel of the class-map TIFF (the class map upsampled
            by nearest neighbours; at most ``downsample``).
        class_info: class id -> ``(name, (r, g, b))`` of ``class_map``'s classes (0 = background,
            left out of the GeoJSON).
        maps: named (h', w', C) float32 maps for the raw file ``process.py`` reads (the family's
            ``postprocess`` and :meth:`Family.score_result` take them), with ``image`` below.
        image: (h', w', 3) uint8 picture of the slide on the grid of ``maps``.
        map_downsample: level-0 pixels per pixel of ``maps`` and ``image``.
        pictures: named (h'', w''[, 3]) uint8 images written as ``<stem>.<name>.png``.
        summary: entries added to the slide's summary JSON (e.g. areas, seconds per stage).
    """

    class_map: np.ndarray
    downsample: float
    tiff_downsample: float
    class_info: dict[int, tuple[str, tuple[int, int, int]]]
    maps: dict[str, np.ndarray]
    image: np.ndarray
    map_downsample: float
    pictures: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


class Family(ABC):
    """Base class of a model family.

    Args:
        cfg: the resolved configuration (see ``config.load_config``).
    """

    #: The registered name (``models.FAMILIES`` key); checkpoints and raw files record it.
    name: ClassVar[str] = ""
    #: Outputs of :meth:`predict` that hold a vector field: name -> (x channel, y channel), x
    #: along the width (horizontal), y along the height (vertical). Test-time augmentation
    #: (``inference.tta``) negates and swaps these components as it flips and turns windows
    #: back; every other output channel is a scalar map.
    vector_maps: ClassVar[Mapping[str, tuple[int, int]]] = {}
    #: Sample arrays the family reads beyond ``loader.keys.SAMPLE_KEYS`` (e.g. precomputed
    #: weight, marker or heatmap arrays a reader supplies); the engine passes them through.
    sample_keys: ClassVar[tuple[str, ...]] = ()
    #: What the family's results are (one of :data:`TASKS`): ``instance`` (nucleus instance
    #: maps), ``semantic`` (a per-pixel class map) or ``patch`` (image-level class labels).
    #: Writers, scores, overlays and the default ``train.select_metric`` follow it
    #: (``models.tasks``). A family whose training and inference tasks differ overrides
    #: :meth:`task_for`.
    task: ClassVar[str] = "instance"
    #: Patch task: several labels per image (sigmoid outputs) rather than one class (softmax).
    multilabel: ClassVar[bool] = True
    #: ``predict`` needs autograd (e.g. Grad-CAM): inference then runs with gradients enabled
    #: instead of under ``torch.inference_mode()``, one batch of windows at a time.
    needs_grad: ClassVar[bool] = False
    #: Inference runs on whole slides only (e.g. a cascade over a slide's thumbnail): ``infer.py``
    #: refuses a folder of image tiles with one error line instead of tiling them.
    slides_only: ClassVar[bool] = False

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        # Input statistics from fit_norm_stats ({'mean': [..], 'std': [..]} per channel and/or
        # the Reinhard target {'reinhard': ..}), or None; restored from checkpoints.
        self.norm_stats: dict | None = None
        # Fitted state beyond the weights, JSON values only (e.g. {'thresholds': [..]} per
        # class); saved in checkpoints and raw files, restored with them.
        self.extra_state: dict = {}
        # Staged families: for a later stage, the earlier stages run on a whole (H, W, 3) uint8
        # image, returning their named maps (set by the engine and by checkpoint loading).
        self.previous: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None

    def task_for(self, purpose: str) -> str:
        """The task of ``purpose``: ``'train'`` (validation scores, ``train.select_metric``)
        or ``'infer'`` (outputs of ``process.py`` and its scores). Default: :attr:`task`."""
        return self.task

    @property
    def stage(self) -> str | None:
        """The stage this instance serves (``cfg['stage']``, see ``config.stage_config``), or None."""
        return self.cfg.get("stage")

    def class_info(self) -> dict[int, tuple[str, tuple[int, int, int]]] | None:
        """Class ids → ``(name, (r, g, b))`` of the results (semantic classes, patch labels):
        ``postproc.class_info`` of the config, a ``type_info.json`` path or an inline mapping;
        None when unset."""
        value = (self.cfg.get("postproc") or {}).get("class_info")
        if value is None:
            return None
        return class_info_from(value, "postproc.class_info")

    def image_labels(self, sample: dict[str, Any]) -> np.ndarray:
        """Patch task: the (C,) 0/1 true labels of a sample (default: its ``labels``)."""
        labels = sample.get("labels")
        if labels is None:
            raise UserError(f"sample '{sample.get('name', '')}' has no image-level labels; the family scores patch labels")
        return np.asarray(labels, np.float32)

    def class_truth(self, sample: dict[str, Any]) -> np.ndarray:
        """Semantic task: the (H, W) true class map of a sample (default: its ``class_map``,
        else its ``type_map``)."""
        return semantic_truth(self, sample)

    def previous_sample_maps(self, image: np.ndarray, previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Training of a later stage: the earlier stages' maps of a sample as (H, W) arrays added
        to it before augmentation (so the geometric augmentations move them with the image).
        ``previous`` is a :class:`StageMaps` (grid maps with their geometry).
        Default: :func:`previous_at` (every map at the image's size, grid maps placed by their
        geometry, one key per channel)."""
        return previous_at(previous, image.shape[:2])

    def calibrate(self, results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
        """Fit post-processing state on the validation images after each validation (e.g.
        per-class decision thresholds into :attr:`extra_state`). Default: nothing."""

    def stage_input(self, image: np.ndarray, previous: dict[str, np.ndarray]) -> np.ndarray:
        """A later stage's input array: the (H, W, 3) uint8 image (after ``preprocess_image``)
        and the earlier stages' maps (a :class:`StageMaps`: (H, W, C) dense or (R, K, C)
        per-window grid maps with their geometry; :func:`previous_at` places them) →
        the (H', W', C') array this stage's windows are cut from (float, 0-255 for image
        channels). Default: the image."""
        return image

    def training_data(self, net: nn.Module, run_dir: Path, shared_dir: Path,
                      device: torch.device) -> TrainingData | None:
        """Training data the family builds itself for a run (or a stage), or None (default):
        the engine's image samples of ``data`` (``engine.data.build_splits``) through
        :meth:`target_builder`, validated with tiled inference.

        Args:
            net: the run's network (on ``device``), e.g. to take weights of an earlier stage
                from :attr:`previous` or to compute features.
            run_dir: the run's (the stage's) folder, for caches that belong to it.
            shared_dir: a folder shared by all stages of a staged run (the run folder otherwise),
                for data every stage reads (e.g. a generated cohort).
        """
        return None

    def begin_epoch(self, net: nn.Module, train_set: Any, batch_sampler: Any, epoch: int) -> None:
        """Called before every training epoch (0-based ``epoch``, resumed runs included) with the
        run's network, its training dataset and the loader's batch sampler (from
        :attr:`TrainingData.batch_sampler`, else None), e.g. to recompute sampling clusters with
        the current network. Default: nothing."""

    def validate_item(self, net: nn.Module, item: Any, device: torch.device) -> tuple[dict[str, float], np.ndarray | None]:
        """Scores of one validation item of :attr:`TrainingData.val_items` (larger is better for
        every key; ``train.select_metric`` picks one) and an optional (H, W, 3) uint8 picture
        for TensorBoard. Needed only by families whose :meth:`training_data` has validation items.

        Raises:
            UserError: the family supplies validation items but does not score them.
        """
        raise UserError(f"family '{self.name}' supplies validation items but does not score them (Family.validate_item)")

    def infer_slide(self, net: nn.Module, slide: Any, device: torch.device, tissue: np.ndarray | None = None) -> SlideMaps | None:
        """A whole slide inferred by the family itself, or None (default): ``infer.py`` tiles the
        slide and runs :meth:`predict` on its windows (``inference.slide``).

        Args:
            slide: an open ``loader.slide.Slide`` (``mpp``, ``dimensions``, ``view(mpp)``).
            tissue: a (h, w) bool tissue mask covering the slide (``--mask``), or None.
        """
        return None

    def score_result(self, maps: dict[str, np.ndarray], name: str, gt: str, slide: dict[str, Any]) -> dict[str, float] | None:
        """``process.py --gt``: the family's own scores of one raw prediction, or None (default):
        the scorer of the family's task.

        Args:
            maps: the raw file's named (H, W, C) float32 maps.
            name: the image's (slide's) stem, to find its ground truth in ``gt``.
            gt: the ``--gt`` argument.
            slide: the raw file's slide geometry (level-0 ``dimensions``, ``mpp``, ``map_downsample``),
                empty for an image.

        Raises:
            NoTruth: ``gt`` holds no ground truth for ``name``; ``process.py`` lists the image and
                leaves it out of the scores (an error only when no image has ground truth).
            UserError: a ground truth that cannot score the result (another size, unreadable);
                ``process.py`` writes every image's files, then stops with it (exit 2).
        """
        return None

    @classmethod
    def default_config_path(cls) -> Path | None:
        """Path of the family's defaults YAML; None means ``opt/<registered name>.yaml``."""
        return None

    @classmethod
    def adopt_checkpoint(cls, checkpoint: Any, source: str) -> tuple[list[str], dict[str, torch.Tensor]] | None:
        """Recognise a checkpoint released by the family's original authors.

        Args:
            checkpoint: what ``torch.load(source, weights_only=True)`` returned.
            source: the file, for error messages.

        Returns:
            ``(overrides, state)``: ``--set``-style overrides of the family's defaults that
            describe the released network (e.g. ``model.mode=fast``), and its state dict in
            our parameter names; or None when the checkpoint is not this family's.
        """
        return None

    @abstractmethod
    def build_network(self) -> nn.Module:
        """Build the network from ``self.cfg['model']``."""

    @abstractmethod
    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        """A picklable callable turning one augmented sample into training arrays.

        The sample is ``{'image': (H, W, 3) uint8, 'inst_map': (H, W) int32,
        'type_map': (H, W) int32 (when typed)}`` (patch-label families get ``'labels'``).
        The result holds ``'image'`` ((H, W, 3) uint8 or (3, H, W) float32 in 0-255) and every
        target the loss reads, as numpy arrays. The engine collates them, hands the network
        ``batch['image']`` as (N, 3, H, W) float32 in 0-255 and the other entries as tensors.
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
            options: ``mag`` (the image's magnification; ``infer.py``/``process.py`` and
                validation pass it) and ``postproc`` keys overriding ``self.cfg['postproc']``.

        Returns:
            Instance families: ``{'inst_map': (H, W) int32, 'type_map': (H, W) int32 or None,
            'inst_info': {id: {'bbox', 'centroid', 'contour', 'type', 'type_prob'}}}``.
        """

    @functools.cached_property
    def configured_reinhard(self) -> dict[str, list[float]] | str | None:
        """The Reinhard colour-normalisation setting of ``cfg['model']``: CIELAB ``{'mean',
        'std'}`` from ``model.reinhard`` (3 values each) or from the statistics of the
        ``model.reinhard_anchor`` image, ``'fit'`` (the mean statistics of the training images,
        see :meth:`fit_reinhard_target`), or None (off; also for families without the keys).

        Raises:
            UserError: both keys set, or a malformed ``model.reinhard``.
        """
        model = self.cfg.get("model") or {}
        target, anchor = model.get("reinhard"), model.get("reinhard_anchor")
        if target is not None and anchor is not None:
            raise UserError("model.reinhard and model.reinhard_anchor are both set; "
                            "give target statistics, 'fit' or an anchor image")
        if anchor is not None:
            mean, std = lab_statistics(read_image(anchor))
            return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        if target is None or target == "fit":
            return target
        if not isinstance(target, dict) or any(len(target.get(key) or ()) != 3 for key in ("mean", "std")):
            raise UserError(f"model.reinhard is {target!r}; "
                            "expected {mean: [L, a, b], std: [L, a, b]} (CIELAB), 'fit' or null")
        return {key: [float(v) for v in target[key]] for key in ("mean", "std")}

    @property
    def reinhard_target(self) -> dict[str, list[float]] | None:
        """The CIELAB ``{'mean', 'std'}`` images are normalised to: the one a checkpoint carries
        (``norm_stats['reinhard']``), else the configured one; None when off or not yet fitted."""
        if self.norm_stats is not None and self.norm_stats.get("reinhard") is not None:
            return self.norm_stats["reinhard"]
        configured = self.configured_reinhard
        return None if configured == "fit" else configured

    def fit_reinhard_target(self, images: Sequence[np.ndarray]) -> dict[str, list[float]] | None:
        """The Reinhard target of a training run: with ``model.reinhard: fit`` the mean over
        ``images`` ((H, W, 3) uint8 each) of their CIELAB means and standard deviations, else
        the configured target (None when off)."""
        if self.configured_reinhard != "fit":
            return self.configured_reinhard
        stats = [lab_statistics(np.asarray(image)) for image in images]
        if not stats:
            raise UserError("model.reinhard is 'fit' but there are no training images to fit it to")
        return {key: [float(v) for v in np.mean([s[i] for s in stats], axis=0)] for i, key in enumerate(("mean", "std"))}

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Whole-image preparation before tiled inference: Reinhard colour normalisation to
        :attr:`reinhard_target` when there is one.

        Args:
            image: (H, W, 3) uint8 RGB.

        Returns:
            (H, W, 3) uint8 RGB; ``image`` itself without a target.
        """
        goal = self.reinhard_target
        if goal is None:
            return image
        return reinhard_normalise(image, goal)

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training forward pass; the default feeds ``batch['image']`` to the network."""
        return net(batch["image"])

    def frozen_prefixes(self, phase: dict) -> list[str]:
        """Module-name prefixes frozen in ``phase`` (its ``freeze`` list)."""
        return [str(prefix) for prefix in phase.get("freeze") or ()]

    def parameter_groups(self, net: nn.Module, phase: dict) -> list[dict]:
        """Optimiser parameter groups for a phase; modules under :meth:`frozen_prefixes` are frozen.

        A frozen module also runs in eval mode (its batch-norm statistics stay fixed; see
        :meth:`train_mode`, which the engine calls at the start of every epoch).
        """
        frozen = self.frozen_prefixes(phase)
        params = []
        for name, param in net.named_parameters():
            trainable = not under_prefix(name, frozen)
            param.requires_grad_(trainable)
            if trainable:
                params.append(param)
        return [{"params": params}]

    def train_mode(self, net: nn.Module, phase: dict) -> None:
        """Put ``net`` in training mode for a phase; modules under :meth:`frozen_prefixes` run in eval mode."""
        net.train()
        frozen = self.frozen_prefixes(phase)
        for name, module in net.named_modules():
            if under_prefix(name, frozen):
                module.eval()

    def fit_norm_stats(self, images: Sequence[np.ndarray]) -> dict | None:
        """Input normalisation statistics from the training images ((H, W, 3) uint8 each),
        stored in checkpoints so that inference needs nothing else.

        The default keeps only the Reinhard target (``{'reinhard': {'mean', 'std'}}``, None
        when off; networks normalise inside ``forward``); families that standardise inputs add
        ``'mean'`` and ``'std'`` (3 floats each, 0-255 units).
        """
        target = self.fit_reinhard_target(images)
        return None if target is None else {"reinhard": target}

    def sample_weights(self, samples: Sequence[Any]) -> np.ndarray | None:
        """Per-sample training weights, or None (default) for a uniform shuffled pass.

        Args:
            samples: the training samples (each with ``image``, ``inst_map``, ``type_map``,
                ... as attributes or keys), in the training dataset's order.

        Returns:
            (len(samples),) non-negative float weights: the engine then draws each epoch's
            samples with replacement in proportion to them (e.g. class-aware resampling).
        """
        return None

    def example_input(self) -> torch.Tensor:
        """A (1, 3, S, S) float input for ``--summary``; S is ``infer.input_size``."""
        size = int(self.cfg.get("infer", {}).get("input_size", 256))
        return torch.zeros(1, 3, size, size)

    def evaluate(self, result: dict[str, Any], sample: dict[str, Any]) -> dict[str, float]:
        """Validation scores of one whole image; larger is better for every key.

        Args:
            result: what :meth:`postprocess` returned for the image.
            sample: the ground truth, ``{'image', 'inst_map', 'type_map', ...}``.

        Returns:
            The scores of the training task (``models.tasks``): instance families get
            ``metrics.instance_stats`` (dice, dice2, aji, aji_plus, dq, sq, pq; NaN where
            undefined), semantic ones ``miou``, ``fiou``, ``mdice``, ``pixel_accuracy``, patch
            ones ``f1`` and the accuracy scores of ``metrics.patch.image_scores``.
        """
        return task_kind(self.task_for("train")).evaluate(self, result, sample)

    def overlay(self, image: np.ndarray, result: dict[str, Any]) -> np.ndarray | None:
        """An (H, W, 3) uint8 picture of ``result`` over ``image`` for TensorBoard, or None.

        The default follows the inference task: instance boundaries of ``result['inst_map']``
        in yellow, class colours of ``result['class_map']`` blended over the image; none for patches.
        """
        return task_kind(self.task_for("infer")).overlay(self, image, result)

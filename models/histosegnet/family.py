"""The HistoSegNet family: a patch classifier trained on patch labels only; tissue-type maps
from its Grad-CAMs, inter-class adjustments and a dense CRF (Chan et al., ICCV 2019; SEEDS 4).

Training (patch task): each sample's image is resized to the classifier's input
(``infer.input_size``, 224 published) and its multi-hot ``labels`` (``model.classes`` order;
derived from a type map when a sample has no labels: class c present = type c+1 occurs) are
the targets of a class-weighted binary cross-entropy. Inputs are standardised by one scalar
mean and standard deviation over all pixels and channels of the training images
(``model.input_norm: null``) or given ones (published ADP: ``{mean: 193.09203, std: 56.450138}``); they are kept
with the class weights in the checkpoint's ``norm_stats``. The per-class decision thresholds
are a buffer of the network (:func:`models.histosegnet.pipeline.calibrate_thresholds` sets them
ROC-optimally on validation patches).

Inference (semantic task): :mod:`models.histosegnet.pipeline` turns an image into the three
stage maps of every segmentation pass (Grad-CAM, adjusted, CRF). Within today's engine,
``predict``/``postprocess``/``evaluate`` serve validation as a patch classifier.

Configuration (``opt/histosegnet.yaml``): ``model`` {classes, width, dropout, bn_momentum, pretrained,
input_norm, input_mpp}; ``loss`` {class_weights, weighting}; ``segmentation`` {mode, passes,
sequential_subtraction}; ``infer`` {input_size, output_size, batch_size, mag, gradcam};
``postproc`` {crf}.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError
from models.base import Family
from models.histosegnet.classes import ResolvedPass, passes_for, resolve_pass
from models.histosegnet.gradcam import grad_cam
from models.histosegnet.net import HistoNet, load_vgg16_weights
from postproc.crf import CRFParams

NORM_EPS = 1e-7  # published: (x - mean) / (std + 1e-7)
WEIGHTINGS = ("per_class", "sample_argmax")


def multi_hot(sample: dict, classes: int, where: str = "sample") -> np.ndarray:
    """(classes,) float32 patch labels of a sample: its ``labels``, else the types present in its
    ``type_map`` (class c = type c + 1; 0 is background).

    Raises:
        UserError: no labels and no type map, a label vector of another length, or entries
            other than 0/1.
    """
    labels = sample.get("labels")
    if labels is None:
        type_map = sample.get("type_map")
        if type_map is None:
            raise UserError(f"{where}: HistoSegNet trains on patch labels; the sample has neither labels nor a type map")
        return np.isin(np.arange(1, classes + 1), type_map).astype(np.float32)
    labels = np.asarray(labels)
    if labels.shape != (classes,):
        raise UserError(f"{where}: patch labels have shape {labels.shape}; model.classes names {classes} classes")
    if not np.isin(labels, (0, 1)).all():
        raise UserError(f"{where}: patch labels must be 0 or 1 (got {sorted(set(labels.tolist()))})")
    return labels.astype(np.float32)


class PatchLabelTargets:
    """Target builder: the image resized to the classifier's input and its multi-hot labels.

    Returns ``image`` (S, S, 3) uint8 and ``labels`` (C,) float32.
    """

    def __init__(self, classes: int, input_size: int) -> None:
        self.classes = classes
        self.input_size = input_size

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        return {"image": resize_to_input(sample["image"], self.input_size),
                "labels": multi_hot(sample, self.classes, str(sample.get("name") or "sample"))}


def resize_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 (area interpolation when shrinking, bilinear otherwise)."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    shrink = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def class_weights(label_rows: np.ndarray) -> np.ndarray:
    """(C,) float32 weights ``n / count_c`` of (n, C) 0/1 training labels (1 for absent classes)."""
    counts = label_rows.sum(0)
    return np.where(counts > 0, label_rows.shape[0] / np.maximum(counts, 1), 1.0).astype(np.float32)


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                 weighting: str = "per_class") -> torch.Tensor:
    """Class-weighted binary cross-entropy of (N, C) logits and 0/1 labels.

    ``per_class``: every (sample, class) term times its class's weight, averaged.
    ``sample_argmax``: every sample's mean term times the weight of its first positive class (how
    Keras 2.2 applies ``class_weight`` to a multi-hot target), averaged.
    """
    terms = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    if weights is None:
        return terms.mean()
    weights = weights.to(terms.device)
    if weighting == "per_class":
        return (terms * weights[None]).mean()
    return (terms.mean(1) * weights[labels.argmax(1)]).mean()


class HistoSegNetFamily(Family):
    """HistoSegNet V1 with the X1.7 classifier."""

    name = "histosegnet"

    # ------------------------------------------------------------------ configuration

    @property
    def classes(self) -> list[str]:
        """The classifier's class names (``model.classes``)."""
        classes = self.cfg["model"].get("classes")
        if not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes):
            raise UserError(f"model.classes must be a non-empty list of distinct class names (got {classes!r})")
        return [str(name) for name in classes]

    @property
    def input_size(self) -> int:
        size = int(self.cfg["infer"]["input_size"])
        if size < 8 or size % 4:
            raise UserError(f"infer.input_size is {size}; the classifier needs a multiple of 4 (224 published)")
        return size

    def resolved_passes(self) -> list[ResolvedPass]:
        """The segmentation passes of ``segmentation.mode`` bound to ``model.classes``."""
        seg = self.cfg.get("segmentation") or {}
        return [resolve_pass(spec, self.classes) for spec in passes_for(str(seg.get("mode", "both")), seg.get("passes"))]

    def crf_params(self, **overrides: Any) -> CRFParams:
        """``postproc.crf`` with ``overrides``, range-checked."""
        return CRFParams.from_options({**((self.cfg.get("postproc") or {}).get("crf") or {}), **overrides})

    # ------------------------------------------------------------------ network and data

    def build_network(self) -> nn.Module:
        """:class:`HistoNet` for ``model.classes``; the seven convolutions from ``model.pretrained``
        (a local torchvision VGG16 file) when set."""
        model = self.cfg["model"]
        self.resolved_passes()  # refuse a bad class set or CRF setting before any training
        self.crf_params()
        net = HistoNet(len(self.classes), width=float(model.get("width", 1.0)), dropout=float(model.get("dropout", 0.5)),
                       bn_momentum=float(model.get("bn_momentum", 0.01)))
        if model.get("pretrained"):
            load_vgg16_weights(net, model["pretrained"])
        return net

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return PatchLabelTargets(len(self.classes), self.input_size)

    def fit_norm_stats(self, images: Sequence[np.ndarray]) -> dict:
        """``{'mean': [m], 'std': [s]}`` (one scalar each, 0-255 units: ``model.input_norm`` or
        fitted over every pixel and channel of the training images) and ``class_weights``
        (``n / count_c`` of the training labels, when ``loss.class_weights`` is ``fit`` and the
        labels are reachable through the images' samples; else none), plus the Reinhard target
        of the base class when configured."""
        stats = super().fit_norm_stats(images) or {}
        configured = self.cfg["model"].get("input_norm") or "fit"
        fit_weights = (self.cfg.get("loss") or {}).get("class_weights", "fit") == "fit"
        total, squares, count, rows = 0.0, 0.0, 0, []
        for sample in _samples_of(images):
            self.check_class_names(sample.get("class_names"), str(sample.get("name") or "training sample"))
            image = np.asarray(sample["image"], np.float64)
            total, squares, count = total + image.sum(), squares + np.square(image).sum(), count + image.size
            if fit_weights and ("labels" in sample or "type_map" in sample):
                rows.append(multi_hot(sample, len(self.classes), str(sample.get("name") or "training sample")))
            else:
                fit_weights = False  # bare images: no labels to count
                rows = []
        if configured == "fit":
            if count == 0:
                raise UserError("model.input_norm is 'fit' but there are no training images")
            mean = float(total / count)
            stats.update(mean=[mean], std=[float(np.sqrt(max(float(squares / count) - mean**2, 0.0)))])
        elif isinstance(configured, dict) and {"mean", "std"} <= set(configured):
            stats.update(mean=[float(configured["mean"])], std=[float(configured["std"])])
        else:
            raise UserError(f"model.input_norm is {configured!r}; expected null (fit) or {{mean: m, std: s}} (0-255 units)")
        if rows:
            stats["class_weights"] = class_weights(np.stack(rows)).tolist()
        return stats

    def check_class_names(self, names: Sequence[str] | None, where: str) -> None:
        """Refuse data whose patch-label classes (or type names) are not ``model.classes`` in order.

        Raises:
            UserError: naming the unknown and the missing classes.
        """
        if names is None or list(names) == self.classes:
            return
        unknown = [name for name in names if name not in self.classes]
        missing = [name for name in self.classes if name not in names]
        detail = f"unknown {_short(unknown)}, missing {_short(missing)}" if unknown or missing else "in another order"
        raise UserError(f"{where}: the data's classes {_short(list(names))} are not model.classes "
                        f"{_short(self.classes)} ({detail}); set model.classes to the data's class columns in their order")

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB 0-255 -> (x - mean) / (std + 1e-7) with the scalar statistics."""
        if not self.norm_stats or "mean" not in self.norm_stats:
            raise UserError("HistoSegNet has no input statistics: train first or load a checkpoint (norm_stats)")
        return (images.float() - float(self.norm_stats["mean"][0])) / (float(self.norm_stats["std"][0]) + NORM_EPS)

    # ------------------------------------------------------------------ training

    def forward(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": net(self.standardise(batch["image"]))}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
             weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``bce``: class-weighted binary cross-entropy (``loss.weighting``, see :func:`weighted_bce`)."""
        weighting = str((self.cfg.get("loss") or {}).get("weighting", "per_class"))
        if weighting not in WEIGHTINGS:
            raise UserError(f"loss.weighting '{weighting}' is not one of {list(WEIGHTINGS)}")
        stored = (self.norm_stats or {}).get("class_weights")
        class_w = torch.tensor(stored) if stored is not None else None
        bce = weighted_bce(outputs["logits"], batch["labels"], class_w, weighting)
        return weights.get("bce", 1.0) * bce, {"bce": bce}

    # ------------------------------------------------------------------ inference (patch task)

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``class_prob``: (N, C, H, W) the window's sigmoid scores at every pixel (today's tiler
        takes dense maps only); with ``infer.gradcam`` also ``gradcam`` (N, C, H, W) score-weighted
        Grad-CAMs (zero under threshold). Windows are resized to the classifier's input."""
        size = images.shape[2:]
        x = images if tuple(size) == (self.input_size,) * 2 else F.interpolate(
            images, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        x = self.standardise(x)
        if self.cfg["infer"].get("gradcam"):
            cams, scores = grad_cam(net, x, self.forced_classes(x.device))
            cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        else:
            with torch.no_grad():
                scores = torch.sigmoid(net(x).float())
        out = {"class_prob": scores[:, :, None, None].expand(-1, -1, *size)}
        if self.cfg["infer"].get("gradcam"):
            out["gradcam"] = cams
        return out

    def forced_classes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(C,) bool classifier classes forced to pass by any segmentation pass (GlaS: gland)."""
        forced = torch.zeros(len(self.classes), dtype=torch.bool, device=device)
        for resolved in self.resolved_passes():
            forced[list(resolved.forced)] = True
        return forced

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Patch-level result of one image: ``class_prob`` (C,) the scores averaged over its
        windows and ``labels`` (C,) float32 0/1 at ``options['thresholds']`` (default 0.5)."""
        if "class_prob" not in raw:
            raise UserError(f"HistoSegNet post-processing needs the raw map 'class_prob' (have {sorted(raw)})")
        probs = raw["class_prob"].reshape(-1, raw["class_prob"].shape[-1]).mean(0)
        thresholds = np.asarray(options.get("thresholds", 0.5), np.float32)
        return {"class_prob": probs, "labels": (probs >= thresholds).astype(np.float32)}

    def evaluate(self, result: dict[str, Any], sample: dict[str, Any]) -> dict[str, float]:
        """Patch scores of one image: ``accuracy`` (fraction of classes right), ``exact`` (all
        right), ``f1`` (sample F1; 1 when neither side has a class)."""
        truth = multi_hot(sample, len(self.classes), str(sample.get("name") or "validation sample"))
        pred = np.asarray(result["labels"], np.float32)
        tp = float((pred * truth).sum())
        denominator = float(pred.sum() + truth.sum())
        return {"accuracy": float((pred == truth).mean()), "exact": float((pred == truth).all()),
                "f1": 2 * tp / denominator if denominator else 1.0}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.input_size, self.input_size)


def _short(names: Sequence[str], most: int = 6) -> str:
    """A list of names for a message: at most ``most`` shown, then how many more."""
    shown = ", ".join(repr(name) for name in names[:most])
    return f"[{shown}{f', ... {len(names) - most} more' if len(names) > most else ''}]"


def _samples_of(images: Sequence[Any]) -> Iterable[dict]:
    """Sample dicts (``image``, ``labels``/``type_map`` when present) of what ``fit_norm_stats``
    receives: the engine's view of the training samples (its ``samples``) or bare images."""
    source = getattr(images, "samples", None)
    if source is None:
        for image in images:
            yield {"image": image}
        return
    for item in source:
        sample = {}
        for key in ("name", "image", "labels", "type_map", "class_names"):
            value = item.get(key) if isinstance(item, dict) else getattr(item, key, None)
            if value is not None:
                sample[key] = value
        yield sample

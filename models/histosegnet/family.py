"""The HistoSegNet family: a patch classifier trained on patch labels only; tissue-type maps
from its Grad-CAMs, inter-class adjustments and a dense CRF (Chan et al., ICCV 2019; SEEDS 4).

Training (task ``patch``): each sample is brought to the classifier's input
(``model.input_size``, 224 published; see :func:`classifier_input`) and its multi-hot ``labels``
(``model.classes`` order; derived from a type map when a sample has no labels: class c present =
type c+1 occurs) are the targets of a class-weighted binary cross-entropy. Inputs are
standardised by one scalar mean and standard deviation over all pixels and channels of the
training images (``model.input_norm: null``) or given ones (published ADP: ``{mean: 193.09203,
std: 56.450138}``); they are kept with the class weights in the checkpoint's ``norm_stats``.
After every validation :meth:`HistoSegNetFamily.calibrate` sets the per-class decision
thresholds ROC-optimally on the validation patches (``extra_state['thresholds']``, saved in the
checkpoint and in every raw file).

Inference (task ``semantic``) runs through the shared tiler: windows of ``infer.input_size``
image pixels (the classifier's field of view at the image's resolution) are resized to the
classifier's input; :meth:`HistoSegNetFamily.predict` returns per window the dense
score-weighted Grad-CAMs (``gradcam``, classes under threshold zero), the window's pixels
(``rgb``, what the background map and the CRF read) and the class scores (``class_prob``, one
vector per window). :meth:`HistoSegNetFamily.postprocess` turns the stitched maps of an image (or
a slide tile) into the three stage maps of the output pass (Grad-CAM, adjusted, CRF): the CRF
map is the ``class_map``, all three are ``stages``.

Configuration (``opt/histosegnet.yaml``): ``model`` {classes, input_size, width, dropout,
bn_momentum, pretrained, input_norm}; ``loss`` {class_weights, weighting}; ``segmentation``
{mode, passes, output, sequential_subtraction}; ``infer`` {input_size, output_size,
keep_margin, batch_size, mag}; ``postproc`` {crf}.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from misc.errors import UserError
from models.base import Family
from models.histosegnet.adjust import adjust_pass, gradcam_labels
from models.histosegnet.classes import ResolvedPass, passes_for, resolve_pass
from models.histosegnet.gradcam import grad_cam
from models.histosegnet.net import HistoNet, load_vgg16_weights
from models.histosegnet.thresholds import DEFAULT_THRESHOLD, roc_optimal_thresholds
from postproc.crf import CRFParams, crf_labels

log = logging.getLogger(__name__)

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
    """Target builder: the patch as a classifier input (:func:`classifier_input`) and its
    multi-hot labels.

    Returns ``image`` (S, S, 3) uint8 and ``labels`` (C,) float32.
    """

    def __init__(self, classes: int, input_size: int, window: int) -> None:
        self.classes = classes
        self.input_size = input_size
        self.window = window

    def __call__(self, sample: dict) -> dict[str, np.ndarray]:
        return {"image": classifier_input(sample["image"], self.input_size, self.window),
                "labels": multi_hot(sample, self.classes, str(sample.get("name") or "sample"))}


def classifier_input(image: np.ndarray, size: int, window: int) -> np.ndarray:
    """A training patch as the classifier sees it: (h, w, 3) uint8 -> (size, size, 3) uint8.

    A patch at least one window (``infer.input_size`` image pixels) a side is resized to the
    input, as the published ADP patches (1088 px -> 224). A smaller one is rescaled by
    ``size / window`` (the inference scale) and mirror-padded (centred, ``cv2.BORDER_REFLECT``)
    to the input, as the published code pads images smaller than one input; a side still
    longer than the input is then resized to it.
    """
    image = np.ascontiguousarray(image)
    h, w = image.shape[:2]
    if min(h, w) >= window:
        return _resize(image, (size, size))
    scaled = _resize(image, (max(1, round(h * size / window)), max(1, round(w * size / window))))
    pad_h, pad_w = max(size - scaled.shape[0], 0), max(size - scaled.shape[1], 0)
    padded = _mirror_pad(scaled, (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    return _resize(padded, (size, size))


def _mirror_pad(image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) padded by mirroring (edge pixel repeated, repeated for pads longer than the side)."""
    index_r = _reflect_index(image.shape[0], *rows)
    index_c = _reflect_index(image.shape[1], *cols)
    return image[np.ix_(index_r, index_c)]


def _reflect_index(length: int, before: int, after: int) -> np.ndarray:
    """Source indices of an axis of ``length`` padded by ``before``/``after`` samples,
    half-sample symmetric (``c b a | a b c | c b a``) and periodic beyond one reflection."""
    index = np.arange(-before, length + after)
    folded = np.remainder(index, 2 * length)
    return np.where(folded >= length, 2 * length - 1 - folded, folded)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> shape (area interpolation when shrinking, bilinear otherwise)."""
    if image.shape[:2] == shape:
        return np.ascontiguousarray(image)
    shrink = image.shape[0] > shape[0] or image.shape[1] > shape[1]
    return cv2.resize(np.ascontiguousarray(image), (shape[1], shape[0]),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


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
    task = "semantic"
    needs_grad = True  # Grad-CAM at inference

    def task_for(self, purpose: str) -> str:
        """``patch`` for training (validation scores patch labels), ``semantic`` for inference."""
        return "patch" if purpose == "train" else "semantic"

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
        """The classifier's input side (``model.input_size``, 224 published)."""
        size = int(self.cfg["model"].get("input_size", 224))
        if size < 8 or size % 4:
            raise UserError(f"model.input_size is {size}; the classifier needs a multiple of 4 (224 published)")
        return size

    @property
    def window(self) -> int:
        """The inference window side in image pixels (``infer.input_size``): the classifier's
        field of view at the images' resolution (ADP at 0.25 µm/px: 1088 for 224 inputs)."""
        window, output = int(self.cfg["infer"]["input_size"]), int(self.cfg["infer"]["output_size"])
        if window != output:
            raise UserError(f"infer.output_size ({output}) must equal infer.input_size ({window}): "
                            "Grad-CAM maps cover the whole window")
        return window

    def resolved_passes(self) -> list[ResolvedPass]:
        """The segmentation passes of ``segmentation.mode`` bound to ``model.classes``."""
        seg = self.cfg.get("segmentation") or {}
        return [resolve_pass(spec, self.classes) for spec in passes_for(str(seg.get("mode", "both")), seg.get("passes"))]

    def output_pass(self) -> ResolvedPass:
        """The pass whose maps are the results (``segmentation.output``, default the last one)."""
        passes = self.resolved_passes()
        wanted = (self.cfg.get("segmentation") or {}).get("output")
        if wanted is None:
            return passes[-1]
        names = [p.spec.name for p in passes]
        if wanted not in names:
            raise UserError(f"segmentation.output is '{wanted}'; the passes of this mode are {names}")
        return passes[names.index(wanted)]

    def class_info(self) -> dict[int, tuple[str, tuple[int, int, int]]]:
        """Semantic classes of the results: the output pass's class set (``postproc.class_info``
        when given)."""
        given = super().class_info()
        if given is not None:
            return given
        info = self.output_pass().info
        return {k: (name, colour) for k, (name, colour) in enumerate(zip(info.names, info.colours))}

    def thresholds(self) -> np.ndarray:
        """(C,) float32 decision thresholds: ``extra_state['thresholds']`` (ROC-optimal on the
        validation split, see :meth:`calibrate`), else 0.5 for every class."""
        stored = self.extra_state.get("thresholds")
        if stored is None:
            return np.full(len(self.classes), DEFAULT_THRESHOLD, np.float32)
        if len(stored) != len(self.classes):
            raise UserError(f"stored thresholds name {len(stored)} classes; model.classes has {len(self.classes)}")
        return np.asarray(stored, np.float32)

    def check_settings(self) -> None:
        """Refuse a bad class set, window or CRF setting (before any training).

        Raises:
            UserError: naming the setting.
        """
        self.output_pass()
        if self.window < 1:
            raise UserError(f"infer.input_size is {self.window}; expected the window side in image pixels")
        self.crf_params()

    def crf_params(self, **overrides: Any) -> CRFParams:
        """``postproc.crf`` with ``overrides``, range-checked."""
        return CRFParams.from_options({**((self.cfg.get("postproc") or {}).get("crf") or {}), **overrides})

    # ------------------------------------------------------------------ network and data

    def build_network(self) -> nn.Module:
        """:class:`HistoNet` for ``model.classes``; the seven convolutions from ``model.pretrained``
        (a local torchvision VGG16 file) when set."""
        model = self.cfg["model"]
        self.check_settings()
        net = HistoNet(len(self.classes), width=float(model.get("width", 1.0)), dropout=float(model.get("dropout", 0.5)),
                       bn_momentum=float(model.get("bn_momentum", 0.01)))
        if model.get("pretrained"):
            load_vgg16_weights(net, model["pretrained"])
        return net

    def target_builder(self) -> Callable[[dict], dict[str, np.ndarray]]:
        return PatchLabelTargets(len(self.classes), self.input_size, self.window)

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

    # ------------------------------------------------------------------ inference

    def predict(self, net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per window (N, 3, W, W) RGB 0-255 (W = ``infer.input_size``), resized to the classifier:

        - ``gradcam`` (N, C, W, W): score-weighted Grad-CAMs resized back to the window, zero for
          classes under their threshold (:meth:`thresholds`);
        - ``rgb`` (N, 3, W, W): the window itself (the background map and the CRF read the image
          from the stitched maps, so that a slide tile needs nothing else);
        - ``class_prob`` (N, C): the classifier's sigmoid scores, one vector per window.
        """
        size = tuple(images.shape[2:])
        x = images.float()
        if size != (self.input_size,) * 2:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        thresholds = torch.from_numpy(self.thresholds()).to(images.device)
        cams, scores = grad_cam(net, self.standardise(x), thresholds, self.forced_classes(images.device))
        if tuple(cams.shape[2:]) != size:
            cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        return {"gradcam": cams, "rgb": images.detach().float(), "class_prob": scores}

    def forced_classes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(C,) bool classifier classes forced to pass by any segmentation pass (GlaS: gland)."""
        forced = torch.zeros(len(self.classes), dtype=torch.bool, device=device)
        for resolved in self.resolved_passes():
            forced[list(resolved.forced)] = True
        return forced

    def postprocess(self, raw: dict[str, np.ndarray], **options: Any) -> dict[str, Any]:
        """Results of one image (or slide tile) from its stitched maps.

        Args:
            raw: ``gradcam`` (H, W, C) and ``rgb`` (H, W, 3) float32, and ``class_prob``
                (R, K, C) one vector per window (see :meth:`predict`) when the caller keeps
                per-window vectors (the patch result needs them; the maps do not).
            options: ``crf`` (a mapping of ``postproc.crf`` keys overriding the configuration).

        Returns:
            ``class_map`` (H, W) int32 the CRF stage of the output pass; ``stages`` {'gradcam',
            'adjusted', 'crf'} -> (H, W) int32 label maps in the pass's class ids; ``class_prob``
            (C,) float32 the window scores averaged (the patch result) and ``labels`` (C,)
            float32 0/1 at :meth:`thresholds`, when ``raw`` has ``class_prob``.
        """
        missing = [key for key in ("gradcam", "rgb") if key not in raw]
        if missing:
            raise UserError(f"HistoSegNet post-processing needs the raw maps {missing} (have {sorted(raw)}); "
                            "infer again with this version")
        stages = self.stage_maps(raw["gradcam"], raw["rgb"], self.crf_params(**dict(options.get("crf") or {})))
        result: dict[str, Any] = {"class_map": stages["crf"], "stages": stages}
        if "class_prob" in raw:
            probs = np.asarray(raw["class_prob"], np.float32).reshape(-1, len(self.classes)).mean(0)
            result.update(class_prob=probs, labels=(probs >= self.thresholds()).astype(np.float32))
        return result

    def stage_maps(self, gradcam: np.ndarray, rgb: np.ndarray, crf: CRFParams) -> dict[str, np.ndarray]:
        """The three stage label maps of the output pass.

        Args:
            gradcam: (H, W, C) float32 score-weighted Grad-CAMs of the classifier's classes.
            rgb: (H, W, 3) float RGB 0-255.
            crf: the CRF's parameters.

        Returns:
            {'gradcam', 'adjusted', 'crf'} -> (H, W) int32 labels. Earlier passes run first
            (``func`` reads ``morph``'s adipose maps); the CRF runs on the output pass only.
        """
        cams = torch.from_numpy(np.ascontiguousarray(gradcam, np.float32)).permute(2, 0, 1)
        image = torch.from_numpy(np.ascontiguousarray(rgb, np.float32))
        sequential = bool((self.cfg.get("segmentation") or {}).get("sequential_subtraction", True))
        output = self.output_pass()
        earlier: dict[str, torch.Tensor] = {}
        for resolved in self.resolved_passes():  # over passes (two at most)
            maps = adjust_pass(cams, image, resolved, earlier, sequential)
            if resolved.spec.name == output.spec.name:
                labels = {"gradcam": gradcam_labels(maps.raw, resolved.excluded),
                          "adjusted": maps.adjusted.argmax(0),
                          "crf": crf_labels(maps.adjusted, image.round().clamp(0, 255), crf)}
                return {stage: value.numpy().astype(np.int32) for stage, value in labels.items()}
            earlier.update({name: maps.subtracted[k] for k, name in enumerate(resolved.info.names)})
        raise AssertionError("the output pass is one of the passes")

    def image_labels(self, sample: dict[str, Any]) -> np.ndarray:
        """Patch truth: :func:`multi_hot` (the sample's labels, else the types of its type map)."""
        return multi_hot(sample, len(self.classes), str(sample.get("name") or "validation sample"))

    def calibrate(self, results: list[dict[str, Any]], samples: list[dict[str, Any]]) -> None:
        """Per-class ROC-optimal (Youden) thresholds on the validation patches' scores into
        ``extra_state['thresholds']``; classes without both positives and negatives keep 0.5."""
        if not results:
            return
        scores = np.stack([np.asarray(r["class_prob"], np.float32) for r in results])
        labels = np.stack([self.image_labels(s) for s in samples])
        thresholds, kept = roc_optimal_thresholds(scores, labels)
        self.extra_state["thresholds"] = [float(t) for t in thresholds]
        if kept:
            log.info("thresholds: %s keep %.2f (no positives or no negatives among %d validation patches)",
                     [self.classes[c] for c in kept], DEFAULT_THRESHOLD, len(samples))

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

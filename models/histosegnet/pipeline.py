"""HistoSegNet inference on one image: the three stage maps of every segmentation pass.

::

    image ── rescale to the classifier's µm/px (mirror-pad first if smaller than one input)
          ── cut into ceil(size / 224) evenly overlapping inputs per axis (published layout)
          ── Grad-CAM per input, batched (gradients at inference; memory bounded by the batch)
          ── stitch (overlaps averaged), resize back to the image, remove the padding
          ── per pass: raw maps -> Grad-CAM labels; adjustments -> adjusted labels; dense CRF
             on the adjusted maps and the image -> CRF labels

Also :func:`calibrate_thresholds` (per-class ROC-optimal thresholds on validation patches) and
:func:`score_stages` (mIoU/fIoU of the three stages against pixel truth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metrics.semantic import semantic_iou
from misc.errors import UserError
from models.histosegnet.adjust import adjust_pass, gradcam_labels
from models.histosegnet.family import HistoSegNetFamily, multi_hot, resize_to_input
from models.histosegnet.gradcam import grad_cam
from models.histosegnet.thresholds import roc_optimal_thresholds
from postproc.crf import CRFParams, crf_labels

STAGES = ("gradcam", "adjusted", "crf")


class TileLayout(NamedTuple):
    """Where the classifier inputs lie.

    Attributes:
        size: (H, W) of the image.
        pad: (top/bottom, left/right) mirror padding added before rescaling, image pixels.
        scaled: (h, w) of the padded image after rescaling by 1 / down_fac.
        rows, cols: start offsets of the inputs in the rescaled image.
        window: classifier input side.
    """

    size: tuple[int, int]
    pad: tuple[int, int]
    scaled: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    window: int


def tile_starts(length: int, window: int) -> tuple[int, ...]:
    """Starts of ``ceil(length / window)`` windows covering ``length`` with equal overlaps
    (the published ``crop_into_patches``: the last one ends at ``length``)."""
    count = math.ceil(length / window)
    if count == 1:
        return (0,)
    overlap = (count * window - length) // (count - 1)
    return tuple(i * (window - overlap) for i in range(count - 1)) + (length - window,)


def cut_tiles(image: np.ndarray, window: int, down_fac: float) -> tuple[np.ndarray, TileLayout]:
    """Classifier inputs of an image, as published.

    Args:
        image: (H, W, 3) uint8.
        window: classifier input side (224).
        down_fac: classifier µm/px over the image's µm/px (> 0; 1 = same resolution).

    Returns:
        ``tiles`` (T, window, window, 3) uint8 in row-major order and their :class:`TileLayout`.
    """
    if not down_fac > 0:
        raise UserError(f"resolution factor {down_fac} must be > 0 (classifier µm/px over image µm/px)")
    h, w = image.shape[:2]
    pad = tuple(math.ceil(max(window * down_fac - side, 0) / 2) for side in (h, w))
    padded = cv2.copyMakeBorder(image, pad[0], pad[0], pad[1], pad[1], cv2.BORDER_REFLECT) if any(pad) else image
    scaled_size = (round(padded.shape[0] / down_fac), round(padded.shape[1] / down_fac))
    scaled_size = (max(scaled_size[0], window), max(scaled_size[1], window))
    scaled = padded if scaled_size == padded.shape[:2] else cv2.resize(
        padded, (scaled_size[1], scaled_size[0]), interpolation=cv2.INTER_LINEAR)
    rows, cols = tile_starts(scaled_size[0], window), tile_starts(scaled_size[1], window)
    tiles = np.stack([scaled[r : r + window, c : c + window] for r in rows for c in cols])
    return tiles, TileLayout((h, w), pad, scaled_size, rows, cols, window)  # type: ignore[arg-type]


def stitch_tiles(maps: torch.Tensor, layout: TileLayout) -> torch.Tensor:
    """(T, C, window, window) tile maps -> (C, H, W) on the image: overlaps averaged at the
    rescaled resolution, bilinearly resized to the padded image, padding removed."""
    c = maps.shape[1]
    total = torch.zeros(c, *layout.scaled, device=maps.device)
    count = torch.zeros(1, *layout.scaled, device=maps.device)
    starts = [(r, col) for r in layout.rows for col in layout.cols]
    for tile, (r, col) in zip(maps, starts):  # over tiles
        total[:, r : r + layout.window, col : col + layout.window] += tile
        count[:, r : r + layout.window, col : col + layout.window] += 1
    padded = (layout.size[0] + 2 * layout.pad[0], layout.size[1] + 2 * layout.pad[1])
    stitched = total / count.clamp_min(1)
    if tuple(layout.scaled) != padded:
        stitched = F.interpolate(stitched[None], size=padded, mode="bilinear", align_corners=False)[0]
    return stitched[:, layout.pad[0] : layout.pad[0] + layout.size[0], layout.pad[1] : layout.pad[1] + layout.size[1]]


@dataclass
class PassResult:
    """One pass's outputs for one image.

    Attributes:
        names: the pass's class names (label value = index).
        colours: their RGB colours.
        labels: stage name (:data:`STAGES`) -> (H, W) int64 label map.
        raw: (K, H, W) float32 Grad-CAMs in the pass's labels.
        adjusted: (K, H, W) float32 maps after the adjustments (the CRF's input).
    """

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    labels: dict[str, np.ndarray]
    raw: np.ndarray
    adjusted: np.ndarray


def image_gradcams(family: HistoSegNetFamily, net: nn.Module, image: np.ndarray, device: str | torch.device,
                   batch_size: int = 8, down_fac: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-weighted Grad-CAMs of the classifier's classes over a whole image.

    Returns:
        ``cams`` (C, H, W) float32 on ``device`` and ``scores`` (T, C) float32 per input tile.
    """
    tiles, layout = cut_tiles(image, family.input_size, down_fac)
    forced = family.forced_classes(device)
    cams, scores = [], []
    net.eval()
    for start in range(0, len(tiles), batch_size):  # batches of tiles
        batch = torch.from_numpy(tiles[start : start + batch_size]).to(device).permute(0, 3, 1, 2)
        batch_cams, batch_scores = grad_cam(net, family.standardise(batch), forced)
        cams.append(batch_cams)
        scores.append(batch_scores)
    return stitch_tiles(torch.cat(cams), layout), torch.cat(scores)


def segment_image(family: HistoSegNetFamily, net: nn.Module, image: np.ndarray, device: str | torch.device = "cpu",
                  batch_size: int = 8, mpp: float | None = None, crf: CRFParams | None = None) -> dict[str, PassResult]:
    """The three stage maps of every segmentation pass for one image.

    Args:
        family: the family (its configuration and ``norm_stats``).
        net: its classifier, on ``device`` (thresholds in ``net.thresholds``).
        image: (H, W, 3) uint8 RGB.
        mpp: the image's µm/px; with ``model.input_mpp`` set, the image is rescaled to it
            (None: the image is taken at the classifier's resolution).
        crf: CRF parameters (default ``postproc.crf``).

    Returns:
        Pass name -> :class:`PassResult`, in the order the passes run.
    """
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(f"HistoSegNet needs an (H, W, 3) uint8 RGB image; got {image.shape} {image.dtype}")
    input_mpp = family.cfg["model"].get("input_mpp")
    down_fac = float(input_mpp) / float(mpp) if input_mpp and mpp else 1.0
    cams, _ = image_gradcams(family, net, image, device, batch_size, down_fac)
    crf = crf or family.crf_params()
    sequential = bool((family.cfg.get("segmentation") or {}).get("sequential_subtraction", True))
    rgb = torch.from_numpy(image).to(device)
    earlier: dict[str, torch.Tensor] = {}
    results: dict[str, PassResult] = {}
    for resolved in family.resolved_passes():
        maps = adjust_pass(cams, rgb, resolved, earlier, sequential)
        labels = {
            "gradcam": gradcam_labels(maps.raw, resolved.excluded),
            "adjusted": maps.adjusted.argmax(0),
            "crf": crf_labels(maps.adjusted, rgb, crf),
        }
        results[resolved.spec.name] = PassResult(
            names=resolved.info.names, colours=resolved.info.colours,
            labels={stage: value.cpu().numpy() for stage, value in labels.items()},
            raw=maps.raw.cpu().numpy(), adjusted=maps.adjusted.cpu().numpy(),
        )
        earlier.update({name: maps.subtracted[k] for k, name in enumerate(resolved.info.names)})
    return results


def score_stages(results: Iterable[PassResult], truths: Iterable[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per-class IoU pooled over a set, mIoU and fIoU of each stage (one pass).

    Args:
        results: each image's :class:`PassResult` of the pass.
        truths: each image's (H, W) integer truth in the pass's labels.

    Returns:
        Stage -> ``{'iou_per_class', 'miou', 'fiou'}`` (see :func:`metrics.semantic.semantic_iou`).
    """
    results, truths = list(results), [np.asarray(t) for t in truths]
    if not results:
        raise UserError("no images to score")
    classes = len(results[0].names)
    out = {}
    for stage in STAGES:
        scores = semantic_iou(truths, [r.labels[stage] for r in results], classes)
        out[stage] = {key: scores[key] for key in ("iou_per_class", "miou", "fiou")}
    return out


def patch_scores(family: HistoSegNetFamily, net: nn.Module, images: Sequence[np.ndarray],
                 device: str | torch.device = "cpu", batch_size: int = 16) -> np.ndarray:
    """(N, C) float32 sigmoid scores of patches, each resized to the classifier's input."""
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):  # batches of patches
        batch = np.stack([resize_to_input(np.asarray(im), family.input_size) for im in images[start : start + batch_size]])
        with torch.no_grad():
            x = family.standardise(torch.from_numpy(batch).to(device).permute(0, 3, 1, 2))
            out.append(torch.sigmoid(net(x).float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(family.classes)), np.float32)


def calibrate_thresholds(family: HistoSegNetFamily, net: nn.Module, samples: Sequence[dict],
                         device: str | torch.device = "cpu") -> tuple[np.ndarray, list[str]]:
    """Set ``net.thresholds`` to the per-class ROC-optimal (Youden) thresholds on validation
    patches (``{'image', 'labels' or 'type_map'}`` dicts).

    Returns:
        ``(thresholds (C,), names of classes that kept 0.5 for lack of positives or negatives)``.
    """
    if not samples:
        raise UserError("threshold calibration needs validation patches; the validation split is empty")
    labels = np.stack([multi_hot(s, len(family.classes), str(s.get("name") or "validation sample")) for s in samples])
    scores = patch_scores(family, net, [s["image"] for s in samples], device)
    thresholds, kept = roc_optimal_thresholds(scores, labels)
    with torch.no_grad():
        net.thresholds.copy_(torch.from_numpy(thresholds))
    return thresholds, [family.classes[c] for c in kept]

"""Window prediction of one image: a family's network as a window predictor, the inference
precision, and test-time BatchNorm adaptation.

``infer_image`` predicts one in-memory image (used by ``infer.py`` through the folder runner and
by the training engine's validation). BatchNorm adaptation normalises with statistics of the
image being predicted: a network trained with small batches keeps running BatchNorm statistics
of its training images; on an image of another stain or tissue (a frozen section, a new site)
its activations drift away from them. AdaBN (Li et al., "Revisiting Batch Normalization For
Practical Domain Adaptation", ICLR-W 2017) recomputes the statistics on the target domain before
predicting. Here the target domain is one image: its windows run once through the network with
every BatchNorm layer accumulating a cumulative mean and variance, and the statistics used to
predict are ``weight × image + (1 − weight) × trained``. The trained buffers are restored
afterwards, so each image is adapted on its own and the result does not depend on the order of
a folder.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from inference.tiling import ArraySink, TileSpec, predict_tiled
from inference.tta import tta_average, tta_transforms
from misc.errors import UserError
from misc.precision import autocast_dtype, channels_last_allowed
from models.base import Family, StageMaps


def check_adapt_weight(weight: float) -> float:
    """``weight`` as a float in [0, 1], else a UserError naming ``infer.bn_adapt``."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise UserError(f"infer.bn_adapt must be a number in [0, 1], got {weight!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"infer.bn_adapt must be in [0, 1], got {value}")
    return value


def tracked_batchnorms(net: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``net`` that keep running statistics."""
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def adapted_batchnorm(net: nn.Module, weight: float, collect: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``net`` normalises with statistics blended towards those ``collect`` sees.

    Args:
        net: the network, in eval mode.
        weight: share of the collected statistics, in [0, 1] (0: the trained ones unchanged,
            1: the collected ones only).
        collect: runs the network on the adaptation data (e.g. every window of one image);
            meanwhile each BatchNorm layer is in training mode with a cumulative average
            (``momentum=None``), all other layers in their current mode.
            A layer that ``collect`` never reaches (an unused branch) keeps its trained statistics.

    On exit every BatchNorm layer has its trained buffers, momentum and mode back, also when
    ``collect`` or the block raises.
    """
    weight = check_adapt_weight(weight)
    layers = tracked_batchnorms(net)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum, m.training)
             for m in layers]
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        collect()
        seen = [layer.num_batches_tracked.item() > 0 for layer in layers]
        if layers and not any(seen):
            raise UserError("BatchNorm adaptation saw no data: the image gave no window")
        for layer, (mean, var, *_rest), share in zip(layers, saved, seen):
            layer.eval()
            share = weight if share else 0.0
            layer.running_mean.mul_(share).add_(mean, alpha=1.0 - share)
            layer.running_var.mul_(share).add_(var, alpha=1.0 - share)
        yield
    finally:
        for layer, (mean, var, count, momentum, training) in zip(layers, saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
            layer.num_batches_tracked.copy_(count)
            layer.momentum = momentum
            layer.train(training)


def with_infer_overrides(family: Any, **overrides: Any) -> Any:
    """A shallow copy of ``family`` whose ``cfg['infer']`` has the non-None ``overrides`` set.

    The family reads its inference options (e.g. ``tta``) from ``self.cfg['infer']``; this is
    how a command-line flag overrides the YAML without touching the original family.
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return family
    clone = copy.copy(family)
    clone.cfg = {**family.cfg, "infer": {**family.cfg.get("infer", {}), **changes}}
    return clone


def prediction_mode(family: Any) -> contextlib.AbstractContextManager:
    """The autograd context of ``family.predict``: ``torch.inference_mode()``, or gradients
    enabled for a family with ``needs_grad`` (e.g. Grad-CAM). Either way the outputs are
    detached after each batch, so the graph, and the memory it holds, lives for one batch."""
    return torch.enable_grad() if getattr(family, "needs_grad", False) else torch.inference_mode()


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    """(N, C, h, w) → (N, h, w, C) float32, or (N, C) per-window vectors as they are."""
    value = value.detach().float()
    return (value.permute(0, 2, 3, 1) if value.ndim == 4 else value).cpu().numpy()


def family_predictor(family: Family, net: nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None) -> Any:
    """Wrap ``family.predict`` as numpy (N, I, I, C) windows → named (N, O, O, K) float32 maps
    or (N, K) per-window vectors (see :mod:`inference.tiling`).

    ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the network under autocast; None: float32.
    Windows are uint8 RGB, or float for a stage whose input holds earlier stages' maps.
    With ``infer.tta`` (``true`` or a list of transform names, see :mod:`inference.tta`) the
    maps are the mean over the transformed windows, the family's ``vector_maps`` rotated back.
    Prediction runs under :func:`prediction_mode`.

    Raises:
        UserError: an ``infer.tta`` that names an unknown transform.
    """
    transforms = tta_transforms(family.cfg["infer"].get("tta"))

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return family.predict(net, batch)

    def predict(windows: np.ndarray) -> dict[str, np.ndarray]:
        batch = torch.from_numpy(np.ascontiguousarray(windows)).to(device).permute(0, 3, 1, 2).float().contiguous()
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        with prediction_mode(family), autocast:
            outputs = tta_average(forward, batch, transforms, family.vector_maps) if transforms else forward(batch)
        return {name: _to_numpy(value) for name, value in outputs.items()}

    return predict


def inference_precision(family: Any, net: nn.Module, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``infer.amp`` on ``device`` (bf16 on a CPU with native bf16 or a
    GPU with bf16, fp16 on other GPUs; None: float32), see :func:`misc.precision.autocast_dtype`.
    With ``infer.channels_last`` the network moves to NHWC where oneDNN allows it."""
    infer_cfg = family.cfg["infer"]
    amp = bool(infer_cfg.get("amp", False))
    amp_dtype = autocast_dtype(device, amp, amp, "infer.amp")
    if channels_last_allowed(net, bool(infer_cfg.get("channels_last", False)), device, amp_dtype, "infer.channels_last"):
        net.to(memory_format=torch.channels_last)
    return amp_dtype


def _discard(row_start: int, row_stop: int, band: dict[str, np.ndarray]) -> None:
    """A band sink that keeps nothing (the BatchNorm adaptation pass)."""


def adapted_to_image(
    family: Any, net: nn.Module, image: np.ndarray, spec: TileSpec, device: str | torch.device, batch_size: int,
    amp_dtype: torch.dtype | None = None,
) -> contextlib.AbstractContextManager:
    """Context in which ``net``'s BatchNorm statistics are adapted to ``image`` (``infer.bn_adapt``).

    With ``infer.bn_adapt`` = w > 0 the image's windows (the same tiling, without TTA) run
    through the network once and each BatchNorm layer normalises with w x their statistics +
    (1 - w) x the trained ones (:func:`adapted_batchnorm`); w = 0 (default): nothing changes.

    Args:
        image: (H, W, 3) uint8, after the family's ``preprocess_image``.
        spec: the window geometry of the prediction that follows.
    """
    weight = check_adapt_weight(family.cfg["infer"].get("bn_adapt") or 0.0)
    if weight == 0.0:
        return contextlib.nullcontext()
    observe = family_predictor(with_infer_overrides(family, tta=False), net, torch.device(device), amp_dtype)
    return adapted_batchnorm(net, weight, lambda: predict_tiled(image, observe, spec, _discard, batch_size))


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """Context in which ``net`` is in eval mode; its previous mode is restored after."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def stage_image(family: Any, image: np.ndarray) -> tuple[np.ndarray, ArraySink | None]:
    """The array a family's windows are cut from: ``family.preprocess_image(image)``, or for a
    later stage of a staged family (``family.previous`` set) ``family.stage_input`` of it and
    the earlier stages' maps of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB as read.

    Returns:
        ``(array, previous)``: (H', W', C) array and the earlier stages' maps and grid
        geometries (an :class:`ArraySink`), None for a single stage.
    """
    prepared = family.preprocess_image(image)
    chain = getattr(family, "previous", None)
    if chain is None:
        return prepared, None
    previous = chain.run(image)
    return family.stage_input(prepared, StageMaps(previous.maps, previous.grids)), previous


def predict_image(
    family: Any,
    net: nn.Module,
    image: np.ndarray,
    device: str | torch.device,
    batch_size: int | None = None,
    tta: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    bn_adapt: float | None = None,
) -> ArraySink:
    """:func:`infer_image` keeping the grid geometries: an :class:`ArraySink` whose ``maps``
    hold every map (dense (H, W, C), grid (R, K, C)) and ``grids`` the grid maps' geometry."""
    array, _ = stage_image(family, image)
    return predict_array(family, net, array, device, batch_size, tta, amp_dtype, bn_adapt)


def predict_array(
    family: Any,
    net: nn.Module,
    array: np.ndarray,
    device: str | torch.device,
    batch_size: int | None = None,
    tta: bool | None = None,
    amp_dtype: torch.dtype | None = None,
    bn_adapt: float | None = None,
) -> ArraySink:
    """Tiled prediction of an array already prepared by :func:`stage_image` ((H, W, C))."""
    family = with_infer_overrides(family, tta=tta, bn_adapt=bn_adapt)
    spec = TileSpec.from_config(family.cfg["infer"])
    batch_size = batch_size or family.cfg["infer"].get("batch_size", 8)
    sink = ArraySink(array.shape[0])
    with eval_mode(net), adapted_to_image(family, net, array, spec, device, batch_size, amp_dtype):
        predict_tiled(array, family_predictor(family, net, torch.device(device), amp_dtype), spec, sink,
                      batch_size=batch_size)
    return sink


def infer_image(
    family: Any,
    net: nn.Module,
    image: np.ndarray,
    device: str | torch.device,
    batch_size: int | None = None,
    tta: bool | list[str] | None = None,
    amp_dtype: torch.dtype | None = None,
    bn_adapt: float | None = None,
) -> dict[str, np.ndarray]:
    """Tiled prediction of one in-memory image.

    Args:
        family: the :class:`models.base.Family` instance (its ``cfg['infer']`` sets the window).
        net: its network, already on ``device``; it runs in eval mode and its mode is restored.
        image: (H, W, 3) uint8 RGB, before the family's ``preprocess_image``.
        device: the network's device.
        batch_size: windows per forward pass (``None``: ``infer.batch_size``).
        tta: test-time augmentation: on (8 dihedral transforms), off, or a list of transform
            names (``None``: ``infer.tta`` of the config; see :mod:`inference.tta`).
        amp_dtype: autocast dtype for the network (``None``: float32).
        bn_adapt: BatchNorm adaptation weight (``None``: ``infer.bn_adapt``; see
            :func:`adapted_to_image`).

    Returns:
        The family's named maps, each (H, W, C) float32, or (R, K, C) for per-window vectors
        (one value per window; see :mod:`inference.tiling`).
    """
    return predict_image(family, net, image, device, batch_size, tta, amp_dtype, bn_adapt).maps


class StageChain:
    """Earlier stages of a staged family run on a whole image, in order: what a later stage's
    ``family.previous`` is. Each stage's windows are cut from ``family.stage_input`` of the
    image and the maps of the stages before it.

    Args:
        stages: ``(family, net)`` of each earlier stage, in order, nets on ``device``.
        device: the nets' device.
    """

    def __init__(self, stages: list[tuple[Any, nn.Module]], device: str | torch.device) -> None:
        self.stages = stages
        self.device = device

    def run(self, image: np.ndarray) -> ArraySink:
        """Every earlier stage's maps of ``image`` ((H, W, 3) uint8) and grid geometries."""
        collected = ArraySink(image.shape[0])
        for index, (family, net) in enumerate(self.stages):
            array = family.preprocess_image(image)
            if index:
                array = family.stage_input(array, StageMaps(collected.maps, collected.grids))
            sink = predict_array(family, net, array, self.device)
            collected.maps.update(sink.maps)
            collected.grids.update(sink.grids)
        return collected

    def __call__(self, image: np.ndarray) -> StageMaps:
        """The earlier stages' named maps of ``image``, with the grid maps' geometry."""
        collected = self.run(image)
        return StageMaps(collected.maps, collected.grids)


def chain_stages(family: Any, meta: dict, device: str | torch.device) -> Any:
    """Wire a staged checkpoint for inference: the last stage's ``previous`` runs the earlier
    stages (``meta['stage_models']`` from ``models.checkpoint.load_checkpoint``) in order.
    A single-stage checkpoint's family is returned unchanged."""
    stages = meta.get("stage_models")
    if stages and len(stages) > 1:
        family.previous = StageChain(list(stages[:-1]), device)
    return family

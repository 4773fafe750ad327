"""HoVer-Net losses: cross-entropy + soft Dice (NP, TP) and MSE + MSGE (HV).

Term names: ``np_bce``, ``np_dice``, ``hv_mse``, ``hv_msge``, ``tp_bce``, ``tp_dice``; the
total is the weighted sum with the phase's ``loss_weights`` (a term without a weight counts 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from misc.errors import UserError

LOSS_TERMS = ("np_bce", "np_dice", "hv_mse", "hv_msge", "tp_bce", "tp_dice")


def gradient_kernels(size: int = 5, device: torch.device | None = None) -> torch.Tensor:
    """HoVer-Net's "Sobel-like" derivative kernels, x (along width) first.

    ``kernel_x[i, j] = dx / (dx² + dy²)`` with ``dx = j − size//2`` (column offset) and
    ``dy = i − size//2`` (row offset); ``kernel_y`` is its transpose. Applied as
    cross-correlation, ``kernel_x`` gives a positive response where values grow to the right.

    Returns:
        (2, 1, size, size) float32: ``[kernel_x, kernel_y]``.
    """
    if size % 2 != 1:
        raise UserError(f"loss.msge_kernel_size must be odd, got {size}")
    offsets = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    norm = dx * dx + dy * dy
    norm[size // 2, size // 2] = 1.0
    return torch.stack([dx / norm, dy / norm]).unsqueeze(1)


def hv_gradients(hv: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """x-derivative of the h map and y-derivative of the v map.

    Args:
        hv: (N, 2, H, W) float, channel 0 = horizontal (x), channel 1 = vertical (y).

    Returns:
        (N, 2, H, W): ``[d h / d x, d v / d y]`` (zero padding at the border).
    """
    kernels = gradient_kernels(kernel_size, hv.device).to(hv.dtype)
    return F.conv2d(hv, kernels, padding=kernel_size // 2, groups=2)


def soft_dice_loss(prob: torch.Tensor, onehot: torch.Tensor, smooth: float = 1.0e-3) -> torch.Tensor:
    """Soft Dice loss summed over channels, each computed over the whole batch.

    ``Σ_c 1 − (2 Σ p·g + smooth) / (Σ p + Σ g + smooth)``.

    Args:
        prob, onehot: (N, C, H, W) float probabilities and one-hot targets.
    """
    dims = (0, 2, 3)
    intersection = (prob * onehot).sum(dims)
    total = prob.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).sum()


def msge_loss(pred_hv: torch.Tensor, true_hv: torch.Tensor, focus: torch.Tensor, kernel_size: int = 5) -> torch.Tensor:
    """Mean squared error of HV gradients over nuclear pixels (both channels).

    Args:
        pred_hv, true_hv: (N, 2, H, W) float.
        focus: (N, H, W) 0/1 nuclear-pixel mask.

    Returns:
        ``Σ focus·(∇pred − ∇true)² / (2 Σ focus + 1e-8)``.
    """
    diff = hv_gradients(pred_hv, kernel_size) - hv_gradients(true_hv, kernel_size)
    focus = focus.to(diff.dtype).unsqueeze(1)
    return (focus * diff * diff).sum() / (2.0 * focus.sum() + 1.0e-8)


def _check_shapes(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
    """Raise when the output window and the target window differ."""
    for out_key, target_key in (("np", "np_map"), ("hv", "hv_map"), ("tp", "tp_map")):
        if out_key in outputs and target_key in batch:
            if tuple(outputs[out_key].shape[-2:]) != tuple(batch[target_key].shape[-2:]):
                raise UserError(
                    f"network output '{out_key}' is {tuple(outputs[out_key].shape[-2:])} but target "
                    f"'{target_key}' is {tuple(batch[target_key].shape[-2:])}; infer.output_size must "
                    "match the network's output window"
                )


def hovernet_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: dict[str, float],
    dice_smooth: float = 1.0e-3,
    msge_kernel_size: int = 5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted HoVer-Net loss.

    Args:
        outputs: logits ``np`` (N, 2, h, w), ``hv`` (N, 2, h, w), optional ``tp`` (N, T, h, w).
        batch: ``np_map`` (N, h, w) int64 0/1, ``hv_map`` (N, 2, h, w) float, optional
            ``tp_map`` (N, h, w) int64 in 0..T-1.
        weights: ``{term: weight}`` over :data:`LOSS_TERMS`.

    Returns:
        ``(total, terms)``; ``terms`` holds the unweighted value of every computed term
        (TP terms only when both ``outputs['tp']`` and ``batch['tp_map']`` exist).
    """
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise UserError(f"unknown loss_weights {unknown}; HoVer-Net terms are {list(LOSS_TERMS)}")
    _check_shapes(outputs, batch)
    true_np = batch["np_map"].long()
    np_logits = outputs["np"].float()
    terms = {
        "np_bce": F.cross_entropy(np_logits, true_np),
        "np_dice": soft_dice_loss(
            np_logits.softmax(1), F.one_hot(true_np, 2).permute(0, 3, 1, 2).float(), dice_smooth
        ),
    }
    pred_hv, true_hv = outputs["hv"].float(), batch["hv_map"].float()
    terms["hv_mse"] = F.mse_loss(pred_hv, true_hv)
    terms["hv_msge"] = msge_loss(pred_hv, true_hv, true_np, msge_kernel_size)
    if "tp" in outputs and "tp_map" in batch:
        tp_logits, true_tp = outputs["tp"].float(), batch["tp_map"].long()
        nr_types = tp_logits.shape[1]
        if int(true_tp.max()) >= nr_types:
            raise UserError(
                f"tp_map holds type {int(true_tp.max())} but the network has {nr_types} type channels; "
                "set model.nr_types to the number of types including background"
            )
        terms["tp_bce"] = F.cross_entropy(tp_logits, true_tp)
        terms["tp_dice"] = soft_dice_loss(
            tp_logits.softmax(1), F.one_hot(true_tp, nr_types).permute(0, 3, 1, 2).float(), dice_smooth
        )
    total = sum(float(weights.get(name, 0.0)) * value for name, value in terms.items())
    return total, terms

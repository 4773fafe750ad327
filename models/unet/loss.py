"""U-Net losses as the published ``train_head_hv.py`` computes them (SEEDS 6.3).

Terms (unweighted; the phase's ``loss_weights`` weight them, a term without weight is not
computed):

- ``np_bce``: segmentation_models_pytorch ``SoftBCEWithLogitsLoss`` on the 2 NP logits
  against the one-hot NP target: sigmoid BCE, mean over every element.
- ``np_dice``: smp ``DiceLoss('multiclass')`` on the NP logits: softmax, per channel
  ``1 - 2 Σ p g / max(Σ p + Σ g, 1e-7)`` over the batch, channels absent from the batch's
  target count 0, mean over channels.
- ``hv_mse``: MSE between ``tanh(hv)`` and the HV target.
- ``hv_msge``: HoVer-Net's MSGE (:func:`models.hovernet.loss.msge_loss`) on ``tanh(hv)``,
  over the true nuclear pixels.
- ``tp_focal``: smp ``FocalLoss('multiclass')`` (gamma 2, no alpha): for every type channel the
  sigmoid focal loss ``(1 - p_t)^gamma BCE`` against ``target == t``, mean over pixels,
  summed over channels. The published effective type loss (2 x this).
- ``tp_bce``, ``tp_dice``: as ``np_*`` on the TP logits; ``tp_wce``: softmax cross-entropy
  with per-type weights (``loss.class_weights``). The published code computes
  ``tp_bce + tp_dice + 2 tp_wce`` and then overwrites it with ``2 tp_focal``; giving these
  three terms weights instead reproduces the overwritten variant.

Published weights: ``np_bce 2, np_dice 2, hv_mse 2, hv_msge 2, tp_focal 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from misc.errors import UserError
from models.hovernet.loss import msge_loss

LOSS_TERMS = ("np_bce", "np_dice", "hv_mse", "hv_msge", "tp_focal", "tp_bce", "tp_dice", "tp_wce")
DICE_EPS = 1.0e-7


def soft_bce_loss(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Sigmoid binary cross-entropy of (N, C, H, W) logits against 0/1 targets, mean over all elements."""
    return F.binary_cross_entropy_with_logits(logits, onehot.to(logits.dtype))


def multiclass_dice_loss(logits: torch.Tensor, onehot: torch.Tensor, eps: float = DICE_EPS) -> torch.Tensor:
    """smp's multiclass Dice loss (smooth 0): mean over channels of
    ``(1 - 2 Σ p·g / max(Σ p + Σ g, eps)) · [Σ g > 0]``, sums over batch and pixels.

    Args:
        logits: (N, C, H, W) float; softmax over C gives ``p``.
        onehot: (N, C, H, W) 0/1 targets ``g``.
    """
    prob = logits.softmax(1)
    onehot = onehot.to(prob.dtype)
    dims = (0, 2, 3)
    intersection = (prob * onehot).sum(dims)
    cardinality = (prob + onehot).sum(dims)
    dice = 2.0 * intersection / cardinality.clamp_min(eps)
    present = (onehot.sum(dims) > 0).to(prob.dtype)
    return ((1.0 - dice) * present).mean()


def focal_loss(logits: torch.Tensor, onehot: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """smp's multiclass focal loss without alpha: ``Σ_c mean((1 - p_t)^gamma · BCE(z_c, g_c))``
    with ``p_t = exp(-BCE)`` (sigmoid per channel).

    Args:
        logits: (N, C, H, W) float.
        onehot: (N, C, H, W) 0/1 targets.
    """
    bce = F.binary_cross_entropy_with_logits(logits, onehot.to(logits.dtype), reduction="none")
    focal = (1.0 - torch.exp(-bce)).pow(gamma) * bce
    return focal.mean(dim=(0, 2, 3)).sum()


def weighted_ce_loss(logits: torch.Tensor, onehot: torch.Tensor, class_weights: Sequence[float] | None) -> torch.Tensor:
    """Softmax cross-entropy with per-class weights (PyTorch's weighted mean
    ``Σ w_y CE / Σ w_y``); ``class_weights`` None = unweighted.

    Raises:
        UserError: the number of weights differs from the channels.
    """
    weight = None
    if class_weights is not None:
        if len(class_weights) != logits.shape[1]:
            raise UserError(
                f"loss.class_weights has {len(class_weights)} values but the tp head has {logits.shape[1]} "
                "channels (types incl. background)"
            )
        weight = torch.tensor([float(w) for w in class_weights], dtype=logits.dtype, device=logits.device)
    return F.cross_entropy(logits, onehot.argmax(1), weight=weight)


def unet_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: dict[str, float],
    focal_gamma: float = 2.0,
    class_weights: Sequence[float] | None = None,
    msge_kernel_size: int = 5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted U-Net loss.

    Args:
        outputs: logits ``np`` (N, 2, H, W), ``hv`` (N, 2, H, W) (before tanh), ``tp`` (N, T, H, W).
        batch: ``np_map`` (N, H, W) int 0/1, ``hv_map`` (N, 2, H, W) float, ``tp_onehot``
            (N, T, H, W) 0/1.
        weights: ``{term: weight}`` over :data:`LOSS_TERMS`.
        focal_gamma: focusing exponent of ``tp_focal`` (published 2).
        class_weights: T per-type weights of ``tp_wce`` (None: unweighted).

    Returns:
        ``(total, terms)``: the weighted sum and the unweighted value of every term with a
        non-zero weight.
    """
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise UserError(f"unknown loss_weights {unknown}; U-Net terms are {list(LOSS_TERMS)}")
    if outputs["tp"].shape[1] != batch["tp_onehot"].shape[1]:
        raise UserError(
            f"the tp head has {outputs['tp'].shape[1]} channels but the targets {batch['tp_onehot'].shape[1]} types"
        )
    np_logits, tp_logits = outputs["np"].float(), outputs["tp"].float()
    true_np = batch["np_map"].long()
    np_onehot = F.one_hot(true_np, 2).permute(0, 3, 1, 2)
    tp_onehot = batch["tp_onehot"]
    pred_hv, true_hv = torch.tanh(outputs["hv"].float()), batch["hv_map"].float()
    compute = {
        "np_bce": lambda: soft_bce_loss(np_logits, np_onehot),
        "np_dice": lambda: multiclass_dice_loss(np_logits, np_onehot),
        "hv_mse": lambda: F.mse_loss(pred_hv, true_hv),
        "hv_msge": lambda: msge_loss(pred_hv, true_hv, true_np, msge_kernel_size),
        "tp_focal": lambda: focal_loss(tp_logits, tp_onehot, focal_gamma),
        "tp_bce": lambda: soft_bce_loss(tp_logits, tp_onehot),
        "tp_dice": lambda: multiclass_dice_loss(tp_logits, tp_onehot),
        "tp_wce": lambda: weighted_ce_loss(tp_logits, tp_onehot, class_weights),
    }
    terms = {name: compute[name]() for name in LOSS_TERMS if float(weights.get(name, 0.0)) != 0.0}
    if not terms:
        raise UserError(f"every loss weight is 0; give at least one of {list(LOSS_TERMS)} a weight")
    total = sum(float(weights[name]) * value for name, value in terms.items())
    return total, terms

"""CHR-Net loss: CE(final types) + CE(HRFE-1 groups) + CE(HRFE-2 groups) + CE(binary) + MAE(marker).

Term names (``loss_weights`` keys): ``type_ce``, ``hrfe1_ce``, ``hrfe2_ce``, ``binary_ce``,
``marker_mae``, and the optional soft Dice terms ``type_dice``, ``hrfe1_dice``, ``hrfe2_dice``,
``binary_dice`` (published ``use_dice``, off: they are computed only when weighted). All terms
are per-pixel means over the batch; the total is their weighted sum (a term without a weight
counts 0).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from misc.errors import UserError
from models.hovernet.loss import soft_dice_loss

#: (output key, target key, term prefix) of the four softmax maps.
SOFTMAX_MAPS = (("tp", "tp_map", "type"), ("hrfe1", "hrfe1_map", "hrfe1"), ("hrfe2", "hrfe2_map", "hrfe2"),
                ("np", "np_map", "binary"))
LOSS_TERMS = ("type_ce", "hrfe1_ce", "hrfe2_ce", "binary_ce", "marker_mae",
              "type_dice", "hrfe1_dice", "hrfe2_dice", "binary_dice")


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: Sequence[float] | None = None) -> torch.Tensor:
    """Per-pixel cross-entropy, each pixel weighted by its true class's weight, mean over pixels.

    With ``class_weights`` None this is ``F.cross_entropy``. (Published: the vector
    [1, 1, 5, 5, 1] multiplies the one-hot target; defined, unused.)

    Args:
        logits: (N, C, H, W) float; target: (N, H, W) int64 in 0..C-1.
        class_weights: C floats or None.
    """
    if class_weights is None:
        return F.cross_entropy(logits, target)
    weights = torch.as_tensor(list(class_weights), dtype=logits.dtype, device=logits.device)
    if weights.numel() != logits.shape[1]:
        raise UserError(f"loss.class_weights has {weights.numel()} values but the type map has "
                        f"{logits.shape[1]} classes (model.nr_types)")
    return (F.cross_entropy(logits, target, reduction="none") * weights[target]).mean()


def _check(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
    """Raise on mismatched windows or target classes the network has no channel for."""
    for out_key, target_key, _ in SOFTMAX_MAPS:
        logits, target = outputs[out_key], batch[target_key]
        if tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
            raise UserError(f"network output '{out_key}' is {tuple(logits.shape[-2:])} but target '{target_key}' is "
                            f"{tuple(target.shape[-2:])}; infer.output_size must be infer.input_size - 6")
        if target.numel() and int(target.max()) >= logits.shape[1]:
            raise UserError(f"{target_key} holds class {int(target.max())} but '{out_key}' has {logits.shape[1]} "
                            "channels; check model.nr_types and model.groupings")


def chrnet_loss(
    outputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: dict[str, float],
    class_weights: Sequence[float] | None = None,
    dice_smooth: float = 1.0e-3,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted CHR-Net loss.

    Args:
        outputs: logits ``tp`` (N, T, h, w), ``hrfe1``/``hrfe2`` (N, G+1, h, w), ``np``
            (N, 2, h, w), ``marker`` (N, 1, h, w) (sigmoid -> marker in [0, 1]).
        batch: ``tp_map``, ``hrfe1_map``, ``hrfe2_map``, ``np_map`` (N, h, w) int64 and
            ``marker_map`` (N, h, w) float32 in [0, 1].
        weights: ``{term: weight}`` over :data:`LOSS_TERMS`.
        class_weights: optional per-type weights of ``type_ce``.

    Returns:
        ``(total, terms)``: the unweighted value of every computed term.
    """
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise UserError(f"unknown loss_weights {unknown}; CHR-Net terms are {list(LOSS_TERMS)}")
    _check(outputs, batch)
    terms: dict[str, torch.Tensor] = {}
    for out_key, target_key, prefix in SOFTMAX_MAPS:
        logits, target = outputs[out_key].float(), batch[target_key].long()
        terms[f"{prefix}_ce"] = weighted_cross_entropy(logits, target, class_weights if prefix == "type" else None)
        if float(weights.get(f"{prefix}_dice", 0.0)):
            onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
            terms[f"{prefix}_dice"] = soft_dice_loss(logits.softmax(1), onehot, dice_smooth)
    marker = torch.sigmoid(outputs["marker"].float())[:, 0]
    terms["marker_mae"] = (marker - batch["marker_map"].float()).abs().mean()
    total = sum(float(weights.get(name, 0.0)) * value for name, value in terms.items())
    return total, terms

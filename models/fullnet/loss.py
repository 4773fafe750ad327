"""FullNet loss: weighted cross entropy plus the variance-constrained (varCE) term (SEEDS 3.4).

``L = mean_pixels(w * NLL(log_softmax(z), y)) + alpha * L_var`` with
``L_var = (1/B) sum_b (1/(K_b + 1e-8)) sum_{k: |I_k| > 1} sum_c Var_{x in I_k}[p_c(x)]``:
I_k are the instances of image b (connected components of its inside class), K_b their
number, Var the unbiased variance over the instance's pixels of the softmax probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPSILON = 1e-8


def weighted_cross_entropy(logits: torch.Tensor, label: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
    """Mean over all pixels of ``weight_map * NLL``.

    Args:
        logits: (N, C, H, W) float.
        label: (N, H, W) int64 classes in [0, C).
        weight_map: (N, H, W) float pixel weights.

    Returns:
        Scalar float32.
    """
    nll = F.nll_loss(F.log_softmax(logits.float(), dim=1), label.long(), reduction="none")
    return (nll * weight_map.float()).mean()


def variance_loss(prob: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    """The varCE term, vectorised over the batch and instances (two-pass variance).

    Args:
        prob: (N, C, H, W) float softmax probabilities.
        instances: (N, H, W) integer instance ids per image, 0 = not an instance.

    Returns:
        Scalar float32; 0 for a batch without instances.
    """
    batch, channels = prob.shape[:2]
    prob = prob.float().permute(0, 2, 3, 1).reshape(batch, -1, channels)
    ids = instances.reshape(batch, -1).long()
    mask = ids > 0
    if not bool(mask.any()):
        return prob.sum() * 0.0
    image_index = torch.arange(batch, device=ids.device)[:, None].expand_as(ids)
    keys = image_index[mask] * (int(ids.max()) + 1) + ids[mask]
    unique, group = torch.unique(keys, return_inverse=True)
    values = prob[mask]                                             # (P, C)
    ones = torch.ones_like(group, dtype=prob.dtype)
    count = torch.zeros(unique.numel(), device=prob.device, dtype=prob.dtype).index_add_(0, group, ones)
    total = torch.zeros(unique.numel(), channels, device=prob.device, dtype=prob.dtype).index_add_(0, group, values)
    mean = total / count[:, None]
    squares = torch.zeros_like(total).index_add_(0, group, (values - mean[group]) ** 2)
    variance = (squares.sum(1) / (count - 1).clamp(min=1)) * (count > 1)  # (K,) summed over channels
    owner = torch.div(unique, int(ids.max()) + 1, rounding_mode="floor")
    per_image = torch.zeros(batch, device=prob.device, dtype=prob.dtype).index_add_(0, owner, variance)
    per_count = torch.bincount(owner, minlength=batch).to(prob.dtype)
    return (per_image / (per_count + EPSILON)).mean()


def fullnet_loss(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], alpha: float = 1.0, ce_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and terms ``ce`` (weighted cross entropy) and ``var`` (varCE, when alpha != 0).

    Args:
        logits: (N, 3, H, W) network output.
        batch: ``label`` (N, H, W) int64, ``weight_map`` (N, H, W) float and, for alpha != 0,
            ``instances`` (N, H, W) int.
        alpha: weight of the varCE term (published 1; 0 = plain weighted CE).
        ce_weight: weight of the cross-entropy term.
    """
    ce = weighted_cross_entropy(logits, batch["label"], batch["weight_map"])
    terms = {"ce": ce}
    total = ce_weight * ce
    if alpha:
        var = variance_loss(logits.float().softmax(1), batch["instances"])
        terms["var"] = var
        total = total + alpha * var
    return total, terms

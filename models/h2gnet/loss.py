"""H2G-Net's losses (published ``src/utils/losses.py``).

- :func:`cluster_weighted_ce`: the detection stage's cluster-weighted categorical cross-entropy
  (``cluster_weighted_loss_metric``): a macro average over the classes, and within each class
  over the image-feature clusters, present in the batch.
- :func:`soft_dice_loss`: the refinement stage's soft Dice over the foreground classes.
"""

from __future__ import annotations

import torch

from misc.errors import UserError

#: Probabilities are clipped to [EPSILON, 1 - EPSILON] before the logarithm (Keras' epsilon).
EPSILON = 1e-7
DICE_SMOOTH = 1.0
DICE_CLIP = 1e-10


def _check_labels(logits: torch.Tensor, labels: torch.Tensor, clusters: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or clusters.shape != (logits.shape[0],):
        raise UserError(f"cluster-weighted CE needs logits (N, C) with labels (N,) and clusters (N,); "
                        f"got {tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(clusters.shape)}")


def cluster_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, clusters: torch.Tensor,
                        epsilon: float = EPSILON) -> torch.Tensor:
    """Cluster-weighted cross-entropy of one batch.

    For each class c present in the batch, with n_ck its samples in cluster k and K_c the
    clusters among them: ``L_c = (1 / K_c) sum_k (1 / n_ck) sum_{i in c, k} l_i`` with the
    cross-entropy ``l_i = -sum_c' t_ic' log p_ic'`` of the one-hot truth clipped like the
    probabilities to [epsilon, 1 - epsilon] (as published); the loss is the mean of ``L_c`` over
    the classes present. A cluster absent from a class adds nothing (the published zero counts,
    set to 1). The published code divides by all classes, and an absent class gives 0 / 0 there;
    here it is left out, which is the same whenever every class is in the batch (the balanced
    sampler makes sure of it).

    Args:
        logits: (N, C) float class logits.
        labels: (N,) int64 true classes in 0..C-1.
        clusters: (N,) int64 cluster ids >= 0 (any integers; only equality matters).

    Returns:
        Scalar float tensor.
    """
    _check_labels(logits, labels, clusters)
    if logits.shape[0] == 0:
        raise UserError("cluster-weighted CE of an empty batch")
    log_probs = logits.float().softmax(dim=1).clamp(epsilon, 1 - epsilon).log()
    truth = torch.nn.functional.one_hot(labels, logits.shape[1]).float().clamp(epsilon, 1 - epsilon)
    nll = -(truth * log_probs).sum(dim=1)
    _, cluster_index = torch.unique(clusters, return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1
    group = labels * n_clusters + cluster_index                      # (class, cluster) cell per sample
    cell_count = torch.bincount(group, minlength=logits.shape[1] * n_clusters).view(-1, n_clusters)
    clusters_per_class = (cell_count > 0).sum(dim=1)                 # K_c
    classes_present = (clusters_per_class > 0).sum()
    weight = 1.0 / (cell_count.view(-1)[group] * clusters_per_class[labels] * classes_present).clamp(min=1)
    return (weight * nll).sum()


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH,
                   include_background: bool = False) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum p g + s) / (sum p^2 + sum g^2 + s)`` per image and class.

    Averaged over the foreground classes (channel 0 = background is left out unless
    ``include_background``) and the images, each term clipped to [0, 1 - 1e-10] as published.

    Args:
        probs: (N, C, H, W) float softmax probabilities.
        target: (N, C, H, W) float one-hot truth, or (N, H, W) int64 class map.

    Returns:
        Scalar float tensor.
    """
    if probs.ndim != 4:
        raise UserError(f"soft Dice needs (N, C, H, W) probabilities; got {tuple(probs.shape)}")
    if target.ndim == 3:
        target = torch.nn.functional.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2)
    if target.shape != probs.shape:
        raise UserError(f"soft Dice target {tuple(target.shape)} does not match probabilities {tuple(probs.shape)}")
    first = 0 if include_background else 1
    p, g = probs[:, first:].float(), target[:, first:].float()
    inter = (p * g).sum(dim=(2, 3))
    denominator = (p * p).sum(dim=(2, 3)) + (g * g).sum(dim=(2, 3))
    loss = 1 - (2 * inter + smooth) / (denominator + smooth)
    return loss.clamp(0, 1 - DICE_CLIP).mean()

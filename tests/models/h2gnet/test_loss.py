"""H2G-Net losses against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from misc.errors import UserError
from models.h2gnet.loss import cluster_weighted_ce, soft_dice_loss


def logits_for(true_probs: list[float], labels: list[int]) -> torch.Tensor:
    """2-class logits whose softmax gives ``true_probs`` to the labelled class."""
    probs = torch.tensor([[1 - p, p] if y == 1 else [p, 1 - p] for p, y in zip(true_probs, labels)], dtype=torch.float64)
    return probs.log()


def test_cluster_weighted_ce_by_hand():
    # class 0: cluster 0 holds p = 0.5 and 0.25, cluster 1 holds p = 0.8; class 1: cluster 2 holds p = 0.9
    labels = torch.tensor([0, 0, 0, 1])
    clusters = torch.tensor([0, 0, 1, 2])
    loss = cluster_weighted_ce(logits_for([0.5, 0.25, 0.8, 0.9], labels.tolist()), labels, clusters)
    class0 = ((-math.log(0.5) - math.log(0.25)) / 2 + (-math.log(0.8))) / 2   # 0.631432
    class1 = -math.log(0.9)                                                     # 0.105361
    assert float(loss) == pytest.approx((class0 + class1) / 2, abs=1e-6)
    assert float(loss) == pytest.approx(0.368397, abs=1e-6)
    plain = torch.nn.functional.cross_entropy(logits_for([0.5, 0.25, 0.8, 0.9], labels.tolist()), labels)
    assert float(plain) == pytest.approx(0.601986, abs=1e-6)   # the plain mean weighs the big cluster more


def test_cluster_weighted_ce_is_plain_ce_with_one_cluster_and_balanced_classes():
    logits = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    loss = cluster_weighted_ce(logits, labels, torch.zeros(6, dtype=torch.long))
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5)


def test_cluster_weighted_ce_clips_and_guards_absent_classes():
    labels = torch.tensor([1, 1])
    logits = torch.tensor([[0.0, -200.0], [0.0, 200.0]])   # p = 0 and p = 1 for class 1, only class 1 present
    loss = cluster_weighted_ce(logits, labels, torch.tensor([5, 7]))
    # clipped probabilities (1e-7 and 1 - 1e-7) against the clipped one-hot truth (1e-7, 1 - 1e-7)
    first = -((1 - 1e-7) * math.log(1e-7) + 1e-7 * math.log(1 - 1e-7))
    second = -((1 - 1e-7) * math.log(1 - 1e-7) + 1e-7 * math.log(1e-7))
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-5)
    with pytest.raises(UserError, match="labels"):
        cluster_weighted_ce(logits, labels[:1], torch.tensor([5, 7]))


def test_soft_dice_by_hand():
    fg = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    probs = torch.stack([1 - fg, fg])[None]                 # (1, 2, 2, 2)
    truth = torch.tensor([[[1, 1], [0, 0]]])                # (1, 2, 2) class map
    # sum p g = 1.5, sum p^2 = 1.25, sum g^2 = 2: 1 - (3 + 1) / (3.25 + 1)
    assert float(soft_dice_loss(probs, truth)) == pytest.approx(1 - 4 / 4.25, abs=1e-6)
    perfect = torch.stack([1 - truth[0].float(), truth[0].float()])[None]
    assert float(soft_dice_loss(perfect, truth)) == pytest.approx(0.0, abs=1e-7)
    empty = torch.zeros(1, 2, 2)
    # both empty: 1 - (0 + 1) / (0 + 1) = 0 with the smoothing
    assert float(soft_dice_loss(torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None], empty.long())) == 0.0

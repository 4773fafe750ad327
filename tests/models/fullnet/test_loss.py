"""Tests of the FullNet loss: weighted cross entropy and the varCE term (literal values)."""

from __future__ import annotations

import math

import torch

from models.fullnet.loss import fullnet_loss, variance_loss, weighted_cross_entropy

# One row of 6 pixels: instance 1 = pixels 0-1, instance 2 = pixels 2-4, instance 3 = pixel 5.
PROBS = torch.tensor([
    [0.50, 0.25, 0.25],
    [0.25, 0.50, 0.25],
    [0.20, 0.40, 0.40],
    [0.40, 0.40, 0.20],
    [0.60, 0.20, 0.20],
    [0.10, 0.80, 0.10],
])
IDS = torch.tensor([1, 1, 2, 2, 2, 3])
# Unbiased variances summed over channels: instance 1: 0.25^2/2 * 2 = 0.0625; instance 2:
# 0.04 + 0.04/3 + 0.04/3 = 0.2/3; instance 3 (one pixel) adds 0 but counts in K = 3.
EXPECTED_IMAGE = (0.0625 + 0.2 / 3) / (3 + 1e-8)


def as_maps(probs: torch.Tensor) -> torch.Tensor:
    """(P, 3) probabilities -> (1, 3, 1, P)."""
    return probs.T.reshape(1, 3, 1, -1)


def test_variance_of_two_instances_is_literal() -> None:
    value = variance_loss(as_maps(PROBS), IDS.reshape(1, 1, -1))
    assert math.isclose(value.item(), EXPECTED_IMAGE, rel_tol=1e-5)


def test_image_without_instances_counts_zero_in_the_batch_mean() -> None:
    probs = torch.cat([as_maps(PROBS), as_maps(PROBS)])
    ids = torch.stack([IDS, torch.zeros_like(IDS)]).reshape(2, 1, -1)
    assert math.isclose(variance_loss(probs, ids).item(), EXPECTED_IMAGE / 2, rel_tol=1e-5)


def test_ids_are_per_image() -> None:
    probs = torch.cat([as_maps(PROBS), as_maps(PROBS.flip(0))])
    ids = torch.stack([IDS, IDS.flip(0)]).reshape(2, 1, -1)
    assert math.isclose(variance_loss(probs, ids).item(), EXPECTED_IMAGE, rel_tol=1e-5)


def test_no_instances_anywhere_gives_zero_with_gradient() -> None:
    probs = as_maps(PROBS).requires_grad_(True)
    value = variance_loss(probs, torch.zeros(1, 1, 6, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and probs.grad is not None


def published_variance(prob: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The published LossVariance loop, as an oracle."""
    total = 0.0
    for k in range(prob.shape[0]):
        values = ids[k].unique()
        values = values[values != 0]
        summed = 0.0
        for value in values:
            pixels = prob[k][:, ids[k] == value]
            if pixels.shape[1] > 1:
                summed = summed + pixels.var(dim=1).sum()
        total = total + summed / (len(values) + 1e-8)
    return total / prob.shape[0]


def test_matches_the_published_loop_on_random_maps() -> None:
    gen = torch.Generator().manual_seed(0)
    prob = torch.randn(3, 3, 12, 12, generator=gen).softmax(1)
    ids = torch.randint(0, 5, (3, 12, 12), generator=gen)
    assert torch.allclose(variance_loss(prob, ids), published_variance(prob, ids), atol=1e-6)


def test_weighted_cross_entropy_is_literal() -> None:
    logits = as_maps(PROBS[:2]).log()
    label = torch.tensor([[[0, 2]]])
    weights = torch.tensor([[[2.0, 1.0]]])
    # (2 * -ln 0.5 + 1 * -ln 0.25) / 2 pixels = 2 ln 2
    assert math.isclose(weighted_cross_entropy(logits, label, weights).item(), 2 * math.log(2), rel_tol=1e-6)


def test_total_is_ce_plus_alpha_var_and_alpha_zero_drops_var() -> None:
    logits = as_maps(PROBS).log()
    batch = {"label": torch.tensor([[[1, 1, 1, 1, 1, 1]]]), "weight_map": torch.ones(1, 1, 6),
             "instances": IDS.reshape(1, 1, -1)}
    total, terms = fullnet_loss(logits, batch, alpha=2.0)
    assert torch.allclose(total, terms["ce"] + 2.0 * terms["var"])
    total, terms = fullnet_loss(logits, batch, alpha=0.0)
    assert set(terms) == {"ce"} and torch.equal(total, terms["ce"])

"""CHR-Net loss terms against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from misc.errors import UserError
from models.chrnet.loss import chrnet_loss, weighted_cross_entropy

ALL_ONE = {"type_ce": 1.0, "hrfe1_ce": 1.0, "hrfe2_ce": 1.0, "binary_ce": 1.0, "marker_mae": 1.0}


def _case() -> tuple[dict, dict]:
    """One image of 1 x 2 pixels: pixel 0 background, pixel 1 a nucleus of type 2."""
    zeros = lambda c: torch.zeros(1, c, 1, 2)  # noqa: E731 - uniform logits: CE = log(C) everywhere
    outputs = {"tp": zeros(5), "hrfe1": zeros(4), "hrfe2": zeros(4), "np": zeros(2), "marker": zeros(1)}
    batch = {
        "tp_map": torch.tensor([[[0, 2]]]), "hrfe1_map": torch.tensor([[[0, 1]]]),
        "hrfe2_map": torch.tensor([[[0, 2]]]),
        "np_map": torch.tensor([[[0, 1]]]), "marker_map": torch.tensor([[[0.0, 0.8]]]),
    }
    return outputs, batch


def test_five_terms_by_hand():
    outputs, batch = _case()
    total, terms = chrnet_loss(outputs, batch, ALL_ONE)
    expected = {"type_ce": math.log(5), "hrfe1_ce": math.log(4), "hrfe2_ce": math.log(4), "binary_ce": math.log(2),
                # sigmoid(0) = 0.5: |0.5 - 0| and |0.5 - 0.8| averaged
                "marker_mae": (0.5 + 0.3) / 2}
    assert {k: round(float(v), 6) for k, v in terms.items()} == {k: round(v, 6) for k, v in expected.items()}
    assert float(total) == pytest.approx(sum(expected.values()), abs=1e-6)


def test_hrfe_weights_zero_is_the_ablation():
    outputs, batch = _case()
    total, terms = chrnet_loss(outputs, batch, {**ALL_ONE, "hrfe1_ce": 0.0, "hrfe2_ce": 0.0})
    assert float(total) == pytest.approx(math.log(5) + math.log(2) + 0.4, abs=1e-6)
    assert "hrfe1_ce" in terms  # still logged


def test_dice_terms_only_when_weighted():
    outputs, batch = _case()
    _, terms = chrnet_loss(outputs, batch, ALL_ONE)
    assert not any(name.endswith("_dice") for name in terms)
    total, terms = chrnet_loss(outputs, batch, {**ALL_ONE, "binary_dice": 2.0})
    # soft Dice per channel over the batch: p = 0.5 on both pixels; each channel has one true pixel
    dice = 2 * (1 - (2 * 0.5 + 1e-3) / (1.0 + 1.0 + 1e-3))
    assert float(terms["binary_dice"]) == pytest.approx(dice, abs=1e-6)
    assert float(total) == pytest.approx(math.log(5) + 2 * math.log(4) + math.log(2) + 0.4 + 2 * dice, abs=1e-5)


def test_class_weights_weight_each_pixel_by_its_true_class():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[0, 1]]])
    per_pixel = torch.nn.functional.cross_entropy(logits, target, reduction="none")[0, 0]
    value = weighted_cross_entropy(logits, target, [1.0, 5.0, 1.0])
    assert float(value) == pytest.approx(float(per_pixel[0] * 1 + per_pixel[1] * 5) / 2, abs=1e-6)


def test_class_weight_vector_of_the_wrong_length_is_refused():
    outputs, batch = _case()
    with pytest.raises(UserError, match="loss.class_weights has 4 values"):
        chrnet_loss(outputs, batch, ALL_ONE, class_weights=[1, 1, 5, 5])


def test_unknown_term_and_out_of_range_class_are_refused():
    outputs, batch = _case()
    with pytest.raises(UserError, match="unknown loss_weights"):
        chrnet_loss(outputs, batch, {**ALL_ONE, "tp_bce": 1.0})
    batch["hrfe1_map"] = torch.tensor([[[0, 4]]])
    with pytest.raises(UserError, match="hrfe1_map holds class 4"):
        chrnet_loss(outputs, batch, ALL_ONE)

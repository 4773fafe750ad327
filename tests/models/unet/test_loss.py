"""U-Net loss terms against values computed by hand on a 1 x 2 pixel image.

Logits of both the NP and the (2-type) TP head: channel 0 = [0, 0], channel 1 = [0, ln 3];
targets: pixel 0 background (class 0), pixel 1 foreground (class 1). So sigmoid(0) = 1/2,
sigmoid(ln 3) = 3/4, and the softmax is [1/2, 1/2] at pixel 0 and [1/4, 3/4] at pixel 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from misc.errors import UserError
from models.hovernet.loss import msge_loss
from models.unet.loss import LOSS_TERMS, focal_loss, multiclass_dice_loss, soft_bce_loss, unet_loss, weighted_ce_loss

LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)


def logits() -> torch.Tensor:
    return torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])


def onehot() -> torch.Tensor:
    return torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])


def batch(hv: float = 0.0) -> dict[str, torch.Tensor]:
    return {"np_map": torch.tensor([[[0, 1]]]), "hv_map": torch.full((1, 2, 1, 2), hv), "tp_onehot": onehot().to(torch.uint8)}


def test_soft_bce_is_the_mean_over_all_elements():
    # three elements at logit 0 cost ln 2, the fourth -ln(3/4)
    assert soft_bce_loss(logits(), onehot()).item() == pytest.approx((3 * LN2 + LN43) / 4)


def test_multiclass_dice_by_hand():
    # class 0: 2 * 1/2 / (3/4 + 1) = 4/7; class 1: 2 * 3/4 / (5/4 + 1) = 2/3; loss = mean(3/7, 1/3) = 8/21
    assert multiclass_dice_loss(logits(), onehot()).item() == pytest.approx(8 / 21)


def test_dice_skips_a_class_absent_from_the_target():
    # only class 0 present: its dice 2 * (1/2 + 1/4) / (3/4 + 2) = 6/11, class 1 counts 0; mean = (5/11) / 2
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])
    assert multiclass_dice_loss(logits(), target).item() == pytest.approx(5 / 22)


def test_focal_by_hand():
    # (1 - p_t)^2 BCE: 1/4 ln 2 at logit 0, (1/4)^2 ln(4/3) at logit ln 3 with target 1;
    # channel 0 mean 1/4 ln 2, channel 1 mean (1/4 ln 2 + 1/16 ln(4/3)) / 2, summed
    assert focal_loss(logits(), onehot()).item() == pytest.approx(0.375 * LN2 + LN43 / 32)
    assert focal_loss(logits(), onehot()).item() == pytest.approx(0.26892, abs=1e-5)


def test_focal_with_gamma_0_is_the_bce_summed_over_channels():
    assert focal_loss(logits(), onehot(), gamma=0.0).item() == pytest.approx(2 * (3 * LN2 + LN43) / 4)


def test_weighted_cross_entropy_by_hand():
    # CE ln 2 at pixel 0 (class 0, weight 1), ln(4/3) at pixel 1 (class 1, weight 3): (ln 2 + 3 ln(4/3)) / 4
    assert weighted_ce_loss(logits(), onehot(), [1.0, 3.0]).item() == pytest.approx((LN2 + 3 * LN43) / 4)
    assert weighted_ce_loss(logits(), onehot(), None).item() == pytest.approx((LN2 + LN43) / 2)
    with pytest.raises(UserError, match="class_weights has 3 values but the tp head has 2"):
        weighted_ce_loss(logits(), onehot(), [1.0, 1.0, 1.0])


def test_published_total_is_twice_every_term():
    hv_logit = math.atanh(0.5)
    outputs = {"np": logits(), "hv": torch.full((1, 2, 1, 2), hv_logit), "tp": logits()}
    published = {"np_bce": 2.0, "np_dice": 2.0, "hv_mse": 2.0, "hv_msge": 2.0, "tp_focal": 2.0}
    total, terms = unet_loss(outputs, batch(hv=0.25), published)
    assert set(terms) == set(published)
    assert terms["hv_mse"].item() == pytest.approx(0.0625)  # tanh gives 0.5 against 0.25
    expected_msge = msge_loss(torch.full((1, 2, 1, 2), 0.5), torch.full((1, 2, 1, 2), 0.25), torch.tensor([[[0, 1]]]))
    assert terms["hv_msge"].item() == pytest.approx(expected_msge.item())
    hand = (3 * LN2 + LN43) / 4 + 8 / 21 + 0.0625 + expected_msge.item() + 0.375 * LN2 + LN43 / 32
    assert total.item() == pytest.approx(2 * hand)


def test_weighted_ce_variant_computes_only_its_terms():
    outputs = {"np": logits(), "hv": torch.zeros(1, 2, 1, 2), "tp": logits()}
    weights = {"tp_bce": 1.0, "tp_dice": 1.0, "tp_wce": 2.0}
    total, terms = unet_loss(outputs, batch(), weights, class_weights=[1.0, 3.0])
    assert sorted(terms) == ["tp_bce", "tp_dice", "tp_wce"]
    assert total.item() == pytest.approx((3 * LN2 + LN43) / 4 + 8 / 21 + 2 * (LN2 + 3 * LN43) / 4)


def test_unknown_or_missing_weights_are_user_errors():
    outputs = {"np": logits(), "hv": torch.zeros(1, 2, 1, 2), "tp": logits()}
    with pytest.raises(UserError, match="unknown loss_weights"):
        unet_loss(outputs, batch(), {"tp_ce": 1.0})
    with pytest.raises(UserError, match="every loss weight is 0"):
        unet_loss(outputs, batch(), {name: 0.0 for name in LOSS_TERMS})
    with pytest.raises(UserError, match="tp head has 3 channels"):
        unet_loss({**outputs, "tp": torch.zeros(1, 3, 1, 2)}, batch(), {"tp_focal": 1.0})


def test_loss_backpropagates_to_every_head():
    outputs = {name: torch.randn(2, channels, 8, 8, requires_grad=True) for name, channels in (("np", 2), ("hv", 2), ("tp", 4))}
    types = torch.randint(0, 4, (2, 8, 8))
    data = {"np_map": (types > 0).long(), "hv_map": torch.rand(2, 2, 8, 8) * 2 - 1,
            "tp_onehot": torch.nn.functional.one_hot(types, 4).permute(0, 3, 1, 2).to(torch.uint8)}
    total, _ = unet_loss(outputs, data, {"np_bce": 2, "np_dice": 2, "hv_mse": 2, "hv_msge": 2, "tp_focal": 2})
    total.backward()
    assert all(value.grad is not None and value.grad.abs().sum() > 0 for value in outputs.values())

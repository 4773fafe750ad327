"""HoVer-Net losses: derivative orientation on analytic ramps, Dice, term names and weighting."""

from __future__ import annotations

import pytest
import torch

from misc.errors import UserError
from models.hovernet.loss import LOSS_TERMS, hovernet_loss, hv_gradients, msge_loss, soft_dice_loss

SIZE = 9
INTERIOR = (slice(None), slice(2, -2), slice(2, -2))


def ramps() -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 1, 9, 9) float maps equal to the column index and to the row index."""
    rows, cols = torch.meshgrid(torch.arange(float(SIZE)), torch.arange(float(SIZE)), indexing="ij")
    return cols[None, None], rows[None, None]


def test_h_derivative_is_along_the_width():
    # Σ dx² / (dx² + dy²) over the 5×5 offsets is 12 (half of the 24 neighbours).
    cols, rows = ramps()
    grad = hv_gradients(torch.cat([cols, rows], 1))
    assert torch.allclose(grad[0, 0][INTERIOR[1:]], torch.full((5, 5), 12.0))


def test_v_derivative_is_along_the_height():
    cols, rows = ramps()
    grad = hv_gradients(torch.cat([cols, rows], 1))
    assert torch.allclose(grad[0, 1][INTERIOR[1:]], torch.full((5, 5), 12.0))


def test_h_map_varying_down_the_rows_has_no_x_derivative():
    cols, rows = ramps()
    grad = hv_gradients(torch.cat([rows, cols], 1))
    assert torch.allclose(grad[0][INTERIOR], torch.zeros(2, 5, 5), atol=1e-5)


def test_msge_averages_over_nuclear_pixels_and_both_channels():
    cols, _ = ramps()
    pred = torch.cat([cols, torch.zeros_like(cols)], 1)
    focus = torch.zeros(1, SIZE, SIZE)
    focus[INTERIOR] = 1
    assert msge_loss(pred, torch.zeros_like(pred), focus).item() == pytest.approx(12.0**2 / 2)


def test_soft_dice_of_half_probabilities_on_a_balanced_map():
    onehot = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    assert soft_dice_loss(torch.full_like(onehot, 0.5), onehot, smooth=0.0).item() == pytest.approx(1.0)


def test_soft_dice_of_a_perfect_prediction_is_zero():
    onehot = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    assert soft_dice_loss(onehot, onehot).item() == pytest.approx(0.0)


def example(typed: bool) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(0)
    outputs = {"np": torch.randn(2, 2, 6, 6, generator=generator), "hv": torch.randn(2, 2, 6, 6, generator=generator)}
    batch = {
        "np_map": torch.randint(0, 2, (2, 6, 6), generator=generator),
        "hv_map": torch.rand(2, 2, 6, 6, generator=generator) * 2 - 1,
    }
    if typed:
        outputs["tp"] = torch.randn(2, 4, 6, 6, generator=generator)
        batch["tp_map"] = torch.randint(0, 4, (2, 6, 6), generator=generator)
    return outputs, batch


def test_typed_loss_has_all_six_terms():
    _, terms = hovernet_loss(*example(typed=True), weights={})
    assert sorted(terms) == sorted(LOSS_TERMS)


def test_untyped_loss_has_no_type_terms():
    _, terms = hovernet_loss(*example(typed=False), weights={})
    assert sorted(terms) == ["hv_mse", "hv_msge", "np_bce", "np_dice"]


def test_total_is_the_weighted_sum_of_the_terms():
    weights = {"np_bce": 1.0, "np_dice": 0.5, "hv_mse": 2.0, "hv_msge": 1.0, "tp_bce": 3.0, "tp_dice": 0.0}
    total, terms = hovernet_loss(*example(typed=True), weights=weights)
    assert total.item() == pytest.approx(sum(weights[k] * v.item() for k, v in terms.items()))


def test_np_cross_entropy_matches_torch():
    outputs, batch = example(typed=False)
    _, terms = hovernet_loss(outputs, batch, weights={})
    expected = torch.nn.functional.cross_entropy(outputs["np"], batch["np_map"])
    assert terms["np_bce"].item() == pytest.approx(expected.item())


def test_unknown_weight_is_a_user_error():
    with pytest.raises(UserError, match="np_ce"):
        hovernet_loss(*example(typed=False), weights={"np_ce": 1.0})


def test_output_and_target_windows_must_match():
    outputs, batch = example(typed=False)
    batch["np_map"] = batch["np_map"][:, :4, :4]
    with pytest.raises(UserError, match="infer.output_size"):
        hovernet_loss(outputs, batch, weights={})


def test_type_beyond_the_type_channels_is_a_user_error():
    outputs, batch = example(typed=True)
    batch["tp_map"][0, 0, 0] = 7
    with pytest.raises(UserError, match="model.nr_types"):
        hovernet_loss(outputs, batch, weights={})

"""Test-time augmentation: transforms invert, vector fields rotate back, an equivariant net is unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from misc.errors import UserError
from inference.tta import TRANSFORMS, inverse_transform, transform, tta_average, tta_transforms, vector_matrix

CROP = 3


class EquivariantNet(torch.nn.Module):
    """Rotation/flip-equivariant dummy HoVer-Net: pointwise NP/TP and a gradient HV field.

    ``np``: sigmoid of the channel mean; ``hv``: central differences of the channel mean along
    x (width) and y (height); outputs centre-cropped by 3 px like a valid-convolution net.
    """

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = images.mean(1, keepdim=True)
        padded = F.pad(mean, (1, 1, 1, 1))
        grad_x = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
        grad_y = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
        crop = (..., slice(CROP, -CROP), slice(CROP, -CROP))
        return {
            "np_prob": torch.sigmoid(mean)[crop],
            "hv": torch.cat([grad_x, grad_y], 1)[crop],
            "tp_prob": torch.softmax(images, 1)[crop],
        }


def test_quarter_turn_maps_x_to_minus_y():
    assert torch.equal(vector_matrix(1, False), torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))


def test_width_flip_negates_x():
    assert torch.equal(vector_matrix(0, True), torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))


def test_quarter_turn_matrix_matches_the_rotated_pixel_grid():
    # A pixel one column right of the centre moves one row up under torch.rot90.
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 3] = 1
    rotated = transform(image, 1, False)
    moved = torch.nonzero(rotated[0, 0])[0]
    assert (moved[1] - 2, moved[0] - 2) == tuple(int(v) for v in vector_matrix(1, False) @ torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("quarter_turns, flip", TRANSFORMS.values())
def test_inverse_undoes_the_transform(quarter_turns, flip):
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(inverse_transform(transform(images, quarter_turns, flip), quarter_turns, flip), images)


def test_equivariant_network_gives_the_same_maps_with_and_without_tta():
    net = EquivariantNet()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    plain, averaged = net(images), tta_average(net, images, vector_maps={"hv": (0, 1)})
    for name in plain:
        torch.testing.assert_close(averaged[name], plain[name], rtol=1e-5, atol=1e-4)


def test_non_square_windows_are_a_user_error():
    with pytest.raises(UserError, match="square"):
        tta_average(EquivariantNet(), torch.zeros(1, 3, 16, 18))


def test_tta_setting_names_the_transforms():
    assert tta_transforms(True) == tuple(TRANSFORMS)
    assert tta_transforms(False) == () and tta_transforms(None) == ()
    assert tta_transforms(["identity", "hflip", "vflip"]) == ("identity", "hflip", "vflip")


@pytest.mark.parametrize("setting, message", [
    (["identity", "mirror"], "unknown transform.*mirror"),
    (["hflip", "hflip"], "listed twice"),
    ("hflip", "must be true, false or a non-empty list"),
    ([], "must be true, false or a non-empty list"),
])
def test_bad_tta_settings_are_user_errors(setting, message):
    with pytest.raises(UserError, match=message):
        tta_transforms(setting)


@pytest.mark.parametrize("name, expected", [
    ("hflip", lambda x: x.flip(3)),
    ("vflip", lambda x: x.flip(2)),
    ("transpose", lambda x: x.transpose(2, 3)),
    ("rot180", lambda x: x.flip(2).flip(3)),
])
def test_transform_names_mean_what_they_say(name, expected):
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(transform(images, *TRANSFORMS[name]), expected(images))


def test_three_flips_keep_an_equivariant_network_and_allow_non_square_windows():
    net = EquivariantNet()
    images = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(1)) * 255
    plain = net(images)
    averaged = tta_average(net, images, ("identity", "hflip", "vflip"), vector_maps={"hv": (0, 1)})
    for name in plain:
        torch.testing.assert_close(averaged[name], plain[name], rtol=1e-5, atol=1e-4)


def test_a_vector_field_is_read_from_its_declared_channels():
    """A map with a scalar channel first and the (x, y) field after it comes back like the plain field."""

    def stacked(images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = EquivariantNet()(images)
        return {"field": torch.cat([maps["np_prob"], maps["hv"]], 1)}

    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 255
    averaged = tta_average(stacked, images, vector_maps={"field": (1, 2)})
    torch.testing.assert_close(averaged["field"], stacked(images)["field"], rtol=1e-5, atol=1e-4)


def test_a_vector_field_taken_for_scalars_is_not_recovered():
    """Without its declaration the x component of a gradient field averages out over the flips."""
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 255
    averaged = tta_average(EquivariantNet(), images, ("identity", "hflip"))
    assert torch.allclose(averaged["hv"][:, 0], torch.zeros(1), atol=1e-5)

"""Test-time augmentation over transforms of the dihedral group of the square.

A transform ``(quarter_turns, flip)`` flips the windows along their width (when ``flip``) and
then rotates them by ``quarter_turns`` quarter turns with ``torch.rot90(dims=(2, 3))``. The
predictor runs the network on each transformed batch and brings every output back with the
inverse transform; scalar maps (probabilities) only need the inverse spatial transform, a
vector field also the inverse rotation of its vectors: after a width flip x is negated, after
a quarter turn x and y swap with a sign change. A family declares its vector fields in
:attr:`models.base.Family.vector_maps` (e.g. HoVer-Net's ``hv``: channel 0 is x (horizontal),
channel 1 is y (vertical)).

``infer.tta`` chooses the transforms: ``true`` for all 8 (:data:`DIHEDRAL`), ``false``/absent
for none, or a list of names from :data:`TRANSFORMS`, e.g. ``[identity, hflip, vflip]``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from misc.errors import UserError

#: Name → ``(quarter_turns, flip)`` of the 8 elements of the dihedral group of the square.
#: ``hflip`` mirrors left-right, ``vflip`` top-bottom, ``transpose`` swaps rows and columns,
#: ``antitranspose`` mirrors about the other diagonal; ``rot90`` turns counter-clockwise.
TRANSFORMS: dict[str, tuple[int, bool]] = {
    "identity": (0, False),
    "rot90": (1, False),
    "rot180": (2, False),
    "rot270": (3, False),
    "hflip": (0, True),
    "transpose": (1, True),
    "vflip": (2, True),
    "antitranspose": (3, True),
}
#: The names ``infer.tta: true`` runs, in the order their predictions are summed.
DIHEDRAL: tuple[str, ...] = tuple(TRANSFORMS)


def tta_transforms(setting: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The transform names of an ``infer.tta`` setting (empty: no test-time augmentation).

    Args:
        setting: ``True`` (the 8 of :data:`DIHEDRAL`), ``False``/``None`` (none), or a list of
            names of :data:`TRANSFORMS`.

    Raises:
        UserError: an unknown name, a repeated one, or a value of another type.
    """
    if setting is None or setting is False:
        return ()
    if setting is True:
        return DIHEDRAL
    if isinstance(setting, str) or not isinstance(setting, Sequence) or not setting:
        raise UserError(f"infer.tta must be true, false or a non-empty list of {list(TRANSFORMS)}; got {setting!r}")
    names = tuple(str(name) for name in setting)
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise UserError(f"infer.tta: unknown transform(s) {unknown}; choose from {list(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise UserError(f"infer.tta: transform listed twice in {list(names)}")
    return names


def transform(images: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """Apply ``(quarter_turns, flip)`` to (N, C, H, W) maps: width flip first, then rotation."""
    if flip:
        images = images.flip(3)
    return torch.rot90(images, quarter_turns, dims=(2, 3))


def inverse_transform(maps: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """Undo :func:`transform` on the pixel grid of (N, C, H, W) maps."""
    maps = torch.rot90(maps, -quarter_turns, dims=(2, 3))
    return maps.flip(3) if flip else maps


def vector_matrix(quarter_turns: int, flip: bool) -> torch.Tensor:
    """(2, 2) float32 matrix mapping an (x, y) vector of the original image to the transformed one.

    One ``rot90`` quarter turn maps pixel offsets (x, y) to (y, −x) (x = column, y = row
    down); a width flip maps (x, y) to (−x, y).
    """
    matrix = torch.tensor([[-1.0, 0.0], [0.0, 1.0]]) if flip else torch.eye(2)
    turn = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    for _ in range(quarter_turns % 4):
        matrix = turn @ matrix
    return matrix


def inverse_vectors(maps: torch.Tensor, quarter_turns: int, flip: bool, channels: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """A map holding a vector field, predicted on a transformed image, brought back to the
    original frame.

    Args:
        maps: (N, C, H, W) as the network predicted them for ``transform(image, quarter_turns,
            flip)``; channels ``channels[0]`` and ``channels[1]`` are the field's x (horizontal)
            and y (vertical) components, any other channel is a scalar.
        channels: indices of the x and y channels.

    Returns:
        (N, C, H', W') in the original image's pixel grid and axes.
    """
    back = inverse_transform(maps, quarter_turns, flip)
    inverse = vector_matrix(quarter_turns, flip).T.to(device=maps.device, dtype=maps.dtype)
    index = list(channels)
    vectors = torch.einsum("ij,njhw->nihw", inverse, back[:, index])
    if maps.shape[1] == 2 and index == [0, 1]:
        return vectors
    out = back.clone()
    out[:, index] = vectors
    return out


def tta_average(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    names: Sequence[str] = DIHEDRAL,
    vector_maps: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Average of ``predict`` over the transforms ``names`` of ``images``.

    Args:
        predict: maps (N, 3, H, W) images to named (N, C, h, w) maps (centred output window).
        images: (N, 3, H, W); square (H == W) when a transform turns or transposes.
        names: transform names of :data:`TRANSFORMS`, summed in this order.
        vector_maps: output name → (x channel, y channel) of each vector field among the outputs.

    Returns:
        The same names, each the mean of the predictions brought back to the original frame.

    Raises:
        UserError: a turning transform on non-square windows.
    """
    vector_maps = vector_maps or {}
    steps = [TRANSFORMS[name] for name in names]
    if images.shape[-1] != images.shape[-2] and any(turns % 2 for turns, _ in steps):
        raise UserError(f"test-time augmentation {list(names)} needs square input windows, got {tuple(images.shape[-2:])}")
    total: dict[str, torch.Tensor] = {}
    for quarter_turns, flip in steps:
        outputs = predict(transform(images, quarter_turns, flip))
        for name, value in outputs.items():
            if name in vector_maps:
                value = inverse_vectors(value, quarter_turns, flip, vector_maps[name])
            else:
                value = inverse_transform(value, quarter_turns, flip)
            total[name] = total[name] + value if name in total else value
    return {name: value / len(steps) for name, value in total.items()}

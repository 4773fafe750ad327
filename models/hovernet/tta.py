"""Dihedral test-time augmentation (8 rotations/flips) that keeps HV maps consistent.

A transform ``(k, flip)`` flips the image along its width (when ``flip``) and then rotates it
by ``k`` quarter turns with ``torch.rot90(dims=(2, 3))``. Scalar maps (probabilities) come
back by the inverse spatial transform; the HV vector field also needs the inverse rotation
of its vectors: after a width flip h is negated, after a quarter turn h and v swap with a
sign change.
"""

from __future__ import annotations

from typing import Callable

import torch

from misc.errors import UserError

#: The 8 elements of the dihedral group of the square as ``(quarter_turns, flip)``.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


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
    """(2, 2) matrix mapping an (x, y) vector of the original image to the transformed one.

    One ``rot90`` quarter turn maps pixel offsets (x, y) to (y, −x) (x = column, y = row
    down); a width flip maps (x, y) to (−x, y).
    """
    matrix = torch.tensor([[-1.0, 0.0], [0.0, 1.0]]) if flip else torch.eye(2)
    turn = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    for _ in range(quarter_turns % 4):
        matrix = turn @ matrix
    return matrix


def inverse_hv(hv: torch.Tensor, quarter_turns: int, flip: bool) -> torch.Tensor:
    """HV maps predicted on a transformed image, brought back to the original frame.

    Args:
        hv: (N, 2, H, W), channel 0 = horizontal (x), channel 1 = vertical (y), as the
            network predicted them for ``transform(image, quarter_turns, flip)``.

    Returns:
        (N, 2, H', W') in the original image's pixel grid and axes.
    """
    back = inverse_transform(hv, quarter_turns, flip)
    inverse = vector_matrix(quarter_turns, flip).T.to(device=hv.device, dtype=hv.dtype)
    return torch.einsum("ij,njhw->nihw", inverse, back)


def dihedral_average(
    predict: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    vector_keys: tuple[str, ...] = ("hv",),
) -> dict[str, torch.Tensor]:
    """Average of ``predict`` over the 8 dihedral transforms of ``images``.

    Args:
        predict: maps (N, 3, H, W) images to named (N, C, h, w) maps (centred output window).
        images: (N, 3, H, W) with H == W.
        vector_keys: outputs that are (x, y) vector fields with 2 channels (rotated back).

    Returns:
        The same names, each the mean of the 8 predictions brought back to the original frame.
    """
    if images.shape[-1] != images.shape[-2]:
        raise UserError(f"dihedral TTA needs square input windows, got {tuple(images.shape[-2:])}")
    total: dict[str, torch.Tensor] = {}
    for quarter_turns, flip in DIHEDRAL:
        outputs = predict(transform(images, quarter_turns, flip))
        for name, value in outputs.items():
            if name in vector_keys:
                value = inverse_hv(value, quarter_turns, flip)
            else:
                value = inverse_transform(value, quarter_turns, flip)
            total[name] = total[name] + value if name in total else value
    return {name: value / len(DIHEDRAL) for name, value in total.items()}

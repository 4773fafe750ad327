"""Reading the ImageNet encoder weights a user supplies as a local file (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from misc.errors import UserError


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The state dict of tensors in a local ``.pt``/``.pth`` file, read with
    ``torch.load(weights_only=True)`` on the CPU: the file's mapping, or its ``state_dict`` /
    ``model`` entry; a ``module.`` prefix (DataParallel) is dropped from the names.

    Args:
        what: names the file in error messages, e.g. ``"model.pretrained (torchvision resnet34)"``.

    Raises:
        UserError: the file does not exist, cannot be read, or holds no state dict of tensors.
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} file '{path}' does not exist (not found on this machine; nothing is downloaded)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the user's file
        raise UserError(f"{what} file '{path}' cannot be read as a PyTorch state dict ({type(err).__name__}: {err})") from None
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"{what} file '{path}' holds no state dict of tensors")
    return {str(name).removeprefix("module."): tensor for name, tensor in payload.items()}

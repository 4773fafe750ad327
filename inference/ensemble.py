"""Model ensembles: several checkpoints predict every image, their maps are averaged.

Each member predicts the whole image with its own window, colour normalisation, TTA and
precision (:func:`inference.predict.infer_image`); the stitched maps, which must have the same
names and channels for every member (e.g. ``np_prob``, ``hv``, ``tp_prob`` of HoVer-Net and
U-Net checkpoints), are averaged. The raw file is the first member's (its family and config
post-process the averaged maps) with one more entry, ``members``: JSON text of
``[{"family": ..., "checkpoint": ...}, ...]`` in the order given. The maps of one image are
held in memory (the single-checkpoint path streams them to disk instead).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from inference.folder import RunReport, list_images, write_failure
from inference.predict import eval_mode, family_predictor, inference_precision, infer_image, with_infer_overrides
from inference.rawfile import MEMBERS_NAME, check_map_names, meta_arrays, write_npz
from inference.tiling import TileSpec
from misc.errors import UserError
from misc.io import atomic_write, read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One checkpoint of an ensemble: its path, family (with the run's overrides) and network."""

    checkpoint: str
    family: Any
    net: nn.Module


def map_channels(member: Member, device: torch.device) -> dict[str, int]:
    """``{map name: channels}`` the member emits, from one blank window (no TTA)."""
    family = with_infer_overrides(member.family, tta=False)
    size = TileSpec.from_config(family.cfg["infer"]).input_size
    with eval_mode(member.net):
        maps = family_predictor(family, member.net, device)(np.zeros((1, size, size, 3), np.uint8))
    return {name: int(value.shape[-1]) for name, value in sorted(maps.items())}


def check_same_maps(members: Sequence[Member], device: torch.device) -> None:
    """Raise one :class:`UserError` naming the first member whose maps differ from the first one's."""
    first = map_channels(members[0], device)
    for member in members[1:]:
        other = map_channels(member, device)
        if other != first:
            raise UserError(
                f"cannot ensemble {members[0].checkpoint} ({members[0].family.name}, maps {first}) with "
                f"{member.checkpoint} ({member.family.name}, maps {other}): members must emit the same maps"
            )


def ensemble_image(
    members: Sequence[Member], image: np.ndarray, device: torch.device, amp_dtypes: Sequence[torch.dtype | None]
) -> dict[str, np.ndarray]:
    """Mean over ``members`` of their (H, W, C) float32 maps of one (H, W, 3) uint8 image; each
    member's network runs under autocast to its ``amp_dtypes`` entry (None: float32)."""
    total: dict[str, np.ndarray] = {}
    for member, amp_dtype in zip(members, amp_dtypes):
        maps = infer_image(member.family, member.net, image, device, amp_dtype=amp_dtype)
        for name, value in maps.items():
            total[name] = total[name] + value if name in total else value.astype(np.float32, copy=True)
    return {name: value / len(members) for name, value in total.items()}


def members_record(members: Sequence[Member]) -> np.ndarray:
    """The ``members`` raw-file entry: JSON text of each member's family and checkpoint."""
    return np.array(json.dumps([{"family": m.family.name, "checkpoint": m.checkpoint} for m in members]))


def run_ensemble_folder(
    members: Sequence[Member],
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str | torch.device,
    show_progress: bool = True,
    **overrides: Any,
) -> RunReport:
    """Predict every image of a folder with the average of ``members`` into ``<stem>.npz``
    raw files, skipping images already done.

    Args:
        members: two or more checkpoints (families and networks on ``device``).
        overrides: ``infer`` keys set for every member when not None (``tta``, ``mag``,
            ``batch_size``, ``bn_adapt``, ``amp``), as ``infer.py``'s options.

    Returns:
        The :class:`RunReport`; unreadable images are listed in ``failed``, not raised.

    Raises:
        UserError: members emitting different maps (naming both), or an unwritable output.
    """
    device = torch.device(device)
    members = [Member(m.checkpoint, with_infer_overrides(m.family, **overrides), m.net) for m in members]
    check_same_maps(members, device)
    amp_dtypes = [inference_precision(m.family, m.net, device) for m in members]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport()
    images = list_images(input_path)
    report.skipped = [p for p in images if (output_dir / f"{p.stem}.npz").is_file()]
    pending = [p for p in images if p not in report.skipped]
    first = members[0].family
    for path in tqdm(pending, unit="image", disable=not show_progress):
        try:
            image = read_image(path)
        except UserError as err:
            log.warning("skipping unreadable image: %s", err)
            report.failed.append((path, str(err)))
            continue
        maps = ensemble_image(members, image, device, amp_dtypes)
        check_map_names(maps)
        arrays = {**maps, **meta_arrays(first, image, path, first.cfg["infer"].get("mag", 40)),
                  MEMBERS_NAME: members_record(members)}
        target = output_dir / f"{path.stem}.npz"
        try:
            with atomic_write(target, "wb") as handle:
                write_npz(handle, {}, arrays)
        except OSError as err:
            raise write_failure(target, err) from None
        report.done.append(path)
    return report

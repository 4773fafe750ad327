"""Readers on the real shared data (MoNuSeg, CPM-15, typed CoNSeP copy); skipped when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loader import read_dataset
from loader.readers.annotations import aperio_regions, read_aperio_xml
from loader.stats import fragmented_ids
from misc.utils import instance_ids

pytestmark = pytest.mark.realdata

MONUSEG_COUNTS = {"TCGA-21-5784-01Z-00-DX1": 398, "TCGA-21-5786-01Z-00-DX1": 440}
CPM15_COUNTS = [351, 127, 256, 144, 346, 255, 292, 251, 97, 218, 68, 131, 93, 139, 137]


@pytest.fixture(scope="module")
def cpm15(data_root: Path) -> list:
    """All 15 CPM-15 tiles, read once: (name, mpp, inst_map)."""
    return [(s.name, s.mpp, s.inst_map) for s in read_dataset("cpm15", data_root / "cpm15")]


def test_monuseg_instance_counts_and_pieces(data_root: Path) -> None:
    dataset = read_dataset("monuseg", data_root / "monuseg")
    assert len(dataset) == 13
    for sample in dataset[:2]:
        inst_map = sample.inst_map
        assert inst_map.shape == (1000, 1000) and sample.image.shape == (1000, 1000, 3)
        assert instance_ids(inst_map).size == MONUSEG_COUNTS[sample.name]
        assert len(aperio_regions(data_root / "monuseg" / "annotations" / f"{sample.name}.xml")) == MONUSEG_COUNTS[sample.name]
        assert fragmented_ids(inst_map).size <= 0.02 * MONUSEG_COUNTS[sample.name]
        assert 0.24 < sample.mpp < 0.26


def test_cpm15_instance_counts(cpm15: list) -> None:
    assert [instance_ids(inst).size for _, _, inst in cpm15] == CPM15_COUNTS
    assert sum(CPM15_COUNTS) == 2905


def test_cpm15_one_piece_instances(cpm15: list) -> None:
    broken = {name: fragmented_ids(inst).tolist() for name, _, inst in cpm15 if fragmented_ids(inst).size}
    assert sum(len(ids) for ids in broken.values()) <= 0.02 * sum(CPM15_COUNTS)
    assert broken == {"image07": [29]}  # the one multi-piece nucleus in the whole set


def test_cpm15_mpp_by_magnification(cpm15: list) -> None:
    assert [mpp for _, mpp, _ in cpm15] == [0.5] * 7 + [0.25] * 8


def test_consep_folder_copy_has_types(data_root: Path) -> None:
    dataset = read_dataset("folder", data_root / "consep")
    assert len(dataset) == 432
    types_seen: set[int] = set()
    for sample in dataset[:16]:
        assert sample.type_map is not None and sample.type_map.shape == sample.inst_map.shape == (256, 256)
        assert not np.any((sample.inst_map > 0) != (sample.type_map > 0))
        types_seen |= set(np.unique(sample.type_map).tolist())
    assert types_seen == {0, 1, 2, 3, 4}


def _stain_offset(image: np.ndarray, inst_map: np.ndarray) -> np.ndarray:
    """Sub-pixel (dy, dx) at which the image's darkness best matches the filled mask: the
    correlation at shifts -1, 0, 1 on each axis, peak of the parabola through them (px)."""
    dark = 255.0 - image.astype(np.float32).mean(-1)
    mask = (inst_map > 0).astype(np.float32)
    inner = mask[2:-2, 2:-2] - mask[2:-2, 2:-2].mean()

    def corr(dy: int, dx: int) -> float:
        window = dark[2 + dy:dark.shape[0] - 2 + dy, 2 + dx:dark.shape[1] - 2 + dx]
        window = window - window.mean()
        return float((window * inner).sum() / np.sqrt((window * window).sum() * (inner * inner).sum()))

    peaks = []
    for axis in range(2):
        lo, mid, hi = (corr(*((s, 0) if axis == 0 else (0, s))) for s in (-1, 0, 1))
        peaks.append(0.5 * (lo - hi) / (lo - 2 * mid + hi))
    return np.array(peaks)


def test_monuseg_masks_line_up_with_the_nuclear_stain(data_root: Path) -> None:
    root = data_root / "monuseg"
    default, as_written = [], []
    for sample in read_dataset("monuseg", root)[:6]:
        default.append(_stain_offset(sample.image, sample.inst_map))
        inst_map = read_aperio_xml(root / "annotations" / f"{sample.name}.xml", sample.image.shape[:2], vertex_offset=0)
        as_written.append(_stain_offset(sample.image, inst_map))
    aligned, as_written = np.mean(default, axis=0), np.mean(as_written, axis=0)
    assert np.all(np.abs(aligned) < 0.25)
    assert np.all(as_written < -0.25)

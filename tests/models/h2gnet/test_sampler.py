"""Hierarchical balanced sampling and k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from misc.errors import UserError
from models.h2gnet.sampler import HierarchicalBatchSampler, kmeans, standardise_pca


def hierarchy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 slides, 2 classes, 1-3 clusters per (slide, class), very unequal sizes (1 to 200 patches)."""
    rows = []
    sizes = {(0, 0, 0): 200, (0, 1, 0): 3, (0, 1, 1): 40, (1, 0, 2): 1, (1, 0, 3): 60, (1, 1, 0): 90,
             (2, 0, 0): 7, (2, 1, 1): 5, (2, 1, 2): 120, (2, 1, 3): 2}
    for (slide, klass, cluster), n in sizes.items():
        rows += [(slide, klass, cluster)] * n
    table = np.array(rows)
    return table[:, 0], table[:, 1], table[:, 2]


def test_every_batch_is_balanced_at_every_level():
    slide, klass, cluster = hierarchy()
    sampler = HierarchicalBatchSampler([slide, klass, cluster], batch_size=12, batches=30, seed=1)
    batches = list(sampler)
    assert len(batches) == 30 and all(len(b) == 12 for b in batches)
    for batch in batches:
        b = np.array(batch)
        assert sorted(np.bincount(slide[b], minlength=3)) == [4, 4, 4]
        for s in range(3):
            in_slide = b[slide[b] == s]
            assert np.ptp(np.bincount(klass[in_slide], minlength=2)) == 0       # 2 + 2 per slide
            for c in range(2):
                cells = cluster[in_slide[klass[in_slide] == c]]
                present = np.unique(cluster[(slide == s) & (klass == c)])
                counts = np.array([(cells == q).sum() for q in present])
                assert counts.max() - counts.min() <= 1
    # the smallest leaf (1 patch) is drawn as often as its 60-patch sibling over the epoch
    drawn = np.concatenate(batches)
    assert abs((cluster[drawn][slide[drawn] == 1] == 2).sum() - (cluster[drawn][slide[drawn] == 1] == 3).sum()) <= 30


def test_epochs_differ_and_repeat_with_the_seed():
    levels = list(hierarchy())
    first = HierarchicalBatchSampler(levels, 8, 4, seed=3)
    again = HierarchicalBatchSampler(levels, 8, 4, seed=3)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)


def test_works_as_a_dataloader_batch_sampler_and_relabels():
    slide, klass, cluster = hierarchy()
    data = TensorDataset(torch.arange(len(slide)))
    sampler = HierarchicalBatchSampler([slide, klass, cluster], 6, 3)
    assert [len(batch[0]) for batch in DataLoader(data, batch_sampler=sampler)] == [6, 6, 6]
    sampler.set_levels([slide, klass, np.zeros_like(cluster)])
    assert len(sampler.tree[0][1]) == 1
    with pytest.raises(UserError, match="equally long"):
        sampler.set_levels([slide, klass[:-1]])


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    truth = np.repeat(np.arange(3), [50, 5, 30])
    points = torch.from_numpy(centres[truth] + rng.normal(0, 0.5, (len(truth), 2)).astype(np.float32))
    found = kmeans(points, 3, seed=0).numpy()
    # a perfect clustering up to renaming: each true blob maps to exactly one found cluster
    pairs = {(int(t), int(f)) for t, f in zip(truth, found)}
    assert len(pairs) == 3 and len({f for _, f in pairs}) == 3
    assert kmeans(points[:2], 10).max() <= 1


def test_standardise_pca_keeps_the_variance_asked_for():
    rng = np.random.default_rng(0)
    signal = rng.normal(0, 1, (200, 2))
    mixed = np.concatenate([signal @ rng.normal(0, 1, (2, 6)), 1e-3 * rng.normal(0, 1, (200, 4))], axis=1)
    features = torch.from_numpy(mixed * np.array([1, 10, 100, 1, 1, 1, 1, 1, 1, 1.0]))
    # standardised: 6 columns of rank 2 (variance 6 in two components) + 4 unit-variance noise columns
    assert standardise_pca(features, 0.59).shape[1] == 2
    full = standardise_pca(features, None)
    assert full.shape == (200, 10)
    assert np.allclose(full.mean(0).numpy(), 0, atol=1e-9) and np.allclose(full.std(0, unbiased=False).numpy(), 1)
    assert standardise_pca(features, 1.0).shape[1] == 6        # the rank: no zero-variance components
    with pytest.raises(UserError, match="pca_variance"):
        standardise_pca(features, 1.5)

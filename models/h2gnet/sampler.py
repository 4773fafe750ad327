"""Hierarchical balanced sampling of the detection stage's patches, and its k-means clusters.

The paper samples patches on the fly so that every mini-batch is balanced over a hierarchy of
labels (slide -> tissue class -> image-feature cluster; clusters from k-means over patch
features, variant "Mob-KM-PW"). :class:`HierarchicalBatchSampler` descends that tree for every
batch: a node asked for ``k`` draws shares them among its children as evenly as possible
(counts differ by at most one, the extra draws going to a random choice of children), so in
every batch and at every level the children of each node are balanced; a leaf (one cluster of
one class of one slide) draws its patches uniformly without replacement while it can.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from misc.errors import UserError

KMEANS_ITERATIONS = 50


def standardise_pca(features: torch.Tensor, variance: float | None) -> torch.Tensor:
    """Features standardised per dimension and projected on their principal components.

    The published clustering model chains the same steps (``src/utils/clustering.py``:
    standardiser, PCA, k-means assignment).

    Args:
        features: (N, D) float.
        variance: keep the fewest leading components explaining at least this fraction of the
            variance (in (0, 1]); None: standardise only.

    Returns:
        (N, K) float64, K <= D.
    """
    x = features.detach().double().cpu()
    std = x.std(dim=0, unbiased=False)
    x = (x - x.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    if variance is None:
        return x
    if not 0 < variance <= 1:
        raise UserError(f"sampler.pca_variance {variance} is outside (0, 1]")
    _, singular, basis = torch.linalg.svd(x, full_matrices=False)
    explained = torch.cumsum(singular**2, 0) / (singular**2).sum().clamp(min=1e-300)
    keep = int(torch.searchsorted(explained, torch.tensor(variance, dtype=explained.dtype) - 1e-12)) + 1
    return x @ basis[: min(keep, len(singular))].T


def kmeans(features: torch.Tensor, k: int, seed: int = 0, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        features: (N, D) float features.
        k: clusters (at most N; fewer distinct points give some clusters no members).
        seed: seed of the k-means++ draws.
        iterations: Lloyd iterations at most (stops when assignments settle).

    Returns:
        (N,) int64 cluster ids in 0..k-1.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise UserError(f"k-means needs (N, D) features with N >= 1; got {tuple(features.shape)}")
    if k < 1:
        raise UserError(f"sampler.clusters {k} must be at least 1")
    x = features.detach().double().cpu()
    k = min(k, x.shape[0])
    generator = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(x.shape[0], (1,), generator=generator)]
    for _ in range(1, k):
        distance = torch.cdist(x, centres).min(dim=1).values ** 2
        total = distance.sum()
        weights = distance / total if total > 0 else torch.full_like(distance, 1.0 / len(distance))
        centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=generator)]])
    assignment = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iterations):
        counts = torch.bincount(assignment, minlength=k).double()
        sums = torch.zeros_like(centres).index_add_(0, assignment, x)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        updated = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return assignment


def _share(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) int counts summing to ``k``, each ``k // n`` or one more (the extras on random children)."""
    counts = np.full(n, k // n, dtype=np.int64)
    counts[rng.permutation(n)[: k % n]] += 1
    return counts


class HierarchicalBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices balanced at every level of a label hierarchy.

    Args:
        levels: one (N,) integer label array per level, top first (e.g. slide, class, cluster)
            for the N patches of the dataset.
        batch_size: indices per batch.
        batches: batches per epoch (``len``).
        seed: base seed; epoch ``e`` uses ``seed + e`` (see :meth:`set_epoch`).

    Every batch: for each node of the tree (e.g. one slide, or one class within a slide) that
    receives ``k`` draws, its children receive ``k // n`` or ``k // n + 1`` each.
    """

    def __init__(self, levels: Sequence[np.ndarray], batch_size: int, batches: int, seed: int = 0) -> None:
        if batch_size < 1 or batches < 1:
            raise UserError(f"sampler batch_size {batch_size} and batches {batches} must be at least 1")
        self.batch_size, self.batches, self.seed, self.epoch = int(batch_size), int(batches), int(seed), 0
        self.set_levels(levels)

    def set_levels(self, levels: Sequence[np.ndarray]) -> None:
        """Replace the hierarchy's labels (e.g. after the clusters are recomputed)."""
        arrays = [np.asarray(level).reshape(-1) for level in levels]
        if not arrays or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
            raise UserError(f"sampler levels must be equally long, non-empty label arrays; got lengths {[len(a) for a in arrays]}")
        self.levels = arrays
        self.tree = self._build(np.arange(len(arrays[0])), 0)

    def _build(self, members: np.ndarray, depth: int) -> list | np.ndarray:
        """Nested lists of children down to leaves holding (m,) int64 dataset indices."""
        if depth == len(self.levels):
            return members
        values = self.levels[depth][members]
        return [self._build(members[values == value], depth + 1) for value in np.unique(values)]

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration with ``seed + epoch`` (the engine calls this per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches

    def _draw(self, node: list | np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
        if isinstance(node, np.ndarray):
            return [rng.choice(node, size=k, replace=k > len(node))]
        drawn = []
        for child, count in zip(node, _share(k, len(node), rng)):
            if count:
                drawn += self._draw(child, int(count), rng)
        return drawn

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches):
            batch = np.concatenate(self._draw(self.tree, self.batch_size, rng))
            yield rng.permutation(batch).tolist()

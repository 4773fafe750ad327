"""The engine's weighted sampler (families' ``sample_weights``, e.g. class-aware resampling)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data import WeightedShardSampler
from misc.errors import UserError


def draws(weights, replicas: int, epoch: int) -> list[list[int]]:
    shards = []
    for rank in range(replicas):
        sampler = WeightedShardSampler(weights, replicas, rank, seed=4)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards


def test_shards_split_one_draw_that_follows_the_weights():
    weights = [1.0, 0.0, 3.0, 4.0]
    shards = draws(weights * 500, 2, epoch=1)
    assert [len(shard) for shard in shards] == [1000, 1000]
    counts = np.bincount(np.concatenate(shards) % 4, minlength=4) / 2000
    np.testing.assert_allclose(counts, np.array(weights) / 8, atol=0.03)
    assert counts[1] == 0.0


def test_order_depends_only_on_seed_and_epoch():
    assert draws([1.0, 2.0, 3.0], 1, epoch=2) == draws([1.0, 2.0, 3.0], 1, epoch=2)
    assert draws([1.0, 2.0, 3.0] * 10, 1, epoch=2) != draws([1.0, 2.0, 3.0] * 10, 1, epoch=3)


def test_bad_weights_are_user_errors():
    with pytest.raises(UserError, match="not all zero"):
        WeightedShardSampler([0.0, 0.0], 1, 0, seed=0)
    with pytest.raises(UserError, match="non-negative"):
        WeightedShardSampler([1.0, -1.0], 1, 0, seed=0)

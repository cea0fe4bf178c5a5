"""Seeded samples that global steps draw shard by shard, the same on any machine.

Every row of a shard gets a uniform key from a generator seeded by the step's seed and the
shard's name, so a shard's keys do not depend on which other shards exist or in what order they
are read. A sample is then "the rows with the smallest keys" (per group, or until a budget is
filled): the same rows whether the keys are seen all at once or one shard at a time.
"""

from __future__ import annotations

import zlib

import numpy as np


def row_keys(seed: int, shard: str, n: int) -> np.ndarray:
    """`n` uniform keys in [0, 1) for the rows of `shard`, from `seed` and the shard's name."""
    return np.random.default_rng([seed, zlib.crc32(shard.encode("utf-8"))]).random(n)


def smallest_per_group(groups: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Mask of the rows with the `n` smallest keys in each group (every row of a smaller group).

    Ties (equal keys) go to the earlier row, so the mask depends only on the inputs.
    """
    groups, keys = np.asarray(groups), np.asarray(keys)
    keep = np.zeros(groups.size, dtype=bool)
    if groups.size == 0 or n <= 0:
        return keep
    order = np.lexsort((np.arange(groups.size), keys, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(groups.size) - np.repeat(starts, np.diff(np.r_[starts, groups.size]))
    keep[order[rank < n]] = True
    return keep


def fill_per_group(
    groups: np.ndarray, keys: np.ndarray, sizes: np.ndarray, budget: int
) -> np.ndarray:
    """Mask of the rows that fill `budget` per group, taken in key order.

    Rows are taken by increasing key until the group's taken `sizes` reach `budget` (the row
    that crosses it is taken too), so a group smaller than the budget is taken whole and a larger
    one is a uniform sample of about `budget`.
    """
    groups, keys, sizes = np.asarray(groups), np.asarray(keys), np.asarray(sizes, np.int64)
    keep = np.zeros(groups.size, dtype=bool)
    if groups.size == 0:
        return keep
    order = np.lexsort((np.arange(groups.size), keys, groups))
    sorted_groups, sorted_sizes = groups[order], sizes[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    running = np.cumsum(sorted_sizes)
    before_group = np.repeat(np.r_[0, running[starts[1:] - 1]], np.diff(np.r_[starts, groups.size]))
    taken_before = running - sorted_sizes - before_group  # this group's sizes before the row
    keep[order[taken_before < budget]] = True
    return keep

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


class SmallestPerGroup:
    """The rows with the `n` smallest keys of each group, over shards added one at a time.

    Memory holds at most `n` rows per group (plus one shard's rows while adding). Keys compare
    in order (the first decides, the next break its ties); the shard and row numbers break the
    rest, so the result does not depend on how the rows were split into shards.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._groups = np.zeros(0, np.int64)
        self._shards = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)
        self._keys: list[np.ndarray] | None = None

    def add(self, shard: int, groups: np.ndarray, *keys: np.ndarray) -> None:
        """Offers every row of shard number `shard`: its group and its keys."""
        groups = np.asarray(groups, np.int64)
        if self.n <= 0 or groups.size == 0:
            return
        self._groups = np.concatenate([self._groups, groups])
        self._shards = np.concatenate([self._shards, np.full(groups.size, shard, np.int64)])
        self._rows = np.concatenate([self._rows, np.arange(groups.size, dtype=np.int64)])
        new = [np.asarray(k) for k in keys]
        self._keys = new if self._keys is None else [
            np.concatenate([old, k]) for old, k in zip(self._keys, new, strict=True)
        ]  # fmt: skip
        order = np.lexsort((self._rows, self._shards, *reversed(self._keys), self._groups))
        sorted_groups = self._groups[order]
        starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
        rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
        keep = np.sort(order[rank < self.n])
        self._groups, self._shards, self._rows = (
            self._groups[keep], self._shards[keep], self._rows[keep]
        )  # fmt: skip
        self._keys = [k[keep] for k in self._keys]

    def rows(self, shard: int) -> np.ndarray:
        """The kept rows of shard number `shard`, increasing."""
        return np.sort(self._rows[self._shards == shard])

    def group_sizes(self, k: int) -> np.ndarray:
        """Kept rows per group `0..k-1`."""
        return np.bincount(self._groups, minlength=k)

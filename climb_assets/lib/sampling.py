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


class StreamedFill:
    """`fill_per_group` over shards seen one at a time, in two passes, with the same result.

    Pass one (`count`) adds each shard's sizes to a histogram of keys per group; the bin where a
    group's running total reaches the budget is its boundary. Rows in earlier bins are taken,
    rows in later bins are not; pass two (`offer`) keeps only the boundary bins' rows, which
    `resolve` orders as `fill_per_group` does (key, then shard, then row) to find where the
    budget is crossed. Memory is the histogram (`bins` per group) plus the boundary rows (about
    one `bins`-th of each group), never the rows of every shard. `mask` then gives each shard's
    taken rows. Keys are in [0, 1) (`row_keys`); shards must be numbered in the order
    `fill_per_group` would see them concatenated.
    """

    def __init__(self, budget: int, bins: int = 4096) -> None:
        self.budget, self.bins = int(budget), int(bins)
        self._hist = np.zeros((0, self.bins), np.int64)
        self._boundary: np.ndarray | None = None
        self._before: np.ndarray | None = None
        self._offered: list[tuple[np.ndarray, ...]] = []
        self._taken: dict[tuple[int, int], bool] | None = None

    def _bin(self, keys: np.ndarray) -> np.ndarray:
        return np.minimum(
            (np.asarray(keys, np.float64) * self.bins).astype(np.int64), self.bins - 1
        )

    def count(self, groups: np.ndarray, keys: np.ndarray, sizes: np.ndarray) -> None:
        """Pass one: a shard's rows (group, key, size)."""
        groups = np.asarray(groups, np.int64)
        if groups.size == 0:
            return
        n_groups = int(groups.max()) + 1
        if n_groups > self._hist.shape[0]:
            grown = np.zeros((n_groups, self.bins), np.int64)
            grown[: self._hist.shape[0]] = self._hist
            self._hist = grown
        flat = groups * self.bins + self._bin(keys)
        # Float64 sums of integer sizes are exact while a bin holds under 2^53 tokens.
        sums = np.bincount(
            flat, weights=np.asarray(sizes, np.float64), minlength=n_groups * self.bins
        )
        self._hist[:n_groups] += np.rint(sums).astype(np.int64).reshape(n_groups, self.bins)

    @property
    def n_groups(self) -> int:
        return self._hist.shape[0]

    def group_sizes(self) -> np.ndarray:
        """Each group's total size, from pass one."""
        return self._hist.sum(axis=1)

    def _boundaries(self) -> tuple[np.ndarray, np.ndarray]:
        if self._boundary is None:
            running = np.cumsum(self._hist, axis=1)
            reached = running >= self.budget
            # A group that never reaches the budget is taken whole: its boundary is past the end.
            boundary = np.where(reached.any(axis=1), reached.argmax(axis=1), self.bins)
            before = np.zeros(self.n_groups, np.int64)
            inside = (boundary > 0) & (boundary < self.bins)
            before[inside] = running[inside, boundary[inside] - 1]
            self._boundary, self._before = boundary, before
        return self._boundary, self._before  # type: ignore[return-value]

    def offer(self, shard: int, groups: np.ndarray, keys: np.ndarray, sizes: np.ndarray) -> None:
        """Pass two: the same shard's rows again; only those in a boundary bin are kept."""
        groups = np.asarray(groups, np.int64)
        boundary, _ = self._boundaries()
        at = np.flatnonzero(self._bin(keys) == boundary[groups]) if groups.size else groups
        if at.size:
            self._offered.append((
                groups[at], np.asarray(keys, np.float64)[at], np.full(at.size, shard, np.int64),
                at.astype(np.int64), np.asarray(sizes, np.int64)[at],
            ))  # fmt: skip

    def resolve(self) -> None:
        """Orders the boundary rows and decides which of them fill their group's budget."""
        _, before = self._boundaries()
        self._taken = {}
        if not self._offered:
            return
        groups, keys, shards, rows, sizes = (
            np.concatenate(c) for c in zip(*self._offered, strict=True)
        )
        order = np.lexsort((rows, shards, keys, groups))
        groups, shards, rows, sizes = groups[order], shards[order], rows[order], sizes[order]
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        running = np.cumsum(sizes)
        before_group = np.repeat(
            np.r_[0, running[starts[1:] - 1]], np.diff(np.r_[starts, groups.size])
        )
        taken_before = before[groups] + running - sizes - before_group
        for s, r, t in zip(
            shards.tolist(), rows.tolist(), (taken_before < self.budget).tolist(), strict=True
        ):
            self._taken[(s, r)] = t
        self._offered = []

    def mask(self, shard: int, groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The taken rows of shard number `shard` (after `resolve`)."""
        if self._taken is None:
            raise RuntimeError("StreamedFill.mask before resolve")
        groups = np.asarray(groups, np.int64)
        if groups.size == 0:
            return np.zeros(0, bool)
        boundary, _ = self._boundaries()
        bins = self._bin(keys)
        taken = bins < boundary[groups]
        for r in np.flatnonzero(bins == boundary[groups]).tolist():
            taken[r] = self._taken.get((shard, r), False)
        return taken

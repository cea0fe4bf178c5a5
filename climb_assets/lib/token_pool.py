"""The proxies' token pools: a seeded sample of each super-cluster, tokenized shard by shard.

Proxies read random windows of at most their budget from each super-cluster, so tokenizing a
whole super-cluster of a large corpus costs time and disk for tokens no proxy reads. A pool takes
documents in the order of seeded per-row keys (`sampling.row_keys`) until it holds `budget`
tokens as the per-shard counts measure them (the encoder's untruncated counts): a super-cluster
smaller than that is pooled whole, and a larger one is a uniform document sample.

The pool is tokenized one corpus shard at a time into per-super-cluster staging files, then
written in `doc_id` order, so memory holds one batch of texts and one super-cluster's pool index,
never the corpus. Every other document of a super-cluster gets an estimated token count: its
per-shard count times the pool's ratio of proxy tokens to per-shard counts, which keeps the
natural prior and the repetition caps counting every document (`estimate_tokens`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class PoolStaging:
    """Per-super-cluster token files written shard by shard, read back in `doc_id` order."""

    def __init__(self, folder: Path, n_groups: int, dtype: np.dtype) -> None:
        self.folder, self.dtype = folder, np.dtype(dtype)
        folder.mkdir(parents=True, exist_ok=True)
        self._files = [open(folder / f"sc_{g:03d}.bin", "wb") for g in range(n_groups)]  # noqa: SIM115
        self._ids: list[list[str]] = [[] for _ in range(n_groups)]
        self._starts: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
        self._lengths: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
        self._size = [0] * n_groups
        self._order: dict[int, tuple[list[str], np.ndarray, np.ndarray]] = {}

    def add(self, group: int, doc_ids: list[str], tokens: np.ndarray, offsets: np.ndarray) -> None:
        """Appends documents of one group: `tokens[offsets[i]:offsets[i+1]]` is `doc_ids[i]`'s."""
        self._files[group].write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._ids[group] += doc_ids
        self._starts[group].append(self._size[group] + offsets[:-1])
        self._lengths[group].append(np.diff(offsets))
        self._size[group] += int(offsets[-1])

    def close(self) -> None:
        for fh in self._files:
            fh.close()

    def size(self, group: int) -> int:
        return self._size[group]

    def _ordered(self, group: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        if group in self._order:
            return self._order[group]
        ids = self._ids[group]
        starts = np.concatenate(self._starts[group]) if ids else np.zeros(0, np.int64)
        lengths = np.concatenate(self._lengths[group]) if ids else np.zeros(0, np.int64)
        order = sorted(range(len(ids)), key=ids.__getitem__)
        # Sorted once per group, after every shard was added.
        self._order[group] = ([ids[i] for i in order], starts[order], lengths[order])
        return self._order[group]

    def tokens(self, group: int, chunk_tokens: int = 1 << 24) -> Iterator[np.ndarray]:
        """The group's tokens in `doc_id` order, about `chunk_tokens` at a time."""
        if self._size[group] == 0:
            return
        _, starts, lengths = self._ordered(group)
        path = self.folder / f"sc_{group:03d}.bin"
        staged = np.memmap(path, dtype=self.dtype, mode="r", shape=(self._size[group],))
        ends = np.cumsum(lengths)
        first = 0
        while first < len(starts):
            last = int(np.searchsorted(ends, ends[first] - lengths[first] + chunk_tokens, "right"))
            last = max(last, first + 1)
            spans = zip(starts[first:last], lengths[first:last], strict=True)
            yield np.concatenate([staged[s : s + n] for s, n in spans])
            first = last
        del staged

    def lengths_as_added(self, group: int) -> np.ndarray:
        """The group's token counts in the order its documents were added (corpus order)."""
        parts = self._lengths[group]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def remove(self, group: int) -> None:
        os.remove(self.folder / f"sc_{group:03d}.bin")
        self._order.pop(group, None)


def estimate_tokens(
    counted: np.ndarray,
    pooled: np.ndarray,
    pool_tokens: int,
    pool_counted: int,
    pool_documents: int,
) -> np.ndarray:
    """Proxy-token counts of a super-cluster's documents outside its pool, from their counts.

    A document outside the pool is estimated as one EOS plus its per-shard count times the
    pool's ratio of proxy tokens (EOS excluded: one per pooled document, `pool_documents`) to
    per-shard counts (`pool_counted`); pooled documents keep the zeros the caller replaces with
    their exact counts. `counted` and `pooled` may be any part of the super-cluster (one shard's
    documents), the pool's figures are the whole super-cluster's.
    """
    counted = np.asarray(counted, np.int64)
    ratio = (pool_tokens - pool_documents) / pool_counted if pool_counted > 0 else 1.0
    estimate = 1 + np.rint(counted * ratio).astype(np.int64)
    return np.where(pooled, 0, estimate)

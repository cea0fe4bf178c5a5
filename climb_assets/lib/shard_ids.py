"""Refusing a doc_id that two shards share when the second is ingested, before any embedding.

Each ingested shard leaves the 64-bit hashes of its ids, sorted, beside its documents
(`corpus_ids/<stem>.npy`, 8 bytes a document). A new shard's hashes are looked up in each other
shard's by binary search, one shard in memory at a time; a hash found is confirmed on the ids
themselves, so a collision of hashes never refuses a shard. The hash is BLAKE2b, the same on
every machine and library version, so files written by one run are read right by the next.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.storage import Store

IDS_FOLDER = "corpus_ids"
DOCUMENTS_FOLDER = "corpus_documents"


def ids_file(key: str) -> str:
    return f"{IDS_FOLDER}/{shard_stem(key)}.npy"


def documents_file(key: str) -> str:
    return f"{DOCUMENTS_FOLDER}/{shard_stem(key)}.parquet"


def _hashes(doc_ids: Iterable[str]) -> np.ndarray:
    """The ids' 64-bit BLAKE2b hashes, in the ids' order (uint64)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
         for d in doc_ids),
        dtype=np.uint64,
    )  # fmt: skip


def id_hashes(doc_ids: Iterable[str]) -> np.ndarray:
    """The ids' 64-bit BLAKE2b hashes, sorted (uint64)."""
    hashes = _hashes(doc_ids)
    hashes.sort(kind="stable")
    return hashes


def shard_doc_ids(store: Store, key: str) -> list[str]:
    return store.read_parquet(documents_file(key), ["doc_id"]).column(0).to_pylist()


def shard_hashes(store: Store, key: str) -> np.ndarray:
    """The shard's sorted id hashes, written from its documents when an older run left none."""
    rel = ids_file(key)
    if not store.exists(rel):
        store.write_npy(rel, id_hashes(shard_doc_ids(store, key)))
    return np.asarray(store.read_npy(rel, mmap=False))


@dataclass(frozen=True)
class SharedIds:
    other: str
    """The earlier shard that holds them."""
    count: int
    example: str


def first_shared_ids(store: Store, key: str, others: Sequence[str]) -> SharedIds | None:
    """The first shard of `others` (in their order) holding a doc_id of shard `key`, or None.

    Writes `key`'s hash file. Only shards whose documents exist are compared.
    """
    ids = shard_doc_ids(store, key)
    hashes = id_hashes(ids)
    store.write_npy(ids_file(key), hashes)
    if hashes.size == 0:
        return None
    for other in others:
        if other == key or not store.exists(documents_file(other)):
            continue
        theirs = shard_hashes(store, other)
        if theirs.size == 0:
            continue
        at = np.searchsorted(theirs, hashes).clip(max=theirs.size - 1)
        if not (theirs[at] == hashes).any():
            continue
        shared = set(ids).intersection(shard_doc_ids(store, other))
        if shared:
            return SharedIds(other, len(shared), min(shared))
    return None


def shared_ids_anywhere(
    store: Store, shards: Sequence[str], max_batch: int = 1 << 23
) -> tuple[str, list[str], int] | None:
    """A doc_id more than one of `shards` holds, the shards holding it, and how many ids are
    shared; None when every id is in one shard.

    The backstop behind the ingestion check (two shards ingested at the same moment both pass
    it). Memory is bounded by `max_batch` hashes (64 MiB), not by the corpus: the 64-bit hash
    space is cut into ranges holding about `max_batch` hashes of all shards together, and each
    range is gathered from every shard's sorted, memory-mapped hash file by binary search.
    """
    for key in shards:  # a store from before the hash files: written once, a shard at a time
        if not store.exists(ids_file(key)):
            shard_hashes(store, key)
    arrays = [store.read_npy(ids_file(key)) for key in shards]  # memory-mapped
    total = sum(a.size for a in arrays)
    if total == 0:
        return None
    ranges = max(1, -(-total // max_batch))
    bounds = [(2**64 * i) // ranges for i in range(ranges + 1)]
    shared: np.ndarray | None = None
    count = 0
    for lo, hi in itertools.pairwise(bounds):
        lo_u, hi_u = np.uint64(lo), np.uint64(min(hi, 2**64 - 1))
        last = hi >= 2**64
        pieces = []
        for a in arrays:
            start = int(np.searchsorted(a, lo_u, side="left"))
            stop = int(np.searchsorted(a, hi_u, side="right" if last else "left"))
            pieces.append(np.asarray(a[start:stop]))  # a shard's own ids are unique
        merged = np.sort(np.concatenate(pieces), kind="stable")
        repeated = merged[1:][merged[1:] == merged[:-1]]
        if repeated.size:
            count += int(np.unique(repeated).size)
            shared = repeated if shared is None else shared
    if shared is None:
        return None
    # Confirm on the ids themselves, one shard at a time: a shared hash may be a collision.
    sample = np.unique(shared)[:1000]
    where: dict[str, list[str]] = {}
    for key, a in zip(shards, arrays, strict=True):
        if not np.isin(a, sample).any():
            continue
        ids = shard_doc_ids(store, key)
        for i in np.flatnonzero(np.isin(_hashes(ids), sample)):
            if key not in where.setdefault(ids[i], []):
                where[ids[i]].append(key)
    dupes = sorted((d, s) for d, s in where.items() if len(s) > 1)
    if not dupes:
        return None
    example, in_shards = dupes[0]
    return example, in_shards, count

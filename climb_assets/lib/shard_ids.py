"""Refusing a doc_id that two shards share when the second is ingested, before any embedding.

Each ingested shard leaves the 64-bit hashes of its ids, sorted, beside its documents
(`corpus_ids/<stem>.npy`, 8 bytes a document). A new shard's hashes are looked up in each other
shard's by binary search, one shard in memory at a time; a hash found is confirmed on the ids
themselves, so a collision of hashes never refuses a shard. The hash is BLAKE2b, the same on
every machine and library version, so files written by one run are read right by the next.
"""

from __future__ import annotations

import hashlib
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


def id_hashes(doc_ids: Iterable[str]) -> np.ndarray:
    """The ids' 64-bit BLAKE2b hashes, sorted (uint64)."""
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
         for d in doc_ids),
        dtype=np.uint64,
    )  # fmt: skip
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

"""Doc ids shared across shards: found at ingestion and by the bounded backstop."""

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from climb_assets.lib import shard_ids
from climb_assets.lib.shard_ids import first_shared_ids, id_hashes, shared_ids_anywhere
from climb_assets.lib.storage import Store


def _shard(store: Store, key: str, ids: list[str]) -> None:
    store.write_parquet(shard_ids.documents_file(key), pa.table({"doc_id": ids}))


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path))
    _shard(store, "a.jsonl", [f"a{i}" for i in range(500)])
    _shard(store, "b.jsonl", [f"b{i}" for i in range(300)] + ["a7", "a9"])
    _shard(store, "c.jsonl", [f"c{i}" for i in range(400)])
    return store


def test_hashes_are_the_same_on_every_machine():
    """BLAKE2b of the id's UTF-8 bytes, not Python's or polars' hash (which may change)."""
    ids = ["doc-1", "zz", "é"]
    want = sorted(
        int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little") for d in ids
    )
    hashes = id_hashes(ids)
    assert hashes.dtype == np.uint64 and hashes.tolist() == want


def test_ingestion_check_names_the_first_shard_holding_an_id(store):
    assert first_shared_ids(store, "a.jsonl", ["c.jsonl"]) is None
    shared = first_shared_ids(store, "b.jsonl", ["a.jsonl", "b.jsonl", "c.jsonl"])
    assert shared == shard_ids.SharedIds("a.jsonl", 2, "a7")
    assert store.exists(shard_ids.ids_file("b.jsonl"))


@pytest.mark.parametrize("max_batch", [1 << 23, 7])
def test_backstop_finds_shared_ids_in_hash_ranges(store, max_batch):
    keys = ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert shared_ids_anywhere(store, keys, max_batch=max_batch) == (
        "a7",
        ["a.jsonl", "b.jsonl"],
        2,
    )
    assert shared_ids_anywhere(store, ["a.jsonl", "c.jsonl"], max_batch=max_batch) is None


def test_a_hash_collision_never_refuses_a_shard(store, monkeypatch):
    """Every id hashing alike: the ids themselves decide."""
    monkeypatch.setattr(shard_ids, "_hashes", lambda ids: np.zeros(len(list(ids)), np.uint64))
    for key in ("a.jsonl", "c.jsonl"):
        store.remove(shard_ids.ids_file(key))
    assert first_shared_ids(store, "c.jsonl", ["a.jsonl"]) is None
    assert shared_ids_anywhere(store, ["a.jsonl", "c.jsonl"]) is None

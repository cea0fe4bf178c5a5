"""Output file names: one extension each, older stores carried forward, the catalog's shard."""

import pyarrow as pa

from climb_assets.defs.catalog import catalog_views
from climb_assets.defs.common import marker_path
from climb_assets.lib.catalog import build_catalog, query
from climb_assets.lib.layout import LAYOUT_FILE, LAYOUT_VERSION, upgrade_layout
from climb_assets.lib.storage import Store


def test_per_shard_markers_carry_one_extension():
    assert marker_path("embeddings", "b/x.jsonl") == "_done/embeddings/b__x.json"
    assert marker_path("search_round", "3") == "_done/search_round/3.json"
    assert marker_path("kmeans_centroids", None) == "_done/kmeans_centroids/all.json"


def test_a_store_written_by_older_code_is_renamed_once_and_nothing_else_moves(tmp_path):
    store = Store(str(tmp_path / "out"))
    old = {
        "corpus_documents/b__x.jsonl.parquet": b"docs",
        "embeddings/b__x.jsonl.npy": b"vectors",
        "embeddings/b__x.jsonl.tokens.parquet": b"tokens",
        "super_clusters/members/a.parquet.parquet": b"members",
        "_done/embeddings/b__x.jsonl.json": b"{}",
        "_done/kmeans_centroids/all.json": b"{}",
    }
    untouched = {
        "embeddings/_encoder.json": b"{}",
        "super_clusters/super_clusters.parquet": b"summary",
        "search/1/mixtures.parquet": b"mixtures",
        "corpus_documents/c.parquet": b"already new",
    }
    for rel, data in {**old, **untouched}.items():
        store.write_bytes(rel, data)
    # a file both old and new exist for: the new one wins and the old one stays for the user
    store.write_bytes("cluster_quality/c.jsonl.parquet", b"old")
    store.write_bytes("cluster_quality/c.parquet", b"new")

    assert upgrade_layout(store) == 5
    assert store.read_bytes("corpus_documents/b__x.parquet") == b"docs"
    assert store.read_bytes("embeddings/b__x.npy") == b"vectors"
    assert store.read_bytes("embeddings/b__x.tokens.parquet") == b"tokens"
    assert store.read_bytes("super_clusters/members/a.parquet") == b"members"
    assert store.exists("_done/embeddings/b__x.json")
    assert not any(store.exists(rel) for rel in old if rel != "_done/kmeans_centroids/all.json")
    assert all(store.read_bytes(rel) == data for rel, data in untouched.items())
    assert store.read_bytes("cluster_quality/c.parquet") == b"new"
    assert store.read_json(LAYOUT_FILE)["version"] == LAYOUT_VERSION

    store.write_bytes("corpus_documents/late.jsonl.parquet", b"x")  # upgraded stores stay as is
    assert upgrade_layout(store) == 0
    assert store.exists("corpus_documents/late.jsonl.parquet")


def test_a_new_store_starts_on_todays_layout(tmp_path):
    store = Store(str(tmp_path / "new"))
    assert upgrade_layout(store) == 0
    assert store.read_json(LAYOUT_FILE)["version"] == LAYOUT_VERSION
    # so a shard key ending in two suffixes is never mistaken for an old name later
    store.write_bytes("corpus_documents/x.parquet.parquet", b"shard x.parquet.parquet")
    assert upgrade_layout(store) == 0
    assert store.exists("corpus_documents/x.parquet.parquet")


def test_catalog_names_each_file_by_its_shard_key(tmp_path):
    store = Store(str(tmp_path))
    docs = {"a.jsonl": "a", "b/c.parquet": "b__c", "d's.jsonl.gz": "d's"}
    for shard, stem in docs.items():
        store.write_parquet(f"corpus_documents/{stem}.parquet", pa.table({"doc_id": [shard]}))
    store.write_parquet(
        "corpus_rejects/b__c.parquet", pa.table({"row": [3], "reason": ["empty text"]})
    )
    views = catalog_views(store, [], list(docs))
    build_catalog(tmp_path / "c.duckdb", views)

    rows = query(tmp_path / "c.duckdb", "SELECT doc_id, shard FROM documents ORDER BY doc_id")
    assert rows == [(k, k) for k in sorted(docs)]
    rejects = query(tmp_path / "c.duckdb", "SELECT shard, row FROM rejected_rows")
    assert rejects == [("b/c.parquet", 3)]
    stems = query(tmp_path / "c.duckdb", "SELECT file_stem, shard FROM shards ORDER BY shard")
    assert stems == [(s, k) for k, s in sorted(docs.items())]


def test_execution_only_settings_redo_nothing_and_the_others_do():
    import dataclasses

    from climb_assets.config import load_profile
    from climb_assets.defs.common import fingerprint

    demo = load_profile("demo")
    faster = dataclasses.replace(
        demo,
        quality=dataclasses.replace(demo.quality, workers=1, read_batch_rows=7),
        manifest=dataclasses.replace(demo.manifest, export_workers=3),
    )
    stricter = dataclasses.replace(demo, quality=dataclasses.replace(demo.quality, seed=7))
    for asset in ("cluster_quality", "cluster_tokens", "search_round"):
        assert fingerprint(faster, asset) == fingerprint(demo, asset), asset
        assert fingerprint(stricter, asset) != fingerprint(demo, asset), asset

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from climb_assets.lib.catalog import build_catalog, parquet_source, query


def test_views_over_parquet_and_reader_survives_rebuild(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"x": [1, 2, 3]}), data / "a.parquet")
    db = tmp_path / "catalog.duckdb"
    views = {"things": f"SELECT * FROM {parquet_source(str(data / '*.parquet'))}"}
    assert build_catalog(db, views) == ["things"]
    reader = duckdb.connect(str(db), read_only=True)  # an analyst keeps it open
    assert reader.execute("SELECT sum(x) FROM things").fetchone() == (6,)
    pq.write_table(pa.table({"x": [10]}), data / "b.parquet")
    build_catalog(db, {**views, "more": "SELECT 1 AS one"})  # the pipeline rebuilds meanwhile
    assert reader.execute("SELECT sum(x) FROM things").fetchone() == (16,)
    reader.close()
    assert query(db, "SELECT one FROM more") == [(1,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb", "data"]


def test_run_summary_counts_dominant_sources_one_shard_at_a_time(tmp_path):
    """`climb run`'s summary: each super-cluster's most frequent source and its share of the
    kept documents, summed over shards (ties by name), without the catalog's global join."""
    import pyarrow as pa

    from climb_assets.defs.catalog import dominant_sources
    from climb_assets.lib.storage import Store

    store = Store(str(tmp_path))
    shards = {
        "shard-000": (["a", "b", "c", "d"], [0, 0, 1, None], ["x", "y", "y", "x"]),
        "shard-001": (["e", "f", "g"], [0, 1, 1], ["y", "z", "z"]),
    }
    for stem, (ids, groups, sources) in shards.items():
        store.write_parquet(
            f"super_clusters/members/{stem}.parquet",
            pa.table({"doc_id": ids, "cluster_id": pa.array([0] * len(ids), pa.int32()),
                      "super_cluster_id": pa.array(groups, pa.int32())}),
        )  # fmt: skip
        store.write_parquet(
            f"corpus_documents/{stem}.parquet",
            pa.table({"doc_id": ids[::-1], "text": ["t"] * len(ids), "source": sources[::-1]}),
        )
    # sc 0: x 1, y 2 of 3; sc 1: y 1, z 2 of 3; the unkept "d" counts nowhere.
    assert dominant_sources(store) == {0: "y 67%", 1: "z 67%"}

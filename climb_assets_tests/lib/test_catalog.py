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

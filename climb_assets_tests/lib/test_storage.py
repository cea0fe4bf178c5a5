import numpy as np
import pyarrow as pa
import pytest

from climb_assets.lib.storage import Store, safe_name


def test_round_trips_open_formats(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.write_parquet("a/t.parquet", pa.table({"x": [1, 2]}))
    store.write_json("a/j.json", {"k": [1]})
    store.write_npy("b/v.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    assert store.read_parquet("a/t.parquet").column("x").to_pylist() == [1, 2]
    assert store.parquet_rows("a/t.parquet") == 2
    assert store.read_json("a/j.json") == {"k": [1]}
    mm = store.read_npy("b/v.npy")
    assert isinstance(mm, np.memmap) and mm[2, 1] == 5
    assert store.list("", (".parquet", ".json")) == ["a/j.json", "a/t.parquet"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("f.bin", b"old")
    with pytest.raises(RuntimeError), store.open_write("f.bin") as fh:
        fh.write(b"half-")
        raise RuntimeError("killed")
    assert store.read_bytes("f.bin") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_npy_refuses_pickled_objects(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        Store(str(tmp_path)).read_npy("obj.npy", mmap=False)


def test_safe_name_flattens_nested_keys():
    assert safe_name("2024/part-1.parquet") == "2024__part-1.parquet"


def test_chunked_writes_match_whole_writes(tmp_path):
    store = Store(str(tmp_path))
    matrix = np.arange(30, dtype=np.float32).reshape(10, 3)
    store.write_npy("whole.npy", matrix)
    store.write_npy_chunks("chunks.npy", np.float32, (10, 3), [matrix[:4], matrix[4:]])
    assert store.read_bytes("chunks.npy") == store.read_bytes("whole.npy")
    with pytest.raises(ValueError, match="9 items written, 30 announced"):
        store.write_npy_chunks("short.npy", np.float32, (10, 3), [matrix[:3]])
    assert not store.exists("short.npy")
    schema = pa.schema([("x", pa.int64())])
    with store.parquet_writer("t.parquet", schema) as out:
        out.write_table(pa.table({"x": [1, 2]}, schema))
        out.write_table(pa.table({"x": [3]}, schema))
    assert store.read_parquet("t.parquet").column("x").to_pylist() == [1, 2, 3]
    with pytest.raises(RuntimeError), store.parquet_writer("u.parquet", schema) as out:
        out.write_table(pa.table({"x": [1]}, schema))
        raise RuntimeError("killed")
    assert not store.exists("u.parquet")


def test_read_npy_rows_gathers_the_rows_a_memory_map_would(tmp_path):
    store = Store(str(tmp_path / "out"))
    data = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    store.write_npy("x.npy", data)
    rows = np.sort(np.random.default_rng(1).choice(1000, 50, replace=False))
    got = store.read_npy_rows("x.npy", rows)
    assert got.dtype == np.float32 and got.shape == (50, 7)
    np.testing.assert_array_equal(got, data[rows])
    assert store.read_npy_rows("x.npy", np.zeros(0, np.int64)).shape == (0, 7)
    np.testing.assert_array_equal(store.read_npy_rows("x.npy", [0, 999]), data[[0, 999]])


def test_row_groups_are_read_one_at_a_time_and_copy_byte_for_byte(tmp_path):
    import pyarrow.parquet as pq

    store = Store(str(tmp_path))
    table = pa.table({"x": list(range(10)), "y": [str(i) for i in range(10)]})
    with store.parquet_writer("grouped.parquet", table.schema) as writer:
        for start in (0, 3, 7):
            writer.write_table(table.slice(start, {0: 3, 3: 4, 7: 3}[start]))
    groups = list(store.iter_row_groups("grouped.parquet", ["x"]))
    assert [g.num_rows for g in groups] == [3, 4, 3]
    assert pa.concat_tables(groups).column("x").to_pylist() == list(range(10))
    # A one-group file copied group by group is the same bytes as the whole table written.
    store.write_parquet("whole.parquet", table)
    with pq.ParquetWriter(tmp_path / "copy.parquet", table.schema, compression="zstd") as out:
        for group in store.iter_row_groups("whole.parquet"):
            out.write_table(group)
    assert (tmp_path / "copy.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    # A file without row groups still gives its columns.
    with store.parquet_writer("empty.parquet", table.schema):
        pass
    (empty,) = store.iter_row_groups("empty.parquet")
    assert empty.num_rows == 0 and empty.schema.names == ["x", "y"]

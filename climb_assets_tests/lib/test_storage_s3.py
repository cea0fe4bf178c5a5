"""The Store against a real S3 API (a loopback moto_server): same formats, same atomicity."""

import numpy as np
import pyarrow as pa
import pytest

from climb_assets.lib.storage import StorageError, Store, local_file


@pytest.fixture
def s3_store(s3_server, tmp_path, request):
    root = f"{s3_server.bucket('climb-lib')}/{request.node.name}"
    return Store(root, s3_server.storage_options(), cache=tmp_path / "cache")


def test_round_trips_open_formats_on_s3(s3_store, s3_server):
    s3_store.write_parquet("a/t.parquet", pa.table({"x": [1, 2]}))
    s3_store.write_json("a/j.json", {"k": [1]})
    s3_store.write_npy("b/v.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    assert not s3_store.is_local
    assert s3_store.read_parquet("a/t.parquet").column("x").to_pylist() == [1, 2]
    assert s3_store.read_json("a/j.json") == {"k": [1]}
    assert s3_store.list("", (".parquet", ".json")) == ["a/j.json", "a/t.parquet"]
    mm = s3_store.read_npy("b/v.npy")
    assert isinstance(mm, np.memmap) and mm[2, 1] == 5
    in_memory = Store(s3_store.url, s3_server.storage_options()).read_npy("b/v.npy")
    assert not isinstance(in_memory, np.memmap) and in_memory[2, 1] == 5
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="climb-lib")["Contents"]]
    assert f"{s3_store.url.split('/', 3)[3]}/a/t.parquet" in keys


def test_failed_write_leaves_previous_object(s3_store, tmp_path):
    s3_store.write_bytes("f.bin", b"old")
    with pytest.raises(RuntimeError), s3_store.open_write("f.bin") as fh:
        fh.write(b"half-")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), s3_store.open_write("new.bin") as fh:
        fh.write(b"half-")
        raise RuntimeError("killed")
    assert s3_store.read_bytes("f.bin") == b"old"
    assert not s3_store.exists("new.bin")
    assert s3_store.list("") == ["f.bin"]
    assert list((tmp_path / "cache" / "_spool").iterdir()) == []


def test_local_copy_fetches_once_and_again_after_a_change(s3_store):
    s3_store.write_bytes("m/a.txt", b"one")
    s3_store.write_bytes("m/sub/b.txt", b"two")
    folder = s3_store.local_copy("m")
    assert (folder / "a.txt").read_bytes() == b"one"
    assert (folder / "sub" / "b.txt").read_bytes() == b"two"
    stamp = (folder / "a.txt").stat().st_mtime_ns
    assert s3_store.local_copy("m/a.txt").stat().st_mtime_ns == stamp
    s3_store.write_bytes("m/a.txt", b"changed")
    assert s3_store.local_copy("m/a.txt").read_bytes() == b"changed"


def test_put_folder_uploads_marker_last(s3_store, s3_server, tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    for name in ("DONE", "model.safetensors", "config.json"):
        (src / name).write_text(name)
    uploaded = []
    put = s3_store.fs.put_file
    s3_store.fs.put_file = lambda a, b, **kw: (uploaded.append(b.rsplit("/", 1)[-1]), put(a, b))
    s3_store.put_folder(src, "proxies/x", last="DONE")
    assert uploaded[-1] == "DONE" and sorted(uploaded) == [
        "DONE",
        "config.json",
        "model.safetensors",
    ]
    assert s3_store.read_bytes("proxies/x/model.safetensors") == b"model.safetensors"


def test_remote_file_needs_a_cache_folder(s3_server):
    store = Store(f"{s3_server.bucket('climb-lib')}/nocache", s3_server.storage_options())
    store.write_bytes("t.txt", b"x")
    with pytest.raises(StorageError, match="storage.cache"):
        store.local_copy("t.txt")


def test_local_file_fetches_urls_and_passes_paths(s3_store, tmp_path):
    s3_store.write_bytes("targets/t.txt", b"held out")
    got = local_file(s3_store.uri("targets/t.txt"), s3_store.storage_options, tmp_path / "c")
    assert got.read_bytes() == b"held out"
    assert local_file(str(tmp_path / "x.txt")) == tmp_path / "x.txt"


def test_a_folder_uploaded_from_its_cache_path_is_not_downloaded_again(s3_store):
    src = s3_store.cache_path("proxies/y")
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "DONE").write_text("ok")
    s3_store.put_folder(src, "proxies/y", last="DONE")
    fetched = []
    get = s3_store.fs.get_file
    s3_store.fs.get_file = lambda a, b, **kw: (fetched.append(a), get(a, b))
    assert s3_store.local_copy("proxies/y") == src
    assert fetched == [] and (src / "model.safetensors").read_bytes() == b"weights"
    s3_store.write_bytes("proxies/y/model.safetensors", b"changed elsewhere")
    assert (
        s3_store.local_copy("proxies/y") / "model.safetensors"
    ).read_bytes() == b"changed elsewhere"
    assert len(fetched) == 1

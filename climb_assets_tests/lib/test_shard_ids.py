"""Doc ids shared across shards: found at ingestion and by the bounded backstop."""

import hashlib
import math
import random
import shutil
from pathlib import Path

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


# The index behind the ingestion check --------------------------------------------------------


class CountingStore(Store):
    """A store that records every file it reads (JSON, `.npy`, Parquet)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read_bytes(self, rel: str) -> bytes:
        self.reads.append(rel)
        return super().read_bytes(rel)

    def read_npy(self, rel: str, mmap: bool = True) -> np.ndarray:
        self.reads.append(rel)
        return super().read_npy(rel, mmap)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        self.reads.append(rel)
        return super().read_parquet(rel, columns)


def _remove(store: Store, key: str) -> None:
    """What `_refuse_shared_ids` and `remove_shard_outputs` delete of a shard."""
    for rel in (shard_ids.documents_file(key), shard_ids.ids_file(key)):
        store.remove(rel)


def _checked(store: Store, key: str, ids: list[str], others: list[str]):
    """Ingests `key` as the asset does, asserting that the index answers as the per-shard scan;
    a refused shard is removed again."""
    _shard(store, key, ids)
    want = shard_ids._scan_first_shared(store, key, others)
    got = first_shared_ids(store, key, others)
    assert got == want, (key, others)
    if got is not None:
        _remove(store, key)
    return got


def _runs(store: Store) -> list[shard_ids._Run]:
    view = shard_ids._load_view(store)
    assert view.trusted, view.damaged
    return view.runs


def _contents(store: Store) -> list[tuple]:
    """The visible runs without their names: members, hashes and owners."""
    return [
        (
            [(m.stem, m.key, m.digest, m.since, m.rows) for m in run.members],
            np.asarray(run.hashes).tolist(),
            np.asarray(run.owners).tolist(),
        )
        for run in _runs(store)
    ]


def _random_history(store: Store, seed: int, steps: int = 40) -> tuple[int, int]:
    """A seeded sequence of ingestions with ids planted from earlier shards (live, removed or
    re-ingested since), removals and re-ingestions of a key with other content, each check
    compared with the per-shard scan. Returns how many shards passed and were refused."""
    rng = random.Random(seed)
    registered = ["never-ingested.jsonl"]
    live: dict[str, list[str]] = {}
    history: list[list[str]] = []  # every content a shard ever had
    checks = refusals = 0
    for step in range(steps):
        roll = rng.random()
        if roll < 0.15 and live:
            key = rng.choice(sorted(live))
            _remove(store, key)
            del live[key]
            continue
        if roll < 0.35 and live:
            key = rng.choice(sorted(live))  # re-ingested with other content
        else:
            key = f"s{step:03d}.jsonl"
            registered.append(key)
        ids = [f"{step}-{i}" for i in range(rng.randint(0, 120))]
        if history and rng.random() < 0.4:
            planted = rng.choice(history)
            ids += rng.sample(planted, min(len(planted), rng.randint(1, 3)))
        ids = sorted(set(ids))
        others = list(registered)
        if rng.random() < 0.5:
            rng.shuffle(others)
        refused = _checked(store, key, ids, others)
        checks += 1
        live.pop(key, None)
        if refused is None:
            live[key] = ids
            history.append(ids)
        else:
            refusals += 1
        assert len(_runs(store)) <= 2 * math.log2(max(checks, 2)) + 2
    return checks - refusals, refusals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_answers_as_the_per_shard_scan(tmp_path, seed):
    passed, refused = _random_history(Store(str(tmp_path)), seed)
    assert passed > 20 and refused > 3  # both answers were given, and compared


def test_merge_in_tiny_ranges_writes_the_same_runs_as_in_one(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_ids, "_compact", lambda *args, **kwargs: None)
    built = Store(str(tmp_path / "tiny"))
    keys = [f"s{i}.jsonl" for i in range(7)]
    for i, key in enumerate(keys):
        _checked(built, key, [f"{i}-{j}" for j in range(50 + 30 * i)], keys[:i])
    monkeypatch.undo()
    assert len(_runs(built)) == 7
    shutil.copytree(tmp_path / "tiny", tmp_path / "large")
    tiny, large = built, Store(str(tmp_path / "large"))
    shard_ids._compact(tiny, max_batch=5)  # about 200 ranges
    shard_ids._compact(large, max_batch=1 << 23)
    assert _contents(tiny) == _contents(large)
    assert len(_runs(tiny)) < 7
    hashes = np.asarray(_runs(tiny)[0].hashes)
    assert (np.diff(hashes.astype(np.float64)) >= 0).all()


def _damaged_store(tmp_path) -> tuple[Store, list[str]]:
    """Eleven shards, one re-ingested (its older entry still in a run), runs not all merged."""
    store = Store(str(tmp_path))
    keys = [f"s{i:02d}.jsonl" for i in range(11)]
    for i, key in enumerate(keys):
        _checked(store, key, [f"{i}-{j}" for j in range(40)], keys)
    _checked(store, "s03.jsonl", [f"new3-{j}" for j in range(40)], keys)
    assert len(_runs(store)) >= 2
    return store, keys


def _newest_run_of(store: Store, stem: str) -> str:
    return max(
        (run for run in _runs(store) if any(m.stem == stem for m in run.members)),
        key=lambda run: max(m.since for m in run.members if m.stem == stem),
    ).name


def _damage(store: Store, how: str) -> None:
    folder = Path(store.path(shard_ids.INDEX_FOLDER))
    name = _newest_run_of(store, "s03")  # the only run with s03's current content
    if how == "index deleted":
        shutil.rmtree(folder)
    elif how == "json deleted":  # its arrays left without one
        (folder / f"{name}.json").unlink()
    elif how == "json corrupt":
        (folder / f"{name}.json").write_bytes(b"{not json")
    elif how == "hashes deleted":
        (folder / f"{name}.hashes.npy").unlink()
    elif how == "owners garbage":
        (folder / f"{name}.owners.npy").write_bytes(b"\x93NUMPY garbage")
    elif how == "owners out of range":
        owners = np.load(folder / f"{name}.owners.npy")
        np.save(folder / f"{name}.owners.npy", np.full_like(owners, 10**6))


@pytest.mark.parametrize(
    "how",
    ["index deleted", "json deleted", "json corrupt", "hashes deleted", "owners garbage",
     "owners out of range"],
)  # fmt: skip
def test_a_damaged_index_gives_the_same_answers_and_is_rebuilt(tmp_path, how):
    store, keys = _damaged_store(tmp_path)
    _damage(store, how)
    # s03's current ids are found although the run holding them is damaged; its old ones are not
    assert _checked(store, "p1.jsonl", ["p1-0", "new3-5"], [*keys, "p1.jsonl"]) == (
        shard_ids.SharedIds("s03.jsonl", 1, "new3-5")
    )
    assert _checked(store, "p2.jsonl", ["p2-0", "3-5", "7-1"], keys) == (
        shard_ids.SharedIds("s07.jsonl", 1, "7-1")
    )
    assert shard_ids._load_view(store).trusted  # rebuilt
    assert _checked(store, "p3.jsonl", ["new3-6", "9-9"], keys[::-1]) == (
        shard_ids.SharedIds("s09.jsonl", 1, "9-9")
    )
    assert _checked(store, "p4.jsonl", ["p4-0", "3-1"], keys) is None


def test_a_refused_shard_is_no_live_member(tmp_path):
    store = Store(str(tmp_path))
    _checked(store, "a.jsonl", ["x", "y"], ["a.jsonl"])
    assert _checked(store, "copy.jsonl", ["y", "z"], ["a.jsonl", "copy.jsonl"]) is not None
    _remove(store, "a.jsonl")
    # the refused shard's entry is still in a run: its documents are gone, so nothing holds "z"
    assert _checked(store, "b.jsonl", ["z"], ["a.jsonl", "copy.jsonl", "b.jsonl"]) is None
    _checked(store, "c.jsonl", ["w"], ["a.jsonl", "copy.jsonl", "b.jsonl", "c.jsonl"])
    stems = {m.stem for run in _runs(store) for m in run.members}
    assert "copy" not in stems and "a" not in stems  # dropped by the merges


def test_the_check_opens_o_log_s_files_not_o_s(tmp_path):
    shards = 32
    keys = [f"s{i:03d}.jsonl" for i in range(shards)]
    store = Store(str(tmp_path))
    for i, key in enumerate(keys):
        _shard(store, key, [f"{i}-{j}" for j in range(20)])
        first_shared_ids(store, key, keys)
    counting = CountingStore(str(tmp_path))
    _shard(counting, "new.jsonl", ["new-0", "new-1"])
    assert first_shared_ids(counting, "new.jsonl", keys) is None
    opened = set(counting.reads)
    assert len(opened) <= 2 * math.log2(shards) + 4, sorted(opened)
    assert not any(rel.startswith("corpus_ids/s") for rel in opened)
    # a shared id opens the shard holding it, and no other
    counting.reads.clear()
    _shard(counting, "dup.jsonl", ["dup-0", "17-3"])
    assert first_shared_ids(counting, "dup.jsonl", keys) == shard_ids.SharedIds(
        "s017.jsonl", 1, "17-3"
    )
    assert {r for r in counting.reads if not r.startswith("corpus_ids/_index/")} == {
        "corpus_documents/dup.parquet", "corpus_documents/s017.parquet", "corpus_ids/s017.npy"
    }  # fmt: skip


def test_index_files_are_not_listed_as_shard_outputs(tmp_path, store):
    first_shared_ids(store, "a.jsonl", ["b.jsonl"])  # b read from its documents: its file too
    assert store.list("corpus_ids") == ["corpus_ids/a.npy", "corpus_ids/b.npy"]
    assert any(Path(store.path(shard_ids.INDEX_FOLDER)).iterdir())


class _MergingFirst(Store):
    """A store on which another process merges the index right before `key`'s hash file is
    written: between its entry written ahead and the file holding that content."""

    def __init__(self, root: str, key: str) -> None:
        super().__init__(root)
        self.target = shard_ids.ids_file(key)

    def write_npy(self, rel: str, array: np.ndarray) -> str:
        if rel == self.target:
            shard_ids._compact(Store(self.url))
        return super().write_npy(rel, array)


def test_a_merge_before_the_hash_file_is_written_keeps_its_new_content(tmp_path):
    store = Store(str(tmp_path))
    _checked(store, "k.jsonl", ["old-1", "old-2"], ["k.jsonl"])
    racing = _MergingFirst(str(tmp_path), "k.jsonl")
    _shard(racing, "k.jsonl", ["new-1", "new-2"])
    assert first_shared_ids(racing, "k.jsonl", ["k.jsonl"]) is None
    assert len(_runs(store)) == 1  # both entries of k were merged while the file held the old
    assert _checked(store, "p.jsonl", ["new-2"], ["k.jsonl", "p.jsonl"]) == (
        shard_ids.SharedIds("k.jsonl", 1, "new-2")
    )


def test_the_index_works_on_s3(s3_server, tmp_path):
    """Same answers through fsspec on an object store: arrays memory-mapped from the cache
    folder, or read into memory without one; a deleted run JSON is noticed there too."""
    root = f"{s3_server.bucket('climb-ids')}/index"
    store = Store(root, s3_server.storage_options(), cache=tmp_path / "cache")
    keys = [f"s{i}.jsonl" for i in range(4)]
    for i, key in enumerate(keys):
        _checked(store, key, [f"{i}-{j}" for j in range(30)], keys)
    _checked(store, "s2.jsonl", ["new2-0", "new2-1"], keys)
    name = _newest_run_of(store, "s2")
    store.remove(f"{shard_ids.INDEX_FOLDER}/{name}.json")
    assert not shard_ids._load_view(store).trusted
    assert _checked(store, "q.jsonl", ["q-0", "new2-0"], keys) == (
        shard_ids.SharedIds("s2.jsonl", 1, "new2-0")
    )
    assert shard_ids._load_view(store).trusted
    in_memory = Store(root, s3_server.storage_options())
    assert _checked(in_memory, "r.jsonl", ["r-0", "new2-1", "3-5"], keys) == (
        shard_ids.SharedIds("s2.jsonl", 1, "new2-1")
    )


def test_a_merge_finding_runs_inconsistent_rebuilds_the_index(tmp_path, monkeypatch):
    store, keys = _damaged_store(tmp_path)
    real, failed = shard_ids._merge, []

    def merge_once_inconsistent(*args, **kwargs):
        if not failed:
            failed.append(True)
            raise ValueError("member rows do not add up")
        return real(*args, **kwargs)

    monkeypatch.setattr(shard_ids, "_merge", merge_once_inconsistent)
    for name in ("n1.jsonl", "n2.jsonl"):  # the second makes two runs of one shard: a merge
        _checked(store, name, [f"{name}-0"], keys)
    assert failed
    assert _checked(store, "p.jsonl", ["p-0", "new3-7"], keys) == (
        shard_ids.SharedIds("s03.jsonl", 1, "new3-7")
    )
    assert _checked(store, "q.jsonl", ["q-0", "n2.jsonl-0"], [*keys, "n1.jsonl", "n2.jsonl"]) == (
        shard_ids.SharedIds("n2.jsonl", 1, "n2.jsonl-0")
    )
    runs = _runs(store)
    assert len(runs) <= 4 and {m.stem for r in runs for m in r.members} >= {"s00", "n1", "n2"}


def _ingest_many(root: str, prefix: str, keys: list[str]) -> int:
    """One of two processes ingesting at once into one store (the UI's two runs)."""
    store = Store(root)
    refused = 0
    for i, key in enumerate(keys):
        ids = [f"{key}-{j}" for j in range(30)] + ([f"{prefix}-shared"] if i % 3 == 0 else [])
        _shard(store, key, ids)
        if first_shared_ids(store, key, keys) is not None:
            _remove(store, key)
            refused += 1
    return refused


def test_two_processes_ingesting_at_once_leave_a_right_index(tmp_path):
    """Runs written, merged and deleted under each other: no exception, and afterwards the
    index answers as the per-shard scan for every shard."""
    import multiprocessing

    a = [f"a{i:02d}.jsonl" for i in range(10)]
    b = [f"b{i:02d}.jsonl" for i in range(10)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        refused = pool.starmap(_ingest_many, [(str(tmp_path), "a", a), (str(tmp_path), "b", b)])
    assert refused == [3, 3]  # each process's planted id refuses its later holders
    store = Store(str(tmp_path))
    everyone = [*a, *b]
    found = [
        _checked(store, f"probe{i}.jsonl", [f"{key}-4"], everyone) for i, key in enumerate(everyone)
    ]
    assert sum(shared is not None for shared in found) == len(everyone) - 6  # refused: removed
    assert _runs(store)

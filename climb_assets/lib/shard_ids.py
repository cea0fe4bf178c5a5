"""Refusing a doc_id that two shards share when the second is ingested, before any embedding.

Each ingested shard leaves the 64-bit hashes of its ids, sorted, beside its documents
(`corpus_ids/<stem>.npy`, 8 bytes a document); those files are the source of truth. A hash found
is confirmed on the ids themselves, so a collision of hashes never refuses a shard. The hash is
BLAKE2b, the same on every machine and library version, so files written by one run are read
right by the next.

Looking a new shard up in every other shard's file costs O(S) files and O(N) bytes a shard, a
quadratic first ingestion. So the check reads a log-structured index of every shard's hashes
instead (`corpus_ids/_index/`): a few runs, each a sorted hash array, a parallel array naming the
member shard of each hash, and a JSON of its members (stem, key, digest of the hash file's
content, when it was added). A new shard is one more run, and the newest two runs are merged while
they hold about as many shards (a binary counter: O(log S) runs, every hash copied O(log S)
times), range of the hash space by range, so memory holds a batch. The check binary-searches each
memory-mapped run, then compares as before, on the shards' own files, only the shards a run names
for one of its hashes and those the index does not cover. Index files are named `_run-…`, so
`Store.list` never takes them for shard outputs.

The index is a cache kept safe by three rules. A shard's run is written before its hash file
(write-ahead), so the content of every hash file this module writes is in the index. A run's JSON
is written first as pending and marked complete after its arrays, so arrays without a JSON mean
damage, never a write in flight. A merge drops an entry only when its shard is gone, or when a
newer entry of the shard exists and the hash file no longer holds the entry's content. A damaged
index is answered by the per-shard scan and rebuilt from the hash files; several processes may
write it at once (runs have unique names; a merge names the runs it replaces).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.locks import FileLock, LockHeld
from climb_assets.lib.storage import Store

IDS_FOLDER = "corpus_ids"
DOCUMENTS_FOLDER = "corpus_documents"
INDEX_FOLDER = f"{IDS_FOLDER}/_index"
"""The runs of the index; the leading underscore keeps it apart from the per-shard files."""
MERGE_BATCH = 1 << 21
"""Rows (of all merged runs together) one range of a merge holds: 16 MiB of hashes, about
75 MiB with their member indexes while they are sorted (a range more costs a binary search
in each run, nothing in memory)."""
REPAIR_FANIN = 256
"""Hash files one repair run is built from (each is memory-mapped, an open descriptor each)."""
DOCUMENTS_LISTING_FROM = 32
"""From this many shards the index does not cover, one listing of the documents folder says
which exist, instead of a request each."""
PENDING_EXPIRY_NS = 24 * 3600 * 10**9
"""A run still pending after this long was left by a crashed writer and is deleted."""
MAX_CASCADE = 64
"""Merges one compaction does at most (a binary counter needs log2(S) of them)."""
_RUN_PREFIX = "_run-"
_JSON, _HASHES, _OWNERS = ".json", ".hashes.npy", ".owners.npy"
_FORMAT = 1

log = logging.getLogger(__name__)


def ids_file(key: str) -> str:
    return _stem_ids_file(shard_stem(key))


def _stem_ids_file(stem: str) -> str:
    return f"{IDS_FOLDER}/{stem}.npy"


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

    Writes `key`'s hash file, and adds it to the index first. Only shards whose documents
    exist are compared. Opens O(log S) index files, plus the files of the shards that share a
    hash and of those the index does not cover (a store from before the index: each once).
    """
    ids = shard_doc_ids(store, key)
    hashes = id_hashes(ids)
    digest = _digest(hashes)
    # Write-ahead: the content of every hash file is in the index before the file holds it.
    _write_run(
        store,
        [_Member(shard_stem(key), key, digest, time.time_ns(), int(hashes.size))],
        int(hashes.size),
        [(hashes, np.zeros(hashes.size, np.uint32))],
    )
    store.write_npy(ids_file(key), hashes)
    if hashes.size == 0:
        _maintain(store, None, [], refused=False)
        return None
    view: _View | None = None
    try:
        shared, scanned, view = _indexed_first_shared(store, key, ids, hashes, others)
    except Exception:  # the index is a cache: any surprise in it falls back to the scan
        log.warning("corpus id index unusable; comparing shard by shard", exc_info=True)
        view, scanned = None, []
        shared = _first_in_scan(store, key, ids, hashes, others)
    _maintain(store, view, scanned, refused=shared is not None)
    return shared


def _scan_first_shared(store: Store, key: str, others: Sequence[str]) -> SharedIds | None:
    """`first_shared_ids` without the index: every other shard's hash file is read (the
    reference the index must agree with, and its fallback)."""
    ids = shard_doc_ids(store, key)
    hashes = id_hashes(ids)
    store.write_npy(ids_file(key), hashes)
    if hashes.size == 0:
        return None
    return _first_in_scan(store, key, ids, hashes, others)


def _first_in_scan(
    store: Store, key: str, ids: list[str], hashes: np.ndarray, others: Sequence[str]
) -> SharedIds | None:
    for other in others:
        if other == key or not store.exists(documents_file(other)):
            continue
        shared = _shares(store, ids, hashes, other)
        if shared is not None:
            return shared
    return None


def _shares(store: Store, ids: list[str], hashes: np.ndarray, other: str) -> SharedIds | None:
    """The ids of `ids` that shard `other` (whose documents exist) holds, by its hash file and
    then on the ids themselves; None when none."""
    theirs = shard_hashes(store, other)
    if theirs.size == 0:
        return None
    at = np.searchsorted(theirs, hashes).clip(max=theirs.size - 1)
    if not (theirs[at] == hashes).any():
        return None
    shared = set(ids).intersection(shard_doc_ids(store, other))
    if shared:
        return SharedIds(other, len(shared), min(shared))
    return None


def _indexed_first_shared(
    store: Store,
    key: str,
    ids: list[str],
    hashes: np.ndarray,
    others: Sequence[str],
) -> tuple[SharedIds | None, list[str], _View]:
    """`_first_in_scan`'s answer, comparing only the shards that a run names for one of
    `hashes` and those the index does not cover (all of them when it is damaged).

    Also returns the shards compared that the index does not cover, to be added to it, and the
    index as it was read. Any shard skipped holds none of `hashes` in its hash file: its
    current content is in a run.
    """
    view = _load_view(store)
    candidates = _candidate_stems(store, view, hashes)  # may find a run damaged
    if not view.trusted:  # perhaps a merge's clean-up seen half done: look once more
        view = _load_view(store)
        candidates = _candidate_stems(store, view, hashes)
    covered = view.covered() if view.trusted else set()
    uncovered = sum(1 for o in others if o != key and shard_stem(o) not in covered)
    listed = (
        _stems_in(store, DOCUMENTS_FOLDER, ".parquet")
        if uncovered >= DOCUMENTS_LISTING_FROM
        else None
    )
    scanned: list[str] = []
    for other in others:
        if other == key:
            continue
        stem = shard_stem(other)
        if stem in covered:
            if stem not in candidates or not store.exists(documents_file(other)):
                continue
        else:
            present = stem in listed if listed is not None else store.exists(documents_file(other))
            if not present:
                continue
            scanned.append(other)
        shared = _shares(store, ids, hashes, other)
        if shared is not None:
            return shared, scanned, view
    return None, scanned, view


# ---------------------------------------------------------------------------------------------
# The index: runs and their files


@dataclass(frozen=True)
class _Member:
    """One shard's hashes in a run, as its hash file held them."""

    stem: str
    key: str | None
    """The shard key, when known (a rebuild from the hash files knows only stems)."""
    digest: str
    """`_digest` of the content: which version of the shard's hash file this entry is."""
    since: int
    """When the entry was written ahead of its hash file (ns); 0 when taken from the file
    after the fact, so such an entry never counts as newer than a write-ahead one."""
    rows: int


@dataclass
class _Run:
    name: str
    order: int
    """Position among runs (oldest first); a merge takes the newest position of its runs."""
    complete: bool
    created: int
    replaces: tuple[str, ...]
    """Runs whose entries this one holds: hidden when it is complete, deleted after."""
    members: list[_Member]
    size: int
    hashes: np.ndarray | None = None
    owners: np.ndarray | None = None

    @property
    def level(self) -> int:
        """floor(log2(members)): runs are merged while the newer is at least as high."""
        return len(self.members).bit_length() - 1


def _encode(run: _Run) -> bytes:
    m = run.members
    record = {
        "format": _FORMAT,
        "complete": run.complete,
        "order": run.order,
        "created": run.created,
        "size": run.size,
        "replaces": list(run.replaces),
        "stems": [x.stem for x in m],
        "keys": [x.key for x in m],
        "digests": [x.digest for x in m],
        "since": [x.since for x in m],
        "rows": [x.rows for x in m],
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _decode(name: str, raw: bytes) -> _Run:
    """A run from its JSON; ValueError when it is not one this code wrote whole."""
    r: dict[str, Any] = json.loads(raw)
    if not isinstance(r, dict) or r.get("format") != _FORMAT:
        raise ValueError(f"{name}: not an index run of format {_FORMAT}")
    columns = [r["stems"], r["keys"], r["digests"], r["since"], r["rows"]]
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"{name}: member columns of different lengths")
    members = [
        _Member(str(s), None if k is None else str(k), str(d), int(t), int(n))
        for s, k, d, t, n in zip(*columns, strict=True)
    ]
    size = int(r["size"])
    if sum(m.rows for m in members) != size or min((m.rows for m in members), default=0) < 0:
        raise ValueError(f"{name}: member rows do not add up to the run's size")
    return _Run(
        name, int(r["order"]), bool(r["complete"]), int(r["created"]),
        tuple(str(n) for n in r["replaces"]), members, size,
    )  # fmt: skip


def _run_file(name: str, suffix: str) -> str:
    return f"{INDEX_FOLDER}/{name}{suffix}"


def _write_run(
    store: Store,
    members: list[_Member],
    total: int,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    replaces: Iterable[str] = (),
    order: int | None = None,
) -> str:
    """Writes a run of `total` rows from `chunks` of (sorted hashes, member index) in hash
    order; returns its name.

    The JSON is written first as pending, then the arrays (out of core, a chunk at a time),
    then the JSON again as complete: a reader never takes arrays without a complete JSON for
    a run, and arrays without any JSON can only be damage.
    """
    now = time.time_ns()
    name = f"{_RUN_PREFIX}{now:020d}-{uuid.uuid4().hex[:8]}"
    run = _Run(name, now if order is None else order, False, now, tuple(replaces), members, total)
    store.write_bytes(_run_file(name, _JSON), _encode(run))
    try:
        with store.open_write(_run_file(name, _OWNERS)) as owners_out:
            np.lib.format.write_array_header_1_0(
                owners_out,
                {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint32)),
                 "fortran_order": False, "shape": (total,)},
            )  # fmt: skip

            def hash_chunks() -> Iterator[np.ndarray]:
                for hashes, owners in chunks:
                    if hashes.shape != owners.shape:
                        raise ValueError("a chunk of hashes and owners of different lengths")
                    owners_out.write(np.ascontiguousarray(owners, dtype=np.uint32).tobytes())
                    yield hashes

            store.write_npy_chunks(_run_file(name, _HASHES), np.dtype(np.uint64), total,
                                   hash_chunks())  # fmt: skip
    except BaseException:
        _remove_run(store, name)
        raise
    run.complete = True
    store.write_bytes(_run_file(name, _JSON), _encode(run))
    return name


def _remove_run(store: Store, name: str) -> None:
    """Deletes a run, arrays first: a JSON left without arrays is hidden (replaced) or pending,
    while arrays left without a JSON would read as damage."""
    for suffix in (_HASHES, _OWNERS, _JSON):
        with contextlib.suppress(FileNotFoundError):
            store.remove(_run_file(name, suffix))


def _fresh_find(store: Store, folder: str) -> list[str]:
    """Base names of the files directly in `folder`, listed anew (no fsspec listing cache:
    another process may have written since)."""
    base = store.path(folder)
    try:
        entries = store.fs.ls(base, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    finally:  # s3fs keeps listings: a kept one would hide other processes' writes from `exists`
        with contextlib.suppress(Exception):
            store.fs.invalidate_cache(base)
    return [e["name"].rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]


def _stems_in(store: Store, folder: str, suffix: str) -> set[str]:
    """Stems of the per-shard files `<stem><suffix>` in `folder` (hidden names included)."""
    return {n[: -len(suffix)] for n in _fresh_find(store, folder) if n.endswith(suffix)}


@dataclass
class _View:
    """What a reader takes the index to be at one moment."""

    runs: list[_Run]
    """Complete runs no other complete run replaces, arrays memory-mapped, oldest first."""
    damaged: list[str]
    """Runs with unreadable or inconsistent files, or arrays without a JSON: while any is
    there, the index cannot say which shards it covers."""
    garbage: list[str]
    """Runs a visible one replaces, and pending runs left by a crashed writer."""
    listed: set[str]

    @property
    def trusted(self) -> bool:
        return not self.damaged

    def covered(self) -> set[str]:
        """Stems with an entry in a visible run: the current content of each is in one."""
        return {m.stem for run in self.runs for m in run.members}


def _load_view(store: Store, arrays: bool = True) -> _View:
    """The index as it is now, with the runs' hash arrays memory-mapped when `arrays` is set;
    looked at twice when the first look finds damage, which may be a merge's clean-up seen
    half done."""
    view = _try_view(store, arrays)
    return view if view.trusted else _try_view(store, arrays)


def _open_arrays(store: Store, run: _Run, owners: bool) -> None:
    """Memory-maps the run's hashes (and member indexes); ValueError when they are not the
    arrays its JSON announces."""
    if run.hashes is None:
        run.hashes = store.read_npy(_run_file(run.name, _HASHES))
        if run.hashes.shape != (run.size,) or run.hashes.dtype != np.uint64:
            raise ValueError(f"{run.name}: hashes are not {run.size} uint64")
    if owners and run.owners is None:
        run.owners = store.read_npy(_run_file(run.name, _OWNERS))
        if run.owners.shape != (run.size,) or run.owners.dtype != np.uint32:
            raise ValueError(f"{run.name}: member indexes are not {run.size} uint32")


def _try_view(store: Store, arrays: bool) -> _View:
    files: dict[str, set[str]] = {}
    for name in _fresh_find(store, INDEX_FOLDER):
        if name.startswith(_RUN_PREFIX):
            for suffix in (_JSON, _HASHES, _OWNERS):
                if name.endswith(suffix):
                    files.setdefault(name[: -len(suffix)], set()).add(suffix)
                    break
    damaged, runs = [], []
    for name, kinds in sorted(files.items()):
        if _JSON not in kinds:
            damaged.append(name)
            continue
        try:
            runs.append(_decode(name, store.read_bytes(_run_file(name, _JSON))))
        except (OSError, ValueError, KeyError, TypeError):
            damaged.append(name)
    complete = [r for r in runs if r.complete]
    replaced = {n for r in complete for n in r.replaces}
    now = time.time_ns()
    garbage = [n for n in damaged if n in replaced] + [
        r.name
        for r in runs
        if r.name in replaced or (not r.complete and now - r.created > PENDING_EXPIRY_NS)
    ]
    damaged = [n for n in damaged if n not in replaced]
    visible = sorted(
        (r for r in complete if r.name not in replaced), key=lambda r: (r.order, r.name)
    )
    good = []
    for run in visible:
        if _HASHES not in files[run.name] or _OWNERS not in files[run.name]:
            damaged.append(run.name)
            continue
        if arrays:
            try:
                _open_arrays(store, run, owners=False)
            except Exception:  # missing, truncated, not a .npy: all the same to a cache
                damaged.append(run.name)
                continue
        good.append(run)
    return _View(good, damaged, garbage, set(files))


def _candidate_stems(store: Store, view: _View, hashes: np.ndarray) -> set[str]:
    """Stems of the members that a visible run names for one of the sorted `hashes`; a run's
    member indexes are read only when it holds one.

    A run whose member indexes are unreadable or point past its members is recorded as damaged.
    """
    queries = np.unique(hashes)
    found: set[str] = set()
    for run in view.runs:
        if run.size == 0:
            continue
        assert run.hashes is not None
        lo = np.searchsorted(run.hashes, queries, side="left")
        hi = np.searchsorted(run.hashes, queries, side="right")
        hit = hi > lo
        if not hit.any():
            continue
        lo, counts = lo[hit], (hi - lo)[hit]
        starts = np.cumsum(counts) - counts
        rows = np.repeat(lo - starts, counts) + np.arange(int(counts.sum()))
        try:
            _open_arrays(store, run, owners=True)
        except Exception:
            view.damaged.append(run.name)
            continue
        assert run.owners is not None
        owners = np.unique(np.asarray(run.owners[rows]))
        if owners[-1] >= len(run.members):
            view.damaged.append(run.name)
            continue
        found.update(run.members[i].stem for i in owners.tolist())
    return found


def _digest(hashes: np.ndarray) -> str:
    """Which content a hash file holds (BLAKE2b of its array), read a slice at a time."""
    digest = hashlib.blake2b(digest_size=16)
    step = 1 << 20
    for start in range(0, hashes.size, step):
        digest.update(np.ascontiguousarray(hashes[start : start + step], dtype="<u8"))
    return digest.hexdigest()


def _hash_ranges(total: int, max_batch: int) -> Iterator[tuple[np.uint64, np.uint64, bool]]:
    """`(lo, hi, last)`: ranges of the 64-bit hash space holding about `max_batch` each of
    `total` hashes spread evenly; a range is [lo, hi), or [lo, hi] when `last`."""
    ranges = max(1, -(-total // max_batch))
    bounds = [(2**64 * i) // ranges for i in range(ranges + 1)]
    for lo, hi in itertools.pairwise(bounds):
        yield np.uint64(lo), np.uint64(min(hi, 2**64 - 1)), hi >= 2**64


def _span(hashes: np.ndarray, lo: np.uint64, hi: np.uint64, last: bool) -> tuple[int, int]:
    """Where the range `(lo, hi, last)` of `_hash_ranges` lies in the sorted `hashes`."""
    start = int(np.searchsorted(hashes, lo, side="left"))
    stop = int(np.searchsorted(hashes, hi, side="right" if last else "left"))
    return start, stop


_Source = tuple[np.ndarray, np.ndarray | None, np.ndarray]
"""(sorted hashes, member index of each or None for a one-member hash file, the merged run's
member index of each local member or -1 for an entry dropped)."""


def _merged(
    sources: list[_Source], total: int, max_batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The kept rows of `sources` in (hash, member) order, one hash range at a time: memory
    holds about `max_batch` rows of `total`, whatever the runs' sizes."""
    for lo, hi, last in _hash_ranges(total, max_batch):
        hs, gs = [], []
        for hashes, owners, to_merged in sources:
            start, stop = _span(hashes, lo, hi, last)
            if stop == start:
                continue
            if owners is None:
                g = np.full(stop - start, to_merged[0], dtype=np.int64)
            else:
                g = to_merged[np.asarray(owners[start:stop])]
            keep = g >= 0
            hs.append(np.asarray(hashes[start:stop])[keep])
            gs.append(g[keep])
        if hs:
            h, g = np.concatenate(hs), np.concatenate(gs)
            order = np.lexsort((g, h))
            yield h[order], g[order].astype(np.uint32)


# ---------------------------------------------------------------------------------------------
# Keeping the index: merges, repairs, clean-up


def _maintain(store: Store, view: _View | None, scanned: list[str], refused: bool) -> None:
    """After a check: rebuilds a damaged index, adds the shards it did not cover, and merges
    runs (not after a refusal: that shard is about to be deleted, and the next merge drops it).
    Never raises: a failure here leaves work for the next check, never a wrong answer."""
    try:
        try:
            if view is not None and not view.trusted:
                _rebuild(store, view.damaged)
            elif scanned:
                _index_hash_files(store, [(shard_stem(k), k) for k in scanned])
            if not refused:
                _compact(store)
        except _Inconsistent as found:
            _rebuild(store, found.runs)
    except Exception:
        log.warning("corpus id index not updated; the next check repairs it", exc_info=True)


class _Inconsistent(Exception):
    """Runs whose arrays disagree with their JSON, found while merging them."""

    def __init__(self, runs: list[str]) -> None:
        super().__init__(f"inconsistent index runs: {runs}")
        self.runs = runs


def _rebuild(store: Store, damaged: list[str]) -> None:
    """Adds the current content of every hash file, then retires the `damaged` runs."""
    stems = sorted(_stems_in(store, IDS_FOLDER, ".npy"))
    _index_hash_files(store, [(stem, None) for stem in stems], replaces=damaged)


def _index_hash_files(
    store: Store,
    shards: list[tuple[str, str | None]],
    replaces: Iterable[str] = (),
    max_batch: int | None = None,
) -> None:
    """Adds the current content of the (stem, key) shards' hash files, `REPAIR_FANIN` files a
    run, compacting after each; the last run replaces `replaces` (damaged runs)."""
    replaces = list(replaces)
    groups = [shards[i : i + REPAIR_FANIN] for i in range(0, len(shards), REPAIR_FANIN)] or [[]]
    for n, group in enumerate(groups):
        members: list[_Member] = []
        sources: list[_Source] = []
        for stem, key in group:
            try:
                hashes = store.read_npy(_stem_ids_file(stem))  # memory-mapped
            except Exception:  # gone, or unreadable: left to the per-shard comparison
                continue
            # since=0: content read from the file now is never newer than a write-ahead entry
            members.append(_Member(stem, key, _digest(hashes), 0, int(hashes.size)))
            sources.append((hashes, None, np.array([len(members) - 1], dtype=np.int64)))
        last = n == len(groups) - 1
        if members or (last and replaces):
            total = sum(m.rows for m in members)
            _write_run(store, members, total, _merged(sources, total, max_batch or MERGE_BATCH),
                       replaces if last else ())  # fmt: skip
            _compact(store, max_batch)


@contextlib.contextmanager
def _compaction_lock(store: Store) -> Iterator[bool]:
    """Whether this process may merge now: on a local store one merger at a time, the others
    skip (never wait); on an object store two merges may run at once, which costs duplicate
    entries that the next merge removes, never a wrong answer."""
    local = store.local_path(f"{INDEX_FOLDER}/_compact.lock")
    if local is None:
        yield True
        return
    lock = FileLock(local)
    try:
        lock.acquire()
    except LockHeld:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def _compact(store: Store, max_batch: int | None = None) -> None:
    """Merges the newest two runs while the newer holds about as many shards or more (a binary
    counter), then deletes the runs merged away."""
    with _compaction_lock(store) as mine:
        if not mine:
            return
        view = _load_view(store, arrays=False)
        for _ in range(MAX_CASCADE):
            runs = view.runs
            if len(runs) < 2 or runs[-2].level > runs[-1].level:
                break
            try:
                for run in runs[-2:]:
                    _open_arrays(store, run, owners=True)
                _merge(store, view, runs[-2:], max_batch or MERGE_BATCH)
            except (ValueError, IndexError) as error:  # e.g. member rows that do not add up
                raise _Inconsistent([r.name for r in runs[-2:]]) from error
            view = _load_view(store, arrays=False)
        for name in view.garbage:
            _remove_run(store, name)


def _merge(store: Store, view: _View, pair: list[_Run], max_batch: int) -> str:
    """Writes one run holding the live entries of `pair`, each (shard, content) once; returns
    its name. Listed after `view` was loaded, so a shard's files listed missing were deleted
    after its entries were written."""
    present = (_stems_in(store, IDS_FOLDER, ".npy"), _stems_in(store, DOCUMENTS_FOLDER, ".parquet"))
    newest: dict[str, int] = {}
    for run in view.runs:
        for m in run.members:
            newest[m.stem] = max(newest.get(m.stem, 0), m.since)
    current: dict[str, str | None] = {}
    at: dict[tuple[str, str], int] = {}
    members: list[_Member] = []
    sources: list[_Source] = []
    for run in reversed(pair):  # newest first
        to_merged = np.full(len(run.members), -1, dtype=np.int64)
        for i, m in enumerate(run.members):
            if _stale(store, m, newest, present, current):
                continue
            j = at.get((m.stem, m.digest))
            if j is not None:  # the same content in both: rows taken once
                kept = members[j]
                members[j] = dataclasses.replace(
                    kept, since=max(kept.since, m.since), key=kept.key or m.key
                )
                continue
            at[m.stem, m.digest] = to_merged[i] = len(members)
            members.append(m)
        assert run.hashes is not None
        sources.append((run.hashes, run.owners, to_merged))
    replaces = {r.name for r in pair} | {n for r in pair for n in r.replaces if n in view.listed}
    return _write_run(
        store, members, sum(m.rows for m in members),
        _merged(sources, sum(r.size for r in pair), max_batch),
        sorted(replaces), order=max(r.order for r in pair),
    )  # fmt: skip


def _stale(
    store: Store,
    m: _Member,
    newest: dict[str, int],
    present: tuple[set[str], set[str]],
    current: dict[str, str | None],
) -> bool:
    """Whether entry `m` can be dropped: its shard is gone (hash file and documents, as when a
    shard is removed or refused), or a newer entry of the shard exists and its hash file holds
    other content. The newest entry is kept even when the file does not hold it yet: it is
    written ahead of the file."""
    hash_files, documents = present
    if m.stem not in hash_files and m.stem not in documents:
        return True
    if newest.get(m.stem, 0) <= m.since:
        return False
    if m.stem not in current:
        current[m.stem] = None
        if m.stem in hash_files:
            with contextlib.suppress(Exception):  # gone or unreadable: not this content
                current[m.stem] = _digest(store.read_npy(_stem_ids_file(m.stem)))
    return current[m.stem] != m.digest


# ---------------------------------------------------------------------------------------------
# The backstop


def shared_ids_anywhere(
    store: Store, shards: Sequence[str], max_batch: int = MERGE_BATCH
) -> tuple[str, list[str], int] | None:
    """A doc_id more than one of `shards` holds, the shards holding it, and how many ids are
    shared; None when every id is in one shard.

    The backstop behind the ingestion check (two shards ingested at the same moment both pass
    it). Memory is bounded by `max_batch` hashes (16 MiB), not by the corpus: the 64-bit hash
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
    shared: np.ndarray | None = None
    count = 0
    for lo, hi, last in _hash_ranges(total, max_batch):
        pieces = []
        for a in arrays:
            start, stop = _span(a, lo, hi, last)
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

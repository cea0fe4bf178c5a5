"""What every export shares: its inputs, its record, and an atomic, skip-if-complete write.

An export is a folder under `exports/<name>/` of the storage root. It is built in a staging
folder and published whole (a rename on local disk; on an object store, every file uploaded with
the completion record `_export.json` last), so a reader never sees half an export. The record
holds the manifest digest the export was built from: an export whose record carries the current
digest is complete and is not built again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from climb_assets.lib.storage import Store

RECORD = "_export.json"


class ExportError(ValueError):
    """An export that cannot be built as configured."""


@dataclass(frozen=True)
class ExportContext:
    """Everything an exporter may read.

    Attributes:
        store: The storage root.
        manifest_digest: Identity of the manifest (weights, selection, seed) being exported.
        weights: ClimbMix weight per super-cluster.
        parts: Relative paths of the manifest's selected documents (Parquet parts with
            `doc_id, cluster_id, n_tokens, super_cluster_id, pass, text`).
        validation_parts: The manifest's validation documents (same columns, `pass` 0; none of
            them is in `parts`); empty when the manifest holds none out.
        granted_tokens: Tokens the manifest grants each super-cluster.
        shards: The registered corpus shards (for exports of the whole kept corpus).
        scorers: Names of the quality scorers (columns of `cluster_quality`).
        tokenizer: Local path of the training tokenizer (`tokenizer.json` or a model folder).
        tokenizer_note: Where that tokenizer comes from, for the records.
        seed: The manifest's seed.
        license: The corpus's licence (`manifest.license`).
        seq_length: The training run's sequence length (`manifest.seq_length`).
        global_batch_size: Its sequences per optimizer step (`manifest.global_batch_size`).
        export_workers: Processes an export may write with (megatron: super-clusters shared
            out among them); None: the usable CPUs (megatron: in this process below
            `PARALLEL_MIN_TOKENS` granted tokens); 1: in this process.
    """

    store: Store
    manifest_digest: str
    weights: np.ndarray
    parts: list[str]
    granted_tokens: list[int]
    shards: list[str] = field(default_factory=list)
    scorers: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    tokenizer_note: str = ""
    seed: int = 0
    validation_parts: list[str] = field(default_factory=list)
    license: str = "unknown: set manifest.license"
    seq_length: int = 2048
    global_batch_size: int = 256
    export_workers: int | None = None

    def __post_init__(self) -> None:
        if self.export_workers is not None and self.export_workers < 1:
            raise ExportError(
                f"export_workers is {self.export_workers}; use 1 or more, or None for every CPU"
            )
        if sum(self.granted_tokens) <= 0:
            raise ExportError(
                "the manifest grants no tokens, so there is nothing to export; raise "
                "manifest.total_tokens"
            )


class Exporter(ABC):
    """One export format: writes its files into a local folder and describes them."""

    name: ClassVar[str]
    """The folder under `exports/` and the value of `manifest.exports` that selects it."""

    @abstractmethod
    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        """Writes the export into the empty folder `out`; returns a JSON-able summary."""


def file_entries(folder: Path) -> list[dict[str, Any]]:
    """Path (relative), size and SHA-256 of every file under `folder`, sorted."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        entries.append(
            {
                "path": path.relative_to(folder).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": digest.hexdigest(),
            }
        )
    return entries


STAGING_MAX_IDLE_S = 2 * 24 * 3600.0
"""A staging folder untouched this long is a leftover even when its writer's pid cannot be checked
(another host on a shared disk, or a name from before staging names carried the writer)."""

_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def staging_name(name: str, kind: str) -> str:
    """`.<name>.<host>.<pid>.<uuid>.<kind>`: the writer's host and pid are in the name so that a
    later export can tell a killed export's leftover from one that a live process still writes."""
    return f".{name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.{kind}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _idle_seconds(folder: Path) -> float:
    """Seconds since anything under `folder` last changed (a live writer keeps this small)."""
    newest = 0.0
    for path in [folder, *folder.rglob("*")]:
        try:
            newest = max(newest, path.lstat().st_mtime)
        except OSError:
            continue
    return time.time() - newest


def _is_leftover(folder: Path, name: str) -> bool:
    """Whether `folder` (a staging folder of export `name`) belongs to no live writer.

    One named by this host with a pid that is no longer alive is a leftover at once: its writer
    was killed (SIGKILL, OOM) before it could clean up. One whose pid is alive is kept, since it
    may be an export being written now (two Dagster UI runs can overlap, unlike two CLI runs on
    one root); a reused pid only keeps a leftover until the age rule below removes it. Folders
    whose writer cannot be checked (another host, or the older `.<name>.<uuid>.tmp` names) are
    removed only once nothing in them has changed for `STAGING_MAX_IDLE_S`, far longer than any
    export writes without touching a file.
    """
    stem = folder.name[len(name) + 2 : folder.name.rindex(".")]  # <host>.<pid>.<uuid> or <uuid>
    parts = stem.rsplit(".", 2)
    mine = len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit()
    if mine and not _pid_alive(int(parts[1])):
        return True
    return _idle_seconds(folder) > STAGING_MAX_IDLE_S


def remove_staging_leftovers(
    parent: Path, name: str, log: Callable[[str], None] | None = None
) -> list[Path]:
    """Removes staging folders of export `name` under `parent` left by killed writers.

    Returns:
        The folders removed (one log line each).
    """
    removed = []
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.glob(f".{glob.escape(name)}.*")):
        if folder.suffix not in (".tmp", ".old") or not folder.is_dir():
            continue
        if not _is_leftover(folder, name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            if log is not None:
                log(f"export {name}: removed {folder}, the staging folder of a killed export")
    return removed


@contextmanager
def staged_folder(
    store: Store, rel: str, log: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """A local folder to build `rel` in; published whole when the block ends without error.

    Locally the folder is a hidden sibling of `rel`, renamed over it; on an object store it is a
    local spool folder (under the cache, else the system's temporary folder) whose files are
    uploaded with `RECORD` last. Either way staging folders that killed exports of `rel` left
    behind are removed first (`remove_staging_leftovers`), one `log` line each.
    """
    local = store.local_path(rel)
    name = local.name if local is not None else rel.rstrip("/").rsplit("/", 1)[-1]
    if local is not None:
        parent = local.parent
    elif store.cache is not None:
        parent = store.cache / "_spool"
    else:
        parent = Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    remove_staging_leftovers(parent, name, log)
    tmp = parent / staging_name(name, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if local is None:
            store.remove(rel)
            store.put_folder(tmp, rel, last=RECORD)
            return
        old = parent / staging_name(name, "old")
        if local.exists():
            os.replace(local, old)
        os.replace(tmp, local)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def completed(store: Store, name: str, manifest_digest: str) -> dict[str, Any] | None:
    """The record of export `name` when it is complete for this manifest, else None."""
    rel = f"exports/{name}/{RECORD}"
    if not store.exists(rel):
        return None
    record = store.read_json(rel)
    return record if record.get("manifest_digest") == manifest_digest else None


def run_export(
    exporter: Exporter, ctx: ExportContext, log: Callable[[str], None]
) -> dict[str, Any]:
    """Builds one export unless it is complete for this manifest; returns its record."""
    done = completed(ctx.store, exporter.name, ctx.manifest_digest)
    if done is not None:
        log(f"export {exporter.name}: complete for this manifest, kept")
        return {**done, "skipped": True}
    start = time.perf_counter()
    with staged_folder(ctx.store, f"exports/{exporter.name}", log) as out:
        summary = exporter.write(ctx, out, log)
        files = file_entries(out)
        record = {
            "name": exporter.name,
            "manifest_digest": ctx.manifest_digest,
            "folder": ctx.store.uri(f"exports/{exporter.name}"),
            "files": files,
            "bytes": sum(f["bytes"] for f in files),
            "seconds": round(time.perf_counter() - start, 2),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **summary,
        }
        (out / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True))
    return {**record, "skipped": False}

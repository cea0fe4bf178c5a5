"""One folder abstraction over fsspec: a local directory and an `s3://` prefix behave the same.

Every write is atomic. Locally the bytes go to a hidden temporary file in the destination folder
and are renamed over the target (`os.replace`), so a killed run leaves either the old file or the
new one, never half of one. On object stores a PUT (or a multipart upload) only becomes visible
when it completes, which gives the same guarantee.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class Store:
    """A folder (local path or URL) that reads and atomically writes open formats."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def child(self, rel: str) -> Store:
        """A store rooted at a sub-folder."""
        return Store(self.uri(rel), self.storage_options)

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (no protocol)."""
        return f"{self._root}/{rel}".rstrip("/") if rel else self._root

    def uri(self, rel: str = "") -> str:
        """The full URL (or absolute local path) of `rel`."""
        if self.is_local:
            return self.path(rel)
        return f"{self.url}/{rel}".rstrip("/") if rel else self.url

    def local_path(self, rel: str) -> Path | None:
        """A local `Path` for `rel`, or None on a remote store."""
        return Path(self.path(rel)) if self.is_local else None

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def list(self, rel: str = "", suffixes: tuple[str, ...] = ()) -> list[str]:
        """Relative paths of the files below `rel` (recursive), sorted, hidden files skipped."""
        base = self.path(rel)
        if not self.fs.exists(base):
            return []
        found = []
        for full in self.fs.find(base):
            name = full.rsplit("/", 1)[-1]
            if name.startswith((".", "_")):
                continue
            if suffixes and not name.endswith(suffixes):
                continue
            found.append(full[len(self._root) :].lstrip("/"))
        return sorted(found)

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    @contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """Opens `rel` for binary writing; the file appears only if the block completes."""
        target = self.path(rel)
        if not self.is_local:
            with self.fs.open(target, "wb") as fh:
                yield fh
            return
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_bytes(self, rel: str, data: bytes) -> str:
        with self.open_write(rel) as fh:
            fh.write(data)
        return self.uri(rel)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as fh:
            return fh.read()

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        with self.open_write(rel) as fh:
            pq.write_table(table, fh, compression="zstd")
        return self.uri(rel)

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def parquet_rows(self, rel: str) -> int:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    def write_npy(self, rel: str, array: np.ndarray) -> str:
        with self.open_write(rel) as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        return self.uri(rel)

    def read_npy(self, rel: str, mmap: bool = True) -> np.ndarray:
        """Loads a `.npy` file; memory-mapped (read-only) when local and `mmap` is set."""
        local = self.local_path(rel)
        if local is not None:
            return np.load(local, mmap_mode="r" if mmap else None, allow_pickle=False)
        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)


def safe_name(partition_key: str) -> str:
    """A flat file stem for a partition key (shard keys may hold '/')."""
    return partition_key.replace("/", "__")

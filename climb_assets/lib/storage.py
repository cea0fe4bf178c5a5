"""One folder abstraction over fsspec: a local directory and an `s3://` prefix behave the same.

Every write is atomic. Locally the bytes go to a hidden temporary file in the destination folder
and are renamed over the target (`os.replace`), so a killed run leaves either the old file or the
new one, never half of one. On object stores the bytes are first spooled to a local temporary file
and sent with one upload (a PUT, or a multipart upload for large files) only when the writer
finished without an error; an object becomes visible only when its upload completes, which gives
the same guarantee. Folders (proxy checkpoints) are uploaded file by file with their completion
marker last, so a reader that sees the marker sees every file.

Remote files that code needs on local disk (memory-mapped arrays, model folders, tokenizers) are
mirrored into a cache folder by `local_copy`, keyed by the object's ETag so a changed object is
fetched again and an unchanged one never is.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class StorageError(RuntimeError):
    """A remote file is needed locally but no cache folder is configured, or a fetch failed."""


class Store:
    """A folder (local path or URL) that reads and atomically writes open formats.

    Args:
        root: A local folder or a URL such as `s3://bucket/prefix`.
        storage_options: fsspec options for the URL's filesystem (for S3: `key`, `secret`,
            `token`, `endpoint_url`, `client_kwargs`); empty means the library's defaults.
        cache: A local folder where remote files are mirrored when code needs them on disk.
    """

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        cache: str | os.PathLike | None = None,
    ) -> None:
        self.url = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.cache = Path(cache) if cache is not None else None
        self.fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        self.is_local = any(p in ("file", "local") for p in protocols)
        self.protocol = protocols[0]

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def child(self, rel: str) -> Store:
        """A store rooted at a sub-folder."""
        return Store(self.uri(rel), self.storage_options, self.cache)

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

    def identity(self, rel: str) -> str:
        """What changes when the file at `rel` is replaced: size and mtime, or the ETag.

        A local file is `size:mtime_ns`; an object is its ETag (and size), which changes with
        every upload of different bytes.
        """
        local = self.local_path(rel)
        if local is not None:
            st = local.stat()
            return f"size={st.st_size};mtime_ns={st.st_mtime_ns}"
        info = self.fs.info(self.path(rel))
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"size={info.get('size')};etag={etag}"

    def move(self, src: str, dst: str) -> bool:
        """Renames `src` to `dst` (atomic on a local disk); False when `src` is already gone."""
        try:
            if self.is_local:
                Path(self.path(dst)).parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path(src), self.path(dst))
            else:
                self.fs.mv(self.path(src), self.path(dst))
        except FileNotFoundError:
            return False
        return True

    def remove(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=True)

    @contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """Opens `rel` for binary writing; the file appears only if the block completes."""
        target = self.path(rel)
        if not self.is_local:
            spool_dir = None
            if self.cache is not None:
                spool_dir = self.cache / "_spool"
                spool_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=spool_dir) as tmp_dir:
                tmp = os.path.join(tmp_dir, "upload")
                with open(tmp, "wb") as fh:
                    yield fh
                self.fs.put_file(tmp, target)
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

    def iter_parquet(
        self, rel: str, columns: list[str] | None = None, batch_rows: int = 4096
    ) -> Iterator[pa.Table]:
        """`rel`'s rows in order, `batch_rows` at a time: memory holds one row group at most."""
        with self.fs.open(self.path(rel), "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows, columns=columns):
                yield pa.Table.from_batches([batch])

    def iter_row_groups(self, rel: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """`rel`'s row groups in order, one table each (one empty table for a file with none):
        copied one at a time, a file keeps its row groups and memory holds one."""
        with self.fs.open(self.path(rel), "rb") as fh:
            file = pq.ParquetFile(fh)
            if file.num_row_groups == 0:
                yield file.read(columns=columns)
            for group in range(file.num_row_groups):
                yield file.read_row_group(group, columns=columns)

    def iter_parquet_rows(
        self, rel: str, rows: np.ndarray, columns: list[str] | None = None, batch_rows: int = 4096
    ) -> Iterator[tuple[slice, pa.Table]]:
        """The rows of `rel` at the increasing positions `rows`, one read batch at a time.

        Yields `(span, table)`: `table` holds the rows at `rows[span]`. Batches holding none of
        them are skipped, and reading stops after the last one.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        base = 0
        for batch in self.iter_parquet(rel, columns, batch_rows):
            lo, hi = (int(i) for i in np.searchsorted(rows, [base, base + batch.num_rows]))
            if hi > lo:
                yield slice(lo, hi), batch.take(rows[lo:hi] - base)
            base += batch.num_rows
            if hi == rows.size:
                return

    def take_parquet_rows(
        self, rel: str, rows: np.ndarray, columns: list[str] | None = None, batch_rows: int = 4096
    ) -> pa.Table:
        """The rows of `rel` at the increasing positions `rows`, read `batch_rows` at a time."""
        parts = [table for _, table in self.iter_parquet_rows(rel, rows, columns, batch_rows)]
        if not parts:
            return self.parquet_schema(rel, columns).empty_table()
        return pa.concat_tables(parts)

    def parquet_schema(self, rel: str, columns: list[str] | None = None) -> pa.Schema:
        with self.fs.open(self.path(rel), "rb") as fh:
            schema = pq.ParquetFile(fh).schema_arrow
        return schema if columns is None else pa.schema([schema.field(c) for c in columns])

    def parquet_rows(self, rel: str) -> int:
        with self.fs.open(self.path(rel), "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    def write_npy(self, rel: str, array: np.ndarray) -> str:
        with self.open_write(rel) as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        return self.uri(rel)

    def write_npy_chunks(
        self,
        rel: str,
        dtype: np.dtype,
        shape: int | tuple[int, ...],
        chunks: Iterable[np.ndarray],
    ) -> str:
        """Writes a `.npy` of `shape` (C order) from `chunks` of whole leading-axis rows, as
        `np.save` would write the concatenated array, one chunk at a time.

        Raises:
            ValueError: The chunks hold another number of items than `shape` announces.
        """
        dtype = np.dtype(dtype)
        shape = (int(shape),) if isinstance(shape, int | np.integer) else tuple(map(int, shape))
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        length = int(np.prod(shape))
        written = 0
        with self.open_write(rel) as fh:
            np.lib.format.write_array_header_1_0(fh, {**header, "shape": shape})
            for chunk in chunks:
                fh.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
                written += int(np.asarray(chunk).size)
            if written != length:
                raise ValueError(f"{rel}: {written} items written, {length} announced")
        return self.uri(rel)

    @contextmanager
    def parquet_writer(self, rel: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A Parquet writer for `rel` that takes a table at a time (one row group each); the
        file appears only if the block completes."""
        with self.open_write(rel) as fh, pq.ParquetWriter(fh, schema, compression="zstd") as out:
            yield out

    def read_npy(self, rel: str, mmap: bool = True) -> np.ndarray:
        """Loads a `.npy` file, memory-mapped (read-only) when `mmap` is set.

        A remote file is memory-mapped from its cached copy when the store has a cache folder,
        and read into memory otherwise.
        """
        local = self.local_path(rel)
        if local is None and mmap and self.cache is not None:
            local = self.local_copy(rel)
        if local is not None:
            return np.load(local, mmap_mode="r" if mmap else None, allow_pickle=False)
        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)

    def read_npy_rows(self, rel: str, rows: np.ndarray) -> np.ndarray:
        """The increasing `rows` of a C-order `.npy` file, one seek and read each.

        Memory holds just those rows: gathering them from a memory map would also pull each
        row's read-ahead window into the process's resident set, up to the whole file for a
        sample spread across it. A remote file is gathered from `read_npy`'s copy.
        """
        rows = np.asarray(rows, dtype=np.int64)
        local = self.local_path(rel)
        if local is None:
            return np.asarray(self.read_npy(rel)[rows])
        with open(local, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(fh)
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0(fh)
            )
            if fortran:
                return np.asarray(self.read_npy(rel)[rows])
            start, row_shape = fh.tell(), tuple(shape[1:])
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
            out = np.empty((rows.size, *row_shape), dtype=dtype)
            for i, row in enumerate(rows.tolist()):
                fh.seek(start + row * row_bytes)
                out[i] = np.frombuffer(fh.read(row_bytes), dtype=dtype).reshape(row_shape)
        return out

    def cache_path(self, rel: str = "") -> Path:
        """Where the remote `rel` is mirrored on local disk."""
        if self.cache is None:
            raise StorageError(
                f"{self.uri(rel)} is needed on local disk but no cache folder is set; "
                "set storage.cache in the profile"
            )
        return self.cache / self.protocol / self.path(rel)

    def local_copy(self, rel: str) -> Path:
        """A local path holding `rel` (a file or a folder).

        On a local store that is the file itself. On a remote store each file is downloaded into
        the cache folder unless the cached copy carries the object's current ETag (or size).
        """
        local = self.local_path(rel)
        if local is not None:
            return local
        remote = self.path(rel)
        dest = self.cache_path(rel)
        if self.fs.isdir(remote):
            for full in self.fs.find(remote):
                self._fetch(full, dest / full[len(remote) :].lstrip("/"))
        else:
            self._fetch(remote, dest)
        return dest

    def _tag(self, remote: str) -> str:
        """The version of a remote file that a cached copy is checked against."""
        info = self.fs.info(remote)
        return str(info.get("ETag") or info.get("etag") or info.get("size"))

    @staticmethod
    def _stamp(dest: Path) -> Path:
        return dest.with_name(f".{dest.name}.etag")

    def _fetch(self, remote: str, dest: Path) -> None:
        tag, stamp = self._tag(remote), self._stamp(dest)
        if dest.is_file() and stamp.is_file() and stamp.read_text() == tag:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            self.fs.get_file(remote, str(tmp))
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        stamp.write_text(tag)

    def put_folder(self, local_folder: str | os.PathLike, rel: str, last: str | None = None) -> str:
        """Copies every file of a local folder to `rel`, the file named `last` after the others.

        `last` is a completion marker: a reader that finds it finds every other file. On a local
        store the folder is copied into a temporary sibling and renamed into place. A folder
        written at its own `cache_path` stays valid as the cached copy of what it uploaded.
        """
        source = Path(local_folder)
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        files.sort(key=lambda p: p.name == last)
        local = self.local_path(rel)
        if local is not None:
            if local.resolve() == source.resolve():
                return self.uri(rel)
            tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
            shutil.copytree(source, tmp)
            if local.exists():
                shutil.rmtree(local)
            os.replace(tmp, local)
            return self.uri(rel)
        cached = self.cache is not None and source.resolve() == self.cache_path(rel).resolve()
        for file in files:
            remote = self.path(f"{rel}/{file.relative_to(source).as_posix()}")
            self.fs.put_file(str(file), remote)
            if cached:  # the folder is the cache copy: `local_copy` need not download it again
                self._stamp(file).write_text(self._tag(remote))
        return self.uri(rel)


def safe_name(partition_key: str) -> str:
    """A flat file stem for a partition key (shard keys may hold '/')."""
    return partition_key.replace("/", "__")


def local_file(
    location: str,
    storage_options: dict[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """A local path for a file named by a local path or a URL (a URL is fetched into `cache`)."""
    if "://" not in location:
        return Path(location).expanduser()
    parent, _, name = location.rstrip("/").rpartition("/")
    return Store(parent, storage_options, cache).local_copy(name)

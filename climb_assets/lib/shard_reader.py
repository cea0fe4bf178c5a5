"""Streams the raw rows of one shard in record batches: Parquet, JSON lines, compressed or not.

Memory holds one batch, never the shard. Parquet row groups come from `pyarrow.parquet`'s batch
iterator (any codec). JSON lines (`.jsonl`, `.json`, and either compressed with gzip or zstd,
decompressed by fsspec's codecs as the bytes stream in) are cut into blocks of whole lines and
each block is parsed by `pyarrow.json`. A block the fast parser refuses (a malformed line, bytes
that are not UTF-8, a line that is not an object, a value whose type changes) is parsed again
line by line, so one bad line becomes one reject with its line number, never a lost block.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION = {".gz": "gzip", ".zst": "zstd"}
BLOCK_BYTES = 8 << 20
"""Decompressed bytes per JSON block (about 8 MB: a few thousand web documents)."""
BATCH_ROWS = 8192
"""Rows per Parquet batch."""


@dataclass
class RawBatch:
    """Rows of one batch as Python values per wanted column, and the lines that did not parse.

    `rows` holds `_row` (0-based line or row number in the shard) and every wanted column that
    occurs in the batch; a row that lacks a column has None there.
    """

    rows: dict[str, list[Any]]
    rejects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.rows["_row"])


def compression_of(rel: str) -> str | None:
    """The codec fsspec decompresses `rel` with (from its suffix), or None."""
    return next((c for s, c in COMPRESSION.items() if rel.endswith(s)), None)


def reject(row: int, doc_id: Any, reason: str, value: Any) -> dict[str, Any]:
    """One rejected row: where, which id (when known), why, and the start of its content."""
    if isinstance(value, bytes):
        preview = value.decode("utf-8", "backslashreplace")
    else:
        preview = "" if value is None else str(value)
    return {
        "row": row,
        "doc_id": None if doc_id is None else str(doc_id),
        "reason": reason,
        "preview": preview[:80],
    }


def parquet_batches(
    fh: IO[bytes], wanted: list[str], batch_rows: int = BATCH_ROWS
) -> Iterator[RawBatch]:
    """Batches of a Parquet file's `wanted` columns; text that is not valid UTF-8 stays bytes."""
    start = 0
    for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows, columns=wanted):
        columns: dict[str, list[Any]] = {"_row": list(range(start, start + batch.num_rows))}
        for name in wanted:
            col = batch.column(name)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                try:
                    col.validate(full=True)
                except pa.ArrowInvalid:
                    binary = pa.binary() if pa.types.is_string(col.type) else pa.large_binary()
                    col = col.cast(binary)
            columns[name] = col.to_pylist()
        start += batch.num_rows
        yield RawBatch(columns)


def json_batches(
    fh: IO[bytes], wanted: list[str], block_bytes: int | None = None
) -> Iterator[RawBatch]:
    """Batches of a JSON-lines stream: blocks of whole lines, each parsed by `pyarrow.json`."""
    block_bytes = block_bytes or BLOCK_BYTES
    first_line, carry = 0, b""
    while True:
        chunk = fh.read(block_bytes)
        data = carry + chunk
        if chunk:
            cut = data.rfind(b"\n")
            if cut < 0:  # one line longer than a block: keep reading
                carry = data
                continue
            data, carry = data[: cut + 1], data[cut + 1 :]
        else:
            carry = b""
        if data.strip():
            yield _parse_block(data, first_line, wanted, last=not chunk)
        first_line += data.count(b"\n")
        if not chunk:
            return


def _line_starts(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and line number (0-based, in the block) of every non-empty line."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    keep = np.flatnonzero(ends > starts)
    return starts[keep], keep


def _parse_block(data: bytes, first_line: int, wanted: list[str], last: bool) -> RawBatch:
    try:
        table = pj.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _parse_lines(data, first_line, wanted, last)
    _, line_numbers = _line_starts(data)
    if table.num_rows != len(line_numbers):  # blank-looking lines pyarrow skipped: be exact
        return _parse_lines(data, first_line, wanted, last)
    columns: dict[str, list[Any]] = {"_row": (line_numbers + first_line).tolist()}
    for name in wanted:
        if name in table.column_names:
            columns[name] = table.column(name).to_pylist()
    return RawBatch(columns)


def _parse_lines(data: bytes, first_line: int, wanted: list[str], last: bool) -> RawBatch:
    """The slow path for a block the fast parser refused: one line at a time."""
    columns: dict[str, list[Any]] = {"_row": [], **{name: [] for name in wanted}}
    rejects: list[dict[str, Any]] = []
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row = first_line + i
        truncated = last and i == len(lines) - 1 and not data.endswith(b"\n")
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(reject(row, None, f"not UTF-8 at byte {exc.start}", line))
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            why = f"invalid JSON: {exc.msg}"
            if truncated:
                why = f"truncated last line (no newline at the end of the file); {why}"
            rejects.append(reject(row, None, why, line))
            continue
        if not isinstance(obj, dict):
            rejects.append(reject(row, None, "JSON line is not an object", line))
            continue
        columns["_row"].append(row)
        for name in wanted:
            columns[name].append(obj.get(name))
    return RawBatch(columns, rejects)


def open_shard(fs: Any, path: str, rel: str) -> IO[bytes]:
    """The shard's bytes as a stream, decompressed when its suffix says so."""
    return fs.open(path, "rb", compression=compression_of(rel))


def raw_batches(
    fh: IO[bytes], rel: str, wanted: list[str], block_bytes: int | None = None
) -> Iterator[RawBatch]:
    """Batches of any supported shard, by its suffix."""
    if rel.endswith(PARQUET_SUFFIXES):
        return parquet_batches(fh, wanted)
    return json_batches(fh, wanted, block_bytes)


def schema_names(fh: IO[bytes]) -> list[str]:
    """Column names of a Parquet file (read from its footer only)."""
    return pq.read_schema(fh).names


class SeenIds:
    """The ids already read from a shard, as sorted 64-bit hashes with their rows.

    About 16 bytes an id, where a Python set of strings takes 100 or more: a shard of 10 million
    documents stays under 200 MB. Sorted levels merge like a binary counter, so adding n ids costs
    O(n log n) in all and a lookup is one binary search per level (at most log2 of the batches).
    Two different ids share a hash with probability about n^2 / 2^65 (3e-6 at 10 million).
    """

    def __init__(self) -> None:
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []

    @staticmethod
    def hashes(ids: list[str]) -> np.ndarray:
        import polars as pl

        return pl.Series(ids, dtype=pl.String).hash(seed=0).to_numpy()

    def first_rows(self, hashes: np.ndarray) -> np.ndarray:
        """For each hash, the row where it was first seen, or -1."""
        out = np.full(len(hashes), -1, dtype=np.int64)
        for keys, rows in self.levels:
            pos = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
            hit = (keys[pos] == hashes) & (out < 0)
            out[hit] = rows[pos[hit]]
        return out

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        keys, where = hashes[order], np.asarray(rows, dtype=np.int64)[order]
        while self.levels and len(self.levels[-1][0]) <= len(keys):
            k, r = self.levels.pop()
            keys, where = np.concatenate([k, keys]), np.concatenate([r, where])
            order = np.argsort(keys, kind="stable")
            keys, where = keys[order], where[order]
        if len(keys):
            self.levels.append((keys, where))

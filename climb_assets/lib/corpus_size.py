"""How many documents a corpus holds, known in seconds before any shard is read in full.

Parquet shards say their row count in the footer. JSON lines shards are estimated from their
first MiB: lines per byte read, times the file's size (for a compressed shard, lines per
compressed byte consumed). A corpus of many shards is sampled: at most `max_shards` shards,
evenly spaced in their sorted order (no randomness, the same on every machine), the rest
extrapolated by bytes. The result is for sanity checks and cost estimates (`kmeans.k` against
the documents, `climb plan`'s figures before `climb run`), never for accounting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from climb_assets.lib.shard_reader import PARQUET_SUFFIXES, compression_of
from climb_assets.lib.storage import Store

SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True)
class CorpusCount:
    shards: int
    bytes: int
    documents: int
    exact: bool
    """Every shard counted from its footer (Parquet rows, before rejects and splits)."""
    how: str
    unreadable: int = 0
    """Shards read for the count that could not be read (ingestion names them)."""

    def describe(self) -> str:
        approx = "" if self.exact else "~"
        return f"{approx}{self.documents:,} documents in {self.shards} shard(s) ({self.how})"


def _json_lines(corpus: Store, rel: str, size: int) -> tuple[float, bool]:
    """Lines of a JSON-lines shard: exact when it is smaller than `SAMPLE_BYTES`."""
    with corpus.fs.open(corpus.path(rel), "rb") as raw:
        codec = compression_of(rel)
        if codec is None:
            head = raw.read(SAMPLE_BYTES)
            lines = head.count(b"\n") + (1 if head and not head.endswith(b"\n") else 0)
            return (float(lines), True) if len(head) >= size else (lines * size / len(head), False)
        if codec == "gzip":
            import gzip

            stream = gzip.GzipFile(fileobj=raw)
        else:
            stream = zstandard.ZstdDecompressor().stream_reader(raw)
        head = stream.read(SAMPLE_BYTES)
        lines = head.count(b"\n") + (1 if head and not head.endswith(b"\n") else 0)
        if len(head) < SAMPLE_BYTES:  # the whole shard was read
            return float(lines), True
        consumed = max(raw.tell(), 1)
        return lines * size / consumed, False


def _size(corpus: Store, rel: str) -> int:
    try:
        return int(corpus.fs.size(corpus.path(rel)))
    except OSError:  # a link loop, a dangling link: ingestion says which
        return 0


def count_documents(corpus: Store, shards: list[str], max_shards: int = 64) -> CorpusCount:
    """The corpus's documents from at most `max_shards` shards' footers or first MiB."""
    if not shards:
        return CorpusCount(0, 0, 0, True, "no shards")
    sizes = {rel: _size(corpus, rel) for rel in shards}
    total_bytes = sum(sizes.values())
    picked = sorted({int(i) for i in np.linspace(0, len(shards) - 1, min(len(shards), max_shards))})
    sample = [shards[i] for i in picked]
    counted, counted_bytes, estimated, unreadable = 0.0, 0, False, 0
    for rel in sample:
        # A shard that cannot be read counts nothing here: ingestion names it (or skips it).
        try:
            if rel.endswith(PARQUET_SUFFIXES):
                with corpus.fs.open(corpus.path(rel), "rb") as fh:
                    counted += pq.read_metadata(fh).num_rows
            else:
                lines, whole = _json_lines(corpus, rel, sizes[rel])
                counted += lines
                estimated = estimated or not whole
        except (OSError, EOFError, pa.ArrowException, zstandard.ZstdError):
            unreadable += 1
        counted_bytes += sizes[rel]
    if len(sample) == len(shards) or counted_bytes == 0:
        documents = counted
    else:
        documents = counted * total_bytes / counted_bytes
    exact = len(sample) == len(shards) and not estimated and not unreadable
    how = (
        f"{len(sample)} of {len(shards)} shards read, the rest by bytes"
        if len(sample) < len(shards)
        else "JSON lines estimated from their first MiB"
        if estimated
        else "counted"
    )
    if unreadable:
        how += f"; {unreadable} unreadable shard(s) not counted"
    return CorpusCount(len(shards), total_bytes, round(documents), exact, how, unreadable)

"""Corpus shards (Parquet or JSONL, local or `s3://`) read into clean document tables.

Rows that cannot be used (empty or whitespace-only text, bytes that are not UTF-8, malformed
JSON, missing ids, exact duplicates) are not fatal: they are returned as rejects with a reason, so
one bad line never throws away a shard. Problems with the shard as a whole (missing column,
duplicate ids when the profile says they are an error) raise `CorpusError` naming the fix; a file
that cannot be read at all (truncated, empty, not the format its name says) raises
`ShardUnreadable`, which the profile's `corpus.on_bad_shard: skip` turns into a quarantined shard.

Documents longer than `max_chars` are split at paragraph boundaries (or truncated): one giant
document would otherwise dominate a super-cluster's tokens and overshoot any token budget.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from climb_assets.lib.shard_reader import (
    JSON_SUFFIXES,
    PARQUET_SUFFIXES,
    RawBatch,
    SeenIds,
    compression_of,
    open_shard,
    raw_batches,
    reject,
    schema_names,
)
from climb_assets.lib.storage import Store, safe_name

SUFFIXES = {"parquet": PARQUET_SUFFIXES, "jsonl": JSON_SUFFIXES}
_SHARD_SUFFIXES = sorted((*PARQUET_SUFFIXES, *JSON_SUFFIXES), key=len, reverse=True)


def shard_stem(key: str) -> str:
    """The file stem of one shard's outputs: its key flat ('/' -> '__'), format suffix dropped.

    The shard `2024/part-1.jsonl.gz` (a key under corpus.path) has outputs
    `corpus_documents/2024__part-1.parquet`,
    `embeddings/2024__part-1.npy`, ...: one extension each, the one of what they hold.
    `list_corpus` refuses two shards with one stem, so the name never collides.
    """
    flat = safe_name(key)
    for suffix in _SHARD_SUFFIXES:
        if flat.endswith(suffix) and len(flat) > len(suffix):
            return flat[: -len(suffix)]
    return flat


REJECT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("doc_id", pa.string()),
        ("reason", pa.string()),
        ("preview", pa.string()),
    ]
)


class CorpusError(ValueError):
    """A corpus or shard that cannot be read as configured."""


class ShardUnreadable(CorpusError):
    """A shard file that cannot be read at all: truncated, empty or not in its format."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


DEFAULT_MAX_CHARS = 100_000
"""Longest document kept whole (about 25k tokens); longer ones are split or truncated."""


@dataclass(frozen=True)
class CorpusOptions:
    """How to read shards; mirrors the profile's `corpus` section."""

    text_column: str = "text"
    id_column: str | None = "doc_id"
    extra_columns: tuple[str, ...] = ()
    min_chars: int = 1
    on_duplicate_id: str = "error"
    max_chars: int | None = DEFAULT_MAX_CHARS
    long_documents: str = "split"


@dataclass
class ShardDocuments:
    """The documents of one shard, the rejected rows and counts."""

    documents: pa.Table
    rejects: pa.Table
    stats: dict[str, int] = field(default_factory=dict)


def content_id(text: str) -> str:
    """A stable document id from the text: first 16 hex digits of its SHA-1."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def split_text(text: str, max_chars: int) -> list[str]:
    """`text` cut into pieces of at most `max_chars`, at paragraph breaks where there are some.

    Paragraphs (separated by blank lines) are packed greedily; a paragraph longer than the cap is
    cut at its last line break or space before the cap, or hard at the cap when it has neither.
    """
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        while len(para) > max_chars:
            cut = max(para.rfind("\n", 0, max_chars), para.rfind(" ", 0, max_chars))
            cut = cut if cut > max_chars // 2 else max_chars
            head, para = para[:cut], para[cut:].lstrip()
            if current:
                pieces.append(current)
                current = ""
            pieces.append(head)
        joined = f"{current}\n\n{para}" if current else para
        if len(joined) <= max_chars:
            current = joined
        else:
            pieces.append(current)
            current = para
    if current:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def list_corpus(
    corpus: Store, formats: tuple[str, ...] = ("parquet", "jsonl")
) -> tuple[list[str], list[str]]:
    """The shard files under the corpus root and the files no format reads, from one listing.

    Raises:
        CorpusError: the corpus path does not exist or holds no shard of the given formats.
    """
    if not corpus.exists(""):
        raise CorpusError(
            f"corpus path {corpus.uri()} does not exist; set corpus.path in the profile "
            "(for the demo, run `make demo`, which builds it)"
        )
    suffixes = tuple(s for f in formats for s in SUFFIXES[f])
    files = corpus.list("")
    shards = [f for f in files if f.endswith(suffixes)]
    if not shards:
        raise CorpusError(
            f"no shards under {corpus.uri()}: expected files ending in {', '.join(suffixes)} "
            "(check corpus.path and corpus.formats)"
        )
    _check_stems(corpus, shards)
    return shards, [f for f in files if not f.endswith(suffixes)]


def _check_stems(corpus: Store, shards: list[str]) -> None:
    """Raises `CorpusError` when two shards would write the same output files."""
    seen: dict[str, str] = {}
    for shard in shards:
        other = seen.setdefault(shard_stem(shard), shard)
        if other != shard:
            raise CorpusError(
                f"shards {other!r} and {shard!r} under {corpus.uri()} would write the same "
                f"outputs ({shard_stem(shard)}.*); rename one of them, or narrow corpus.formats "
                "to the format you mean"
            )


def list_shards(corpus: Store, formats: tuple[str, ...] = ("parquet", "jsonl")) -> list[str]:
    """Relative paths of the shard files under the corpus root, sorted (see `list_corpus`)."""
    return list_corpus(corpus, formats)[0]


def document_schema(extra_columns: tuple[str, ...] = ()) -> pa.Schema:
    """Columns of a clean document table (`corpus_documents`)."""
    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("text", pa.string()),
            ("n_chars", pa.int32()),
            ("n_bytes", pa.int32()),
            ("text_hash", pa.string()),
            *[(e, pa.string()) for e in extra_columns],
        ]
    )


@dataclass
class DocumentBatch:
    """Clean documents and rejected rows of one batch of a shard."""

    documents: pa.Table
    rejects: pa.Table


class ShardStream:
    """Iterates over one shard's clean documents batch by batch; `stats` once exhausted.

    Memory holds one batch, plus 16 bytes per id seen (to find duplicates, `SeenIds`).

    Raises (while iterating):
        ShardUnreadable: the file cannot be read (truncated, empty, not its format or codec).
        CorpusError: a configured column is missing, or ids repeat and the profile says error.
    """

    def __init__(self, corpus: Store, rel: str, options: CorpusOptions) -> None:
        self.corpus, self.rel, self.options = corpus, rel, options
        self.wanted = [options.text_column, *options.extra_columns]
        if options.id_column:
            self.wanted.insert(0, options.id_column)
        self.schema = document_schema(options.extra_columns)
        self.stats = dict.fromkeys(
            ("rows_read", "documents", "rejected", "duplicates", "split_documents",
             "split_parts", "truncated_documents", "truncated_chars"), 0,
        )  # fmt: skip
        self._seen = SeenIds()

    def __iter__(self) -> Iterator[DocumentBatch]:
        checked = False
        try:
            with open_shard(self.corpus.fs, self.corpus.path(self.rel), self.rel) as fh:
                if self.rel.endswith(PARQUET_SUFFIXES):
                    _check_columns(self.rel, schema_names(fh), self.options)
                    fh.seek(0)
                    checked = True
                for raw in raw_batches(fh, self.rel, self.wanted):
                    if not checked and raw.size:
                        _check_columns(self.rel, [c for c in raw.rows if c != "_row"], self.options)
                        checked = True
                    yield self._clean(raw)
        except (pa.ArrowException, OSError, EOFError, zstandard.ZstdError) as exc:
            problem = _cannot_open(self.corpus, self.rel, exc) if isinstance(exc, OSError) else None
            if problem is not None:
                raise problem from None
            kind = "Parquet" if self.rel.endswith(PARQUET_SUFFIXES) else "JSON lines"
            codec = compression_of(self.rel)
            raise _unreadable(
                self.corpus, self.rel, f"{codec} {kind}" if codec else kind, exc
            ) from None

    def _clean(self, raw: RawBatch) -> DocumentBatch:
        o = self.options
        rejects = list(raw.rejects)
        self.stats["rows_read"] += raw.size + len(raw.rejects)
        docs: dict[str, list[Any]] = {c: [] for c in self.schema.names}
        texts = raw.rows.get(o.text_column, [None] * raw.size)
        ids = raw.rows.get(o.id_column, [None] * raw.size) if o.id_column else [None] * raw.size
        extras = {e: raw.rows.get(e, [None] * raw.size) for e in o.extra_columns}
        valid: list[tuple[int, int, str, str]] = []  # (index in batch, row, id, text)
        for i, (row, text, raw_id) in enumerate(zip(raw.rows["_row"], texts, ids, strict=True)):
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    rejects.append(reject(row, raw_id, f"not UTF-8 at byte {exc.start}", text))
                    continue
            if not isinstance(text, str):
                reason = "missing text" if text is None else f"text is {type(text).__name__}"
                rejects.append(reject(row, raw_id, reason, text))
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a JSON escape of a lone surrogate, e.g. \udcff
                why = f"not valid Unicode (lone surrogate at character {exc.start})"
                rejects.append(reject(row, raw_id, why, text.encode("utf-8", "replace")))
                continue
            if len(text.strip()) < max(1, o.min_chars):
                reason = "empty or whitespace-only text" if not text.strip() else "text too short"
                rejects.append(reject(row, raw_id, reason, text))
                continue
            if o.id_column:
                if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                    rejects.append(reject(row, None, "missing id", text))
                    continue
                doc_id = (
                    raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else str(raw_id)
                )
            else:
                doc_id = content_id(text)
            valid.append((i, row, doc_id, text))
        for i, _, doc_id, text in self._first_occurrences(valid, rejects):
            for piece_id, piece in self._pieces(doc_id, text):
                docs["doc_id"].append(piece_id)
                docs["text"].append(piece)
                docs["n_chars"].append(len(piece))
                docs["n_bytes"].append(len(piece.encode("utf-8")))
                docs["text_hash"].append(content_id(piece))
                for extra, values in extras.items():
                    docs[extra].append(None if values[i] is None else str(values[i]))
        documents = pa.table(docs, schema=self.schema)
        reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
        self.stats["documents"] += documents.num_rows
        self.stats["rejected"] += reject_table.num_rows
        return DocumentBatch(documents, reject_table)

    def _first_occurrences(
        self, valid: list[tuple[int, int, str, str]], rejects: list[dict[str, Any]]
    ) -> list[tuple[int, int, str, str]]:
        """The rows whose id was not seen before (in the shard or earlier in the batch)."""
        if not valid:
            return []
        o = self.options
        hashes = SeenIds.hashes([v[2] for v in valid])
        earlier = self._seen.first_rows(hashes)
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        rows = np.array([v[1] for v in valid], dtype=np.int64)
        in_batch = rows[first[inverse]]
        kept, keep_mask = [], np.zeros(len(valid), dtype=bool)
        for k, (_, row, doc_id, text) in enumerate(valid):
            seen_at = int(earlier[k]) if earlier[k] >= 0 else int(in_batch[k])
            if seen_at == row:
                kept.append(valid[k])
                keep_mask[k] = True
                continue
            if o.id_column and o.on_duplicate_id == "error":
                raise CorpusError(
                    f"shard {self.rel}: id '{doc_id}' appears on rows {seen_at} and {row}; make "
                    f"'{o.id_column}' unique, set corpus.on_duplicate_id: keep_first, or set "
                    "corpus.id_column: null to use content hashes"
                )
            reason = "duplicate id" if o.id_column else "exact duplicate text"
            rejects.append(reject(row, doc_id, reason, text))
            self.stats["duplicates"] += 1
        self._seen.add(hashes[keep_mask], rows[keep_mask])
        return kept

    def _pieces(self, doc_id: str, text: str) -> list[tuple[str, str]]:
        """The document, or its parts when it is longer than `max_chars`."""
        o = self.options
        if not o.max_chars or len(text) <= o.max_chars:
            return [(doc_id, text)]
        if o.long_documents == "truncate":
            self.stats["truncated_documents"] += 1
            self.stats["truncated_chars"] += len(text) - o.max_chars
            return [(doc_id, text[: o.max_chars])]
        parts = split_text(text, o.max_chars)
        self.stats["split_documents"] += 1
        self.stats["split_parts"] += len(parts)
        return [(f"{doc_id}#{i}", p) for i, p in enumerate(parts, start=1)]


def read_shard(corpus: Store, rel: str, options: CorpusOptions) -> ShardDocuments:
    """Reads one whole shard into `doc_id, text, n_chars, n_bytes, text_hash, <extras>` + rejects.

    `text_hash` is `content_id(text)`; targets are checked against it for overlap. For shards of
    any size prefer `ShardStream`, which holds one batch at a time.

    Raises:
        ShardUnreadable: the file cannot be read.
        CorpusError: a configured column is missing, or ids repeat and the profile says error.
    """
    stream = ShardStream(corpus, rel, options)
    batches = list(stream)
    documents = pa.concat_tables([b.documents for b in batches] or [stream.schema.empty_table()])
    rejects = pa.concat_tables([b.rejects for b in batches] or [REJECT_SCHEMA.empty_table()])
    return ShardDocuments(documents=documents, rejects=rejects, stats=dict(stream.stats))


@dataclass
class IngestResult:
    """What `ingest_shard` wrote: counts, the rejected rows, and why a shard was quarantined."""

    documents: int
    total_chars: int
    rejects: pa.Table
    stats: dict[str, int]
    quarantined: ShardUnreadable | None = None


def ingest_shard(
    corpus: Store,
    rel: str,
    options: CorpusOptions,
    store: Store,
    documents_rel: str,
    rejects_rel: str,
    on_bad_shard: str = "error",
) -> IngestResult:
    """Streams one shard's clean documents into a Parquet file batch by batch; then its rejects.

    The documents file appears only when the whole shard was read (atomic write). An unreadable
    shard raises, or with `on_bad_shard="skip"` becomes an empty table and one reject row.
    """
    stream = ShardStream(corpus, rel, options)
    batches: list[pa.Table] = []
    documents = chars = 0
    quarantined = None
    try:
        with (
            store.open_write(documents_rel) as fh,
            pq.ParquetWriter(fh, stream.schema, compression="zstd") as writer,
        ):
            for batch in stream:
                writer.write_table(batch.documents)
                documents += batch.documents.num_rows
                chars += int(pc.sum(batch.documents.column("n_chars")).as_py() or 0)
                batches.append(batch.rejects)
        stats = dict(stream.stats)
    except ShardUnreadable as exc:
        if on_bad_shard != "skip":
            raise
        shard = quarantined_shard(exc.reason, options.extra_columns)
        store.write_parquet(documents_rel, shard.documents)
        batches, stats, documents, chars, quarantined = [shard.rejects], shard.stats, 0, 0, exc
    rejects = pa.concat_tables(batches) if batches else REJECT_SCHEMA.empty_table()
    store.write_parquet(rejects_rel, rejects)
    return IngestResult(documents, chars, rejects, stats, quarantined)


def quarantined_shard(reason: str, extra_columns: tuple[str, ...] = ()) -> ShardDocuments:
    """An empty document table and one reject row (row -1) saying why the shard was skipped."""
    rejects = pa.Table.from_pylist(
        [{"row": -1, "doc_id": None, "reason": f"unreadable shard: {reason}", "preview": ""}],
        schema=REJECT_SCHEMA,
    )
    empty = document_schema(extra_columns).empty_table()
    return ShardDocuments(empty, rejects, {"rows_read": 0, "documents": 0, "rejected": 1})


SKIP_HINT = "or set corpus.on_bad_shard: skip to quarantine it and go on with the others"
_CANNOT_OPEN = (errno.ELOOP, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def _cannot_open(corpus: Store, rel: str, exc: OSError) -> ShardUnreadable | None:
    """Why a shard path cannot be opened at all (a link loop, a dangling link, no permission),
    as a `ShardUnreadable` naming the fix; None for other errors."""
    if exc.errno not in _CANNOT_OPEN:
        return None
    local = corpus.local_path(rel)
    if exc.errno == errno.ELOOP:
        reason = "is a symbolic link loop"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "cannot be read: permission denied"
    elif local is not None and local.is_symlink():
        reason = f"is a dangling symbolic link (to {os.readlink(local)}, which does not exist)"
    else:
        return None
    return ShardUnreadable(
        f"shard {corpus.uri(rel)} {reason}; fix or remove it, {SKIP_HINT}", reason
    )


def shard_identity(corpus: Store, rel: str, on_bad_shard: str = "error") -> str:
    """`corpus.identity(rel)`, checked: a shard that cannot be stat'ed raises `ShardUnreadable`
    naming why, or with `on_bad_shard="skip"` gets the identity `unreadable: <why>` (so the
    shard is quarantined, and read again once the file changes)."""
    try:
        return corpus.identity(rel)
    except OSError as exc:
        problem = _cannot_open(corpus, rel, exc)
        if problem is None:
            if exc.errno == errno.ENOENT:
                raise CorpusError(
                    f"shard {corpus.uri(rel)} no longer exists; `climb register-shards` (or "
                    "`climb run`) unregisters it"
                ) from None
            raise
        if on_bad_shard == "skip":
            return f"unreadable: {problem.reason}"
        raise problem from None


def _unreadable(corpus: Store, rel: str, kind: str, exc: BaseException) -> ShardUnreadable:
    reason = f"cannot be read as {kind} ({type(exc).__name__}: {exc})"
    return ShardUnreadable(
        f"shard {corpus.uri(rel)} {reason}; replace or delete the file (a deleted shard is "
        f"unregistered by the next `climb run`), {SKIP_HINT}",
        reason,
    )


def _check_columns(rel: str, names: list[str], options: CorpusOptions) -> None:
    have = ", ".join(names) or "none"
    if options.text_column not in names:
        raise CorpusError(
            f"shard {rel} has no text column '{options.text_column}' (columns: {have}); "
            "set corpus.text_column in the profile"
        )
    if options.id_column and options.id_column not in names:
        raise CorpusError(
            f"shard {rel} has no id column '{options.id_column}' (columns: {have}); set "
            "corpus.id_column to the right column, or to null to use content hashes"
        )
    for extra in options.extra_columns:
        if extra not in names:
            raise CorpusError(
                f"shard {rel} has no column '{extra}' listed in corpus.extra_columns "
                f"(columns: {have}); remove it from corpus.extra_columns"
            )

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

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from climb_assets.lib.storage import Store

SUFFIXES = {"parquet": (".parquet",), "jsonl": (".jsonl", ".json")}
DOCUMENT_COLUMNS = ("doc_id", "text", "n_chars", "n_bytes", "text_hash")
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


def unknown_files(corpus: Store, formats: tuple[str, ...] = ("parquet", "jsonl")) -> list[str]:
    """Files under the corpus root that no configured format reads (hidden files left out)."""
    suffixes = tuple(s for f in formats for s in SUFFIXES[f])
    return [rel for rel in corpus.list("") if not rel.endswith(suffixes)]


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


def list_shards(corpus: Store, formats: tuple[str, ...] = ("parquet", "jsonl")) -> list[str]:
    """Relative paths of the shard files under the corpus root, sorted.

    Raises:
        CorpusError: the corpus path does not exist or holds no shard of the given formats.
    """
    if not corpus.exists(""):
        raise CorpusError(
            f"corpus path {corpus.uri()} does not exist; set corpus.path in the profile "
            "(for the demo, run `make demo`, which builds it)"
        )
    suffixes = tuple(s for f in formats for s in SUFFIXES[f])
    shards = corpus.list("", suffixes)
    if not shards:
        raise CorpusError(
            f"no shards under {corpus.uri()}: expected files ending in {', '.join(suffixes)} "
            "(check corpus.path and corpus.formats)"
        )
    return shards


def _preview(value: Any) -> str:
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    return text[:80]


def _read_jsonl(raw: bytes, wanted: list[str], rejects: list[dict[str, Any]]) -> list[dict]:
    rows: list[dict] = []
    for line_no, line in enumerate(raw.split(b"\n")):
        if not line.strip():
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(_reject(line_no, None, f"not UTF-8 at byte {exc.start}", line))
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            rejects.append(_reject(line_no, None, f"invalid JSON: {exc.msg}", line))
            continue
        if not isinstance(obj, dict):
            rejects.append(_reject(line_no, None, "JSON line is not an object", line))
            continue
        rows.append({"_row": line_no, **{k: obj.get(k) for k in wanted if k in obj}})
    return rows


def _read_parquet(raw_table: pa.Table, wanted: list[str]) -> list[dict]:
    columns = {}
    for name in wanted:
        col = raw_table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                col = col.cast(pa.binary() if pa.types.is_string(col.type) else pa.large_binary())
        columns[name] = col.to_pylist()
    return [
        {"_row": i, **{name: columns[name][i] for name in wanted}}
        for i in range(raw_table.num_rows)
    ]


def _reject(row: int, doc_id: Any, reason: str, value: Any) -> dict[str, Any]:
    return {
        "row": row,
        "doc_id": None if doc_id is None else str(doc_id),
        "reason": reason,
        "preview": _preview(value),
    }


def read_shard(corpus: Store, rel: str, options: CorpusOptions) -> ShardDocuments:
    """Reads one shard into `doc_id, text, n_chars, n_bytes, text_hash, <extras>` plus rejects.

    `text_hash` is `content_id(text)`; targets are checked against it for overlap.

    Raises:
        CorpusError: a configured column is missing, or ids repeat and the profile says error.
    """
    wanted = [options.text_column, *options.extra_columns]
    if options.id_column:
        wanted.insert(0, options.id_column)
    rejects: list[dict[str, Any]] = []
    if rel.endswith(".parquet"):
        try:
            with corpus.fs.open(corpus.path(rel), "rb") as fh:
                schema = pq.read_schema(fh)
                _check_columns(rel, schema.names, options)
                fh.seek(0)
                raw_table = pq.read_table(fh, columns=wanted)
        except (pa.ArrowException, OSError, EOFError) as exc:
            raise _unreadable(corpus, rel, "Parquet", exc) from None
        raw_rows = _read_parquet(raw_table, wanted)
    else:
        try:
            raw = corpus.read_bytes(rel)
        except OSError as exc:
            raise _unreadable(corpus, rel, "JSONL", exc) from None
        raw_rows = _read_jsonl(raw, wanted, rejects)
        seen_columns = set().union(*(r.keys() for r in raw_rows)) if raw_rows else set()
        if raw_rows:
            _check_columns(rel, sorted(seen_columns - {"_row"}), options)

    unparsed_lines = len(rejects)
    docs: dict[str, list[Any]] = {c: [] for c in (*DOCUMENT_COLUMNS, *options.extra_columns)}
    seen_ids: dict[str, int] = {}
    duplicates = split_documents = split_parts = truncated = truncated_chars = 0
    for row in raw_rows:
        text = row.get(options.text_column)
        raw_id = row.get(options.id_column) if options.id_column else None
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append(_reject(row["_row"], raw_id, f"not UTF-8 at byte {exc.start}", text))
                continue
        if not isinstance(text, str):
            reason = "missing text" if text is None else f"text is {type(text).__name__}"
            rejects.append(_reject(row["_row"], raw_id, reason, text))
            continue
        if len(text.strip()) < max(1, options.min_chars):
            reason = "empty or whitespace-only text" if not text.strip() else "text too short"
            rejects.append(_reject(row["_row"], raw_id, reason, text))
            continue
        if options.id_column:
            if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
                rejects.append(_reject(row["_row"], None, "missing id", text))
                continue
            doc_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else str(raw_id)
        else:
            doc_id = content_id(text)
        if doc_id in seen_ids:
            if options.id_column and options.on_duplicate_id == "error":
                raise CorpusError(
                    f"shard {rel}: id '{doc_id}' appears on rows {seen_ids[doc_id]} and "
                    f"{row['_row']}; make '{options.id_column}' unique, set "
                    "corpus.on_duplicate_id: keep_first, or set corpus.id_column: null to use "
                    "content hashes"
                )
            reason = "duplicate id" if options.id_column else "exact duplicate text"
            rejects.append(_reject(row["_row"], doc_id, reason, text))
            duplicates += 1
            continue
        seen_ids[doc_id] = row["_row"]
        pieces = [text]
        if options.max_chars and len(text) > options.max_chars:
            if options.long_documents == "truncate":
                truncated += 1
                truncated_chars += len(text) - options.max_chars
                pieces = [text[: options.max_chars]]
            else:
                pieces = split_text(text, options.max_chars)
                split_documents += 1
                split_parts += len(pieces)
        for i, piece in enumerate(pieces, start=1):
            piece_id = f"{doc_id}#{i}" if len(pieces) > 1 else doc_id
            docs["doc_id"].append(piece_id)
            docs["text"].append(piece)
            docs["n_chars"].append(len(piece))
            docs["n_bytes"].append(len(piece.encode("utf-8")))
            docs["text_hash"].append(content_id(piece))
            for extra in options.extra_columns:
                value = row.get(extra)
                docs[extra].append(None if value is None else str(value))

    documents = pa.table(
        {
            "doc_id": pa.array(docs["doc_id"], pa.string()),
            "text": pa.array(docs["text"], pa.string()),
            "n_chars": pa.array(docs["n_chars"], pa.int32()),
            "n_bytes": pa.array(docs["n_bytes"], pa.int32()),
            "text_hash": pa.array(docs["text_hash"], pa.string()),
            **{e: pa.array(docs[e], pa.string()) for e in options.extra_columns},
        }
    )
    reject_table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
    stats = {
        "rows_read": len(raw_rows) + unparsed_lines,
        "documents": documents.num_rows,
        "rejected": reject_table.num_rows,
        "duplicates": duplicates,
        "split_documents": split_documents,
        "split_parts": split_parts,
        "truncated_documents": truncated,
        "truncated_chars": truncated_chars,
    }
    return ShardDocuments(documents=documents, rejects=reject_table, stats=stats)


def quarantined_shard(reason: str, extra_columns: tuple[str, ...] = ()) -> ShardDocuments:
    """An empty document table and one reject row (row -1) saying why the shard was skipped."""
    documents = pa.table(
        {
            "doc_id": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
            "n_chars": pa.array([], pa.int32()),
            "n_bytes": pa.array([], pa.int32()),
            "text_hash": pa.array([], pa.string()),
            **{e: pa.array([], pa.string()) for e in extra_columns},
        }
    )
    rejects = pa.Table.from_pylist(
        [{"row": -1, "doc_id": None, "reason": f"unreadable shard: {reason}", "preview": ""}],
        schema=REJECT_SCHEMA,
    )
    return ShardDocuments(documents, rejects, {"rows_read": 0, "documents": 0, "rejected": 1})


def _unreadable(corpus: Store, rel: str, kind: str, exc: BaseException) -> ShardUnreadable:
    reason = f"cannot be read as {kind} ({type(exc).__name__}: {exc})"
    return ShardUnreadable(
        f"shard {corpus.uri(rel)} {reason}; replace or delete the file (a deleted shard is "
        "unregistered by the next `climb run`), or set corpus.on_bad_shard: skip to quarantine "
        "it and go on with the others",
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

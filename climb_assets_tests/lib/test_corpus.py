import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from climb_assets.lib.corpus import (
    CorpusError,
    CorpusOptions,
    ShardStream,
    ShardUnreadable,
    content_id,
    list_corpus,
    list_shards,
    read_shard,
    shard_stem,
    split_text,
)
from climb_assets.lib.storage import Store
from climb_assets_tests.conftest import write_jsonl


def test_missing_corpus_path_and_no_shards(tmp_path):
    with pytest.raises(CorpusError, match="does not exist; set corpus.path"):
        list_shards(Store(str(tmp_path / "nowhere")))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"no shards .* ending in .parquet, .jsonl"):
        list_shards(Store(str(tmp_path / "c")))


def test_lists_nested_shards_sorted(tmp_path):
    write_jsonl(tmp_path / "b" / "x.jsonl", [{"text": "a"}])
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    assert list_shards(Store(str(tmp_path))) == ["a.parquet", "b/x.jsonl"]


@pytest.mark.parametrize(
    "key, stem",
    [("a.parquet", "a"), ("b/x.jsonl", "b__x"), ("2024/part-1.jsonl.gz", "2024__part-1"),
     ("p.json.zst", "p"), ("v1.2.jsonl", "v1.2"), (".parquet", ".parquet")],
)  # fmt: skip
def test_shard_stem_drops_folders_and_the_format_suffix(key, stem):
    assert shard_stem(key) == stem


def test_two_shards_with_one_stem_are_refused_before_any_work(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(CorpusError, match=r"'a.jsonl' and 'a.parquet' .* same outputs \(a\.\*\)"):
        list_shards(Store(str(tmp_path)))
    assert list_shards(Store(str(tmp_path)), ("parquet",)) == ["a.parquet"]


def test_missing_text_column_names_the_fix(tmp_path):
    pq.write_table(pa.table({"body": ["hello"], "doc_id": ["1"]}), tmp_path / "s.parquet")
    with pytest.raises(CorpusError, match=r"no text column 'text' \(columns: body, doc_id\)"):
        read_shard(Store(str(tmp_path)), "s.parquet", CorpusOptions())
    with pytest.raises(CorpusError, match="corpus.id_column"):
        read_shard(
            Store(str(tmp_path)), "s.parquet", CorpusOptions(text_column="body", id_column="id")
        )


def test_empty_whitespace_and_non_utf8_rows_are_rejected_not_fatal(tmp_path):
    lines = [
        b'{"doc_id": "1", "text": "a good document"}',
        b'{"doc_id": "2", "text": "   \\n\\t "}',
        b'{"doc_id": "3", "text": ""}',
        b'{"doc_id": "4", "text": "caf\xe9 latin-1 bytes"}',
        b"{not json",
        b'{"doc_id": "6"}',
        b'{"doc_id": "7", "text": "another good one"}',
    ]
    (tmp_path / "s.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions())
    assert result.documents.column("doc_id").to_pylist() == ["1", "7"]
    reasons = result.rejects.column("reason").to_pylist()
    assert reasons[0].startswith("not UTF-8 at byte")
    assert "invalid JSON" in reasons[1]
    assert reasons.count("empty or whitespace-only text") == 2
    assert "missing text" in reasons
    assert {k: result.stats[k] for k in ("rows_read", "documents", "rejected", "duplicates")} == {
        "rows_read": 7, "documents": 2, "rejected": 5, "duplicates": 0,
    }  # fmt: skip


def test_non_utf8_binary_parquet_column(tmp_path):
    table = pa.table({"text": pa.array([b"fine text", b"\xff\xfe broken"], pa.binary())})
    pq.write_table(table, tmp_path / "s.parquet")
    result = read_shard(Store(str(tmp_path)), "s.parquet", CorpusOptions(id_column=None))
    assert result.documents.column("text").to_pylist() == ["fine text"]
    assert result.rejects.column("reason").to_pylist() == ["not UTF-8 at byte 0"]


def test_duplicate_ids_error_or_keep_first(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"doc_id": "a", "text": "x"}, {"doc_id": "a", "text": "y"}])
    store = Store(str(tmp_path))
    with pytest.raises(CorpusError, match=r"id 'a' appears on rows 0 and 1.*keep_first"):
        read_shard(store, "s.jsonl", CorpusOptions())
    kept = read_shard(store, "s.jsonl", CorpusOptions(on_duplicate_id="keep_first"))
    assert kept.documents.column("text").to_pylist() == ["x"]
    assert kept.rejects.column("reason").to_pylist() == ["duplicate id"]


def test_content_hash_ids_are_stable_and_drop_exact_duplicates(tmp_path):
    rows = [{"text": "same"}, {"text": "same"}, {"text": "other", "source": "s"}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    result = read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions(id_column=None))
    assert result.documents.column("doc_id").to_pylist() == [
        content_id("same"),
        content_id("other"),
    ]
    assert content_id("same") == content_id("same ".strip())
    assert len(content_id("same")) == 16
    assert result.rejects.column("reason").to_pylist() == ["exact duplicate text"]


def test_extra_columns_carried_and_missing_extra_fails(tmp_path):
    write_jsonl(tmp_path / "s.jsonl", [{"doc_id": "1", "text": "hi", "source": "web"}])
    opts = CorpusOptions(extra_columns=("source",))
    result = read_shard(Store(str(tmp_path)), "s.jsonl", opts)
    assert result.documents.column("source").to_pylist() == ["web"]
    assert result.documents.column("n_bytes").to_pylist() == [2]
    with pytest.raises(CorpusError, match="corpus.extra_columns"):
        read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions(extra_columns=("lang",)))


def test_long_document_is_split_at_paragraphs_and_counted(tmp_path):
    paragraphs = [f"paragraph {i} " + "word " * 300 for i in range(40)]  # ~1.5k chars each
    giant = "\n\n".join(paragraphs)
    write_jsonl(
        tmp_path / "s.jsonl", [{"doc_id": "big", "text": giant}, {"doc_id": "s", "text": "hi"}]
    )
    result = read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions(max_chars=5000))
    ids = result.documents.column("doc_id").to_pylist()
    texts = result.documents.column("text").to_pylist()
    assert ids[-1] == "s" and all(i.startswith("big#") for i in ids[:-1])
    assert max(len(t) for t in texts) <= 5000
    assert all(t.startswith("paragraph") for t in texts[:-1]), "a split fell inside a paragraph"
    assert sum(t.count("word") for t in texts) == giant.count("word")  # nothing lost
    assert result.stats["split_documents"] == 1 and result.stats["split_parts"] == len(ids) - 1
    truncated = read_shard(
        Store(str(tmp_path)), "s.jsonl", CorpusOptions(max_chars=5000, long_documents="truncate")
    )
    assert truncated.documents.column("n_chars").to_pylist() == [5000, 2]
    assert truncated.stats["truncated_chars"] == len(giant) - 5000


def test_split_text_without_breaks_cuts_at_the_cap():
    pieces = split_text("x" * 12_500, 5000)
    assert [len(p) for p in pieces] == [5000, 5000, 2500]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_unreadable_parquet_names_the_file(tmp_path, damage):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"doc_id": ["1"], "text": ["some text"]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(ShardUnreadable, match=r"shard .*bad\.parquet cannot be read as Parquet"):
        read_shard(Store(str(tmp_path)), "bad.parquet", CorpusOptions())


def test_unknown_files_are_listed(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"doc_id": "1", "text": "x"}])
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / ".hidden").write_text("")
    assert list_corpus(Store(str(tmp_path))) == (["a.jsonl"], ["notes.csv"])


def _compress(data: bytes, codec: str) -> bytes:
    import gzip

    import zstandard

    return gzip.compress(data) if codec == "gz" else zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize("name", ["s.jsonl.gz", "s.jsonl.zst", "s.json.gz", "s.json.zst"])
def test_compressed_json_lines_are_read_with_line_numbers(tmp_path, name):
    lines = [b'{"doc_id": 1, "text": "first"}', b"{broken", b'{"doc_id": 3, "text": "third"}']
    (tmp_path / name).write_bytes(_compress(b"\n".join(lines) + b"\n", name.rsplit(".", 1)[1]))
    assert list_shards(Store(str(tmp_path))) == [name]
    result = read_shard(Store(str(tmp_path)), name, CorpusOptions())
    assert result.documents.column("doc_id").to_pylist() == ["1", "3"]  # int ids become strings
    assert result.rejects.to_pylist()[0]["row"] == 1
    assert "invalid JSON" in result.rejects.to_pylist()[0]["reason"]


def test_blocks_keep_line_numbers_and_a_cut_last_line_is_named(tmp_path, monkeypatch):
    import climb_assets.lib.shard_reader as reader

    rows = [json.dumps({"doc_id": str(i), "text": f"document number {i}"}) for i in range(200)]
    rows[150] = '{"doc_id": "150", "text": "caf\\udcff"}'  # escapes a lone surrogate
    rows[160] = '{"doc_id": "160", "text": "caf\xff"}'  # a byte that is not UTF-8
    body = "\n".join(rows) + '\n\n{"doc_id": "x", "text": "cut sho'
    (tmp_path / "s.jsonl").write_bytes(body.encode("latin-1"))
    monkeypatch.setattr(reader, "BLOCK_BYTES", 512)  # many blocks
    stream = ShardStream(Store(str(tmp_path)), "s.jsonl", CorpusOptions())
    batches = list(stream)
    assert len(batches) > 10
    docs = pa.concat_tables([b.documents for b in batches])
    rejects = pa.concat_tables([b.rejects for b in batches]).to_pylist()
    assert docs.num_rows == 198 and docs.column("doc_id")[-1].as_py() == "199"
    by_row = {r["row"]: r["reason"] for r in rejects}
    assert by_row[201].startswith("truncated last line")
    assert by_row[150].startswith("not valid Unicode (lone surrogate")
    assert by_row[160].startswith("not UTF-8 at byte")
    assert stream.stats["rows_read"] == 201


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [("bad.jsonl.zst", b"not zstd at all", "zstd"), ("cut.jsonl.gz", None, "gzip")],
)
def test_broken_compression_names_the_file(tmp_path, name, data, kind):
    if data is None:
        full = _compress(b'{"doc_id": "1", "text": "x"}\n' * 1000, "gz")
        data = full[: len(full) // 2]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ShardUnreadable, match=rf"{name} cannot be read as {kind} JSON lines"):
        read_shard(Store(str(tmp_path)), name, CorpusOptions())


def test_parquet_streams_in_batches(tmp_path):
    n = 20_000
    table = pa.table({"doc_id": [str(i) for i in range(n)], "text": [f"t {i}" for i in range(n)]})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=3000, compression="gzip")
    batches = list(ShardStream(Store(str(tmp_path)), "s.parquet", CorpusOptions()))
    assert len(batches) >= 3 and sum(b.documents.num_rows for b in batches) == n


def test_parquet_folder_mixing_schemas_names_the_odd_file(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    pq.write_table(pa.table({"doc_id": ["1"], "text": ["fine"]}), folder / "train-0.parquet")
    pq.write_table(pa.table({"doc_id": ["2"], "content": ["x"]}), folder / "train-1.parquet")
    store = Store(str(tmp_path))
    assert list_shards(store) == ["data/train-0.parquet", "data/train-1.parquet"]
    assert read_shard(store, "data/train-0.parquet", CorpusOptions()).documents.num_rows == 1
    with pytest.raises(CorpusError, match=r"data/train-1.parquet has no text column 'text' \(col"):
        read_shard(store, "data/train-1.parquet", CorpusOptions())


def test_duplicates_are_found_across_blocks(tmp_path, monkeypatch):
    import climb_assets.lib.shard_reader as reader

    rows = [{"doc_id": str(i % 150), "text": f"document {i}"} for i in range(300)]
    write_jsonl(tmp_path / "s.jsonl", rows)
    monkeypatch.setattr(reader, "BLOCK_BYTES", 400)
    with pytest.raises(CorpusError, match=r"id '0' appears on rows 0 and 150"):
        read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions())
    kept = read_shard(Store(str(tmp_path)), "s.jsonl", CorpusOptions(on_duplicate_id="keep_first"))
    assert kept.documents.column("text").to_pylist() == [f"document {i}" for i in range(150)]
    assert kept.stats["duplicates"] == 150


def test_seen_ids_levels_find_every_earlier_id():
    from climb_assets.lib.shard_reader import SeenIds

    seen = SeenIds()
    for start in range(0, 1000, 37):
        ids = [f"id-{i}" for i in range(start, min(start + 37, 1000))]
        seen.add(SeenIds.hashes(ids), np.arange(start, start + len(ids)))
    assert len(seen.levels) <= 6
    probe = SeenIds.hashes(["id-0", "id-999", "id-500", "nope"])
    assert seen.first_rows(probe).tolist() == [0, 999, 500, -1]

"""Tests of the offline demo corpus built from documentation of installed packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from climb_assets.lib import demo_corpus as dc
from climb_assets.lib.demo_corpus import (
    DEMO_SOURCES,
    MAX_CHARS,
    MIN_CHARS,
    DemoCorpusInfo,
    build_demo_corpus,
    collect_source_documents,
)

SMALL = {"docs_per_source": 60, "heldout_per_source": 20, "n_shards": 3, "seed": 7}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def collected() -> dict[str, list[str]]:
    """All sources, collected once (in parallel) for the module."""
    chunks = dc._collect_many(DEMO_SOURCES)
    return {source: list(texts) for source, texts in chunks.items()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, collected) -> DemoCorpusInfo:
    return build_demo_corpus(tmp_path_factory.mktemp("small") / "demo", **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _corpus_rows(info: DemoCorpusInfo) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for shard in info.shards:
        if shard.suffix == ".parquet":
            rows.extend(pq.read_table(shard).to_pylist())
        else:
            rows.extend(json.loads(line) for line in shard.read_text("utf-8").splitlines())
    return rows


def _targets(info: DemoCorpusInfo, source: str) -> list[str]:
    path = info.root / "targets" / f"{source}.jsonl"
    return [json.loads(line)["text"] for line in path.read_text("utf-8").splitlines()]


# ---------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("source", DEMO_SOURCES)
def test_each_source_yields_enough_valid_chunks(collected, source):
    chunks = collected[source]
    assert len(chunks) >= 1100, f"{source} gives {len(chunks)} chunks; the default needs 1,100"
    assert len(set(chunks)) == len(chunks), "exact duplicates must be dropped"
    for text in chunks:
        assert MIN_CHARS <= len(text) <= MAX_CHARS
        assert text.strip()
        assert "\r" not in text and "\t" not in text
        assert "\n\n\n" not in text
        text.encode("utf-8")  # no lone surrogates


def test_sources_have_distinct_vocabularies(collected):
    def share(source: str, word: str) -> float:
        texts = collected[source]
        return sum(word in t for t in texts) / len(texts)

    # A marker word is common in its own source and rare everywhere else.
    markers = {"aws_api": "Amazon", "torch": "tensor", "sqlalchemy": "SQL", "numpy": "array"}
    for own, word in markers.items():
        assert share(own, word) > 0.1, (own, word)
        for other in DEMO_SOURCES:
            if other != own:
                assert share(other, word) < 0.05, (other, word)
    # HTML of the botocore models is stripped and entities unescaped.
    assert not any("<p>" in t or "&amp;" in t for t in collected["aws_api"])


def test_collect_source_documents_public_api(collected):
    docs = collect_source_documents("python_reference")
    assert docs == collected["python_reference"]
    docs.clear()  # a copy: the cache is not affected
    assert collect_source_documents("python_reference") == collected["python_reference"]
    with pytest.raises(ValueError, match="unknown demo source"):
        collect_source_documents("wikipedia")


def test_python_reference_is_the_shipped_reference_text(collected):
    from pydoc_data.topics import topics

    # Reference chunks are cut from the topics (after whitespace normalisation), not written.
    reference = "\n\n".join(dc._normalise(topics[k]) for k in sorted(topics))
    first = collected["python_reference"][0]
    for paragraph in first.split("\n\n"):
        assert paragraph in reference


# --------------------------------------------------------------------------------- chunking


def test_chunking_keeps_only_input_text_and_respects_bounds():
    words = " ".join(f"word{i}" for i in range(800))  # one paragraph of ~6,000 characters
    units = [
        "Short one.",
        "Another short unit.\r\n\r\nWith a\tsecond paragraph.   ",
        words,
        "A medium paragraph. " * 12 + "\n\n" + "Closing paragraph that is long enough. " * 6,
        "tail",
    ]
    chunks = dc._chunk_units(units)
    assert chunks
    source_text = "\n\n".join(dc._normalise(u) for u in units)
    for chunk in chunks:
        assert MIN_CHARS <= len(chunk) <= MAX_CHARS
        for paragraph in chunk.split("\n\n"):
            for line in paragraph.split("\n"):
                assert line.strip() in source_text
    # The long paragraph is split at spaces; every word survives exactly once.
    joined = " ".join(chunks)
    assert all(joined.count(f"word{i} ") + joined.count(f"word{i}\n") <= 1 for i in range(800))
    assert "word799" in joined and "word0 " in joined
    # Short units are pooled rather than lost: they end up in some chunk.
    assert any("Short one." in c and "Another short unit." in c for c in chunks)


def test_chunking_drops_a_group_too_short_for_one_chunk():
    assert dc._chunk_units(["tiny", "also tiny"]) == []


def test_html_to_text():
    doc = (
        "<p>Creates a <code>Bucket</code> &amp; more.</p> <ul><li><p>One</p></li><li>Two</li></ul>"
    )
    assert dc._html_to_text(doc) == "Creates a Bucket & more.\n\nOne\n\nTwo"


# ----------------------------------------------------------------------------------- build


def test_build_layout_and_counts(small):
    assert small.n_documents == 6 * SMALL["docs_per_source"]
    assert small.per_source == dict.fromkeys(DEMO_SOURCES, SMALL["docs_per_source"])
    assert [p.name for p in small.shards] == [
        "shard-000.parquet",
        "shard-001.jsonl",
        "shard-002.parquet",
    ]
    assert sorted(p.name for p in (small.root / "corpus").iterdir()) == [
        p.name for p in small.shards
    ]
    rows = _corpus_rows(small)
    assert len(rows) == small.n_documents
    assert Counter(r["source"] for r in rows) == small.per_source
    assert len({r["doc_id"] for r in rows}) == len(rows)
    assert len({r["text"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) == {"doc_id", "text", "source"}
        assert row["doc_id"].startswith(row["source"] + "-")
        assert MIN_CHARS <= len(row["text"]) <= MAX_CHARS

    manifest = json.loads((small.root / "manifest.json").read_text("utf-8"))
    assert manifest["params"]["seed"] == SMALL["seed"]
    assert manifest["n_documents"] == small.n_documents
    assert {"python", "botocore", "numpy", "torch", "sqlalchemy", "pyarrow"} <= set(
        manifest["versions"]
    )
    assert manifest["description"]


def test_doc_ids_point_at_the_source_chunks(small, collected):
    for row in _corpus_rows(small):
        index = int(row["doc_id"].rsplit("-", 1)[1])
        assert collected[row["source"]][index] == row["text"]


def test_shards_are_readable_in_both_formats(small):
    table = pq.read_table(small.shards[0])
    assert table.schema.names == ["doc_id", "text", "source"]
    assert all(f.type == pa.string() for f in table.schema)
    assert table.num_rows > 0
    lines = small.shards[1].read_text("utf-8").splitlines()
    assert lines
    assert list(json.loads(lines[0])) == ["doc_id", "text", "source"]
    # Shuffled across sources: each shard mixes several of them.
    for shard_rows in (table.to_pylist(), [json.loads(line) for line in lines]):
        assert len({r["source"] for r in shard_rows}) >= 4
    sizes = [len(_corpus_rows(DemoCorpusInfo(small.root, [s], {}, 0, {}))) for s in small.shards]
    assert max(sizes) - min(sizes) <= 1


def test_targets_are_held_out_and_disjoint_from_corpus(small, collected):
    corpus_texts = {r["text"] for r in _corpus_rows(small)}
    assert set(small.targets) == set(DEMO_SOURCES)
    for source, txt_path in small.targets.items():
        texts = _targets(small, source)
        assert len(texts) == SMALL["heldout_per_source"]
        assert len(set(texts)) == len(texts)
        assert not corpus_texts & set(texts)
        assert set(texts) <= set(collected[source])
        assert txt_path == small.root / "targets" / f"{source}.txt"
        assert txt_path.read_text("utf-8") == "\n\n".join(texts) + "\n"


def test_build_is_deterministic_and_seed_dependent(tmp_path, small):
    again = build_demo_corpus(tmp_path / "again", **SMALL)
    assert _files(again.root) == _files(small.root)
    other = build_demo_corpus(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert {r["text"] for r in _corpus_rows(other)} != {r["text"] for r in _corpus_rows(small)}


def test_build_in_another_process_is_byte_identical(tmp_path, small):
    # A fresh interpreter that imported scikit-learn first (it rewrites numpy docstrings) and
    # has another hash seed still writes the same bytes.
    out = tmp_path / "cli"
    code = (
        "import sys, sklearn; from climb_assets.lib.demo_corpus import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    args = [
        str(out),
        "--docs-per-source",
        str(SMALL["docs_per_source"]),
        "--heldout-per-source",
        str(SMALL["heldout_per_source"]),
        "--n-shards",
        str(SMALL["n_shards"]),
        "--seed",
        str(SMALL["seed"]),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "360 documents" in proc.stdout
    assert _files(out) == _files(small.root)


def test_rebuild_is_idempotent(small):
    before = {p: p.stat().st_mtime_ns for p in small.root.rglob("*") if p.is_file()}
    again = build_demo_corpus(small.root, **SMALL)
    assert again == small
    after = {p: p.stat().st_mtime_ns for p in small.root.rglob("*") if p.is_file()}
    assert after == before


def test_different_parameters_need_overwrite(tmp_path):
    root = tmp_path / "demo"
    params = {**SMALL, "sources": ["numpy", "python_reference"]}
    first = build_demo_corpus(root, **params)
    assert list(first.per_source) == ["python_reference", "numpy"]  # canonical order
    with pytest.raises(ValueError, match=r"overwrite=True.*another folder") as err:
        build_demo_corpus(root, **{**params, "seed": 8})
    assert "seed: 7 there, 8 now" in str(err.value)

    # overwrite=True rebuilds; fewer shards and sources leave no stale files behind.
    smaller = build_demo_corpus(
        root, **{**params, "n_shards": 2, "sources": ["numpy"]}, overwrite=True
    )
    assert sorted(p.name for p in (root / "corpus").iterdir()) == [
        "shard-000.parquet",
        "shard-001.jsonl",
    ]
    assert sorted(p.name for p in (root / "targets").iterdir()) == ["numpy.jsonl", "numpy.txt"]
    assert smaller.per_source == {"numpy": SMALL["docs_per_source"]}
    assert not list(root.rglob("*.tmp"))


def test_incomplete_corpus_is_rebuilt(tmp_path):
    root = tmp_path / "demo"
    params = {**SMALL, "sources": ["python_stdlib"]}
    build_demo_corpus(root, **params)
    reference = _files(root)
    (root / "corpus" / "shard-001.jsonl").unlink()
    (root / "targets" / "python_stdlib.txt").write_text("edited", "utf-8")
    build_demo_corpus(root, **params)
    assert _files(root) == reference


def test_unreadable_manifest_needs_overwrite(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "manifest.json").write_text("not json", "utf-8")
    with pytest.raises(ValueError, match="not a demo corpus manifest"):
        build_demo_corpus(root, **{**SMALL, "sources": ["numpy"]})
    info = build_demo_corpus(root, **{**SMALL, "sources": ["numpy"]}, overwrite=True)
    assert info.n_documents == SMALL["docs_per_source"]


def test_short_source_uses_what_there_is_or_raises(tmp_path, collected):
    available = len(collected["python_reference"])
    info = build_demo_corpus(
        tmp_path / "short",
        docs_per_source=available,
        heldout_per_source=100,
        n_shards=2,
        sources=["python_reference"],
    )
    manifest = json.loads((info.root / "manifest.json").read_text("utf-8"))
    counts = manifest["per_source"]["python_reference"]
    assert counts["corpus"] + counts["heldout"] == available
    assert counts["heldout"] >= 1
    assert info.n_documents == counts["corpus"]
    assert len(_targets(info, "python_reference")) == counts["heldout"]

    with pytest.raises(ValueError, match="less than half"):
        build_demo_corpus(
            tmp_path / "too-short",
            docs_per_source=2 * available,
            sources=["python_reference"],
        )
    assert not (tmp_path / "too-short" / "manifest.json").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sources": ["wikipedia"]},
        {"sources": []},
        {"n_shards": 0},
        {"docs_per_source": 0},
        {"heldout_per_source": 0},
        {"seed": -1},
        {"n_shards": 10_000},
    ],
)
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        build_demo_corpus(tmp_path / "bad", **{**SMALL, "sources": ["numpy"], **kwargs})


def test_default_configuration_builds(tmp_path, collected, capsys):
    assert dc.main([str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    assert "6000 documents in 4 shards" in out
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text("utf-8"))
    assert manifest["params"]["docs_per_source"] == 1000
    assert all(c["heldout"] == 100 for c in manifest["per_source"].values())

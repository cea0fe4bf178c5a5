"""The cheap document count preflight uses for kmeans.k and the planner's estimate."""

import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from climb_assets.lib.corpus_size import count_documents
from climb_assets.lib.storage import Store


def _lines(n: int) -> bytes:
    """JSON lines of text as hard to compress as prose (hex digests), so the compressed
    estimate is tested on a realistic ratio."""
    return b"".join(
        json.dumps({"doc_id": str(i), "text": hashlib.sha256(str(i).encode()).hexdigest()}).encode()
        + b"\n"
        for i in range(n)
    )


def test_footers_and_small_json_lines_are_exact(tmp_path):
    pq.write_table(pa.table({"text": ["a"] * 123}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_bytes(_lines(45))
    count = count_documents(Store(str(tmp_path)), ["a.parquet", "b.jsonl"])
    assert (count.documents, count.exact, count.shards, count.how) == (168, True, 2, "counted")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_large_json_lines_are_estimated_from_their_first_mib(tmp_path, suffix):
    data = _lines(60_000)  # about 3.4 MB
    path = tmp_path / f"big{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    count = count_documents(Store(str(tmp_path)), [path.name])
    assert not count.exact and count.how == "JSON lines estimated from their first MiB"
    assert count.documents == pytest.approx(60_000, rel=0.05)


def test_many_shards_are_sampled_evenly_and_unreadable_ones_named(tmp_path):
    names = []
    for i in range(5):
        pq.write_table(pa.table({"text": ["a" * 50] * 100}), tmp_path / f"s{i}.parquet")
        names.append(f"s{i}.parquet")
    count = count_documents(Store(str(tmp_path)), names, max_shards=3)
    assert count.documents == 500 and not count.exact
    assert count.how == "3 of 5 shards read, the rest by bytes"
    (tmp_path / "s0.parquet").write_bytes(b"")
    broken = count_documents(Store(str(tmp_path)), names)
    assert broken.unreadable == 1 and broken.documents == 400
    assert broken.how == "counted; 1 unreadable shard(s) not counted"

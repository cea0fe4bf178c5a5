"""Each export loaded back by its own library: megatron-core, Hugging Face datasets, Parquet."""

import re
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from climb_assets.lib import tokens
from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.demo_corpus import build_demo_corpus
from climb_assets.lib.exports import EXPORTERS, ExportContext, ExportError, run_export
from climb_assets.lib.exports.megatron import (
    DTYPE_CODES,
    IndexedDatasetWriter,
    MegatronExport,
    balanced_groups,
    index_dtype,
    prefix_name,
)
from climb_assets.lib.storage import Store

WEIGHTS = np.array([0.5, 0.0, 0.3, 0.2])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A manifest-like store built from real demo text: 4 super-clusters, 2 parts, tokenizer."""
    root = tmp_path_factory.mktemp("exports")
    build_demo_corpus(root / "demo", docs_per_source=40, heldout_per_source=2)
    texts = pl.concat(
        [pl.read_parquet(p) for p in sorted((root / "demo" / "corpus").glob("*.parquet"))]
    ).get_column("text").to_list()  # fmt: skip
    store = Store(str(root / "out"))
    tok = tokens.train_bpe_tokenizer(texts, vocab_size=600)
    store.write_bytes("tokenizer/tokenizer.json", tok.to_str().encode())
    eos = tokens.eos_id(tok)
    rng = np.random.default_rng(0)
    sc = rng.choice([0, 2, 3], size=len(texts), p=[0.5, 0.3, 0.2])
    n_tokens = [len(e.ids) + 1 for e in tok.encode_batch(texts)]
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(len(texts))],
            "cluster_id": pa.array(sc * 3, pa.int32()),
            "n_tokens": pa.array(n_tokens, pa.int64()),
            "super_cluster_id": pa.array(sc, pa.int32()),
            "pass": pa.array(np.zeros(len(texts)), pa.int32()),
            "text": texts,
        }
    )
    half = len(texts) // 2
    store.write_parquet("manifest/shards/part-00000.parquet", table.slice(0, half))
    store.write_parquet("manifest/shards/part-00001.parquet", table.slice(half))
    granted = [int(np.asarray(n_tokens)[sc == i].sum()) for i in range(4)]
    ctx = ExportContext(
        store=store, manifest_digest="digest-1", weights=WEIGHTS,
        parts=store.list("manifest/shards"), granted_tokens=granted,
        tokenizer=str(store.local_path("tokenizer/tokenizer.json")), tokenizer_note="test",
        seed=5,
    )  # fmt: skip
    records = {
        name: run_export(EXPORTERS[name](), ctx, lambda _: None) for name in ("megatron", "hf")
    }
    return store, ctx, table, tok, eos, records


def _adapter(tok, eos: int):
    """The training tokenizer as megatron-core's dataset config wants one."""
    from megatron.core.tokenizers.base_tokenizer import MegatronTokenizerBase

    class Adapter(MegatronTokenizerBase):
        def __init__(self) -> None:
            super().__init__("test", {})
            self.eod, self.pad = eos, -1
            self.unique_identifiers = {"class": "climb-test", "vocab": tok.get_vocab_size()}

        def tokenize(self, text):
            return tok.encode(text).ids

        def detokenize(self, ids):
            return tok.decode(ids)

        @property
        def vocab(self):
            return tok.get_vocab()

        @property
        def vocab_size(self):
            return tok.get_vocab_size()

        def apply_chat_template(self):
            raise NotImplementedError

    return Adapter()


def test_megatron_prefixes_load_and_hold_the_manifest_budgets(exported):
    store, ctx, table, tok, eos, records = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    folder = store.local_path("exports/megatron")
    blend = (folder / "blend.txt").read_text().split()
    prefixes = blend[1::2]
    assert prefixes == ["sc_000", "sc_002", "sc_003"]  # weight 0: no dataset
    assert [float(w) for w in blend[0::2]] == pytest.approx([0.5, 0.3, 0.2])
    groups = table.column("super_cluster_id").to_numpy()
    for prefix in prefixes:
        sc = int(prefix[3:])
        ds = IndexedDataset(str(folder / prefix))
        expected = table.filter(pa.array(groups == sc))
        assert len(ds) == expected.num_rows
        assert int(ds.sequence_lengths.sum()) == ctx.granted_tokens[sc]
        first = ds[0]
        assert int(first[-1]) == eos
        assert tok.decode(first[:-1].tolist()) == expected.column("text")[0].as_py()
    summary = records["megatron"]["super_clusters"]
    assert {k: v["tokens"] for k, v in summary.items()} == {
        p: ctx.granted_tokens[int(p[3:])] for p in prefixes
    }
    absolute = (folder / "blend.absolute.txt").read_text().split()
    assert absolute[1] == str(folder / "sc_000")


def test_megatron_blended_dataset_samples_each_super_cluster_by_weight(exported, tmp_path):
    store, _, _, tok, eos, _ = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.utils import get_blend_from_list
    blend = (store.local_path("exports/megatron") / "blend.absolute.txt").read_text().split()
    config = GPTDatasetConfig(
        random_seed=7, sequence_length=32, blend=get_blend_from_list(blend), split="1,0,0",
        path_to_cache=None, tokenizer=_adapter(tok, eos),  # no cache: no rank-0 protocol
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
    )  # fmt: skip
    train, _, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [20_000, 0, 0], lambda: True, config
    ).build()
    shares = np.bincount(np.asarray(train.dataset_index), minlength=3) / len(train)
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    sample = train[0]["tokens"]
    assert len(sample) == 32


def test_hf_card_reproduces_the_mixture_with_datasets(exported):
    import datasets

    store, _, _, _, _, records = exported
    folder = store.local_path("exports/hf")
    card = (folder / "README.md").read_text()
    probabilities = [float(x) for x in re.search(r"probabilities=\[(.*?)\]", card)[1].split(",")]
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert names == ["sc_000", "sc_002", "sc_003"]
    parts = [
        datasets.load_dataset(
            "parquet", data_files=str(folder / n / "*.parquet"), split="train",
            cache_dir=str(folder.parent / "_hf_cache"),
        )
        for n in names
    ]  # fmt: skip
    mix = datasets.interleave_datasets(
        parts, probabilities=probabilities, seed=5, stopping_strategy="all_exhausted"
    )
    drawn = mix.select_columns(["super_cluster_id", "n_tokens"]).to_polars()
    share = (
        drawn.group_by("super_cluster_id").agg(pl.col("n_tokens").sum()).sort("super_cluster_id")
    )
    tokens_share = share.get_column("n_tokens").to_numpy() / drawn.get_column("n_tokens").sum()
    assert tokens_share == pytest.approx([0.5, 0.3, 0.2], abs=0.05)
    assert records["hf"]["super_clusters"]["sc_000"]["documents"] == parts[0].num_rows


def test_complete_export_is_kept_and_a_failed_one_leaves_the_last(exported, monkeypatch):
    store, ctx, _, _, _, _ = exported
    idx = store.local_path("exports/megatron/sc_000.idx")
    before = idx.stat().st_mtime_ns
    again = run_export(EXPORTERS["megatron"](), ctx, lambda _: None)
    assert again["skipped"] and idx.stat().st_mtime_ns == before

    from climb_assets.lib.exports.megatron import MegatronExport

    def broken(self, ctx, out: Path, log):
        (out / "sc_000.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(MegatronExport, "write", broken)
    changed = ExportContext(**{**ctx.__dict__, "manifest_digest": "digest-2"})
    with pytest.raises(RuntimeError, match="killed mid-export"):
        run_export(EXPORTERS["megatron"](), changed, lambda _: None)
    assert idx.stat().st_mtime_ns == before  # the previous export is untouched
    leftovers = [p.name for p in store.local_path("exports").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_export_input_is_refused_clearly(exported):
    _, ctx, _, _, _, _ = exported
    with pytest.raises(ExportError, match="grants no tokens"):
        ExportContext(**{**ctx.__dict__, "granted_tokens": [0, 0, 0, 0]})
    with pytest.raises(ExportError, match="largest index dtype"):
        index_dtype(3_000_000_000)
    missing = ExportContext(**{**ctx.__dict__, "manifest_digest": "x", "tokenizer": "/no/tok.json"})
    with pytest.raises(tokens.TokenizerError, match="does not exist"):
        run_export(EXPORTERS["megatron"](), missing, lambda _: None)


def _megatron_builder_reference(ctx, out: Path) -> None:
    """The export as megatron-core's own `IndexedDatasetBuilder` writes it (the old path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset as md
    tok = tokens.load_tokenizer(ctx.tokenizer)
    eod, dtype = tokens.eos_id(tok), index_dtype(tok.get_vocab_size())
    builders = {}
    for part in ctx.read_parts(["super_cluster_id", "text"]):
        groups = part.column("super_cluster_id").to_numpy()
        texts = part.column("text").to_pylist()
        for sc in np.unique(groups).tolist():
            if ctx.weights[sc] <= 0:
                continue
            prefix = str(out / prefix_name(sc))
            if sc not in builders:
                builders[sc] = md.IndexedDatasetBuilder(md.get_bin_path(prefix), dtype=dtype)
            for encoding in tok.encode_batch([texts[i] for i in np.flatnonzero(groups == sc)]):
                ids = [*encoding.ids, eod]
                builders[sc].add_document(ids, [len(ids)])
    for sc, builder in builders.items():
        builder.finalize(md.get_idx_path(str(out / prefix_name(sc))))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_megatron_export_is_byte_identical_for_any_worker_count(exported, tmp_path):
    _, ctx, table, tok, eos, records = exported
    assert records["megatron"]["workers"] == 1  # unset, and too small to start workers for
    written = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        job = ExportContext(**{**ctx.__dict__, "export_workers": workers})
        summary = MegatronExport().write(job, out, lambda _: None)
        assert summary["workers"] == workers
        written[workers] = _files(out)
    assert sorted(written[1]) == ["blend.absolute.txt", "blend.json", "blend.txt", "sc_000.bin",
                                  "sc_000.idx", "sc_002.bin", "sc_002.idx", "sc_003.bin",
                                  "sc_003.idx"]  # fmt: skip
    assert written[1] == written[2]
    reference = tmp_path / "builder"
    reference.mkdir()
    _megatron_builder_reference(ctx, reference)
    assert {k: v for k, v in written[2].items() if k.startswith("sc_")} == _files(reference)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    groups = table.column("super_cluster_id").to_numpy()
    for sc in (0, 2, 3):
        ds = IndexedDataset(str(tmp_path / "w2" / prefix_name(sc)))
        texts = table.column("text").to_numpy(zero_copy_only=False)[groups == sc]
        assert len(ds) == len(texts)
        assert [ds[i].tolist() for i in range(len(ds))] == [
            [*e.ids, eos] for e in tok.encode_batch(list(texts))
        ]


def test_indexed_dataset_writer_matches_megatron_core_for_both_dtypes(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset as md
    assert {d.name: d.value for d in md.DType} == DTYPE_CODES
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 60_000, size=n).tolist() for n in (0, 1, 7, 300, 2)]
    for dtype in (np.uint16, np.int32):
        ours, theirs = tmp_path / f"ours_{dtype.__name__}", tmp_path / f"megatron_{dtype.__name__}"
        writer = IndexedDatasetWriter(ours, dtype)
        writer.add_documents(docs[:2], 5)
        writer.add_documents([], 5)
        writer.add_documents(docs[2:], 5)
        assert not ours.with_suffix(".idx").exists()  # published only when complete
        writer.finalize()
        builder = md.IndexedDatasetBuilder(md.get_bin_path(str(theirs)), dtype=dtype)
        for doc in docs:
            builder.add_document([*doc, 5], [len(doc) + 1])
        builder.finalize(md.get_idx_path(str(theirs)))
        for ext in (".bin", ".idx"):
            assert Path(f"{ours}{ext}").read_bytes() == Path(f"{theirs}{ext}").read_bytes()
        assert (writer.documents, writer.tokens) == (5, sum(map(len, docs)) + 5)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_megatron_worker_error_is_one_line_naming_the_super_cluster(exported, tmp_path, workers):
    _, ctx, table, _, _, _ = exported
    store = Store(str(tmp_path / "out"))
    store.write_bytes("tokenizer.json", Path(ctx.tokenizer).read_bytes())
    texts = table.column("text").to_pylist()
    bad = int(np.flatnonzero(table.column("super_cluster_id").to_numpy() == 2)[-1])
    texts[bad] = None  # a document without text, in super-cluster 2 of the second part
    broken = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    half = table.num_rows // 2
    store.write_parquet("manifest/shards/part-00000.parquet", broken.slice(0, half))
    store.write_parquet("manifest/shards/part-00001.parquet", broken.slice(half))
    job = ExportContext(**{**ctx.__dict__, "store": store, "parts": store.list("manifest/shards"),
                           "tokenizer": str(store.local_path("tokenizer.json")),
                           "export_workers": workers})  # fmt: skip
    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(ExportError) as caught:
        MegatronExport().write(job, out, lambda _: None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "megatron export of super-cluster sc_002 (part manifest/shards/part-00001.parquet) "
        "failed: TypeError"
    )
    assert not any(p.name.startswith((".", "sc_002")) for p in out.iterdir())  # no partial file


def test_worker_death_and_worker_count_are_reported_clearly(exported):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from climb_assets.config import ProfileError, profile_from_dict
    from climb_assets.lib.exports.megatron import _worker_error

    died, other = Future(), Future()
    died.set_exception(BrokenProcessPool("a process terminated abruptly"))
    other.set_exception(BrokenProcessPool("a process terminated abruptly"))
    error = _worker_error([died, other], {died: [0, 3], other: [2]})
    assert str(error).startswith(
        "megatron export of super-clusters sc_000, sc_002, sc_003 failed: a worker process died"
    )
    assert balanced_groups({0: 50, 2: 30, 3: 20}, 2) == [[0], [2, 3]]
    assert balanced_groups({0: 5, 1: 5}, 8) == [[0], [1]]
    _, ctx, _, _, _, _ = exported
    with pytest.raises(ExportError, match="export_workers is 0; use 1 or more"):
        ExportContext(**{**ctx.__dict__, "export_workers": 0})
    with pytest.raises(ProfileError, match="manifest.export_workers must be >= 1"):
        profile_from_dict({"name": "x", "manifest": {"export_workers": 0}})
    assert profile_from_dict({"name": "x"}).manifest.export_workers is None


def test_climblab_groups_every_kept_document(tmp_path):
    store = Store(str(tmp_path / "out"))
    store.write_parquet(
        "clusters/clusters.parquet",
        pa.table({"cluster_id": pa.array([0, 1, 2], pa.int32()),
                  "top_terms": [["alpha"], ["beta"], ["gamma"]]}),
    )  # fmt: skip
    shards = {  # doc id -> (cluster, super-cluster); cluster 2 was pruned
        "a.jsonl": {"1": (0, 0), "2": (1, 0), "3": (2, None)},
        "b/c.parquet": {"4": (0, 0), "5": (2, None)},
    }
    for shard, members in shards.items():
        stem, ids = shard_stem(shard), list(members)
        store.write_parquet(
            f"super_clusters/members/{stem}.parquet",
            pa.table({"doc_id": ids,
                      "cluster_id": pa.array([members[i][0] for i in ids], pa.int32()),
                      "super_cluster_id": pa.array([members[i][1] for i in ids], pa.int32())}),
        )  # fmt: skip
        store.write_parquet(
            f"corpus_documents/{stem}.parquet",
            pa.table({"doc_id": ids, "text": [f"text {i}" for i in ids],
                      "n_chars": pa.array([6] * len(ids), pa.int32())}),
        )  # fmt: skip
        store.write_parquet(
            f"cluster_quality/{stem}.parquet",
            pa.table({"doc_id": ids, "heuristic": pa.array([3.0] * len(ids), pa.float32())}),
        )
    ctx = ExportContext(
        store=store, manifest_digest="d", weights=np.array([1.0]), parts=[],
        granted_tokens=[10], shards=["a.jsonl", "b/c.parquet"], scorers=["heuristic"],
    )  # fmt: skip
    record = run_export(EXPORTERS["climblab"](), ctx, lambda _: None)
    assert record["documents"] == 3  # documents 3 and 5 sit in a pruned cluster
    rows = pq.read_table(store.local_path("exports/climblab/sc_000")).to_pylist()
    assert sorted(r["doc_id"] for r in rows) == ["1", "2", "4"]
    assert {r["doc_id"]: r["top_terms"] for r in rows}["2"] == ["beta"]
    assert all(r["heuristic"] == 3.0 and r["text"].startswith("text") for r in rows)

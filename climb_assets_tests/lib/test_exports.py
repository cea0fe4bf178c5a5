"""Each export loaded back by its own library: megatron-core, Hugging Face datasets, Parquet."""

import re
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
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
    """A manifest-like store built from real demo text: 4 super-clusters (1 with weight 0), a
    second pass over half of super-cluster 0, a validation split, 2 shuffled parts, tokenizer."""
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
    docs = pl.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(len(texts))],
            "cluster_id": pl.Series(sc * 3, dtype=pl.Int32),
            "n_tokens": [len(e.ids) + 1 for e in tok.encode_batch(texts)],
            "super_cluster_id": pl.Series(sc, dtype=pl.Int32),
            "pass": pl.Series(np.zeros(len(texts)), dtype=pl.Int32),
            "text": texts,
        }
    )
    held = rng.random(len(texts)) < 0.1
    validation, first = docs.filter(pl.Series(held)), docs.filter(pl.Series(~held))
    second = first.filter(pl.col("super_cluster_id") == 0).head(30)
    rows = pl.concat([first, second.with_columns(pl.lit(1, pl.Int32).alias("pass"))])
    table = rows[rng.permutation(rows.height).tolist()].to_arrow()  # the manifest's shuffle
    half = table.num_rows // 2
    store.write_parquet("manifest/shards/part-00000.parquet", table.slice(0, half))
    store.write_parquet("manifest/shards/part-00001.parquet", table.slice(half))
    store.write_parquet("manifest/validation/part-00000.parquet", validation.to_arrow())
    granted = [
        int(rows.filter(pl.col("super_cluster_id") == i)["n_tokens"].sum()) for i in range(4)
    ]
    ctx = ExportContext(
        store=store, manifest_digest="digest-1", weights=WEIGHTS,
        parts=store.list("manifest/shards"), granted_tokens=granted,
        validation_parts=store.list("manifest/validation"),
        tokenizer=str(store.local_path("tokenizer/tokenizer.json")), tokenizer_note="test",
        seed=5, license="cc-by-4.0", seq_length=32, global_batch_size=8,
    )  # fmt: skip
    records = {
        name: run_export(EXPORTERS[name](), ctx, lambda _: None)
        for name in ("tokenizer", "megatron", "hf")
    }
    return store, ctx, table, tok, eos, records


def _first_pass(table: pa.Table, sc: int) -> pa.Table:
    """The rows of super-cluster `sc` the megatron export writes: its first pass, in order."""
    groups, passes = table.column("super_cluster_id").to_numpy(), table.column("pass").to_numpy()
    return table.filter(pa.array((groups == sc) & (passes == 0)))


def test_megatron_prefixes_hold_each_document_once_and_the_blend_the_passes(exported):
    store, ctx, table, tok, eos, records = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    folder = store.local_path("exports/megatron")
    blend = (folder / "train_blend.txt").read_text().split()
    prefixes = blend[1::2]
    assert prefixes == ["sc_000", "sc_002", "sc_003"]  # weight 0: no dataset
    # Blend weights are the shares of the granted tokens (passes included), not the weights.
    granted = np.asarray(ctx.granted_tokens, np.float64)[[0, 2, 3]]
    assert [float(w) for w in blend[0::2]] == pytest.approx(granted / granted.sum(), abs=1e-6)
    summary = records["megatron"]
    for prefix in prefixes:
        sc = int(prefix[3:])
        ds = IndexedDataset(str(folder / prefix))
        expected = _first_pass(table, sc)
        assert len(ds) == expected.num_rows  # each document once
        assert int(ds.sequence_lengths.sum()) == pc.sum(expected.column("n_tokens")).as_py()
        assert int(ds[0][-1]) == eos
        assert tok.decode(ds[0][:-1].tolist()) == expected.column("text")[0].as_py()
        # Megatron's epochs over the prefix give back the granted tokens (same tokenizer here).
        assert summary["super_clusters"][prefix]["training_tokens"] == ctx.granted_tokens[sc]
    assert summary["super_clusters"]["sc_000"]["epochs"] > 1.2  # its second pass
    assert summary["train_samples"] == sum(ctx.granted_tokens) // 32
    assert summary["train_iters"] == -(-summary["train_samples"] // 8)
    absolute = (folder / "train_blend.absolute.txt").read_text().split()
    assert absolute[1] == str(folder / "sc_000")
    valid = (folder / "valid_blend.txt").read_text().split()
    assert valid[1::2] == ["valid/sc_000", "valid/sc_002", "valid/sc_003"]
    args = (folder / "megatron_args.txt").read_text().split()
    assert "--split" not in args  # Megatron-LM refuses it beside per-split paths
    assert args[args.index("--tokenizer-model") + 1] == "../tokenizer"
    assert args[args.index("--train-samples") + 1] == str(summary["train_samples"])


def _megatron_tokenizer(folder: Path):
    """The tokenizer `pretrain_gpt.py --tokenizer-type HuggingFaceTokenizer --tokenizer-model
    <folder>` builds (megatron-core's own `build_tokenizer`, default non-legacy path)."""
    from types import SimpleNamespace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.tokenizers.text.utils.build_tokenizer import build_tokenizer
    args = SimpleNamespace(
        tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(folder), vocab_file=None,
        merge_file=None, tokenizer_special_tokens=None, tokenizer_hf_use_fast=False,
        trust_remote_code=False, tokenizer_hf_include_special_tokens=False,
        tokenizer_metadata=None,
    )  # fmt: skip
    return build_tokenizer(args)


def _sample_documents(blended) -> set[tuple[str, int]]:
    """(prefix, document) of every document any sample of a blended dataset touches."""
    touched = set()
    for k in range(len(blended)):
        ds = blended.datasets[int(blended.dataset_index[k])]
        i = int(blended.dataset_sample_index[k])
        begin, end = int(ds.sample_index[i][0]), int(ds.sample_index[i + 1][0])
        prefix = Path(ds.dataset.path_prefix).name
        parent = Path(ds.dataset.path_prefix).parent.name
        for d in ds.document_index[begin : end + 1]:
            touched.add((f"{parent}/{prefix}", int(d)))
    return touched


def test_megatron_blended_datasets_train_by_the_blend_and_never_validate_on_training(
    exported, tmp_path
):
    store, ctx, table, _, eos, records = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import (
            BlendedMegatronDatasetBuilder,
        )
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        from megatron.core.datasets.utils import get_blend_from_list
    tokenizer = _megatron_tokenizer(store.local_path("exports/tokenizer"))
    assert tokenizer.eod == eos  # the id every document of the .bin files ends with
    folder = store.local_path("exports/megatron")
    train_blend = (folder / "train_blend.absolute.txt").read_text().split()
    valid_blend = (folder / "valid_blend.absolute.txt").read_text().split()
    config = GPTDatasetConfig(  # as pretrain_gpt.py builds it from megatron_args.txt
        random_seed=7, sequence_length=ctx.seq_length, split=None,
        blend_per_split=[get_blend_from_list(train_blend), get_blend_from_list(valid_blend), None],
        path_to_cache=None, tokenizer=tokenizer,  # no cache: no rank-0 protocol
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
    )  # fmt: skip
    samples = records["megatron"]["train_samples"]
    train, valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, [samples, 200, 0], lambda: True, config
    ).build()
    weights = [float(w) for w in train_blend[0::2]]
    shares = np.bincount(np.asarray(train.dataset_index), minlength=3) / len(train)
    assert shares == pytest.approx(weights, abs=0.01)
    assert len(train[0]["tokens"]) == ctx.seq_length
    training, validating = _sample_documents(train), _sample_documents(valid)
    assert {p for p, _ in training} == {"megatron/sc_000", "megatron/sc_002", "megatron/sc_003"}
    assert {p for p, _ in validating} == {"valid/sc_000", "valid/sc_002", "valid/sc_003"}
    # Map each sampled document back to its manifest id: no validation id is a training one.
    ids = {}
    for sc in (0, 2, 3):
        ids[f"megatron/sc_{sc:03d}"] = _first_pass(table, sc).column("doc_id").to_pylist()
        held = pl.from_arrow(store.read_parquet("manifest/validation/part-00000.parquet"))
        ids[f"valid/sc_{sc:03d}"] = held.filter(pl.col("super_cluster_id") == sc)[
            "doc_id"
        ].to_list()
    trained_on = {ids[p][d] for p, d in training}
    validated_on = {ids[p][d] for p, d in validating}
    assert validated_on and trained_on
    assert not trained_on & validated_on
    assert not set(table.column("doc_id").to_pylist()) & validated_on


def test_tokenizer_export_loads_with_the_data_end_of_document_id(exported):
    from transformers import AutoTokenizer

    store, _, _, tok, eos, records = exported
    folder = store.local_path("exports/tokenizer")
    loaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert loaded.eos_token_id == eos and loaded.eos_token == tok.id_to_token(eos)
    assert loaded("the quick brown fox").input_ids == tok.encode("the quick brown fox").ids
    config = (folder / "tokenizer_config.json").read_text()
    assert '"PreTrainedTokenizerFast"' in config  # transformers 4 knows it too
    assert records["tokenizer"]["eod_id"] == records["megatron"]["eod_id"] == eos


def test_hf_card_loads_both_splits_and_tells_the_truth(exported, tmp_path, monkeypatch):
    import datasets

    store, ctx, table, _, _, records = exported
    folder = store.local_path("exports/hf")
    card = (folder / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S)[1]
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    scope: dict = {}
    exec(snippet, scope)  # the card's own snippet, verbatim
    train, validation = scope["train"], scope["validation"]
    assert train.num_rows == table.num_rows
    assert train["doc_id"] == table.column("doc_id").to_pylist()  # the manifest's order
    held = set(validation["doc_id"])
    assert held and not held & set(train["doc_id"])
    repeats = pl.Series(train["doc_id"]).value_counts().get_column("count").max()
    assert repeats == 2 == records["hf"]["max_repeats"]  # the fixture's two passes
    assert "license: cc-by-4.0" in card and "**Licence:** cc-by-4.0" in card
    assert "proxy tokenizer" in card and "`../tokenizer`" in card
    sc0 = records["hf"]["super_clusters"]["sc_000"]
    assert sc0["tokens"] == ctx.granted_tokens[0] and sc0["documents"] > sc0["unique_documents"]


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
    for rel in ctx.parts:
        part = ctx.store.read_parquet(rel, ["super_cluster_id", "pass", "text"])
        groups = part.column("super_cluster_id").to_numpy()
        groups = np.where(part.column("pass").to_numpy() == 0, groups, -1)  # each document once
        texts = part.column("text").to_pylist()
        for sc in np.unique(groups).tolist():
            if sc < 0 or ctx.weights[sc] <= 0:
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
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


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
    datasets = [f"{d}sc_{sc:03d}.{x}" for d in ("", "valid/") for sc in (0, 2, 3)
                for x in ("bin", "idx")]  # fmt: skip
    assert sorted(written[1]) == sorted([
        "blend.json", "megatron_args.absolute.txt", "megatron_args.txt", "train_blend.txt",
        "train_blend.absolute.txt", "valid_blend.txt", "valid_blend.absolute.txt", *datasets,
    ])  # fmt: skip
    assert written[1] == written[2]
    reference = tmp_path / "builder"
    reference.mkdir()
    _megatron_builder_reference(ctx, reference)
    assert {k: v for k, v in written[2].items() if k.startswith("sc_")} == _files(reference)
    assert written[1]["megatron_args.txt"] == (store_args := written[2]["megatron_args.txt"])
    assert b"--valid-data-path" in store_args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    groups = table.column("super_cluster_id").to_numpy()
    passes = table.column("pass").to_numpy()
    for sc in (0, 2, 3):
        ds = IndexedDataset(str(tmp_path / "w2" / prefix_name(sc)))
        texts = table.column("text").to_numpy(zero_copy_only=False)[(groups == sc) & (passes == 0)]
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

"""Megatron export throughput: `MegatronExport` against a `tools/preprocess_data.py`-style loop.

Both turn the same selected documents (real demo-corpus text, split into super-clusters and
manifest parts) into megatron-core indexed datasets with the same tokenizer (a byte-level BPE of
32,000 ids trained on that text) and end-of-document appended:

- ours: `climb_assets.lib.exports.megatron.MegatronExport`: one manifest part at a time, each
  super-cluster's documents tokenized with `Tokenizer.encode_batch` (the Rust library's own
  threads), written by `IndexedDatasetWriter` (byte for byte megatron-core's
  `IndexedDatasetBuilder`; `bench/export_parallel.py` measures its worker processes);
- baseline: megatron-core's preprocessing loop on one worker: every document encoded on its own
  (`Tokenizer.encode`), `add_document(ids + [eod])`, one builder per super-cluster.

Both run in this process one after the other, alternating over `--rounds`; reported: median
tokens/s of each and the ratio ours/baseline. The two outputs are compared byte for byte.

The 6,000 demo documents are selected `--repeat` times (default 20, about 5M tokens), as a
manifest's passes repeat documents, so the fixed costs (imports, tokenizer load) do not dominate.

Run: `.venv/bin/python -m bench.megatron_export [--documents-per-source 1000] [--repeat 20]`.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.common import QUICK_DIR, RESULTS_DIR, add_run_options, load_average, median, write_result

NAME = "megatron_export"


def prepare(root: Path, docs_per_source: int, repeat: int) -> tuple[object, list[str], np.ndarray]:
    """Manifest parts of real text (`repeat` passes) in 4 super-clusters, a 32k BPE, weights."""
    import polars as pl

    from climb_assets.lib import tokens
    from climb_assets.lib.demo_corpus import build_demo_corpus
    from climb_assets.lib.storage import Store

    info = build_demo_corpus(root / "demo", docs_per_source=docs_per_source, heldout_per_source=1)
    files = sorted(info.root.glob("corpus/*.parquet"))
    texts = pl.concat([pl.read_parquet(p, columns=["text"]) for p in files])["text"].to_list()
    store = Store(str(root / "out"))
    tok = tokens.train_bpe_tokenizer(texts, vocab_size=32_000)
    store.write_bytes("tokenizer/tokenizer.json", tok.to_str().encode())
    texts = texts * repeat  # the selection's passes: the same documents again, as a manifest has
    sc = np.random.default_rng(0).integers(0, 4, size=len(texts))
    table = pa.table({"super_cluster_id": pa.array(sc, pa.int32()), "text": texts})
    parts = []
    for i, span in enumerate(np.array_split(np.arange(len(texts)), 4)):
        rel = f"manifest/shards/part-{i:05d}.parquet"
        store.write_parquet(rel, table.take(pa.array(span)))
        parts.append(rel)
    return store, parts, np.full(4, 0.25)


def baseline(store: object, parts: list[str], tokenizer: str, out: Path) -> int:
    """preprocess_data.py's inner loop on one worker; returns the tokens written."""
    from climb_assets.lib import tokens

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset as md

    tok = tokens.load_tokenizer(tokenizer)
    eod, dtype = tokens.eos_id(tok), md.DType.optimal_dtype(tok.get_vocab_size())
    builders: dict[int, object] = {}
    total = 0
    for rel in parts:
        part = store.read_parquet(rel)  # type: ignore[attr-defined]
        for sc, text in zip(
            part.column("super_cluster_id").to_pylist(), part.column("text").to_pylist(),
            strict=True,
        ):  # fmt: skip
            if sc not in builders:
                builders[sc] = md.IndexedDatasetBuilder(md.get_bin_path(str(out / f"sc_{sc:03d}")),
                                                        dtype=dtype)  # fmt: skip
            ids = [*tok.encode(text).ids, eod]
            builders[sc].add_document(ids, [len(ids)])  # type: ignore[attr-defined]
            total += len(ids)
    for sc, builder in builders.items():
        builder.finalize(md.get_idx_path(str(out / f"sc_{sc:03d}")))  # type: ignore[attr-defined]
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents-per-source", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20, help="passes over the documents")
    add_run_options(parser)
    args = parser.parse_args(argv)
    from climb_assets.lib.exports import ExportContext
    from climb_assets.lib.exports.megatron import MegatronExport

    per_source = 100 if args.quick else args.documents_per_source
    rounds = 1 if args.quick else args.rounds
    load_start = load_average()
    ours_s, base_s, tokens_written = [], [], 0
    identical = True
    with tempfile.TemporaryDirectory(prefix="climb-megatron-") as tmp:
        root = Path(tmp)
        store, parts, weights = prepare(root, per_source, 2 if args.quick else args.repeat)
        tokenizer = str(store.local_path("tokenizer/tokenizer.json"))  # type: ignore[attr-defined]
        ctx = ExportContext(
            store=store, manifest_digest="bench", weights=weights, parts=parts,
            granted_tokens=[1, 1, 1, 1], tokenizer=tokenizer, seed=0,
        )  # fmt: skip
        for r in range(rounds):
            ours_dir, base_dir = root / f"ours-{r}", root / f"base-{r}"
            ours_dir.mkdir()
            base_dir.mkdir()
            start = time.perf_counter()
            summary = MegatronExport().write(ctx, ours_dir, lambda _: None)
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            tokens_written = baseline(store, parts, tokenizer, base_dir)
            base_s.append(time.perf_counter() - start)
            assert summary["tokens"] == tokens_written
            for sc in range(4):
                for ext in (".bin", ".idx"):
                    name = f"sc_{sc:03d}{ext}"
                    identical &= filecmp.cmp(ours_dir / name, base_dir / name, shallow=False)
    ours_tps, base_tps = tokens_written / median(ours_s), tokens_written / median(base_s)
    result = {
        "description": __doc__.splitlines()[0],
        "documents": per_source * 6 * (2 if args.quick else args.repeat),
        "tokens": tokens_written,
        "vocab_size": 32_000,
        "ours_seconds": ours_s,
        "baseline_seconds": base_s,
        "outputs_identical": identical,
        "load_average_start": load_start,
        "summary": [
            {
                "what": "tokens/s writing megatron indexed datasets (ratio ours/preprocess loop)",
                "ours": f"{ours_tps:,.0f} tokens/s",
                "baseline": f"preprocess_data.py-style loop, 1 worker: {base_tps:,.0f} tokens/s",
                "ratio": round(ours_tps / base_tps, 2),
            }
        ],
    }
    print(result["summary"][0], "identical:", identical)
    write_result(NAME, result, QUICK_DIR if args.quick else RESULTS_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())

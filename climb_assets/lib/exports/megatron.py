"""Megatron-LM / NeMo: one indexed dataset (`.bin` + `.idx`) per super-cluster, and the blend.

Written with megatron-core's own `IndexedDatasetBuilder`, as its `tools/preprocess_data.py`
does: each document tokenized with the training tokenizer, end-of-document appended, one
sequence per document. The index dtype is megatron-core's choice for the vocabulary
(`DType.optimal_dtype`: uint16 below 65,500 ids, else int32). `blend.txt` is the
`--data-path` argument with prefixes relative to this folder (run from it, or prepend the folder);
`blend.absolute.txt` carries absolute prefixes; `blend.json` both, with the weights.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from climb_assets.lib import tokens
from climb_assets.lib.exports.base import ExportContext, Exporter, ExportError


def _blend_line(data_path: list[float | str]) -> str:
    return " ".join(f"{x:.6g}" if isinstance(x, float) else x for x in data_path) + "\n"


def prefix_name(super_cluster: int) -> str:
    return f"sc_{super_cluster:03d}"


def _megatron() -> Any:
    """megatron-core's indexed dataset module (its import is noisy without CUDA or Apex)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def index_dtype(vocab_size: int) -> type[np.number]:
    """megatron-core's index dtype for a vocabulary; refuses one that does not fit it."""
    dtype = _megatron().DType.optimal_dtype(vocab_size)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ExportError(
            f"the training tokenizer has {vocab_size:,} ids; megatron-core's largest index "
            f"dtype ({np.dtype(dtype).name}) holds ids up to {np.iinfo(dtype).max:,}; use a "
            "tokenizer with a smaller vocabulary"
        )
    return dtype


class MegatronExport(Exporter):
    """`.bin`/`.idx` per super-cluster with weight, plus `blend.txt` for `--data-path`."""

    name = "megatron"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        if ctx.tokenizer is None:
            raise ExportError("the megatron export needs a training tokenizer (manifest.tokenizer)")
        tok = tokens.load_tokenizer(ctx.tokenizer)
        eod = tokens.eos_id(tok)
        vocab = tok.get_vocab_size()
        dtype = index_dtype(vocab)
        md = _megatron()
        builders: dict[int, Any] = {}
        documents: dict[int, int] = {}
        counts: dict[int, int] = {}
        start, total = time.perf_counter(), 0
        try:
            for part in ctx.read_parts(["super_cluster_id", "text"]):
                groups = part.column("super_cluster_id").to_numpy()
                texts = part.column("text").to_pylist()
                for sc in np.unique(groups):
                    sc = int(sc)
                    if ctx.weights[sc] <= 0:
                        continue
                    if sc not in builders:
                        builders[sc] = md.IndexedDatasetBuilder(
                            md.get_bin_path(str(out / prefix_name(sc))), dtype=dtype
                        )
                    rows = np.flatnonzero(groups == sc)
                    for encoding in tok.encode_batch([texts[i] for i in rows]):
                        ids = [*encoding.ids, eod]
                        builders[sc].add_document(ids, [len(ids)])
                        counts[sc] = counts.get(sc, 0) + len(ids)
                        documents[sc] = documents.get(sc, 0) + 1
                        total += len(ids)
        finally:
            for sc, builder in builders.items():
                builder.finalize(md.get_idx_path(str(out / prefix_name(sc))))
        seconds = time.perf_counter() - start
        present = [sc for sc in range(len(ctx.weights)) if sc in builders]
        # A weight so small that its budget is below half a document selects nothing; it has
        # no dataset to point at, so it leaves the blend (Megatron renormalises the rest).
        empty = {
            prefix_name(sc): float(ctx.weights[sc])
            for sc in range(len(ctx.weights))
            if ctx.weights[sc] > 0 and sc not in present
        }
        if empty:
            log(f"export megatron: no selected document for {empty} (weights too small for the "
                "token budget); left out of the blend")  # fmt: skip
        if not present:
            raise ExportError("no super-cluster has a selected document; nothing to export")
        published = ctx.store.uri("exports/megatron")
        relative: list[float | str] = []
        for sc in present:
            relative += [float(ctx.weights[sc]), prefix_name(sc)]
        absolute = [x if isinstance(x, float) else f"{published}/{x}" for x in relative]
        (out / "blend.txt").write_text(_blend_line(relative))
        (out / "blend.absolute.txt").write_text(_blend_line(absolute))
        (out / "blend.json").write_text(
            json.dumps({"data_path": relative, "data_path_absolute": absolute}, indent=2)
        )
        summary = {
            "tokenizer": ctx.tokenizer_note,
            "vocab_size": vocab,
            "eod_id": eod,
            "dtype": np.dtype(dtype).name,
            "tokens": total,
            "tokens_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "super_clusters": {
                prefix_name(sc): {
                    "weight": float(ctx.weights[sc]),
                    "documents": documents[sc],
                    "tokens": counts[sc],
                    "granted_tokens": int(ctx.granted_tokens[sc]),
                }
                for sc in present
            },
            "data_path": relative,
            "left_out_without_documents": empty,
        }
        log(
            f"export megatron: {len(present)} indexed datasets, {total:,} tokens ({dtype.__name__})"
        )
        return summary

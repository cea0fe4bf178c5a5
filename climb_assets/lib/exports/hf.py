"""Hugging Face datasets: one Parquet folder per super-cluster and a dataset card.

`datasets.load_dataset("parquet", data_files=...)` loads each folder; `interleave_datasets`
with the card's `probabilities` reproduces the mixture. Those are **document** probabilities:
ClimbMix weights are shares of tokens, and interleaving draws documents, so each super-cluster's
weight is divided by its mean document length (in training tokens) and renormalised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from climb_assets.lib.exports.base import ExportContext, Exporter
from climb_assets.lib.exports.megatron import prefix_name

COLUMNS = ["text", "doc_id", "cluster_id", "super_cluster_id", "n_tokens"]


def document_probabilities(
    weights: dict[str, float], mean_tokens: dict[str, float]
) -> dict[str, float]:
    """Per-document sampling probabilities whose expected token shares are `weights`."""
    raw = {k: w / mean_tokens[k] for k, w in weights.items() if mean_tokens.get(k, 0) > 0}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def dataset_card(summary: dict[str, Any]) -> str:
    """The README.md of the export: YAML header (configs), weights, provenance, how to load."""
    names = list(summary["super_clusters"])
    configs = "\n".join(
        f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/*.parquet"
        for n in names
    )
    rows = "\n".join(
        f"| {n} | {s['weight']:.4f} | {summary['probabilities'][n]:.4f} | {s['documents']:,} | "
        f"{s['tokens']:,} |"
        for n, s in summary["super_clusters"].items()
    )
    files = ", ".join(f'"{n}": "{n}/*.parquet"' for n in names)
    probs = json.dumps([round(summary["probabilities"][n], 6) for n in names])
    return f"""---
configs:
{configs}
---
# ClimbMix export

The mixture a CLIMB search chose (manifest digest `{summary["manifest_digest"]}`, seed
{summary["seed"]}): one Parquet folder per super-cluster, each row a selected document
(`text`, `doc_id`, `cluster_id`, `super_cluster_id`, `n_tokens` in the manifest's tokenizer).
A document appears once per pass the token budget asked for.

| super-cluster | token weight | document probability | documents | tokens |
|---|---|---|---|---|
{rows}

Token weights are the ClimbMix weights. Interleaving draws documents, so use the document
probabilities (each weight divided by the super-cluster's mean document length) to get those
token shares:

```python
import datasets

files = {{{files}}}
parts = [datasets.load_dataset("parquet", data_files=f, split="train") for f in files.values()]
mix = datasets.interleave_datasets(
    parts, probabilities={probs}, seed={summary["seed"]},
    stopping_strategy="all_exhausted",
)
```
"""


class HFExport(Exporter):
    """Parquet folders per super-cluster and a dataset card for the `datasets` library."""

    name = "hf"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for i, part in enumerate(ctx.read_parts(COLUMNS)):
            groups = part.column("super_cluster_id").to_numpy()
            for sc in np.unique(groups):
                name = prefix_name(int(sc))
                rows = part.filter(pa.array(groups == sc))
                folder = out / name
                folder.mkdir(exist_ok=True)
                pq.write_table(rows, folder / f"part-{i:05d}.parquet", compression="zstd")
                entry = counts.setdefault(name, {"documents": 0, "tokens": 0})
                entry["documents"] += rows.num_rows
                entry["tokens"] += int(np.asarray(rows.column("n_tokens")).sum())
        super_clusters = {
            name: {"weight": float(ctx.weights[int(name[3:])]), **c}
            for name, c in sorted(counts.items())
        }
        mean_tokens = {n: s["tokens"] / s["documents"] for n, s in super_clusters.items()}
        probabilities = document_probabilities(
            {n: s["weight"] for n, s in super_clusters.items()}, mean_tokens
        )
        summary = {
            "manifest_digest": ctx.manifest_digest,
            "seed": ctx.seed,
            "super_clusters": super_clusters,
            "probabilities": probabilities,
        }
        (out / "README.md").write_text(dataset_card(summary))
        log(f"export hf: {len(super_clusters)} Parquet folders and a dataset card")
        return {k: v for k, v in summary.items() if k != "manifest_digest"}

"""ClimbLab: every kept document of the corpus, grouped by super-cluster, ready to re-mix.

What NVIDIA released beside ClimbMix: not one mixture, but the clustered corpus itself, so a team
can choose other weights without re-running embeddings, clustering and pruning. One folder per
super-cluster, one Parquet file per corpus shard inside it (memory holds one shard), each row a
kept document with its cluster, its quality scores and its cluster's top terms.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.exports.base import ExportContext, Exporter
from climb_assets.lib.exports.megatron import prefix_name


class ClimbLabExport(Exporter):
    """Kept documents with cluster, super-cluster, quality scores and top terms."""

    name = "climblab"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        store = ctx.store
        clusters = pl.from_arrow(
            store.read_parquet("clusters/clusters.parquet", ["cluster_id", "top_terms"])
        ).with_columns(pl.col("cluster_id").cast(pl.Int32))
        totals: dict[str, dict[str, int]] = {}
        for shard in ctx.shards:
            stem = shard_stem(shard)
            members = pl.from_arrow(store.read_parquet(f"super_clusters/members/{stem}.parquet"))
            docs = pl.from_arrow(store.read_parquet(f"corpus_documents/{stem}.parquet"))
            scores = pl.from_arrow(store.read_parquet(f"cluster_quality/{stem}.parquet"))
            kept = (
                members.filter(pl.col("super_cluster_id").is_not_null())
                .join(docs.select("doc_id", "text", "n_chars"), on="doc_id")
                .join(scores.select("doc_id", *ctx.scorers), on="doc_id", how="left")
                .with_columns(pl.col("cluster_id").cast(pl.Int32))
                .join(clusters, on="cluster_id", how="left")
                .with_columns(pl.lit(shard).alias("shard"))
            )
            for (sc,), group in kept.partition_by("super_cluster_id", as_dict=True).items():
                name = prefix_name(int(sc))
                folder = out / name
                folder.mkdir(exist_ok=True)
                pq.write_table(group.to_arrow(), folder / f"{stem}.parquet", compression="zstd")
                entry = totals.setdefault(name, {"documents": 0, "chars": 0})
                entry["documents"] += group.height
                entry["chars"] += int(group.get_column("n_chars").sum())
        weights = {prefix_name(i): float(w) for i, w in enumerate(np.asarray(ctx.weights))}
        summary = {
            "super_clusters": {
                n: {**t, "climbmix_weight": weights.get(n, 0.0)} for n, t in sorted(totals.items())
            },
            "documents": sum(t["documents"] for t in totals.values()),
            "columns": [
                "doc_id", "cluster_id", "super_cluster_id", "text", "n_chars", *ctx.scorers,
                "top_terms", "shard",
            ],
        }  # fmt: skip
        log(f"export climblab: {summary['documents']:,} kept documents in {len(totals)} folders")
        return summary

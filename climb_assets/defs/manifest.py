"""The `climbmix_manifest` asset: the final mixture and everything a training team needs."""

import time
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.defs.common import registered_shards
from climb_assets.defs.data_side import shard_file
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    GROUP,
    _cluster_summary,
    _sampler,
    cluster_tokens,
    proxy_config,
    round_keys,
)
from climb_assets.lib import manifest, mixture, plots, predictor


@dg.asset(group_name=GROUP, deps=["predictor_models", cluster_tokens], kinds={"json", "parquet"})
def climbmix_manifest(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """The ClimbMix manifest: final weights, token budgets, selected documents and exports."""
    profile, store = climb.settings(), climb.store()
    keys = round_keys(profile)
    missing = [k for k in keys if not store.exists(f"search/{k}/predictor.txt")]
    if missing:
        raise ValueError(
            f"search round(s) {missing} have no predictor yet; materialize every round of "
            "the search (a backfill of all iteration partitions) before the manifest"
        )
    m, s = profile.manifest, profile.search
    last = keys[-1]
    summary = _cluster_summary(store)
    available = np.asarray(summary["tokens"], dtype=np.int64)
    prior = mixture.natural_prior(available)
    booster = predictor.load_predictor(store.read_bytes(f"search/{last}/predictor.txt").decode())
    observed: dict[str, Any] = {}
    if s.final == "best_observed":
        evaluated = pl.concat(
            [pl.from_arrow(store.read_parquet(f"search/{k}/evaluations.parquet",
                                              ["mixture_id", "weights", "objective"]))
             for k in keys]
        ).sort("mixture_id")  # fmt: skip
        best = evaluated.row(int(evaluated.get_column("objective").arg_max()), named=True)
        weights = np.asarray(best["weights"], dtype=np.float64)
        observed = {"mixture_id": best["mixture_id"], "observed_objective": best["objective"]}
        context.log.info(
            f"final: {best['mixture_id']}, best observed objective {best['objective']}"
        )
    else:
        pool = mixture.candidate_pool(prior, s.candidates, m.seed, _sampler(profile))
        scores = predictor.predict(booster, pool)
        weights = mixture.final_mixture(pool, scores, s.final, s.final_top_k)
    predicted = float(predictor.predict(booster, weights[None, :])[0])
    budget = manifest.token_budget(weights, available, m.total_tokens, m.max_epochs)
    for idx in budget.capped:
        context.log.warning(
            f"super-cluster {idx}: {budget.requested[idx]} tokens requested but only "
            f"{budget.available[idx]} exist; capped at {m.max_epochs} epochs, excess redistributed"
        )

    selected = []
    for sc in range(len(weights)):
        docs = store.read_parquet(f"cluster_tokens/sc_{sc:03d}.docs.parquet")
        ids = docs.column("doc_id").to_pylist()
        rows, passes = manifest.select_documents(
            ids, docs.column("n_tokens").to_numpy(), int(budget.granted[sc]), m.seed
        )
        selected.append(
            pl.from_arrow(docs).select("doc_id", "cluster_id", "n_tokens")[rows.tolist()]
            .with_columns(pl.lit(sc, pl.Int32).alias("super_cluster_id"), pl.Series("pass", passes))
        )  # fmt: skip
    chosen = pl.concat(selected)

    def texts_of(shard: str):
        rel = shard_file("corpus_documents", shard)
        return lambda: pl.from_arrow(store.read_parquet(rel, ["doc_id", "text"]))

    shard_paths = manifest.write_shuffled_parts(
        store, chosen, [texts_of(sh) for sh in registered_shards(context)], m.parquet_shards,
        m.seed,
    )  # fmt: skip

    rounds = [store.read_json(f"search/{k}/round.json") for k in keys]
    tok_info = store.read_json("tokenizer/info.json")
    encoder = (
        store.read_json("embeddings/_encoder.json")
        if store.exists("embeddings/_encoder.json")
        else {}
    )
    prefixes = [f"climbmix/sc_{i:03d}" for i in range(len(weights))]
    blend = manifest.megatron_blend(weights, prefixes)
    doc = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"name": profile.name, "digest": profile.digest},
        "seeds": {
            "kmeans": profile.kmeans.seed, "tokenizer": profile.tokenizer.seed,
            "search": s.seed, "proxy": profile.proxy.seed, "manifest": m.seed,
        },
        "encoder": encoder,
        "tokenizer": tok_info,
        "proxy": proxy_config(profile).to_dict(),
        "final": {"method": s.final, "top_k": s.final_top_k, "predicted_objective": predicted,
                  **observed},
        "rounds": [
            {"round": r["round"], "points": r["points"], "cv_spearman": r["cv_spearman"],
             "best_observed": r["best_observed"], "best_predicted": r["best_predicted"]}
            for r in rounds
        ],
        "super_clusters": [
            {"super_cluster_id": i, "weight": float(weights[i]), "natural": float(prior[i]),
             "available_tokens": int(available[i]), "requested_tokens": int(budget.requested[i]),
             "tokens": int(budget.granted[i]), "epochs": float(budget.epochs[i])}
            for i in range(len(weights))
        ],
        "total_tokens": {"requested": m.total_tokens, "granted": int(budget.granted.sum()),
                         "shortfall": budget.shortfall, "redistributed": budget.redistributed},
        "max_epochs": m.max_epochs,
        "documents": chosen.height,
        "shards": shard_paths,
        "megatron_blend": blend,
    }  # fmt: skip
    store.write_json("manifest/climbmix.json", doc)
    store.write_json("manifest/megatron_blend.json", {"data_path": blend})
    store.write_bytes("manifest/megatron_blend.txt", (" ".join(map(str, blend)) + "\n").encode())
    store.write_parquet(
        "manifest/weights.parquet",
        pa.table(
            {
                "super_cluster_id": pa.array(np.arange(len(weights)), pa.int32()),
                "weight": weights,
                "natural": prior,
                "available_tokens": available,
                "tokens": budget.granted,
                "epochs": budget.epochs,
            }
        ),
    )
    weights_png = plots.weights_png(weights, prior)
    rounds_png = plots.rounds_png(
        [r["round"] for r in rounds],
        [r["best_observed"] for r in rounds],
        [r["best_predicted"] for r in rounds],
    )
    store.write_bytes("manifest/weights.png", weights_png)
    store.write_bytes("manifest/rounds.png", rounds_png)
    return dg.MaterializeResult(
        metadata={
            "weights": [round(float(w), 4) for w in weights],
            "natural": [round(float(p), 4) for p in prior],
            "predicted_objective": round(predicted, 5),
            "documents": chosen.height,
            "tokens": int(budget.granted.sum()),
            "shortfall": budget.shortfall,
            "capped_super_clusters": budget.capped,
            "seed": m.seed,
            "weights_vs_natural": dg.MetadataValue.md(plots.markdown_image(weights_png, "weights")),
            "objective_by_round": dg.MetadataValue.md(plots.markdown_image(rounds_png, "rounds")),
            "manifest": dg.MetadataValue.path(store.uri("manifest/climbmix.json")),
            "blend": dg.MetadataValue.json({"data_path": blend}),
        }
    )

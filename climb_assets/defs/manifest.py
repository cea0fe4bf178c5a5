"""The `climbmix_manifest` asset: the final mixture and everything a training team needs."""

import time
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.defs.common import chart, metadata_table, registered_shards
from climb_assets.defs.data_side import shard_file
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    GROUP,
    cluster_summary,
    cluster_tokens,
    proxy_config,
    round_keys,
)
from climb_assets.defs.search_round import (
    load_round_predictor,
    metric_datas_so_far,
    search_space,
)
from climb_assets.lib import manifest, mixture, plots, proposals
from climb_assets.lib.predictors.base import PredictorError, build_models
from climb_assets.lib.storage import Store


def _measured(evaluated: pl.DataFrame, weights: np.ndarray) -> tuple[str | None, float | None]:
    """The trained proxy whose mixture is the chosen one (same `mixture_key`), if any."""
    key = mixture.mixture_key(weights)
    for row in evaluated.iter_rows(named=True):
        if mixture.mixture_key(np.asarray(row["weights"], dtype=np.float64)) == key:
            return row["mixture_id"], float(row["objective"])
    return None, None


def super_cluster_terms(store: Store, n: int) -> list[list[str]]:
    """Each super-cluster's top c-TF-IDF terms (empty lists when the summary has none)."""
    rel = "super_clusters/super_clusters.parquet"
    if not store.exists(rel):
        return [[] for _ in range(n)]
    rows = store.read_parquet(rel, ["super_cluster_id", "top_terms"]).to_pylist()
    terms = {r["super_cluster_id"]: list(r["top_terms"] or []) for r in rows}
    return [terms.get(i, []) for i in range(n)]


@dg.asset(
    group_name=GROUP,
    deps=[
        # The last round's predictor was fitted on every round's evaluations; a single-partition
        # mapping lets Dagster compare data versions (all-partition deps on time windows are
        # left out of its staleness), so a new last round marks the manifest stale.
        dg.AssetDep("predictor_models", partition_mapping=dg.LastPartitionMapping()),
        "proxy_evaluations",
        cluster_tokens,
        # Read directly (membership, texts): a corpus refresh re-materializes these, and the
        # manifest must then show that it was built from the older corpus.
        "super_clusters",
        "corpus_documents",
    ],
    kinds={"json", "parquet"},
    description=(
        "The ClimbMix manifest: the final mixture (rule search.final), its predicted and measured "
        "objective, token budgets under the repetition cap, the selected documents as shuffled "
        "Parquet parts and the Megatron blend. Stale after any corpus refresh or new round."
    ),
)
def climbmix_manifest(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    profile, store = climb.settings(), climb.store()
    keys = round_keys(profile)
    missing = [k for k in keys if not store.exists(f"search/{k}/predictor.json")]
    if missing:
        raise ValueError(
            f"search round(s) {missing} have no predictor yet; materialize every round of "
            "the search (a backfill of all iteration partitions) before the manifest"
        )
    m, s = profile.manifest, profile.search
    last = keys[-1]
    space = search_space(profile, store)
    available = np.asarray(cluster_summary(store)["tokens"], dtype=np.int64)
    prior = space.prior
    model = load_round_predictor(store, last)
    last_round = store.read_json(f"search/{last}/round.json")
    chosen_by: dict[str, Any] = {}
    evaluated = pl.concat(
        [pl.from_arrow(store.read_parquet(f"search/{k}/evaluations.parquet",
                                          ["mixture_id", "weights", "objective"]))
         for k in keys]
    ).sort("mixture_id")  # fmt: skip
    if s.final == "best_observed":
        x = np.array(evaluated.get_column("weights").to_list(), dtype=np.float64)
        feasible = proposals.within_caps(x, space.caps)
        if not feasible.any():
            raise ValueError(
                "no trained proxy's mixture fits within the repetition caps (manifest.max_epochs "
                "against manifest.total_tokens); use search.final: argmax, or raise max_epochs"
            )
        objective = evaluated.get_column("objective").to_numpy()
        best_row = int(np.argmax(np.where(feasible, objective, -np.inf)))
        best = evaluated.row(best_row, named=True)
        weights = np.asarray(best["weights"], dtype=np.float64)
        chosen_by = {"mixture_id": best["mixture_id"], "observed_objective": best["objective"],
                     "infeasible_proxies_skipped": int((~feasible).sum())}  # fmt: skip
        context.log.info(
            f"final: {best['mixture_id']}, best observed objective {best['objective']} among "
            f"{int(feasible.sum())} proxies within the repetition caps"
        )
    else:
        pool = space.pool(profile, m.seed)
        scores = model.predict(pool)
        ties = proposals.top_ties(scores, 1 if s.final == "argmax" else s.final_top_k)
        if s.final == "argmax" and ties.tied > 1:
            context.log.warning(
                f"{ties.tied} candidates tie at the best predicted value; the final mixture is "
                "their mean (the centre of the predicted-best region)"
            )
        weights = mixture.final_mixture(pool, scores, s.final, s.final_top_k)
        chosen_by = {"tied_at_best": ties.tied, "candidates": len(pool)}
    chosen_id, measured = _measured(evaluated, weights)
    predicted = float(model.predict(weights[None, :])[0])
    std = model.predict_std(weights[None, :])
    # The band is the larger of the model's own std and its out-of-sample error: at a trained
    # mixture a GP's std shrinks to its noise term, which says nothing about how far off it is.
    spreads = {"predictive standard deviation": None if std is None else float(std[0]),
               "cross-validated RMSE of the last predictor": last_round.get("cv_rmse")}  # fmt: skip
    known = {k: v for k, v in spreads.items() if v is not None}
    band_source = max(known, key=known.__getitem__) if known else "none available"
    band = known.get(band_source)
    ratio = m.total_tokens / proxy_config(profile).train_tokens
    at_total, at_total_note = None, None
    try:
        law = model if model.volume_aware else build_models("bimix", metric_datas_so_far(
            profile, store), s.seed)  # fmt: skip
        at_total = float(law.predict(weights[None, :], volume=ratio)[0])
    except PredictorError as exc:
        at_total_note = str(exc)
    budget = manifest.token_budget(weights, available, m.total_tokens, m.max_epochs)
    for idx in budget.capped:
        context.log.warning(
            f"super-cluster {idx}: {budget.requested[idx]} tokens requested but only "
            f"{budget.available[idx]} exist; capped at {m.max_epochs} epochs, excess redistributed"
        )

    selected, dominated = [], {}
    for sc in range(len(weights)):
        docs = store.read_parquet(f"cluster_tokens/sc_{sc:03d}.docs.parquet")
        ids = docs.column("doc_id").to_pylist()
        held = manifest.dominated_by_few(docs.column("n_tokens").to_numpy())
        if held is not None and weights[sc] > 0:
            dominated[sc] = round(held, 3)
            context.log.warning(
                f"super-cluster {sc}: its 5 longest documents hold {held:.0%} of its tokens; "
                "its weight mostly buys those few documents (lower corpus.max_chars to split them)"
            )
        rows, passes = manifest.select_documents(
            ids, docs.column("n_tokens").to_numpy(), int(budget.granted[sc]), m.seed
        )
        selected.append(
            pl.from_arrow(docs).select("doc_id", "cluster_id", "n_tokens")[rows.tolist()]
            .with_columns(pl.lit(sc, pl.Int32).alias("super_cluster_id"), pl.Series("pass", passes))
        )  # fmt: skip
    chosen = pl.concat(selected)
    exported = (
        chosen.group_by("super_cluster_id").agg(pl.col("n_tokens").sum())
        .sort("super_cluster_id")
    )  # fmt: skip
    exported_tokens = np.zeros(len(weights), np.int64)
    exported_tokens[exported.get_column("super_cluster_id").to_numpy()] = exported.get_column(
        "n_tokens"
    ).to_numpy()
    accounting = manifest.check_token_accounting(budget.granted, exported_tokens)
    if not accounting["within_tolerance"]:
        context.log.warning(f"token accounting: {accounting['note']}")

    def texts_of(shard: str):
        rel = shard_file("corpus_documents", shard)
        return lambda: pl.from_arrow(store.read_parquet(rel, ["doc_id", "text"]))

    shard_paths = manifest.write_shuffled_parts(
        store, chosen, [texts_of(sh) for sh in registered_shards(context)], m.parquet_shards,
        m.seed,
    )  # fmt: skip

    rounds = [store.read_json(f"search/{k}/round.json") for k in keys]
    terms = super_cluster_terms(store, len(weights))
    tok_info = store.read_json("tokenizer/info.json")
    encoder = (
        store.read_json("embeddings/_encoder.json")
        if store.exists("embeddings/_encoder.json")
        else {}
    )
    # The prefixes of the megatron export (`climbmix_exports`), relative to the storage root.
    prefixes = [f"exports/megatron/sc_{i:03d}" for i in range(len(weights))]
    # A super-cluster whose budget selected no document has no dataset to point at.
    blend = manifest.megatron_blend(np.where(exported_tokens > 0, weights, 0.0), prefixes)
    digest = manifest.selection_digest(chosen, weights, m.seed)
    doc = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"name": profile.name, "digest": profile.digest},
        "manifest_digest": digest,
        "seeds": {
            "kmeans": profile.kmeans.seed, "tokenizer": profile.tokenizer.seed,
            "search": s.seed, "proxy": profile.proxy.seed, "manifest": m.seed,
        },
        "encoder": encoder,
        "tokenizer": tok_info,
        "proxy": proxy_config(profile).to_dict(),
        "final": {
            "method": s.final, "top_k": s.final_top_k, "predictor_kind": profile.predictor.kind,
            "predictor_used": last_round["used"], "predicted_objective": predicted,
            "predicted_objective_band": band, "band": band_source,
            "predicted_objective_at_total_tokens": at_total,
            "at_total_tokens_note": at_total_note or (
                f"bimix law extrapolated {ratio:.3g}x beyond the proxy budget; a rough guide"),
            "mixture_id": chosen_id, "measured_objective": measured,
            **chosen_by,
        },
        "rounds": [
            {"round": r["round"], "points": r["points"], "used": r["used"],
             "cv_spearman": r["cv_spearman"], "cv_by_kind": r["cv_by_kind"],
             "best_observed": r["best_observed"], "best_predicted": r["best_predicted"]}
            for r in rounds
        ],
        "super_clusters": [
            {"super_cluster_id": i, "top_terms": terms[i], "weight": float(weights[i]),
             "natural": float(prior[i]),
             "available_tokens": int(available[i]), "requested_tokens": int(budget.requested[i]),
             "tokens": int(budget.granted[i]), "exported_tokens": int(exported_tokens[i]),
             "epochs": float(budget.epochs[i])}
            for i in range(len(weights))
        ],
        "total_tokens": {"requested": m.total_tokens, "granted": int(budget.granted.sum()),
                         "shortfall": budget.shortfall, "redistributed": budget.redistributed,
                         "capped_super_clusters": budget.capped,
                         "exported": int(exported_tokens.sum()), "accounting": accounting},
        "dominated_super_clusters": dominated,
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
                "natural_share": prior,  # `natural` is a SQL keyword
                "available_tokens": available,
                "tokens": budget.granted,
                "epochs": budget.epochs,
            }
        ),
    )
    best = evaluated.row(int(evaluated.get_column("objective").arg_max()), named=True)
    how = {
        "argmax": f"predictor argmax of {chosen_by.get('candidates')} fresh candidates",
        "topk_mean": f"mean of the predictor's top {s.final_top_k} fresh candidates",
        "best_observed": "the trained proxy with the best measured objective",
    }[s.final]
    return dg.MaterializeResult(
        metadata={
            # What was chosen and why leads: the UI lists metadata in this order.
            "chosen_mixture": chosen_id or how,
            "rule": f"search.final: {s.final} ({how}); predictor {last_round['used']}",
            "predicted_objective": round(predicted, 5),
            "predicted_objective_band": "n/a" if band is None else round(band, 5),
            "measured_objective": (
                round(measured, 5)
                if measured is not None
                else "not measured: no proxy was trained on this exact mixture"
            ),
            "best_proxy": f"{best['mixture_id']}: objective {best['objective']:.5f}",
            "super_clusters": metadata_table(
                [
                    {
                        "super_cluster_id": i,
                        "top_terms": " ".join(terms[i][:6]),
                        "natural_share": round(float(prior[i]), 4),
                        "climbmix_weight": round(float(weights[i]), 4),
                        "tokens": int(budget.granted[i]),
                    }
                    for i in range(len(weights))
                ],
                {
                    "natural_share": "share of the kept corpus's tokens",
                    "climbmix_weight": "the final mixture's weight",
                    "tokens": "tokens granted in the manifest's budget",
                },
            ),
            "predictor_used": last_round["used"],
            "documents": chosen.height,
            "tokens": int(budget.granted.sum()),
            "exported_tokens": int(exported_tokens.sum()),
            "token_accounting": accounting["note"],
            "dominated_super_clusters": dominated or "none",
            "shortfall": budget.shortfall,
            "capped_super_clusters": budget.capped,
            "seed": m.seed,
            "manifest_digest": digest,
            **chart(
                store,
                "manifest/weights.png",
                plots.weights_png(weights, prior),
                "ClimbMix weight against natural share per super-cluster",
            ),
            **chart(
                store,
                "manifest/rounds.png",
                plots.rounds_png(
                    [r["round"] for r in rounds],
                    [r["best_observed"] for r in rounds],
                    [r["best_predicted"] for r in rounds],
                ),
                "best measured and best predicted objective after each round",
            ),
            "manifest": dg.MetadataValue.path(store.uri("manifest/climbmix.json")),
            "blend": dg.MetadataValue.json({"data_path": blend}),
        }
    )

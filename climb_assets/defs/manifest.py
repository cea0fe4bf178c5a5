"""The `climbmix_manifest` asset: the final mixture and everything a training team needs."""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.defs.common import (
    MANIFEST_SOURCE_FILE,
    chart,
    corpus_state,
    metadata_table,
    registered_shards,
)
from climb_assets.defs.data_side import shard_file
from climb_assets.defs.final_choice import choose_final
from climb_assets.defs.references import reference_mixtures
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    DOCS_BATCH_ROWS,
    GROUP,
    cluster_summary,
    cluster_tokens,
    proxy_config,
    super_cluster_documents,
    trainable_tokens,
)
from climb_assets.lib import manifest, mixture, plots
from climb_assets.lib.storage import Store


def _rounded(value: float | None, missing: str | None) -> float | str | None:
    return missing if value is None else round(value, 5)


def _rounds_chart(store: Store, rounds: list[dict]) -> dict:
    return chart(
        store,
        "manifest/rounds.png",
        plots.rounds_png(
            [r["round"] for r in rounds],
            [r["best_observed"] for r in rounds],
            [r["best_predicted"] for r in rounds],
        ),
        "best measured and best predicted objective after each round",
    )


def largest_weights(weights: list[float], top: int = 3) -> str:
    """A mixture in one short line: its `top` largest weights by super-cluster, and the rest."""
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], i))[:top]
    shown = ", ".join(f"{i}: {weights[i]:.2f}" for i in order)
    rest = 1.0 - sum(weights[i] for i in order)
    return f"{shown}, others {rest:.2f}" if len(weights) > top else shown


def super_cluster_terms(store: Store, n: int) -> list[list[str]]:
    """Each super-cluster's top c-TF-IDF terms (empty lists when the summary has none)."""
    rel = "super_clusters/super_clusters.parquet"
    if not store.exists(rel):
        return [[] for _ in range(n)]
    rows = store.read_parquet(rel, ["super_cluster_id", "top_terms"]).to_pylist()
    terms = {r["super_cluster_id"]: list(r["top_terms"] or []) for r in rows}
    return [terms.get(i, []) for i in range(n)]


TEXT_BATCH_ROWS = 8192
"""Corpus rows whose text the manifest reads at a time while writing its parts."""


def _rows_of(
    store: Store, rel: str, positions: np.ndarray, sc: int, pass_: int
) -> Iterator[pl.DataFrame]:
    """The rows at increasing `positions` of a super-cluster's documents list, with its id and
    where the document lies in the corpus, as `pass_` of the selection: one read batch at a time."""
    columns = ["doc_id", "cluster_id", "n_tokens", "shard", "row"]
    for _, table in store.iter_parquet_rows(rel, positions, columns, DOCS_BATCH_ROWS):
        yield pl.from_arrow(table).with_columns(
            pl.lit(sc, pl.Int32).alias("super_cluster_id"), pl.lit(pass_, pl.Int32).alias("pass")
        )


@dg.asset(
    group_name=GROUP,
    deps=[
        # The last round's predictor was fitted on every round's evaluations; a single-partition
        # mapping lets Dagster compare data versions (all-partition deps on time windows are
        # left out of its staleness), so a new last round marks the manifest stale.
        dg.AssetDep("predictor_models", partition_mapping=dg.LastPartitionMapping()),
        "proxy_evaluations",
        # search.final: confirmed ships the best measured of this proxy, the rounds' and anchors.
        "confirmation_proxy",
        cluster_tokens,
        reference_mixtures,
        # Read directly (membership, texts): a corpus refresh re-materializes these, and the
        # manifest must then show that it was built from the older corpus.
        "super_clusters",
        "corpus_documents",
    ],
    kinds={"json", "parquet"},
    description=(
        "The ClimbMix manifest: the final mixture (rule search.final, or DoReMi's with "
        "search.method: doremi), its predicted and measured objective, token budgets under the "
        "repetition cap, the selected documents as shuffled Parquet parts and the Megatron "
        "blend. Stale after any corpus refresh or new round."
    ),
)
def climbmix_manifest(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    profile, store = climb.settings(), climb.store()
    m, s = profile.manifest, profile.search
    choice = choose_final(profile, store, context.log)
    weights = choice.weights
    available = np.asarray(cluster_summary(store)["tokens"], dtype=np.int64)
    prior = mixture.natural_prior(available)

    # The validation documents are held out before the budget: it is drawn on what is left.
    trainable = trainable_tokens(store, profile)
    held_tokens = available - trainable
    budget = manifest.token_budget(weights, trainable, m.total_tokens, m.max_epochs)
    for idx in budget.capped:
        context.log.warning(
            f"super-cluster {idx}: {budget.requested[idx]} tokens requested but only "
            f"{budget.available[idx]} exist; capped at {m.max_epochs} epochs, excess redistributed"
        )

    # The documents lists number the shards cluster_tokens read; the parts read each one's
    # texts by row, checked against the ids.
    listed = store.read_json("cluster_tokens/summary.json").get("shards")
    if listed is None:
        raise manifest.ManifestError(
            "cluster_tokens was built by an older climb (its documents lists do not say where "
            "each document is): re-materialize cluster_tokens (climb run redoes it)"
        )

    # Each super-cluster's documents are held as numbers (counts, keys) while its selection is
    # drawn; the selected and validation rows are then read back with their ids one read batch
    # at a time and staged by corpus shard for the parts (`ShuffledSplits`): no step holds a
    # super-cluster's selected rows, let alone the whole selection.
    outputs = {"manifest/shards": m.parquet_shards, "manifest/validation": 1}
    splits = manifest.ShuffledSplits(store, outputs, m.seed, optional=["manifest/validation"])
    # Validation rows enter the digest as pass -1: a new hold-out is a new manifest.
    identity = manifest.SelectionDigest(weights, m.seed)
    n_super = len(weights)
    exported_tokens = np.zeros(n_super, np.int64)
    held_documents = np.zeros(n_super, np.int64)
    n_selected, dominated = 0, {}
    for sc in range(n_super):
        docs = super_cluster_documents(store, profile, sc, selection_keys=True)
        assert docs.keys is not None
        for held in _rows_of(store, docs.rel, np.flatnonzero(docs.held), sc, 0):
            held_documents[sc] += held.height
            identity.add(held.with_columns(pl.lit(-1, pl.Int32).alias("pass")))
            splits.add("manifest/validation", held)
        train = np.flatnonzero(~docs.held)
        n_tokens = docs.n_tokens[train]
        share = manifest.dominated_by_few(n_tokens)
        if share is not None and weights[sc] > 0:
            dominated[sc] = round(share, 3)
            context.log.warning(
                f"super-cluster {sc}: its 5 longest documents hold {share:.0%} of its tokens; "
                "its weight mostly buys those few documents (lower corpus.max_chars to split them)"
            )
        rows, passes = manifest.select_by_keys(docs.keys[train], n_tokens, int(budget.granted[sc]))
        positions = train[rows]
        for p in np.unique(passes).tolist():  # each pass's documents in list order
            for chosen in _rows_of(store, docs.rel, np.sort(positions[passes == p]), sc, p):
                exported_tokens[sc] += int(chosen.get_column("n_tokens").sum())
                n_selected += chosen.height
                identity.add(chosen)
                splits.add("manifest/shards", chosen)
    n_held = int(held_documents.sum())
    accounting = manifest.check_token_accounting(budget.granted, exported_tokens)
    if not accounting["within_tolerance"]:
        context.log.warning(f"token accounting: {accounting['note']}")

    def texts_of(j: int, rows: np.ndarray):  # one read batch of the shard's texts at a time
        rel = shard_file("corpus_documents", listed[j])
        return store.iter_parquet_rows(rel, rows, ["doc_id", "text"], TEXT_BATCH_ROWS)

    written = splits.write(len(listed), texts_of)
    shard_paths = written["manifest/shards"]
    digest = identity.hexdigest()
    shards = registered_shards(context)

    rounds = choice.rounds
    terms = super_cluster_terms(store, len(weights))
    tok_info = store.read_json("tokenizer/info.json")
    encoder = (
        store.read_json("embeddings/_encoder.json")
        if store.exists("embeddings/_encoder.json")
        else {}
    )
    # The prefixes of the megatron export (`climbmix_exports`), relative to the storage root.
    prefixes = [f"exports/megatron/sc_{i:03d}" for i in range(len(weights))]
    # Weighted by the tokens each super-cluster ships (its passes included), as the export's
    # train_blend.txt is: Megatron's epochs over each prefix then repeat what the budget asks.
    # A super-cluster whose budget selected no document has no dataset and leaves the blend.
    blend = manifest.megatron_blend(exported_tokens / max(1, exported_tokens.sum()), prefixes)
    built_from = corpus_state(store, shards)
    doc = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": {"name": profile.name, "digest": profile.digest},
        "manifest_digest": digest,
        # When the corpus changes after this, `climb run`, `climb catalog` and the catalog's
        # manifest views say the manifest is stale (`manifest_staleness`).
        "corpus": built_from,
        "seeds": {
            "kmeans": profile.kmeans.seed, "tokenizer": profile.tokenizer.seed,
            "search": s.seed, "proxy": profile.proxy.seed, "manifest": m.seed,
        },
        "encoder": encoder,
        "tokenizer": tok_info,
        "proxy": proxy_config(profile).to_dict(),
        "final": {
            "method": "doremi" if s.runs_doremi else s.final, "search_method": s.method,
            "how": choice.how, "top_k": s.final_top_k,
            "predictor_kind": profile.predictor.kind,
            "predictor_used": choice.predictor_used, "predicted_objective": choice.predicted,
            "predicted_objective_band": choice.band, "band": choice.band_source,
            "predicted_objective_at_total_tokens": choice.at_total,
            "at_total_tokens_note": choice.at_total_note,
            "mixture_id": choice.mixture_id, "measured_objective": choice.measured,
            "best_proxy": choice.best_proxy,
            "predicted_for_best_proxy": choice.predicted_for_best_proxy,
            **choice.chosen_by,
        },
        "reference_mixtures": choice.references,
        "rounds": [
            {"round": r["round"], "points": r["points"], "used": r["used"],
             "cv_spearman": _rounded(r["cv_spearman"], None),
             "cv_by_kind": {k: _rounded(v, None) for k, v in r["cv_by_kind"].items()},
             "trusted": r.get("trusted", True), "noise_floor": r.get("noise_floor"),
             "best_observed": r["best_observed"], "best_predicted": r["best_predicted"]}
            for r in rounds
        ],
        "super_clusters": [
            {"super_cluster_id": i, "top_terms": terms[i], "weight": float(weights[i]),
             "natural": float(prior[i]),
             "available_tokens": int(available[i]), "requested_tokens": int(budget.requested[i]),
             "tokens": int(budget.granted[i]), "exported_tokens": int(exported_tokens[i]),
             "epochs": float(budget.epochs[i]),
             "validation_documents": int(held_documents[i]),
             "validation_tokens": int(held_tokens[i])}
            for i in range(len(weights))
        ],
        "total_tokens": {"requested": m.total_tokens, "granted": int(budget.granted.sum()),
                         "shortfall": budget.shortfall, "redistributed": budget.redistributed,
                         "capped_super_clusters": budget.capped,
                         "exported": int(exported_tokens.sum()), "accounting": accounting},
        "dominated_super_clusters": dominated,
        "max_epochs": m.max_epochs,
        "license": m.license,
        "documents": n_selected,
        "shards": shard_paths,
        "validation": {
            "share": m.validation_share, "documents": n_held,
            "tokens": int(held_tokens.sum()),
            "parts": written.get("manifest/validation", []),
            "note": "held out of each super-cluster before selection (seeded by "
                    "manifest.seed); never in a training part",
        },
        "megatron_blend": blend,
    }  # fmt: skip
    store.write_json("manifest/climbmix.json", doc)
    store.write_json(MANIFEST_SOURCE_FILE, {**built_from, "manifest_digest": digest})
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
                "validation_tokens": held_tokens,
                "tokens": budget.granted,
                "epochs": budget.epochs,
            }
        ),
    )
    best = choice.best_proxy
    used = f"; predictor {choice.predictor_used}" if choice.predictor_used else "; no proxies"
    return dg.MaterializeResult(
        metadata={
            # What was chosen and why leads: the UI lists metadata in this order.
            "chosen_mixture": choice.mixture_id or choice.how,
            "rule": (
                f"search.method: doremi ({choice.how})"
                if s.runs_doremi
                else f"search.final: {s.final} ({choice.how}){used}"
            ),
            "predicted_objective": _rounded(choice.predicted, "no predictor: no CLIMB round ran"),
            "predicted_objective_band": _rounded(choice.band, "n/a"),
            "measured_objective": _rounded(
                choice.measured, "not measured: no proxy was trained on this exact mixture"
            ),
            "best_proxy": "none trained"
            if best is None
            else f"{best['mixture_id']}: objective {best['objective']:.5f}",
            "predicted_for_best_proxy": _rounded(choice.predicted_for_best_proxy, "n/a"),
            # Id, weight, tokens and natural share lead, so they fit the UI at 1600 px; the
            # terms (three or four) come last.
            "super_clusters": metadata_table(
                [
                    {
                        "super_cluster_id": i,
                        "climbmix_weight": round(float(weights[i]), 4),
                        "tokens": int(budget.granted[i]),
                        "natural_share": round(float(prior[i]), 4),
                        "top_terms": " ".join(terms[i][:4]),
                    }
                    for i in range(len(weights))
                ],
                {
                    "climbmix_weight": "the final mixture's weight",
                    "tokens": "tokens granted in the manifest's budget",
                    "natural_share": "share of the kept corpus's tokens",
                },
            ),
            "reference_mixtures": metadata_table(
                [
                    {
                        "name": r["name"],
                        "predicted_objective": _rounded(r.get("predicted_objective"), None),
                        "climbmix_predicted_minus_this": _rounded(
                            r.get("predicted_gap_to_final"), None
                        ),
                        "within_repetition_caps": r["within_repetition_caps"],
                        "largest_weights": largest_weights(r["weights"]),
                    }
                    for r in choice.references
                ]
            ),
            "predictor_used": choice.predictor_used or "none",
            "documents": n_selected,
            "validation_documents": n_held,
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
            **(_rounds_chart(store, rounds) if rounds else {}),
            "manifest": dg.MetadataValue.path(store.uri("manifest/climbmix.json")),
            "blend": dg.MetadataValue.json({"data_path": blend}),
        }
    )

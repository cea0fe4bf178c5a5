"""The bootstrapping loop: one partitioned graph asset, one partition per search round.

Why one partitioned graph asset. Every round needs the previous round's predictor, and Dagster
rejects dependency loops through two or more asset keys whatever the partition mapping; an asset
may depend on itself only on time-window partitions. So the four per-round products
(`mixture_batches`, `proxy_checkpoints`, `proxy_evaluations`, `predictor_models`) are the outputs
of one `@graph_multi_asset` partitioned by iteration, whose input is its own `predictor_models`
output one partition back (`TimeWindowPartitionMapping(-1, -1)`). The partitions are daily
windows formatted `iter_%j`, starting on day 1 of 1900 (the date `strptime` gives `iter_001`),
so keys read `iter_001, iter_002, ...` and a backfill of all partitions runs them in order.
Lineage in the UI is honest: each round's outputs hang off the previous round's predictor, and
inside a round every proxy is its own step (dynamic fan-out), GPU-tagged for the executors.

The alternative, one set of asset keys per round from a factory, gives cleaner per-round
lineage but is not partitioning and fixes the rounds at load time just the same.
"""

import datetime as dt
import json
import warnings
from dataclasses import dataclass
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.config import Profile
from climb_assets.defs.common import chart, require_files
from climb_assets.defs.proxies import evaluate_proxy, gather_checkpoints, train_proxy
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    GROUP,
    IO,
    cluster_summary,
    load_alignment,
    load_targets,
    proxy_config,
    round_keys,
    sampler_settings,
    trainable_tokens,
)
from climb_assets.lib import mixture, plots, proposals, rounds
from climb_assets.lib.predictors import auto, report
from climb_assets.lib.predictors.base import Curve, Metric, MetricData
from climb_assets.lib.storage import Store
from climb_assets.lib.targets import Target

# allow_nonexistent_upstream_partitions is beta in dagster 1.13; round 1 has no predecessor.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*allow_nonexistent.*")

FIRST_DAY = dt.datetime(1900, 1, 1)


def iteration_partitions(n_rounds: int) -> dg.TimeWindowPartitionsDefinition:
    """Partitions `iter_001 .. iter_NNN`, one per search round.

    A daily time window underneath, with the day of the year as the key: Dagster lets an asset
    depend on its own earlier partitions (a round on the one before) only when they are time
    windows. So the UI and API describe them as "Daily, starting iter_001 UTC"; the webserver
    rebuilds that text from the definition's snapshot, so no subclass can change it.
    """
    return dg.TimeWindowPartitionsDefinition(
        start=FIRST_DAY,
        end=FIRST_DAY + dt.timedelta(days=n_rounds),
        cron_schedule="0 0 * * *",
        fmt="iter_%j",
    )


def _round_index(profile: Profile, key: str) -> int:
    keys = round_keys(profile)
    if key not in keys:
        raise ValueError(f"round {key} is not one of {keys}; the profile has {len(keys)} rounds")
    return keys.index(key)


def _trained(store: Store, profile: Profile, upto: int) -> tuple[set[str], np.ndarray]:
    """Keys and weights of the mixtures proposed by the rounds before `upto`."""
    done: set[str] = set()
    weights: list[list[float]] = []
    for key in round_keys(profile)[:upto]:
        rel = f"search/{key}/mixtures.parquet"
        if store.exists(rel):
            table = store.read_parquet(rel, ["key", "weights"])
            done.update(table.column("key").to_pylist())
            weights += table.column("weights").to_pylist()
    return done, np.asarray(weights, dtype=np.float64)


def _round_seed(profile: Profile, index: int, salt: int) -> int:
    return profile.search.seed * 1000 + index * 10 + salt


@dataclass(frozen=True)
class SearchSpace:
    """Where mixtures are drawn: token prior, sampler centre, repetition caps, target shares."""

    prior: np.ndarray
    center: np.ndarray | None
    caps: np.ndarray
    alignment: np.ndarray | None

    def pool(self, profile: Profile, seed: int) -> np.ndarray:
        """A fresh candidate pool that respects the caps."""
        return mixture.candidate_pool(
            self.prior, profile.search.candidates, seed, sampler_settings(profile), self.center,
            self.caps,
        )  # fmt: skip


def current_alignment(store: Store, k: int) -> np.ndarray | None:
    """The targets' shares over the current k super-clusters (None if absent or outdated)."""
    alignment = load_alignment(store)
    # An alignment made for other super-clusters is ignored until target_alignment runs again.
    return alignment if alignment is not None and alignment.size == k else None


def search_space(profile: Profile, store: Store) -> SearchSpace:
    """The search space of this profile; clear errors when the caps or the centre cannot hold."""
    available = np.asarray(cluster_summary(store)["tokens"], dtype=np.int64)
    prior = mixture.natural_prior(available)
    m = profile.manifest
    # Capped on what the manifest may train on: its validation documents are held out first.
    caps = proposals.repetition_caps(trainable_tokens(store, profile), m.total_tokens, m.max_epochs)
    alignment = current_alignment(store, prior.size)
    center = None
    weight = profile.search.target_prior_weight
    if weight > 0:
        if alignment is None:
            raise ValueError(
                "search.target_prior_weight > 0 needs the targets' distribution over the "
                "current super-clusters; materialize target_alignment first"
            )
        center = mixture.blend_center(prior, alignment, weight)
    return SearchSpace(prior, center, caps, alignment)


def load_round_predictor(store: Store, key: str) -> auto.Predictor:
    """The predictor fitted after round `key`."""
    rel = f"search/{key}/predictor.json"
    require_files(store, {key: rel}, "predictor_models")
    return auto.load(store.read_json(rel))


@dg.op(
    ins={
        "previous_predictor": dg.In(),
        "cluster_tokens": dg.In(dg.Nothing),
        "search_targets": dg.In(dg.Nothing),
        "target_alignment": dg.In(dg.Nothing),
    },
    out=dg.Out(io_manager_key=IO),
)
def propose_mixtures(
    context: dg.OpExecutionContext, climb: ClimbResource, previous_predictor: Any
) -> dict:
    """Round 1: the anchors, then design picks around the prior. Later: the trusted previous
    predictor's top set, or the model-free trust region when no predictor is trusted."""
    profile, store = climb.settings(), climb.store()
    key, s = context.partition_key, profile.search
    index = _round_index(profile, key)
    n = s.rounds[index]
    if index > 0:
        previous = round_keys(profile)[index - 1]
        if previous_predictor is None or not store.exists(f"search/{previous}/predictor.json"):
            raise ValueError(
                f"round {key} needs the predictor of round {previous}, which is missing; "
                f"materialize round {previous} first (rounds run in order)"
            )
    space = search_space(profile, store)
    trained, trained_weights = _trained(store, profile, index)
    seed = _round_seed(profile, index, 1)
    if index == 0:
        proposal = rounds.first_round(
            space.prior, n, seed, space.caps, sampler_settings(profile), s.design,
            space.alignment, space.center, s.anchors, trained,
        )  # fmt: skip
    else:
        measured, _ = evaluations_so_far(profile, store, index - 1)
        proposal = rounds.later_round(
            previous, lambda: space.pool(profile, seed), load_round_predictor(store, previous),
            None if previous_predictor.get("trusted", True) else previous_predictor["trust_note"],
            (np.array(measured.get_column("weights").to_list(), dtype=np.float64),
             measured.get_column("objective").to_numpy()),
            n, seed + 5, (trained, trained_weights), space.caps,
            rounds.LaterRound(max(n * n, s.top_k_min), s.design, s.acquisition, s.kappa,
                              s.exploit_picks, s.fallback_radius),
            space.alignment,
        )  # fmt: skip
    for note in proposal.notes:
        context.log.warning(note)
    weights, method, spread = proposal.weights, proposal.method, proposal.std
    mixtures = [
        {"mixture_id": f"{key}-m{j:03d}", "key": mixture.mixture_key(w), "weights": w.tolist(),
         "predicted": proposal.predicted[j], "design": proposal.designs[j],
         "reference": proposal.references[j]}
        for j, w in enumerate(weights)
    ]  # fmt: skip
    if index == 0:
        # The noise floor: the first mixtures (anchors first) again with other proxy seeds.
        base_seed = proxy_config(profile).seed
        for r in range(min(s.noise_replicates, n)):
            original = mixtures[r]
            mixtures.append({**original, "mixture_id": f"{key}-m{len(mixtures):03d}",
                             "predicted": None, "design": "replicate", "reference": None,
                             "replicate_of": original["mixture_id"],
                             "proxy_seed": base_seed + 1 + r})  # fmt: skip
    rows = len(mixtures)
    store.write_parquet(
        f"search/{key}/mixtures.parquet",
        pa.table(
            {
                "round": [key] * rows,
                "mixture_id": [m["mixture_id"] for m in mixtures],
                "key": [m["key"] for m in mixtures],
                "weights": pa.array([m["weights"] for m in mixtures], pa.list_(pa.float64())),
                "predicted_objective": pa.array([m["predicted"] for m in mixtures], pa.float64()),
                "predicted_std": pa.array(spread + [None] * (rows - n), pa.float64()),
                "method": [method] * rows,
                "design": [m["design"] for m in mixtures],
                "reference": pa.array([m["reference"] for m in mixtures], pa.string()),
                "replicate_of": pa.array([m.get("replicate_of") for m in mixtures], pa.string()),
                "proxy_seed": pa.array([m.get("proxy_seed") for m in mixtures], pa.int64()),
            }
        ),
    )
    context.add_output_metadata(
        {"round": key, "proxies": rows, "method": method, "seed": seed,
         "replicates": rows - n, "already_trained": len(trained),
         "target_centred": space.center is not None, **proposal.metadata}
    )  # fmt: skip
    return {"round": key, "method": method, "seed": seed, "mixtures": mixtures}


@dg.op(out=dg.DynamicOut(io_manager_key=IO))
def each_mixture(batch: dict):
    """One dynamic output per mixture, so every proxy run is its own step."""
    for m in batch["mixtures"]:
        yield dg.DynamicOutput(m, mapping_key=m["mixture_id"].replace("-", "_"))


def _metric_columns(scores: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    return [(name, metric) for name in sorted(scores) for metric in sorted(scores[name])]


@dg.op(out=dg.Out(io_manager_key=IO))
def gather_evaluations(
    context: dg.OpExecutionContext, climb: ClimbResource, evaluations: list
) -> dict:
    """The round's target scores and objective per mixture, and every proxy's learning curve."""
    store, key = climb.store(), context.partition_key
    evaluations = sorted(evaluations, key=lambda e: e["mixture_id"])
    metrics = _metric_columns(evaluations[0]["scores"]) if evaluations else []
    columns: dict[str, Any] = {
        "round": [key] * len(evaluations),
        "mixture_id": [e["mixture_id"] for e in evaluations],
        "key": [e["key"] for e in evaluations],
        "weights": pa.array([e["weights"] for e in evaluations], pa.list_(pa.float64())),
        "objective": pa.array([e["objective"] for e in evaluations], pa.float64()),
        "design": pa.array([e.get("design") for e in evaluations], pa.string()),
        "reference": pa.array([e.get("reference") for e in evaluations], pa.string()),
        "replicate_of": pa.array([e.get("replicate_of") for e in evaluations], pa.string()),
    }
    for name, metric in metrics:
        columns[f"{name}_{metric}"] = pa.array(
            [e["scores"][name][metric] for e in evaluations], pa.float64()
        )
    store.write_parquet(f"search/{key}/evaluations.parquet", pa.table(columns))
    points = [(e["mixture_id"], p) for e in evaluations for p in e["curve"]]
    curves: dict[str, Any] = {
        "round": [key] * len(points),
        "mixture_id": [m for m, _ in points],
        "fraction": pa.array([p["fraction"] for _, p in points], pa.float64()),
        "tokens": pa.array([p["tokens"] for _, p in points], pa.int64()),
        "objective": pa.array([p["objective"] for _, p in points], pa.float64()),
    }
    for name, metric in metrics:
        curves[f"{name}_{metric}"] = pa.array(
            [p["scores"][name][metric] for _, p in points], pa.float64()
        )
    store.write_parquet(f"search/{key}/curves.parquet", pa.table(curves))
    curves_chart = chart(
        store, f"search/{key}/curves.png",
        plots.curves_png(
            [m for m, _ in points], [p["tokens"] for _, p in points],
            [p["objective"] for _, p in points], f"{key}: objective during training",
        ),
        f"round {key}: each proxy's objective on the targets during its training",
    )  # fmt: skip
    searched = [e for e in evaluations if not e.get("replicate_of")]
    best = max(searched, key=lambda e: e["objective"])
    floor = rounds.noise_floor(replicate_pairs(pl.from_arrow(pa.table(columns))))
    objectives = [e["objective"] for e in searched]
    note = rounds.spread_warning(key, objectives, floor)
    if note:
        context.log.warning(note)
    context.add_output_metadata(
        {"proxies": len(evaluations), "best_objective": round(best["objective"], 5),
         "best_mixture": best["mixture_id"], "curve_points": len(points),
         "measured_spread": round(max(objectives) - min(objectives), 5),
         "noise_floor": "n/a (no replicate in this round)" if floor is None else round(floor, 5),
         **curves_chart}
    )  # fmt: skip
    return {"round": key, "best_objective": best["objective"], "best_mixture": best["mixture_id"]}


def replicate_pairs(evaluations: pl.DataFrame) -> list[tuple[float, float]]:
    """(original, replicate) objectives of every noise replicate in `evaluations`."""
    if "replicate_of" not in evaluations.columns:
        return []
    objective = dict(
        zip(evaluations.get_column("mixture_id"), evaluations.get_column("objective"), strict=True)
    )
    replicas = evaluations.filter(pl.col("replicate_of").is_not_null())
    return [
        (objective[original], value)
        for original, value in replicas.select("replicate_of", "objective").iter_rows()
        if original in objective
    ]


def searched_rows(evaluations: pl.DataFrame) -> pl.DataFrame:
    """The proxies the search measured, without noise replicates (same mixture, other seed)."""
    if "replicate_of" not in evaluations.columns:
        return evaluations
    return evaluations.filter(pl.col("replicate_of").is_null())


def _rows_so_far(store: Store, profile: Profile, upto: int, table: str) -> pl.DataFrame | None:
    """The `table` Parquet of every round up to `upto`, concatenated (None when absent)."""
    frames = []
    for key in round_keys(profile)[: upto + 1]:
        rel = f"search/{key}/{table}.parquet"
        if table == "evaluations":
            require_files(store, {key: rel}, "proxy_evaluations")
        if store.exists(rel):
            frames.append(pl.from_arrow(store.read_parquet(rel)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def metric_datas(
    evaluations: pl.DataFrame,
    curves: pl.DataFrame | None,
    targets: list[Target],
    alignment: np.ndarray | None,
) -> list[MetricData]:
    """One `MetricData` per target: its metric per proxy and its learning-curve points."""
    x = np.array(evaluations.get_column("weights").to_list(), dtype=np.float64)
    ids = evaluations.get_column("mixture_id").to_list()
    row = {m: i for i, m in enumerate(ids)}
    datas = []
    for t in targets:
        metric = Metric(t.name, "bpb" if t.kind == "text" else "accuracy", t.weight)
        column = f"{t.name}_{metric.kind}"
        curve = None
        if curves is not None and column in curves.columns:
            known = curves.filter(pl.col("mixture_id").is_in(ids))
            curve = Curve(
                np.array([row[m] for m in known.get_column("mixture_id").to_list()]),
                known.get_column("fraction").to_numpy(),
                known.get_column(column).to_numpy(),
            )
        values = evaluations.get_column(column).to_numpy()
        datas.append(MetricData(x, values, metric, curve, alignment))
    return datas


def evaluations_so_far(
    profile: Profile, store: Store, upto: int | None = None
) -> tuple[pl.DataFrame, list[MetricData]]:
    """Every proxy evaluated in rounds up to `upto` (default: all; noise replicates left out)
    and one `MetricData` per target built from them, with learning curves and the targets'
    alignment when present."""
    index = len(profile.search.rounds) - 1 if upto is None else upto
    data = _rows_so_far(store, profile, index, "evaluations")
    if data is None:
        raise ValueError("no proxy has been evaluated yet; materialize the search rounds first")
    data = searched_rows(data)
    curves = _rows_so_far(store, profile, index, "curves")
    k = int(data.get_column("weights").list.len()[0])
    datas = metric_datas(data, curves, load_targets(store), current_alignment(store, k))
    return data, datas


def metric_datas_so_far(profile: Profile, store: Store) -> list[MetricData]:
    """`evaluations_so_far` without the table."""
    return evaluations_so_far(profile, store)[1]


def _cv_table(fit: auto.SearchFit) -> str:
    lines = [
        "| kind | CV Spearman | CV RMSE | trusted | used | note |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in fit.reports.items():
        rho = "n/a" if r.spearman is None else f"{r.spearman:.3f}"
        rmse = "n/a" if r.rmse is None else f"{r.rmse:.4f}"
        used = "yes" if kind == fit.used or f"{kind}=" in fit.used else ""
        trusted = "no" if kind in fit.distrust else "yes"
        note = (r.error or fit.distrust.get(kind) or "")[:80]
        lines.append(f"| {kind} | {rho} | {rmse} | {trusted} | {used} | {note} |")
    return "\n".join(lines)


def _rounded_or_na(value: float | None, digits: int) -> float | str:
    return "n/a" if value is None else round(value, digits)


def trust_rule(profile: Profile) -> auto.TrustRule | None:
    """The profile's trust rule for predictors (None: every kind steers the search)."""
    pr = profile.predictor
    if pr.trust_floor is None:
        return None
    return auto.TrustRule(min_spearman=pr.trust_floor, range_margin=pr.trust_range_margin)


@dg.op(out=dg.Out(io_manager_key=IO))
def fit_round_predictor(
    context: dg.OpExecutionContext, climb: ClimbResource, evaluations: dict, previous_predictor: Any
) -> dict:
    """The predictor fitted on every proxy so far: every kind cross-validated, one used."""
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    index = _round_index(profile, key)
    space = search_space(profile, store)
    data, datas = evaluations_so_far(profile, store, index)
    y = data.get_column("objective").to_numpy()
    x = datas[0].weights
    pr = profile.predictor
    params = {
        "learning_rate": pr.learning_rate, "max_depth": pr.max_depth,
        "min_child_samples": pr.min_child_samples, "reg_alpha": pr.reg_alpha,
        "reg_lambda": pr.reg_lambda, "num_boost_round": pr.num_boost_round,
        "early_stopping_rounds": pr.early_stopping_rounds,
    }  # fmt: skip
    seed = _round_seed(profile, index, 2)
    fit = auto.fit_search_predictor(
        pr.kind, datas, seed, pr.cv_folds, {"lightgbm": {"params": params}}, pr.auto_rule,
        trust=trust_rule(profile),
    )  # fmt: skip
    for note in fit.warnings:
        context.log.warning(note)
    trust_note = fit.trust_note
    if trust_note is not None:
        then = (
            "proposing around the best measured mixtures"
            if index + 1 < len(profile.search.rounds)
            else "the final choice relies on measured mixtures"
        )
        context.log.warning(f"no predictor is trusted after {key} ({trust_note}); {then}")
    everything = _rows_so_far(store, profile, index, "evaluations")
    floor = rounds.noise_floor(replicate_pairs(everything)) if everything is not None else None
    this_round = data.filter(pl.col("round") == key).get_column("objective")
    store.write_json(f"search/{key}/predictor.json", fit.predictor.to_json())
    model = fit.predictor
    pool = space.pool(profile, seed)
    pool_mean, pool_std = model.predict(pool), model.predict_std(pool)
    best = int(np.argmax(pool_mean))
    oof = auto.out_of_fold(fit)
    store.write_parquet(
        f"search/{key}/predictions.parquet",
        pa.table(
            {
                "round": [key] * len(y),
                "mixture_id": data.get_column("mixture_id").to_arrow(),
                "trained_in": data.get_column("round").to_arrow(),
                "actual": pa.array(y, pa.float64()),
                "cv_predicted": pa.array(oof, pa.float64()),
                "fitted": pa.array(model.predict(x), pa.float64()),
            }
        ),
    )
    reports = [r.to_json() for r in fit.reports.values()]
    store.write_parquet(
        f"search/{key}/cv.parquet",
        pa.table(
            {
                "round": [key] * len(reports),
                "points": pa.array([len(y)] * len(reports), pa.int64()),
                "kind": [r["kind"] for r in reports],
                "cv_spearman": pa.array([r["spearman"] for r in reports], pa.float64()),
                "cv_rmse": pa.array([r["rmse"] for r in reports], pa.float64()),
                "used": [r["kind"] == fit.used or f"{r['kind']}=" in fit.used for r in reports],
                "trusted": [r["kind"] not in fit.distrust for r in reports],
                "note": [r["error"] or fit.distrust.get(r["kind"]) for r in reports],
            }
        ),
    )
    aligned_rho = report.spearman(x @ space.alignment, y) if space.alignment is not None else None
    summary = {
        "round": key, "points": len(y), "seed": seed, "kind": pr.kind, "used": fit.used,
        "cv_spearman": report.spearman(oof, y) if np.isfinite(oof).any() else None,
        "cv_rmse": float(np.sqrt(np.mean((oof - y) ** 2))) if np.isfinite(oof).all() else None,
        "best_observed": float(y.max()), "best_predicted": float(pool_mean[best]),
        "best_predicted_std": None if pool_std is None else float(pool_std[best]),
        "candidates": len(pool), "alignment_spearman": aligned_rho,
        "trusted": fit.trusted, "trust_note": trust_note, "noise_floor": floor,
        "measured_spread": float(this_round.max() - this_round.min()),
        "cv_by_kind": {r["kind"]: r["spearman"] for r in reports},
    }  # fmt: skip
    summary = {k: auto.json_float(v) for k, v in summary.items()}
    store.write_json(f"search/{key}/round.json", summary)
    store.write_parquet(
        f"search/{key}/round.parquet",
        pa.table(
            {
                **{k: [v] for k, v in summary.items() if k != "cv_by_kind"},
                "cv_by_kind": [json.dumps(summary["cv_by_kind"])],
            }
        ),
    )
    scatter = chart(
        store, f"search/{key}/predicted_vs_actual.png",
        report.predicted_vs_actual_png(y, oof, f"{key}: out-of-fold ({fit.used})"),
        f"predictor after round {key}: out-of-fold prediction against each proxy's objective",
    )  # fmt: skip
    context.add_output_metadata(
        {
            "points": len(y),
            "seed": seed,
            "kind": pr.kind,
            "used": fit.used,
            "cv_spearman": _rounded_or_na(summary["cv_spearman"], 4),
            "trusted": fit.trusted,
            "noise_floor": _rounded_or_na(floor, 5),
            "cv_by_kind": dg.MetadataValue.md(_cv_table(fit)),
            "alignment_spearman": _rounded_or_na(aligned_rho, 4),
            "best_observed_objective": round(float(y.max()), 5),
            "best_predicted_objective": round(float(pool_mean[best]), 5),
            **scatter,
            "path": dg.MetadataValue.path(store.uri(f"search/{key}/predictor.json")),
        }
    )
    return {**summary, "path": store.uri(f"search/{key}/predictor.json")}


def build_search_round(n_rounds: int) -> dg.AssetsDefinition:
    """The per-round graph asset for a search of `n_rounds` rounds."""
    partitions = iteration_partitions(n_rounds)
    previous = dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
    )

    @dg.graph_multi_asset(
        name="search_round",
        group_name=GROUP,
        partitions_def=partitions,
        outs={
            "mixture_batches": dg.AssetOut(
                io_manager_key=IO,
                kinds={"parquet"},
                description=(
                    "This round's candidate mixtures. Round 1 samples around the token prior; "
                    "later rounds rank fresh candidates with the PREVIOUS round's predictor (why "
                    "predictor_models is drawn upstream) and pick by search.design. Each "
                    "partition iter_NNN is one search round (Dagster calls them 'Daily': a "
                    "time window is the only kind of partition that may depend on its own "
                    "previous one)."
                ),
            ),
            "proxy_checkpoints": dg.AssetOut(
                io_manager_key=IO,
                kinds={"pytorch", "safetensors"},
                description=(
                    "One small causal LM per mixture of this round (same init, budget and data "
                    "order), saved as safetensors; a finished checkpoint is reused, not retrained."
                ),
            ),
            "proxy_evaluations": dg.AssetOut(
                io_manager_key=IO,
                kinds={"parquet"},
                description=(
                    "Each proxy scored on the targets (bits per byte or accuracy) at every "
                    "proxy.eval_fractions share of its budget: the objective and learning curves."
                ),
            ),
            "predictor_models": dg.AssetOut(
                io_manager_key=IO,
                kinds={"json"},  # the kind used (gp, lightgbm, ...) varies by round: metadata
                description=(
                    "The predictor fitted on every proxy so far, each kind cross-validated; the "
                    "NEXT round's mixture_batches reads it, and the manifest reads the last one."
                ),
            ),
        },
        ins={
            "previous_predictor": dg.AssetIn("predictor_models", partition_mapping=previous),
            "cluster_tokens": dg.AssetIn("cluster_tokens", dagster_type=dg.Nothing),
            "search_targets": dg.AssetIn("search_targets", dagster_type=dg.Nothing),
            "target_alignment": dg.AssetIn("target_alignment", dagster_type=dg.Nothing),
        },
    )
    def search_round(previous_predictor, cluster_tokens, search_targets, target_alignment):
        batch = propose_mixtures(
            previous_predictor, cluster_tokens=cluster_tokens, search_targets=search_targets,
            target_alignment=target_alignment,
        )  # fmt: skip
        trained = each_mixture(batch).map(train_proxy)
        evaluated = trained.map(evaluate_proxy)
        checkpoints = gather_checkpoints(trained.collect())
        evaluations = gather_evaluations(evaluated.collect())
        return {
            "mixture_batches": batch,
            "proxy_checkpoints": checkpoints,
            "proxy_evaluations": evaluations,
            "predictor_models": fit_round_predictor(evaluations, previous_predictor),
        }

    return search_round

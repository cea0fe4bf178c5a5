"""Which mixture the manifest ships, by `search.final`, and what is known about it.

A search rule reads the last round's predictor and the proxies' evaluations: confirmed (the
best measured of the confirmation proxy, the best proxy and the anchors), argmax, topk_mean or
best_observed. `search.method: doremi` reads `doremi_mixture`. A training-free reference
(unimax, ...) reads `reference_mixtures`; when proxies were trained anyway, the last predictor
still estimates its objective.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from climb_assets.config import Profile
from climb_assets.defs.confirmation import CONFIRMATION_ID, load_confirmation, predictor_pick
from climb_assets.defs.doremi import load_doremi
from climb_assets.defs.references import load_references, reference_weights
from climb_assets.defs.search import cluster_summary, proxy_config, round_keys
from climb_assets.defs.search_round import (
    SearchSpace,
    load_round_predictor,
    metric_datas_so_far,
    search_space,
    searched_rows,
)
from climb_assets.lib import mixture, proposals, rounds
from climb_assets.lib.predictors.base import PredictorError, build_models
from climb_assets.lib.storage import Store


@dataclass
class FinalChoice:
    """The final mixture, the rule that chose it and the predictions and measurements of it."""

    weights: np.ndarray
    how: str
    chosen_by: dict[str, Any] = field(default_factory=dict)
    mixture_id: str | None = None
    measured: float | None = None
    predicted: float | None = None
    band: float | None = None
    band_source: str = "no predictor"
    at_total: float | None = None
    at_total_note: str | None = None
    predictor_used: str | None = None
    best_proxy: dict[str, Any] | None = None
    predicted_for_best_proxy: float | None = None
    measured_options: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    references: list[dict[str, Any]] = field(default_factory=list)


def _measured(evaluated: pl.DataFrame, weights: np.ndarray) -> tuple[str | None, float | None]:
    """The trained proxy whose mixture is the chosen one (same `mixture_key`), if any."""
    key = mixture.mixture_key(weights)
    for row in evaluated.iter_rows(named=True):
        if mixture.mixture_key(np.asarray(row["weights"], dtype=np.float64)) == key:
            return row["mixture_id"], float(row["objective"])
    return None, None


def _search_rule(
    profile: Profile, store: Store, space: SearchSpace, model: Any, evaluated: pl.DataFrame, log
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Weights, description and details of a search rule (confirmed, argmax, topk_mean,
    best_observed)."""
    s = profile.search
    if s.final == "best_observed":
        evaluated = searched_rows(evaluated)
        x = np.array(evaluated.get_column("weights").to_list(), dtype=np.float64)
        feasible = proposals.within_caps(x, space.caps)
        if not feasible.any():
            raise ValueError(
                "no trained proxy's mixture fits within the repetition caps (manifest.max_epochs "
                "against manifest.total_tokens); use search.final: argmax, or raise max_epochs"
            )
        objective = evaluated.get_column("objective").to_numpy()
        best = evaluated.row(int(np.argmax(np.where(feasible, objective, -np.inf))), named=True)
        log.info(
            f"final: {best['mixture_id']}, best observed objective {best['objective']} among "
            f"{int(feasible.sum())} proxies within the repetition caps"
        )
        details = {"mixture_id": best["mixture_id"], "observed_objective": best["objective"],
                   "infeasible_proxies_skipped": int((~feasible).sum())}  # fmt: skip
        how = "the trained proxy with the best measured objective"
        return np.asarray(best["weights"], dtype=np.float64), how, details
    if s.final == "confirmed":
        return _confirmed(profile, store, space, evaluated, log)
    weights, how, details = predictor_pick(profile, space, model, s.final)
    if s.final == "argmax" and details["tied_at_best"] > 1:
        log.warning(
            f"{details['tied_at_best']} candidates tie at the best predicted value; the final "
            "mixture is their mean (the centre of the predicted-best region)"
        )
    return weights, how, details


def _measured_label(row: dict[str, Any]) -> str:
    if row.get("design") == "reference" and row.get("reference"):
        return f"the anchor {row['reference']} ({row['mixture_id']})"
    return f"the proxy {row['mixture_id']}"


def _confirmed(
    profile: Profile, store: Store, space: SearchSpace, evaluated: pl.DataFrame, log
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """The best measured of the confirmation proxy, the best proxy and the anchors."""
    record = load_confirmation(store, profile)
    if record is None:
        raise ValueError(
            "search.final is confirmed but confirmation_proxy has not been materialized for the "
            "last round's predictor; materialize confirmation_proxy (climb run does)"
        )
    options = [
        rounds.Measured(
            "the predictor's pick (confirmation proxy)",
            CONFIRMATION_ID,
            np.asarray(record["weights"], np.float64),
            record["objective"],
        )
    ]
    rows = list(searched_rows(evaluated).iter_rows(named=True))
    options += [rounds.Measured(_measured_label(r), r["mixture_id"],
                                np.asarray(r["weights"], np.float64), r["objective"])
                for r in sorted(rows, key=lambda r: -r["objective"])]  # fmt: skip
    winner = rounds.best_measured(options, space.caps)
    anchors = [o for o in options if o.label.startswith("the anchor")]
    compared = ", ".join(
        [f"the predictor's pick {options[0].objective:.4f}",
         f"the best proxy {options[1].objective:.4f}" if len(options) > 1 else "no proxy",
         *(f"{o.label.split(' (')[0].removeprefix('the ')} {o.objective:.4f}" for o in anchors)]
    )  # fmt: skip
    how = f"the best measured of {compared}: {winner.label}"
    log.info(f"final: {how}")
    details = {"mixture_id": winner.mixture_id, "measured_objective": winner.objective,
               "confirmation_objective": record["objective"],
               "confirmation_predicted": record["predicted"], "winner": winner.label}  # fmt: skip
    return winner.weights.copy(), how, details


def _fits(model: Any, weights: np.ndarray) -> bool:
    """Whether a predictor left by earlier rounds takes mixtures of this many super-clusters."""
    try:
        return bool(np.isfinite(model.predict(weights[None, :])).all())
    except (ValueError, IndexError, PredictorError):
        return False


def _with_doremi(
    references: dict[str, np.ndarray], doremi: dict[str, Any] | None
) -> dict[str, np.ndarray]:
    """The reference mixtures, with DoReMi's when it has run on these super-clusters."""
    if doremi is not None:
        return {**references, "doremi": np.asarray(doremi["weights"], dtype=np.float64)}
    return references


def choose_final(profile: Profile, store: Store, log) -> FinalChoice:
    """The final mixture by `search.final`, with everything the manifest reports about it."""
    s = profile.search
    keys = round_keys(profile)
    trained = [k for k in keys if store.exists(f"search/{k}/predictor.json")]
    if s.runs_rounds and len(trained) < len(keys):
        missing = sorted(set(keys) - set(trained))
        raise ValueError(
            f"search round(s) {missing} have no predictor yet; materialize every round of "
            "the search (a backfill of all iteration partitions) before the manifest"
        )
    searched = len(trained) == len(keys)  # a reference final may still have proxies to use
    model = load_round_predictor(store, keys[-1]) if searched else None
    evaluated = (
        pl.concat(
            [pl.from_arrow(store.read_parquet(f"search/{k}/evaluations.parquet")) for k in keys],
            how="diagonal_relaxed",
        ).sort("mixture_id")
        if searched
        else pl.DataFrame()
    )  # fmt: skip
    space = search_space(profile, store)
    doremi = load_doremi(store)
    if doremi is not None and doremi.get("data") != cluster_summary(store)["digest"]:
        doremi = None  # computed on other super-clusters or tokens
    if s.runs_rounds:
        weights, how, details = _search_rule(profile, store, space, model, evaluated, log)
    elif s.runs_doremi:
        if doremi is None:
            raise ValueError(
                "search.method is doremi but doremi_mixture has not been materialized for these "
                "super-clusters; materialize doremi_mixture first (climb run does)"
            )
        weights = np.asarray(doremi["weights"], dtype=np.float64)
        how = f"DoReMi: group-DRO weights averaged over {doremi['steps']} proxy steps"
        details = {k: doremi[k] for k in ("reference_run_id", "proxy_run_id", "steps",
                                          "step_size", "smoothing")}  # fmt: skip
        if model is not None and not _fits(model, weights):
            model = None
    else:
        weights = reference_weights(store, s.final)
        how, details = f"the training-free reference mixture {s.final!r}", {}
        if model is not None and not _fits(model, weights):
            log.warning("the search rounds on disk were fitted on other super-clusters; unused")
            model = None
    choice = FinalChoice(weights=weights, how=how, chosen_by=details)
    caps = space.caps
    # A reference mixture can ask more of a super-cluster than max_epochs passes over it give
    # within total_tokens (the search's candidates never do); the manifest would then cap it.
    choice.references = [
        {"name": n, "weights": w.round(6).tolist(),
         "within_repetition_caps": bool(proposals.within_caps(w[None, :], caps)[0])}
        for n, w in _with_doremi(load_references(store), doremi).items()
    ]  # fmt: skip
    if model is None:
        return choice
    last_round = store.read_json(f"search/{keys[-1]}/round.json")
    choice.rounds = [store.read_json(f"search/{k}/round.json") for k in keys]
    choice.predictor_used = last_round["used"]
    if "measured_objective" in details:  # confirmed: the winner is measured by construction
        choice.mixture_id, choice.measured = details["mixture_id"], details["measured_objective"]
    else:
        choice.mixture_id, choice.measured = _measured(searched_rows(evaluated), weights)
    proxies = searched_rows(evaluated)
    best = proxies.row(int(proxies.get_column("objective").arg_max()), named=True)
    choice.best_proxy = {"mixture_id": best["mixture_id"], "objective": best["objective"]}
    best_weights = np.asarray(best["weights"], dtype=np.float64)
    choice.predicted_for_best_proxy = float(model.predict(best_weights[None, :])[0])
    choice.predicted = float(model.predict(weights[None, :])[0])
    std = model.predict_std(weights[None, :])
    # The band is the larger of the model's own std and its out-of-sample error: at a trained
    # mixture a GP's std shrinks to its noise term, which says nothing about how far off it is.
    spreads = {"predictive standard deviation": None if std is None else float(std[0]),
               "cross-validated RMSE of the last predictor": last_round.get("cv_rmse")}  # fmt: skip
    known = {k: v for k, v in spreads.items() if v is not None}
    choice.band_source = max(known, key=known.__getitem__) if known else "none available"
    choice.band = known.get(choice.band_source)
    ratio = profile.manifest.total_tokens / proxy_config(profile).train_tokens
    try:
        law = model if model.volume_aware else build_models("bimix", metric_datas_so_far(
            profile, store), s.seed)  # fmt: skip
        choice.at_total = float(law.predict(weights[None, :], volume=ratio)[0])
        choice.at_total_note = (
            f"bimix law extrapolated {ratio:.3g}x beyond the proxy budget; a rough guide"
        )
    except PredictorError as exc:
        choice.at_total_note = str(exc)
    # Every reference mixture with the predictor's estimate: how far ClimbMix is predicted to be
    # from each baseline before anyone pays for a full training run.
    for ref in choice.references:
        estimate = float(model.predict(np.asarray(ref["weights"])[None, :])[0])
        ref.update(predicted_objective=estimate, predicted_gap_to_final=choice.predicted - estimate)
    return choice

"""Search quality: CLIMB's mixture against baselines at the same number of proxies.

Corpora (`bench/corpora.py`): `planted` (4 artificial languages, target = held-out text of the
smallest, best mixture known), with `--demo` the demo corpus (real documentation of six sources,
target = held-out AWS API text) and with `--third` the `blend` corpus (another draw of the six
sources, target = held-out numpy + sqlalchemy + torch text, so the best mixture is a blend). The
data side runs once per corpus through the runner, then the tokenizer, the super-clusters' token
arrays, the targets and the targets' distribution over super-clusters (`target_alignment`) are
materialized; everything after that works at the library level.

Strategies, for each search seed, all with the same proxy configuration:

- `climb` (ranked): the product's loop with its defaults, through the product's own functions
  (`climb_assets.lib.rounds`): rounds (default [6, 4, 2]); round 1 `first_round` (the anchors
  target_aligned and natural, then `design="cover"` picks), one noise replicate (round 1's first
  mixture with proxy seed + 1); after every round `fit_search_predictor("auto", rule="best")`
  with the trust rule (CV Spearman >= 0.3, out-of-fold predictions within the measured range
  +- half of it) on every proxy so far (`MetricData`: BPB at the full budget, learning-curve
  points at 0.25 and 0.5 of the budget, the target alignment); later rounds `later_round`: the
  trusted predictor's top set (`pick_next_round`, exploit 1, then farthest-point picks) or the
  model-free trust region; final `confirmed`: the last predictor's argmax trained as one more
  proxy, and the best measured of it, every proxy and the anchors ships;
- `climb_unguarded` (reference): the same loop with the previous defaults (no anchors, no
  replicate, every predictor trusted, the unmeasured argmax shipped);
- `regmix` (ranked): as many random proxies as `climb` spent in all
  (`sample_mixtures(design="random")`) in one round, one `lightgbm` fit, final =
  `final_mixture(topk_mean, k=128)`; `best_of_random` (ranked): the best of those proxies;
- `target_aligned`, `natural`, `uniform` (ranked): training-free; `doremi` (ranked): DoReMi's
  two proxies (`bench.reference_mixtures.run_doremi`);
- references: `oracle` (the target-dominated super-clusters; known for planted, a guess
  elsewhere), `climb_best_observed` and `climb_topk_mean` (CLIMB's own proxies, other final
  rules), and with `--efficiency-seeds` `climb_28` (rounds 16/8/4) and `regmix_112`.

"Best found" (goal 2) is the best final model of any strategy in a seed.

Corpora: `planted`, `demo` and `blend` are where defaults are chosen; `libraries` and `two_target`
(`--corpora libraries two_target`, `bench/corpora.py`) are held out: built after the defaults
were fixed and used for nothing else.

Scoring. Each final mixture trains a model with the same architecture and `--final-multiplier`
(3) times the proxy budget, seeded 1000 + search seed (common random numbers across the
strategies of a seed), scored by target bits per byte (lower is better). Noise floor: the natural
mixture's final model over 3 seeds (std). Reported: mean ± std, mean rank among the ranked
strategies, paired differences, per-round CV Spearman by predictor kind, best observed per round,
and a `goals` section (issue 19's five goals, `bench.search_report.goals`, figure and pass/fail
per corpus).
Result: `bench/results/search_quality.json`.

Run: `.venv/bin/python -m bench.search_quality [--seeds 0 1 2 3 4] [--corpora planted demo
blend] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CONTENDED_CORES,
    HIGH_LOAD,
    QUICK_DIR,
    RESULTS_DIR,
    CpuMonitor,
    add_run_options,
    load_average,
    machine_info,
    wait_for_quiet,
    write_result,
)
from bench.corpora import Prepared, prepare_blend, prepare_demo, prepare_planted
from bench.search_report import (
    RANKED,
    REFERENCE,
    best_per_round,
    cv_table,
    goal_line,
    goals,
    mean_std,
    paired,
    summary_rows,
)

NAME = "search_quality"
CLIMB_RUNS = (
    "climb", "climb_unguarded", "climb_28", "climb_floor_0.5", "climb_target_prior_0.3",
    "climb_random_design",
)  # fmt: skip
LABELS = {
    "climb": "CLIMB (defaults: anchors, noise replicate, trust rule, confirmed final)",
    "climb_unguarded": "CLIMB without the safeguards (the previous defaults, argmax; reference)",
    "target_aligned": "target_aligned (training-free)",
    "doremi": "DoReMi (2 proxies)",
    "regmix": "RegMix (one shot, lightgbm, top-128 mean)",
    "best_of_random": "best of random proxies",
    "natural": "natural proportions",
    "uniform": "uniform",
    "oracle": "oracle (target super-clusters, reference)",
    "climb_best_observed": "CLIMB's best observed proxy (reference)",
    "climb_topk_mean": "CLIMB's proxies, top-128 mean final (reference)",
    "climb_28": "CLIMB with 28 proxies (reference)",
    "climb_floor_0.5": "CLIMB, trust floor 0.5 (a candidate default; reference)",
    "climb_target_prior_0.3": "CLIMB, target prior weight 0.3 (a candidate default; reference)",
    "climb_random_design": "CLIMB, random round-1 design (a candidate default; reference)",
    "regmix_112": "RegMix with 112 proxies (reference)",
}
OPTIONS: dict[str, Any] = {"lightgbm": {"params": {"early_stopping_round": 0}}}
CURVE_FRACTIONS = (0.25, 0.5)
FINAL_SEED_OFFSET = 1000
NOISE_SEEDS = 3


@dataclass(frozen=True)
class Variant:
    """How a CLIMB run is configured (the product's `search` and `predictor` settings)."""

    kind: str = "auto"
    rule: str = "best"
    design: str = "cover"
    acquisition: str = "mean"
    target_prior_weight: float = 0.0
    kappa: float = 1.0
    rounds: tuple[int, ...] | None = None
    exploit: int = 1
    anchors: tuple[str, ...] = ("target_aligned", "natural")
    replicates: int = 1
    trust_floor: float | None = 0.3
    trust_margin: float = 0.5
    fallback_radius: float = 0.25
    final: str = "confirmed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "design": self.design,
            "acquisition": self.acquisition,
            "target_prior_weight": self.target_prior_weight,
            "kappa": self.kappa,
            "rounds": None if self.rounds is None else list(self.rounds),
            "exploit_picks": self.exploit,
            "anchors": list(self.anchors),
            "noise_replicates": self.replicates,
            "trust_floor": self.trust_floor,
            "trust_range_margin": self.trust_margin,
            "fallback_radius": self.fallback_radius,
            "final": self.final,
        }


VARIANTS: dict[str, Variant] = {
    "climb": Variant(),
    # The defaults before the safeguards: no anchors, no replicate, every predictor trusted,
    # the unmeasured argmax shipped.
    "climb_unguarded": Variant(anchors=(), replicates=0, trust_floor=None, final="argmax"),
}
CHOICE_VARIANTS: dict[str, Variant] = {
    # Candidates for the defaults, run on the corpora that choose them (`--choose-defaults`).
    "climb_floor_0.5": Variant(trust_floor=0.5),
    "climb_target_prior_0.3": Variant(target_prior_weight=0.3),
    "climb_random_design": Variant(design="random"),
}


class Scorer:
    """Trains a model on a mixture and scores its target BPB, caching identical runs.

    The cache key is (mixture, configuration digest). With `curve=True` the model is also
    scored after `CURVE_FRACTIONS` of its budget (`train_proxy(on_checkpoint=...)`), and those
    points are cached with it; an entry trained without them is trained again when they are
    asked for.
    """

    def __init__(self, prepared: Prepared, device: str = "cpu") -> None:
        from climb_assets.lib.tokens import eos_id

        self.prepared = prepared
        self.device = device
        self.vocab = prepared.tok.get_vocab_size()
        self.eos = eos_id(prepared.tok)
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.trained = 0
        self.seconds = 0.0
        self.curve_seconds = 0.0

    def _bpb(self, model: Any, cfg: Any) -> float:
        """Target BPB; with several targets, their weighted mean (the product's objective is
        minus the weighted sum of BPBs, so the ranking is the same)."""
        from climb_assets.lib.proxy import evaluate_bpb

        p = self.prepared
        sets = getattr(p, "target_sets", None) or [("target", 1.0, p.texts)]
        total = sum(w for _, w, _ in sets)
        return float(
            sum(
                w * evaluate_bpb(model, p.tok, texts, cfg.seq_len, self.device)["bpb"]
                for _, w, texts in sets
            )
            / total
        )

    def __call__(self, cfg: Any, weights: np.ndarray, curve: bool = False) -> dict[str, Any]:
        """`{"bpb", "seconds"[, "curve": [{"fraction", "bpb"}]]}` of a model on `weights`."""
        from climb_assets.lib.proxy import fraction_steps, train_proxy

        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        key = (",".join(repr(float(v)) for v in w), cfg.digest())
        cached = self.cache.get(key)
        if cached is not None and (not curve or "curve" in cached):
            return cached
        points: list[dict[str, float]] = []
        steps = fraction_steps(cfg, CURVE_FRACTIONS) if curve else []
        eval_seconds = 0.0

        def on_checkpoint(step: int, model: Any) -> None:
            nonlocal eval_seconds
            t = time.perf_counter()
            fraction = CURVE_FRACTIONS[steps.index(step)]
            points.append({"fraction": fraction, "bpb": self._bpb(model, cfg)})
            eval_seconds += time.perf_counter() - t

        start = time.perf_counter()
        result = train_proxy(
            cfg, self.prepared.arrays, w, self.vocab, self.device, eos_token_id=self.eos,
            on_checkpoint=on_checkpoint if curve else None, checkpoint_steps=steps,
        )  # fmt: skip
        bpb = self._bpb(result.model, cfg)
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {"bpb": bpb, "seconds": round(seconds, 3)}
        if curve:
            entry["curve"] = points
        self.cache[key] = entry
        self.trained += 1
        self.seconds += seconds
        self.curve_seconds += eval_seconds
        return entry


Score = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class SearchSetup:
    """What every strategy of one search seed shares."""

    prior: np.ndarray
    alignment: np.ndarray
    proxy_cfg: Any
    rounds: tuple[int, ...]
    seed: int
    candidates: int
    top_k_min: int
    settings: Any
    target: str = "target"


def _metric_data(
    setup: SearchSetup,
    x: Sequence[np.ndarray],
    bpb: Sequence[float],
    curves: Sequence[list[dict[str, float]]] | None,
) -> Any:
    """The product's `MetricData`: BPB at the full budget, curve points, the alignment."""
    from climb_assets.lib.predictors.base import Curve, Metric, MetricData

    curve = None
    if curves is not None:
        proxy, volume, values = [], [], []
        for i, points in enumerate(curves):
            for p in [*points, {"fraction": 1.0, "bpb": bpb[i]}]:
                proxy.append(i)
                volume.append(p["fraction"])
                values.append(p["bpb"])
        curve = Curve(np.array(proxy), np.array(volume), np.array(values))
    return MetricData(
        np.array(x), np.array(bpb), Metric(setup.target, "bpb", 1.0), curve, setup.alignment
    )


def _cv_json(report: Any) -> dict[str, Any]:
    from climb_assets.lib.predictors import auto

    spearman, rmse = auto.json_float(report.spearman), auto.json_float(report.rmse)
    return {"spearman": spearman, "rmse": rmse, "error": report.error}


def _fit(
    kind: str, data: Any, seed: int, rule: str = "best", trust: Any = None
) -> tuple[Any, dict[str, Any]]:
    """`fit_search_predictor` and a JSON record of every kind's cross-validation."""
    from climb_assets.lib.predictors import auto, report

    start = time.perf_counter()
    fit = auto.fit_search_predictor(kind, [data], seed, options=OPTIONS, rule=rule, trust=trust)
    seconds = time.perf_counter() - start
    y = -data.values
    oof = auto.out_of_fold(fit)
    rho = report.spearman(oof, y) if np.isfinite(oof).any() else math.nan
    record = {
        "points": data.n,
        "used": fit.used,
        "cv_spearman": auto.json_float(rho),
        "cv_rmse": auto.json_float(fit.cv.rmse) if fit.cv is not None else None,
        "by_kind": {k: _cv_json(r) for k, r in fit.reports.items()},
        "trusted": fit.trusted,
        "trust_note": fit.trust_note,
        "distrust": dict(fit.distrust),
        "warnings": list(fit.warnings),
        "seconds": round(seconds, 2),
    }
    return fit, record


def _proxy_rows(weights: np.ndarray, scores: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for w, s in zip(weights, scores, strict=True):
        row = {"weights": np.asarray(w).round(4).tolist(), "bpb": round(s["bpb"], 5)}
        if "curve" in s:
            row["curve"] = [[p["fraction"], round(p["bpb"], 5)] for p in s["curve"]]
        rows.append(row)
    return rows


def run_climb(setup: SearchSetup, score: Score, variant: Variant) -> dict[str, Any]:
    """CLIMB's iterative search as `search_round` runs it; the final mixture and the history.

    The rounds call the product's own functions (`climb_assets.lib.rounds.first_round` and
    `later_round`, `auto.fit_search_predictor` with the trust rule, `rounds.best_measured`), so
    the benchmark measures what the product does. Seeds follow the product (`_round_seed`:
    search seed * 1000 + round * 10 + salt; salt 1 for the proposals, 2 for the predictor); a
    noise replicate trains with proxy seed + 1. No repetition caps (the bench has no manifest
    budget).
    """
    from climb_assets.lib import rounds as guard
    from climb_assets.lib.mixture import blend_center, candidate_pool, final_mixture, mixture_key
    from climb_assets.lib.predictors.auto import TrustRule
    from climb_assets.lib.proposals import top_ties

    plan = variant.rounds or setup.rounds
    k = setup.prior.size
    caps = np.ones(k)
    center = None
    if variant.target_prior_weight > 0:
        center = blend_center(setup.prior, setup.alignment, variant.target_prior_weight)
    trust = (
        None
        if variant.trust_floor is None
        else TrustRule(min_spearman=variant.trust_floor, range_margin=variant.trust_margin)
    )
    x: list[np.ndarray] = []
    bpb: list[float] = []
    curves: list[list[dict[str, float]]] = []
    labels: list[str] = []
    trained: set[str] = set()
    history: list[dict[str, Any]] = []
    base = setup.seed * 1000
    fit: Any = None
    fit_seconds = 0.0
    noise_pairs: list[tuple[float, float]] = []
    trust_note: str | None = None
    for index, n in enumerate(plan):
        seed = base + index * 10 + 1
        info: dict[str, Any] = {"round": index + 1, "proxies": n}
        if index == 0:
            proposal = guard.first_round(
                setup.prior, n, seed, caps, setup.settings, variant.design, setup.alignment,
                center, variant.anchors,
            )  # fmt: skip
        else:
            proposal = guard.later_round(
                f"round {index}",
                lambda seed=seed: candidate_pool(
                    setup.prior, setup.candidates, seed, setup.settings, center
                ),
                fit.predictor, trust_note, (np.array(x), -np.array(bpb)), n, seed + 5,
                (trained, np.array(x)), caps,
                guard.LaterRound(max(n * n, setup.top_k_min), variant.design,
                                 variant.acquisition, variant.kappa, variant.exploit,
                                 variant.fallback_radius),
                setup.alignment,
            )  # fmt: skip
            info.update(
                predicted_bpb=[None if v is None else round(-v, 4) for v in proposal.predicted]
            )
        weights = proposal.weights
        info.update(
            method=proposal.method, designs=proposal.designs, notes=proposal.notes,
            metadata=proposal.metadata,
        )  # fmt: skip
        scores = [score(setup.proxy_cfg, w, curve=True) for w in weights]
        for j, (w, s) in enumerate(zip(weights, scores, strict=True)):
            x.append(np.asarray(w, dtype=np.float64))
            bpb.append(s["bpb"])
            curves.append(s["curve"])
            trained.add(mixture_key(w))
            name = proposal.references[j] or proposal.designs[j]
            labels.append(f"round {index + 1} {name}")
        if index == 0:
            for r in range(min(variant.replicates, n)):
                again = score(replace(setup.proxy_cfg, seed=setup.proxy_cfg.seed + 1 + r),
                              weights[r])  # fmt: skip
                noise_pairs.append((scores[r]["bpb"], again["bpb"]))
            floor = guard.noise_floor(noise_pairs)
            info["noise_floor"] = None if floor is None else round(floor, 5)
            info["spread_warning"] = guard.spread_warning(
                "round 1", [s["bpb"] for s in scores], floor
            )
        info["mixtures"] = _proxy_rows(weights, scores)
        info["best_bpb_in_round"] = min(s["bpb"] for s in scores)
        info["best_bpb_so_far"] = min(bpb)
        fit, info["fit"] = _fit(
            variant.kind, _metric_data(setup, x, bpb, curves), base + index * 10 + 2,
            variant.rule, trust,
        )  # fmt: skip
        trust_note = info["fit"]["trust_note"]
        fit_seconds += info["fit"]["seconds"]
        history.append(info)
    pool = candidate_pool(setup.prior, setup.candidates, base + 98, setup.settings, center)
    predicted = fit.predictor.predict(pool)
    pick = final_mixture(pool, predicted, method="argmax")
    best = int(np.argmin(bpb))
    record: dict[str, Any] = {
        "topk_mean_weights": final_mixture(pool, predicted, method="topk_mean", k=128),
        "best_observed_weights": x[best].copy(),
        "variant": variant.to_dict(),
        "best_proxy_bpb": min(bpb),
        "predicted_bpb_at_best_proxy": float(-fit.predictor.predict(x[best][None, :])[0]),
        "pool_size": len(pool),
        "pool_ties_at_max": top_ties(predicted, len(pool)).tied,
        "used": fit.used if fit is not None else None,
        "trusted_after_last_round": fit.trusted,
        "cv_spearman": history[-1]["fit"]["cv_spearman"],
        "best_bpb_per_round": [h["best_bpb_so_far"] for h in history],
        "noise_floor": history[0].get("noise_floor"),
        "fit_seconds": round(fit_seconds, 2),
        "rounds": history,
    }
    proxies = len(bpb) + len(noise_pairs)
    if variant.final == "confirmed":
        pick = guard.fit_to_caps(pick, caps)
        confirmed = score(setup.proxy_cfg, pick)["bpb"]
        options = [guard.Measured("the predictor's pick (confirmation proxy)", "confirmation",
                                  pick, -confirmed)]  # fmt: skip
        order = np.lexsort((np.arange(len(bpb)), np.array(bpb)))
        options += [guard.Measured(labels[i], f"proxy {i}", x[i], -bpb[i]) for i in order]
        winner = guard.best_measured(options, caps)
        record.update(
            weights=winner.weights.copy(), winner=winner.label, measured_bpb=-winner.objective,
            confirmation_bpb=confirmed,
            predicted_bpb=float(-fit.predictor.predict(winner.weights[None, :])[0]),
            predicted_bpb_at_pick=float(-fit.predictor.predict(pick[None, :])[0]),
        )  # fmt: skip
        proxies += 1
    else:
        record.update(weights=pick, predicted_bpb=float(-fit.predictor.predict(pick[None, :])[0]))
    record["proxies"] = proxies
    return record


def run_random(
    setup: SearchSetup, score: Score, n: int, offset: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """RegMix one-shot and best-of-random on the same `n` random proxies."""
    from climb_assets.lib.mixture import candidate_pool, final_mixture, sample_mixtures

    base = setup.seed * 1000 + offset
    weights = sample_mixtures(setup.prior, n, base + 1, setup.settings, design="random")
    scores = [score(setup.proxy_cfg, w) for w in weights]
    bpb = [s["bpb"] for s in scores]
    fit, record = _fit("lightgbm", _metric_data(setup, list(weights), bpb, None), base + 2)
    pool = candidate_pool(setup.prior, setup.candidates, base + 3, setup.settings)
    predicted = fit.predictor.predict(pool)
    final = final_mixture(pool, predicted, method="topk_mean", k=128)
    best = int(np.argmin(bpb))
    regmix = {
        "weights": final,
        "proxies": n,
        "best_proxy_bpb": min(bpb),
        "predicted_bpb": float(-fit.predictor.predict(final[None, :])[0]),
        "cv_spearman": record["cv_spearman"],
        "fit": record,
        "random_proxies": _proxy_rows(weights, scores),
    }
    best_of = {
        "weights": weights[best].copy(),
        "proxies": n,
        "best_proxy_bpb": min(bpb),
        "note": "same random proxies as regmix",
    }
    return regmix, best_of


def _rank(values: Sequence[float]) -> list[float]:
    """Ranks, 1 = lowest value, ties share the mean rank."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(values, method="average")]


@dataclass(frozen=True)
class CorpusPlan:
    """What runs on every corpus."""

    seeds: tuple[int, ...]
    proxy_cfg: Any
    rounds: tuple[int, ...]
    final_multiplier: float
    candidates: int
    top_k_min: int
    efficiency_rounds: tuple[int, ...]
    efficiency_random: int
    efficiency_seeds: tuple[int, ...]
    device: str = "cpu"
    variants: dict[str, Variant] = field(default_factory=lambda: dict(VARIANTS))
    doremi: bool = True


def run_seed(prepared: Prepared, scorer: Scorer, plan: CorpusPlan, seed: int) -> dict[str, Any]:
    """Every strategy for one search seed; final models scored with common random numbers."""
    from climb_assets.lib.mixture import SamplerSettings, mixture_key

    start = time.perf_counter()
    k = len(prepared.arrays)
    setup = SearchSetup(
        prior=prepared.prior,
        alignment=prepared.alignment,
        proxy_cfg=replace(plan.proxy_cfg, seed=seed),
        rounds=plan.rounds,
        seed=seed,
        candidates=plan.candidates,
        top_k_min=plan.top_k_min,
        settings=SamplerSettings(),
        target=prepared.name,
    )
    strategies: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0, trained0 = time.perf_counter(), scorer.trained
        out = fn()
        seconds[name] = round(time.perf_counter() - t0, 2)
        seconds[f"{name}_new_proxies"] = scorer.trained - trained0
        return out

    for name, variant in plan.variants.items():
        strategies[name] = timed(name, lambda v=variant: run_climb(setup, scorer, v))
    climb = strategies["climb"]
    strategies["climb_best_observed"] = {
        "weights": climb["best_observed_weights"],
        "proxies": climb["proxies"],
        "note": "the best of CLIMB's own proxies",
    }
    strategies["climb_topk_mean"] = {
        "weights": climb["topk_mean_weights"],
        "proxies": climb["proxies"],
        "note": "CLIMB's proxies and last predictor, final_mixture(topk_mean, k=128)",
    }
    for entry in strategies.values():
        entry.pop("best_observed_weights", None)
        entry.pop("topk_mean_weights", None)
    budget = strategies["climb"]["proxies"]  # the same proxies as CLIMB spent, all told
    strategies["regmix"], strategies["best_of_random"] = timed(
        "regmix", lambda: run_random(setup, scorer, budget, 500)
    )
    strategies["natural"] = {"weights": prepared.prior.copy(), "proxies": 0}
    strategies["uniform"] = {"weights": np.full(k, 1.0 / k), "proxies": 0}
    strategies["target_aligned"] = {
        "weights": prepared.alignment / prepared.alignment.sum(),
        "proxies": 0,
    }
    strategies["oracle"] = {"weights": prepared.oracle.copy(), "proxies": 0}
    if plan.doremi:
        from bench.reference_mixtures import run_doremi

        strategies["doremi"] = timed(
            "doremi", lambda: {**run_doremi(prepared, setup.proxy_cfg, plan.device), "proxies": 2}
        )
    if seed in plan.efficiency_seeds:
        eff = Variant(rounds=plan.efficiency_rounds)
        strategies["climb_28"] = timed("climb_28", lambda: run_climb(setup, scorer, eff))
        strategies["climb_28"].pop("best_observed_weights", None)
        strategies["climb_28"].pop("topk_mean_weights", None)
        strategies["regmix_112"] = timed(
            "regmix_112", lambda: run_random(setup, scorer, plan.efficiency_random, 600)[0]
        )
    final_tokens = round(plan.proxy_cfg.train_tokens * plan.final_multiplier)
    final_cfg = replace(plan.proxy_cfg, train_tokens=final_tokens, seed=FINAL_SEED_OFFSET + seed)
    t0 = time.perf_counter()
    for entry in strategies.values():
        result = scorer(final_cfg, entry["weights"])
        entry["final_bpb"] = result["bpb"]
        entry["final_seconds"] = result["seconds"]
        entry["weights"] = np.asarray(entry["weights"]).round(4).tolist()
        entry["key"] = mixture_key(entry["weights"])
    seconds["final_models"] = round(time.perf_counter() - t0, 2)
    ranks = _rank([strategies[n]["final_bpb"] for n in RANKED])
    for name, rank in zip(RANKED, ranks, strict=True):
        strategies[name]["rank"] = rank
    total = time.perf_counter() - start
    return {
        "seed": seed,
        "proxy_seed": seed,
        "final_seed": FINAL_SEED_OFFSET + seed,
        "seconds": round(total, 1),
        "seconds_by_strategy": seconds,
        "strategies": strategies,
    }


def run_corpus(prepared: Prepared, plan: CorpusPlan) -> dict[str, Any]:
    """Every strategy for every seed on one prepared corpus; returns the per-corpus record."""
    scorer = Scorer(prepared, plan.device)
    final_tokens = round(plan.proxy_cfg.train_tokens * plan.final_multiplier)
    per_seed = []
    for seed in plan.seeds:
        run = run_seed(prepared, scorer, plan, seed)
        per_seed.append(run)
        s = run["strategies"]
        fits = " ".join(f"{n}:{s[n]['used']}/{s[n]['cv_spearman']}" for n in CLIMB_RUNS if n in s)
        print(
            f"[{prepared.name}] seed {seed} ({run['seconds']:.0f} s, {scorer.trained} models): "
            + ", ".join(f"{n} {s[n]['final_bpb']:.4f}" for n in (*RANKED, *REFERENCE) if n in s)
            + f" | used/cv {fits} | seconds {run['seconds_by_strategy']}",
            flush=True,
        )

    noise_runs = []
    for s in range(NOISE_SEEDS):
        cfg = replace(plan.proxy_cfg, train_tokens=final_tokens, seed=FINAL_SEED_OFFSET + s)
        noise_runs.append({"final_seed": cfg.seed, "bpb": scorer(cfg, prepared.prior)["bpb"]})
    record = corpus_record(prepared.details, final_tokens, per_seed, noise_runs)
    record["models_trained"] = scorer.trained
    record["training_seconds"] = round(scorer.seconds, 1)
    record["curve_eval_seconds"] = round(scorer.curve_seconds, 1)
    return record


def corpus_record(
    details: dict[str, Any],
    final_tokens: int,
    per_seed: list[dict[str, Any]],
    noise_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The per-corpus record (strategy table, CV tables, noise floor, goals) of per-seed runs.

    Also combines runs of one corpus from several invocations (`--merge`): the noise runs
    depend only on the corpus and the proxy configuration, so they are the same in each.
    """
    noise_mean, noise_std = mean_std([r["bpb"] for r in noise_runs])
    table: dict[str, dict[str, Any]] = {}
    for name in (*RANKED, *REFERENCE):
        runs = [run for run in per_seed if name in run["strategies"]]
        if not runs:
            continue
        values = [run["strategies"][name]["final_bpb"] for run in runs]
        mean, std = mean_std(values)
        diff_mean, diff_std = mean_std(paired(runs, name, "natural"))
        vs_climb_mean, vs_climb_std = mean_std(paired(runs, name, "climb"))
        row: dict[str, Any] = {
            "label": LABELS[name],
            "bpb_mean": mean,
            "bpb_std": std,
            "bpb_per_seed": values,
            "seeds": [run["seed"] for run in runs],
            "diff_vs_natural_mean": diff_mean,
            "diff_vs_natural_std": diff_std,
            "diff_vs_climb_mean": vs_climb_mean,
            "diff_vs_climb_std": vs_climb_std,
            "proxies": runs[0]["strategies"][name]["proxies"],
        }
        if name in RANKED:
            ranks = [run["strategies"][name]["rank"] for run in runs]
            row["rank_mean"] = float(np.mean(ranks))
            row["rank_per_seed"] = ranks
        table[name] = row
    record: dict[str, Any] = {
        "corpus": details,
        "final_train_tokens": final_tokens,
        "per_seed": per_seed,
        "strategies": table,
        "cv_tables": {n: cv_table(per_seed, n) for n in CLIMB_RUNS},
        "best_bpb_per_round": {n: best_per_round(per_seed, n) for n in CLIMB_RUNS},
        "noise_floor": {
            "mixture": "natural",
            "runs": noise_runs,
            "bpb_mean": noise_mean,
            "bpb_std": noise_std,
            "note": (
                "the natural mixture's final model with final seeds "
                f"{[r['final_seed'] for r in noise_runs]}"
            ),
        },
    }
    record["goals"] = goals(record)
    return record


def merge_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs with the same settings and different seeds.

    Each corpus's per-seed runs are pooled (a seed may appear once) and its record rebuilt;
    the parameters and machine of the first result are kept, with the seeds of all.

    Raises:
        ValueError: a seed appears twice, or the noise runs differ (other settings).
    """
    merged = json.loads(json.dumps(results[0]))
    for name in dict.fromkeys(n for r in results for n in r["corpora"]):  # ordered
        parts = [r["corpora"][name] for r in results if name in r["corpora"]]
        per_seed = sorted((run for p in parts for run in p["per_seed"]), key=lambda r: r["seed"])
        seeds = [run["seed"] for run in per_seed]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: seed(s) run twice across the results: {seeds}")
        noise = parts[0]["noise_floor"]["runs"]
        if any(p["noise_floor"]["runs"] != noise for p in parts):
            raise ValueError(f"{name}: the results' noise runs differ; were the settings the same?")
        record = corpus_record(parts[0]["corpus"], parts[0]["final_train_tokens"], per_seed, noise)
        for key in ("models_trained", "training_seconds", "curve_eval_seconds"):
            record[key] = round(sum(p.get(key, 0) for p in parts), 1)
        record["prepare_seconds"] = parts[0].get("prepare_seconds")
        record["parameters"] = parts[0].get("parameters")
        merged["corpora"][name] = record
        merged["goals"][name] = record["goals"]
    merged["params"]["seeds"] = sorted({s for r in results for s in r["params"]["seeds"]})
    merged["summary"] = [
        row for n, rec in merged["corpora"].items() for row in summary_rows(n, rec)
    ]
    merged["merged_from"] = [
        {"seeds": r["params"]["seeds"], "wall_seconds": r["wall_seconds"]} for r in results
    ]
    return merged


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/search_quality.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run (used by `bench.run_all --quick`); the result
            goes to `bench/results/quick/` so the full figures are kept.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="search seeds (default 0 1 2; 0 with --quick)"
    )
    parser.add_argument(
        "--proxy-tokens", type=int, help="proxy token budget (default 32768; 8192 with --quick)"
    )
    parser.add_argument(
        "--rounds", type=int, nargs="+", help="CLIMB proxies per round (default 6 4 2; 6 2 2 quick)"
    )
    parser.add_argument(
        "--efficiency-rounds", type=int, nargs="+",
        help="climb_28's rounds (default 16 8 4; 6 4 2 quick)",
    )  # fmt: skip
    parser.add_argument(
        "--efficiency-random", type=int, help="regmix_112's proxies (default 112; 24 quick)"
    )
    parser.add_argument(
        "--efficiency-seeds", type=int, nargs="+",
        help="seeds on which climb_28 and regmix_112 run (default: none)",
    )  # fmt: skip
    parser.add_argument("--final-multiplier", type=float, default=3.0)
    parser.add_argument("--candidates", type=int, help="candidate pool (default 20000; 4000 quick)")
    parser.add_argument("--top-k-min", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--demo", action="store_true", help="also the demo corpus (slow)")
    parser.add_argument("--third", action="store_true", help="also the blended-target corpus")
    parser.add_argument("--demo-docs", type=int, default=300, help="demo documents per source")
    parser.add_argument("--skip-planted", action="store_true", help="leave the planted corpus out")
    parser.add_argument(
        "--choose-defaults", action="store_true",
        help="also run the candidate defaults (CHOICE_VARIANTS); only on the corpora that choose",
    )  # fmt: skip
    parser.add_argument(
        "--corpora", nargs="+", choices=("planted", "demo", "blend", "libraries", "two_target"),
        help="the corpora to run, in order (overrides --demo/--third/--skip-planted); "
        "libraries and two_target are held out: the defaults were chosen on the other three",
    )  # fmt: skip
    parser.add_argument(
        "--without", nargs="+", default=(), choices=[n for n in VARIANTS if n != "climb"],
        help="leave these reference variants out (saves their proxies; climb always runs)",
    )  # fmt: skip
    parser.add_argument("--workdir", help="keep the corpora and stores here (default: temporary)")
    parser.add_argument(
        "--results-dir", help="write the result here (default bench/results, quick: results/quick)"
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path,
        help="run nothing: pool the seeds of these result files (same settings) into one result",
    )  # fmt: skip
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    out_dir = Path(args.results_dir) if args.results_dir else (QUICK_DIR if quick else RESULTS_DIR)
    if args.merge:
        try:
            merged = merge_results([json.loads(p.read_text(encoding="utf-8")) for p in args.merge])
        except (OSError, ValueError, KeyError) as exc:  # one line, not a traceback
            parser.error(f"cannot merge {[str(p) for p in args.merge]}: {exc!r}")
        write_result(NAME, merged, out_dir)
        for name, record in merged["corpora"].items():
            print(f"{name}: seeds {merged['params']['seeds']}; goals: {goal_line(record['goals'])}")
        return merged
    seeds = tuple(args.seeds or ([0] if quick else [0, 1, 2]))
    proxy_tokens = args.proxy_tokens or (8192 if quick else 32_768)
    rounds = tuple(args.rounds or ((6, 2, 2) if quick else (6, 4, 2)))
    eff_rounds = tuple(args.efficiency_rounds or ((6, 4, 2) if quick else (16, 8, 4)))
    eff_random = args.efficiency_random or (24 if quick else 112)
    eff_seeds = tuple(args.efficiency_seeds or ())
    candidates = args.candidates or (4000 if quick else 20_000)

    import torch

    from climb_assets.lib.proxy import ProxyConfig, count_parameters

    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # BLAS/OpenMP of numpy, scipy, scikit-learn too
    proxy_cfg = ProxyConfig(
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        train_tokens=proxy_tokens,
        lr=args.lr,
    )
    plan = CorpusPlan(
        seeds=seeds,
        proxy_cfg=proxy_cfg,
        rounds=rounds,
        final_multiplier=args.final_multiplier,
        candidates=candidates,
        top_k_min=args.top_k_min,
        efficiency_rounds=eff_rounds,
        efficiency_random=eff_random,
        efficiency_seeds=eff_seeds,
        device=args.device,
        variants={
            name: variant
            for name, variant in {
                **VARIANTS,
                **(CHOICE_VARIANTS if args.choose_defaults else {}),
            }.items()
            if name not in args.without
        },
    )
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine = machine_info()
    load = load_average()
    monitor = CpuMonitor()
    wall_start = time.perf_counter()
    corpora: dict[str, Any] = {}
    summary: list[dict[str, str]] = []

    def build(partial: bool) -> dict[str, Any]:
        """The result so far (`partial`: written after each corpus, in case a later one fails)."""
        wall = time.perf_counter() - wall_start
        return {
            "description": (
                "target BPB of a final model (same architecture, more tokens, another seed) "
                "trained on the mixture each strategy picks; mean ± std over search seeds, mean "
                "rank, noise floor of the final model, per-round CV Spearman of every predictor "
                "kind, and the issue's goals per corpus"
            ),
            "params": {
                "seeds": list(seeds),
                "proxies_per_strategy": sum(rounds),
                "climb_rounds": list(rounds),
                "variants": {n: v.to_dict() for n, v in plan.variants.items()},
                "efficiency": {
                    "climb_rounds": list(eff_rounds),
                    "regmix_proxies": eff_random,
                    "seeds": list(eff_seeds),
                },
                "proxy_config": proxy_cfg.to_dict(),
                "proxy_seed": "search seed",
                "curve_fractions": [*CURVE_FRACTIONS, 1.0],
                "final_multiplier": args.final_multiplier,
                "final_seed": f"{FINAL_SEED_OFFSET} + search seed",
                "candidates": candidates,
                "top_k_min": args.top_k_min,
                "predictor_options": OPTIONS,
                "regmix_final": {"method": "topk_mean", "k": 128, "kind": "lightgbm"},
                "climb_final": {"method": plan.variants["climb"].final},
                "repetition_caps": None,
                "sampler": "SamplerSettings() (paper defaults)",
                "threads": args.threads,
                "device": args.device,
                "corpora": list(corpora),
                "demo_docs": args.demo_docs,
                "ranked": list(RANKED),
                "reference": list(REFERENCE),
            },
            "goals": {name: record["goals"] for name, record in corpora.items()},
            "corpora": corpora,
            "wall_seconds": round(wall, 1),
            "partial": partial,
            "summary": summary,
            "machine": machine,
        }

    names = list(args.corpora or []) or [
        *([] if args.skip_planted else ["planted"]),
        *(["demo"] if args.demo else []),
        *(["blend"] if args.third else []),
    ]
    with tempfile.TemporaryDirectory(prefix="climb-search-quality-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        for name in names:
            start = time.perf_counter()
            if name == "planted":
                prepared = prepare_planted(root / "planted")
            elif name == "demo":
                prepared = prepare_demo(root / "demo", args.demo_docs)
            elif name == "blend":
                prepared = prepare_blend(root / "blend", args.demo_docs)
            else:  # the held-out corpora (bench/heldout_sources.py)
                from bench import corpora as builders

                prepare_heldout = getattr(builders, f"prepare_{name}")
                prepared = prepare_heldout(root / name, args.demo_docs)
            prep_seconds = time.perf_counter() - start
            print(
                f"[{name}] data side done in {prep_seconds:.0f} s: "
                f"{len(prepared.arrays)} super-clusters, prior {prepared.details['natural_prior']}"
                f", alignment {prepared.details['target_alignment']}"
                f", oracle {prepared.oracle.round(3).tolist()}",
                flush=True,
            )
            record = run_corpus(prepared, plan)
            record["prepare_seconds"] = round(prep_seconds, 1)
            record["parameters"] = count_parameters(proxy_cfg, prepared.tok.get_vocab_size())
            corpora[name] = record
            summary += summary_rows(name, record)
            print(f"[{name}] goals: {goal_line(record['goals'])}", flush=True)
            if name != names[-1]:
                write_result(NAME, build(partial=True), out_dir)
    result = build(partial=False)
    wall = result["wall_seconds"]
    result["cpu"] = monitor.stop()
    result["load_average_start"] = load
    result["load_average_end"] = load_average()
    result["high_load_at_start"] = bool(load and load[0] > HIGH_LOAD)
    other = result["cpu"].get("other_cores")
    # Contention slows the run down but does not change the BPB figures (CPU training is
    # deterministic for the same inputs and thread count).
    result["contended"] = result["high_load_at_start"] or bool(other and other > CONTENDED_CORES)
    write_result(NAME, result, out_dir)
    for name, record in corpora.items():
        print(f"{name}: final BPB over seeds {list(seeds)} (mean ± std, mean rank)")
        for key, row in record["strategies"].items():
            rank = f"  rank {row['rank_mean']:.2f}" if "rank_mean" in row else ""
            print(f"  {key:20s} {row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}{rank}")
        noise = record["noise_floor"]
        print(f"  noise floor (natural, 3 final seeds): std {noise['bpb_std']:.4f}")
        for strategy, table in record["cv_tables"].items():
            for label, row in table.items():
                print(f"  cv {strategy:20s} {label}: {row}")
        print(f"  goals: {goal_line(record['goals'])}")
    print(f"wall time {wall:.0f} s")
    return result


if __name__ == "__main__":
    main()

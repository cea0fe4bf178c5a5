"""Cross-validation of every kind, and the predictor a search round uses.

A round fits on 8-112 points. At 8-16 points no single kind is reliable everywhere (trees learn
only "is this weight zero", a law can overfit, a GP can be flat), so every kind is scored the
same way: k-fold cross-validation over the trained proxies (a held-out proxy's learning-curve
points are held out with it), out-of-fold predictions of the *objective*, their Spearman
correlation with the observed objective and their RMSE. ``auto`` then uses either the kind
with the best cross-validated Spearman (``rule="best"``; ties go to the lower RMSE) or an
ensemble of every kind whose cross-validated Spearman is positive, weighted by its square
(``rule="ensemble"``); the ensemble's spread between members is its uncertainty.

A named kind that fails to fit (a law that does not converge) falls back to ``lightgbm`` with
a warning naming the kind; the round goes on.

With a :class:`TrustRule`, a kind is *trusted* only when its cross-validated Spearman clears a
floor and its out-of-fold predictions stay within the measured range plus a margin (a law whose
predictions are off by a whole unit of BPB ranks nothing). ``auto`` then chooses among the
trusted kinds only; when none qualifies the fit says so (``trusted`` False) and the search
proposes by a model-free rule (``climb_assets.lib.rounds``), never by the least bad kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from climb_assets.lib.predictors.base import (
    KINDS,
    FitFailed,
    MetricData,
    ObjectivePredictor,
    PredictorError,
    as_rows,
    build_models,
    finite_or_none,
    model_class,
    objective_of,
)
from climb_assets.lib.predictors.report import spearman

CV_MIN_POINTS = 6
"""Fewest proxies for which a cross-validated figure is computed."""

FALLBACK = "lightgbm"
"""The kind used when the one asked for cannot fit (the paper's predictor)."""

Rule = Literal["best", "ensemble"]


@dataclass
class CVReport:
    """How well one kind predicts proxies it was not fitted on.

    Attributes:
        kind: The kind scored.
        spearman: Spearman of out-of-fold objective predictions with the observed objective;
            None with too few points or when the kind could not fit.
        rmse: Root mean squared error of those predictions (objective units).
        predictions: (n,) out-of-fold predictions (NaN where none).
        error: Why the kind was not scored, when it was not.
    """

    kind: str
    spearman: float | None
    rmse: float | None
    predictions: np.ndarray
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "spearman": finite_or_none(self.spearman),
            "rmse": finite_or_none(self.rmse),
            "error": self.error,
        }


def folds(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k shuffled folds as (train_rows, test_rows); every row is tested exactly once."""
    perm = np.random.default_rng(seed).permutation(n)
    return [
        (np.sort(np.setdiff1d(perm, test)), np.sort(test))
        for test in np.array_split(perm, min(k, n))
    ]


def cross_validate(
    kind: str,
    datas: Sequence[MetricData],
    seed: int,
    n_folds: int = 5,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> CVReport:
    """Out-of-fold objective predictions of ``kind``; never raises for a kind that cannot fit."""
    n = datas[0].n
    y = objective_of(datas)
    predictions = np.full(n, np.nan)
    if n < CV_MIN_POINTS:
        return CVReport(kind, None, None, predictions, f"fewer than {CV_MIN_POINTS} proxies")
    try:
        for d in datas:
            model_class(kind).check(d)
        for train, test in folds(n, n_folds, seed):
            fitted = build_models(kind, [d.subset(train) for d in datas], seed, options)
            predictions[test] = fitted.predict(datas[0].weights[test])
    except PredictorError as exc:  # FitFailed included: the kind is reported, not used
        return CVReport(kind, None, None, np.full(n, np.nan), str(exc))
    rho = spearman(predictions, y)
    rmse = float(np.sqrt(np.mean((predictions - y) ** 2)))
    return CVReport(kind, None if math.isnan(rho) else rho, rmse, predictions)


class EnsemblePredictor:
    """A weighted mean of fitted predictors; its uncertainty is their spread."""

    kind = "auto"

    def __init__(self, members: Sequence[ObjectivePredictor], weights: Sequence[float]):
        w = np.asarray(weights, dtype=np.float64)
        if not members or len(members) != w.size or np.any(w < 0) or w.sum() <= 0:
            raise PredictorError("an ensemble needs members with non-negative weights")
        self.members = list(members)
        self.weights = w / w.sum()

    has_std = True

    @property
    def volume_aware(self) -> bool:
        return all(m.volume_aware for m in self.members)

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        rows = as_rows(x)
        return np.stack([m.predict(rows, volume) for m in self.members]).T @ self.weights

    def predict_std(self, x: np.ndarray) -> np.ndarray:
        """sqrt(spread between members + the members' own variances, where they have one)."""
        rows = as_rows(x)
        means = np.stack([m.predict(rows) for m in self.members])
        centre = self.weights @ means
        var = self.weights @ (means - centre) ** 2
        for w, member in zip(self.weights, self.members, strict=True):
            std = member.predict_std(rows)
            if std is not None:
                var = var + w * std**2
        return np.sqrt(var)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "climb-ensemble/1",
            "kind": self.kind,
            "weights": self.weights.tolist(),
            "members": [m.to_json() for m in self.members],
        }


Predictor = ObjectivePredictor | EnsemblePredictor


def load(data: Mapping[str, Any]) -> Predictor:
    """A predictor from its stored JSON (either format)."""
    if data.get("format") == "climb-ensemble/1":
        return EnsemblePredictor(
            [ObjectivePredictor.from_json(m) for m in data["members"]], data["weights"]
        )
    return ObjectivePredictor.from_json(data)


@dataclass(frozen=True)
class TrustRule:
    """When a kind's cross-validation earns it the right to steer the search.

    Attributes:
        min_spearman: Floor on the cross-validated Spearman of its out-of-fold predictions.
        range_margin: Its out-of-fold predictions must lie within the measured objectives'
            range widened by this share of the range on each side.
    """

    min_spearman: float = 0.3
    range_margin: float = 0.5

    def verdict(self, report: CVReport, y: np.ndarray) -> str | None:
        """Why ``report``'s kind is not trusted, or None when it is."""
        if report.spearman is None:
            return report.error or "not cross-validated"
        if report.spearman < self.min_spearman:
            return f"CV Spearman {report.spearman:.2f} is below the floor {self.min_spearman:g}"
        values = np.asarray(y, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        margin = max(self.range_margin * (hi - lo), 1e-12)
        oof = report.predictions
        if not np.all(np.isfinite(oof)):
            return "some proxies have no out-of-fold prediction"
        if oof.min() < lo - margin or oof.max() > hi + margin:
            return (
                f"out-of-fold predictions {oof.min():.4f}..{oof.max():.4f} leave the measured "
                f"range {lo:.4f}..{hi:.4f} by more than {margin:.4f}"
            )
        return None


@dataclass
class SearchFit:
    """The predictor a round uses and why.

    Attributes:
        predictor: The fitted predictor (objective, higher is better).
        kind: What was asked for (a kind or ``auto``).
        used: What predicts: a kind, or ``ensemble(kind=weight, ...)``.
        reports: Cross-validation of every kind scored, by kind.
        warnings: Fallbacks and skipped kinds, for the run's log.
        members: Weight of each kind in what predicts (one kind: weight 1).
        trusted: Whether what predicts passed the trust rule (True when none was given).
        distrust: Why each kind that failed the trust rule failed it, by kind.
    """

    predictor: Predictor
    kind: str
    used: str
    reports: dict[str, CVReport]
    warnings: list[str] = field(default_factory=list)
    members: dict[str, float] = field(default_factory=dict)
    trusted: bool = True
    distrust: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = {self.used: 1.0}

    @property
    def cv(self) -> CVReport | None:
        """The cross-validation of what is used (None for an ensemble)."""
        return self.reports.get(self.used)

    @property
    def trust_note(self) -> str | None:
        """Why the fit is not trusted, in a few words (None when it is)."""
        if self.trusted:
            return None
        best = self.best_spearman
        return "no kind cross-validated" if best is None else f"best CV {best:.2f}"

    @property
    def best_spearman(self) -> float | None:
        """The best cross-validated Spearman of any kind (None when none was scored)."""
        values = [r.spearman for r in self.reports.values() if r.spearman is not None]
        return max(values) if values else None


def out_of_fold(fit: SearchFit) -> np.ndarray:
    """Out-of-fold objective predictions of what is used (an ensemble: its members' mix).

    For an ensemble the member weights come from the same cross-validation, so its figure is
    slightly optimistic; each member's own figure is exact.
    """
    n = next(iter(fit.reports.values())).predictions.size
    total = np.zeros(n)
    for kind, weight in fit.members.items():
        report = fit.reports.get(kind)
        if report is None:
            return np.full(n, np.nan)
        total = total + weight * report.predictions
    return total


def json_float(value: Any) -> Any:
    """NaN and inf as None, numpy scalars as Python numbers; other values unchanged."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return finite_or_none(value)
    return value


def check_kind(kind: str, datas: Sequence[MetricData]) -> None:
    """Raises a clear error when a named kind cannot model these targets or points."""
    if kind == "auto":
        return
    cls = model_class(kind)
    for d in datas:
        cls.check(d)


def fit_search_predictor(
    kind: str,
    datas: Sequence[MetricData],
    seed: int,
    n_folds: int = 5,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    rule: Rule = "best",
    kinds: Sequence[str] | None = None,
    trust: TrustRule | None = None,
) -> SearchFit:
    """Scores every kind by cross-validation and fits the predictor the round uses.

    With ``trust``, ``auto`` uses only kinds that pass it; when none does, the best-ranked
    kind is still fitted (the manifest reports its estimates) but the fit is marked untrusted.

    Args:
        kind: A registered kind or ``auto``.
        datas: One :class:`MetricData` per target, same proxies in the same order.
        seed: Seed of the folds and of every fit.
        n_folds: Folds of the cross-validation.
        options: Constructor arguments per kind (e.g. LightGBM parameters).
        rule: How ``auto`` uses the scores: the best kind or a CV-weighted ensemble.
        kinds: The kinds ``auto`` considers (default: every registered kind).
        trust: The rule a kind must pass to steer the search (None: every kind may).

    Raises:
        PredictorError: A named kind that cannot model the targets or has too few points.
    """
    if not datas:
        raise PredictorError("no targets to fit; the profile lists none")
    check_kind(kind, datas)
    scored = list(kinds or KINDS) if kind == "auto" else [kind]
    if kind != "auto" and FALLBACK not in scored:
        scored.append(FALLBACK)
    reports = {k: cross_validate(k, datas, seed, n_folds, options) for k in scored}
    distrust: dict[str, str] = {}
    if trust is not None:
        y = objective_of(datas)
        distrust = {k: why for k, r in reports.items() if (why := trust.verdict(r, y))}
    eligible = [k for k in scored if k not in distrust] or scored
    fit = _choose(kind, datas, seed, options, rule, reports, eligible)
    fit.distrust = distrust
    fit.trusted = not any(k in distrust for k in fit.members)
    return fit


def _choose(
    kind: str,
    datas: Sequence[MetricData],
    seed: int,
    options: Mapping[str, Mapping[str, Any]] | None,
    rule: Rule,
    reports: dict[str, CVReport],
    eligible: Sequence[str],
) -> SearchFit:
    """The predictor of `fit_search_predictor`: `auto` ranks only the `eligible` kinds."""
    notes = [
        f"predictor kind '{k}' not used: {r.error}"
        for k, r in reports.items()
        if r.error and kind == "auto"
    ]
    if kind != "auto":
        try:
            return SearchFit(build_models(kind, datas, seed, options), kind, kind, reports, notes)
        except FitFailed as exc:
            notes.append(f"predictor kind '{kind}' failed to fit ({exc}); using {FALLBACK}")
            fitted = build_models(FALLBACK, datas, seed, options)
            return SearchFit(fitted, kind, FALLBACK, reports, notes)
    ranked = sorted(
        (r for k, r in reports.items() if r.spearman is not None and k in eligible),
        key=lambda r: (-r.spearman, r.rmse if r.rmse is not None else math.inf),
    )
    if not ranked:  # too few points to cross-validate: the paper's kind
        notes.append(f"no kind could be cross-validated yet; using {FALLBACK}")
        return SearchFit(
            build_models(FALLBACK, datas, seed, options), kind, FALLBACK, reports, notes
        )
    if rule == "ensemble":
        members, weights, names = [], [], []
        for r in ranked:
            if r.spearman is None or r.spearman <= 0:
                continue
            try:
                members.append(build_models(r.kind, datas, seed, options))
            except FitFailed as exc:
                notes.append(f"predictor kind '{r.kind}' left out of the ensemble: {exc}")
                continue
            weights.append(r.spearman**2)
            names.append(r.kind)
        if members:
            total = sum(weights)
            shares = {n: w / total for n, w in zip(names, weights, strict=True)}
            used = "ensemble(" + ", ".join(f"{n}={w:.2f}" for n, w in shares.items()) + ")"
            predictor = EnsemblePredictor(members, weights)
            return SearchFit(predictor, kind, used, reports, notes, shares)
        notes.append("no kind has a positive cross-validated Spearman; using the best one")
    for r in ranked:
        try:
            return SearchFit(
                build_models(r.kind, datas, seed, options), kind, r.kind, reports, notes
            )
        except FitFailed as exc:
            notes.append(f"predictor kind '{r.kind}' failed on all points: {exc}")
    return SearchFit(build_models(FALLBACK, datas, seed, options), kind, FALLBACK, reports, notes)

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from climb_assets.lib.predictors import auto
from climb_assets.lib.predictors.base import (
    KINDS,
    Curve,
    FitFailed,
    Metric,
    MetricData,
    MetricModel,
    ObjectivePredictor,
    PredictorError,
    build_models,
    objective_of,
    register,
)
from climb_assets.lib.predictors.report import spearman

K = 6
T = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 1.5])
ALIGN = np.array([0.5, 0.3, 0.1, 0.05, 0.05, 0.0])


def _law(x: np.ndarray, volume: float | np.ndarray = 1.0) -> np.ndarray:
    """A data-mixing-law loss with a learning-curve factor (volume in units of the budget)."""
    return 1.0 + 0.8 * np.exp(x @ T) * (0.6 + 0.4 * np.asarray(volume) ** -0.5)


def _data(n: int, seed: int = 0, metric: Metric | None = None) -> MetricData:
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(K), size=n)
    y = _law(x) + rng.normal(0, 0.003, n)
    proxies = np.repeat(np.arange(n), 2)
    volume = np.tile([0.25, 0.5], n)
    curve = Curve(proxies, volume, _law(x[proxies], volume) + rng.normal(0, 0.003, 2 * n))
    return MetricData(x, y, metric or Metric("t", "bpb"), curve, ALIGN)


def test_auto_scores_every_kind_and_uses_the_best():
    data = _data(24)
    fit = auto.fit_search_predictor("auto", [data], seed=0)
    assert set(fit.reports) == set(KINDS)
    ranked = [r for r in fit.reports.values() if r.spearman is not None]
    best = max(ranked, key=lambda r: r.spearman)
    assert fit.used == best.kind and fit.members == {best.kind: 1.0}
    assert fit.reports["log_linear"].spearman > 0.9  # the data follow its law
    fresh = _data(200, seed=9)
    assert spearman(fit.predictor.predict(fresh.weights), -fresh.values) > 0.9
    oof = auto.out_of_fold(fit)
    assert spearman(oof, -data.values) == pytest.approx(best.spearman)


def test_ensemble_weights_its_members_and_round_trips():
    data = _data(24)
    fit = auto.fit_search_predictor("auto", [data], seed=0, rule="ensemble")
    assert fit.used.startswith("ensemble(") and sum(fit.members.values()) == pytest.approx(1.0)
    assert all(fit.reports[k].spearman > 0 for k in fit.members)
    x = _data(50, seed=3).weights
    std = fit.predictor.predict_std(x)
    assert std is not None and np.all(std > 0)
    again = auto.load(json.loads(json.dumps(fit.predictor.to_json())))
    assert np.allclose(again.predict(x), fit.predictor.predict(x), atol=1e-10)
    assert np.allclose(again.predict_std(x), std, atol=1e-10)


def test_objective_combines_targets_with_their_weights_and_signs():
    bpb = _data(16)
    accuracy = MetricData(
        bpb.weights, 0.9 - 0.2 * bpb.weights[:, 0], Metric("q", "accuracy", 0.5), None, ALIGN
    )
    assert objective_of([bpb, accuracy]) == pytest.approx(-bpb.values + 0.5 * accuracy.values)
    fit = auto.fit_search_predictor("log_linear", [bpb, accuracy], seed=1)
    assert fit.used == "log_linear"
    model = fit.predictor
    assert isinstance(model, ObjectivePredictor)
    x = bpb.weights[:4]
    parts = [m.predict(x) for m in model.models]
    assert model.predict(x) == pytest.approx(-parts[0] + 0.5 * parts[1])
    assert np.all((parts[1] > 0.6) & (parts[1] < 1.0))  # accuracy modelled as an error rate
    with pytest.raises(PredictorError, match="target 'q' is scored by accuracy"):
        auto.fit_search_predictor("bimix", [bpb, accuracy], seed=1)


def test_bimix_predicts_beyond_the_proxy_budget():
    fit = auto.fit_search_predictor("bimix", [_data(24)], seed=0)
    x = _data(100, seed=4).weights
    assert fit.predictor.volume_aware
    at1, at4 = -fit.predictor.predict(x), -fit.predictor.predict(x, volume=4.0)
    # The data follow another law (exponential in the mixture), which bimix's power terms do
    # not rank well; its volume term still says that more tokens give a lower loss.
    assert np.all(at4 < at1)
    truth = _law(x, 4.0) / _law(x, 1.0)
    assert np.mean(at4 / at1) == pytest.approx(np.mean(truth), abs=0.1)
    with pytest.raises(PredictorError, match="predicts at the proxy budget only"):
        build_models("lightgbm", [_data(12)], 0).predict(x, volume=4.0)


def test_too_few_points_and_unknown_kinds_are_clear():
    with pytest.raises(PredictorError, match="needs at least 4 trained proxies, got 3"):
        auto.fit_search_predictor("gp", [_data(3)], seed=0)
    with pytest.raises(PredictorError, match="unknown predictor kind 'xgboost'"):
        auto.fit_search_predictor("xgboost", [_data(8)], seed=0)
    report = auto.cross_validate("gp", [_data(5)], seed=0)
    assert report.spearman is None and "fewer than 6" in report.error
    fit = auto.fit_search_predictor("auto", [_data(5)], seed=0)
    assert fit.used == "lightgbm" and any("cross-validated" in w for w in fit.warnings)


class _NeverConverges(MetricModel):
    kind: ClassVar[str] = "never_converges"

    def fit(self, data: MetricData, seed: int) -> None:
        raise FitFailed("never_converges: no start reached a finite loss")

    def predict(self, x, volume=1.0):  # pragma: no cover - never fitted
        raise AssertionError

    def to_json(self):  # pragma: no cover
        return {}

    @classmethod
    def from_json(cls, data):  # pragma: no cover
        return cls()


def test_a_kind_that_does_not_converge_falls_back_with_a_warning():
    register(_NeverConverges)
    try:
        fit = auto.fit_search_predictor("never_converges", [_data(12)], seed=0)
        assert fit.kind == "never_converges" and fit.used == "lightgbm"
        assert any("'never_converges' failed to fit" in w for w in fit.warnings)
        assert fit.reports["never_converges"].error and fit.reports["lightgbm"].spearman
        ranked = auto.fit_search_predictor("auto", [_data(12)], seed=0)
        assert ranked.used != "never_converges"
        assert any("'never_converges' not used" in w for w in ranked.warnings)
    finally:
        KINDS.pop("never_converges")

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from climb_assets.lib.predictors import KINDS, law
from climb_assets.lib.predictors.aligned import AlignedModel
from climb_assets.lib.predictors.base import (
    Curve,
    FitFailed,
    Metric,
    MetricData,
    MetricModel,
    PredictorError,
)
from climb_assets.lib.predictors.bimix import BiMixModel, optimal_mixture
from climb_assets.lib.predictors.gp import GPModel
from climb_assets.lib.predictors.law import LogLinearModel
from climb_assets.lib.predictors.report import spearman

K = 6
VOLUMES = (0.25, 0.5, 1.0)
ALIGNMENT = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])

# Data Mixing Law truth; t is centred because mixtures sum to 1 (only centred t is identifiable).
LAW_C, LAW_K = 1.0, 0.8
LAW_T = np.array([-1.2, -0.6, 0.0, 0.3, 0.6, 0.9])

# BiMix truth, summed over domains.
BIMIX_ALPHA = np.array([0.05, 0.10, 0.15, 0.08, 0.12, 0.03])
BIMIX_B = np.array([0.30, 0.20, 0.25, 0.15, 0.10, 0.20])
BIMIX_C = np.array([0.25, 0.20, 0.15, 0.20, 0.15, 0.10])
BIMIX_BETA = 0.5

NEW_KINDS = (LogLinearModel, GPModel, BiMixModel, AlignedModel)


def _law(x: np.ndarray) -> np.ndarray:
    return LAW_C + LAW_K * np.exp(x @ LAW_T)


def _bimix(x: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), (x.shape[0],))[:, None]
    return ((x + 1e-3) ** -BIMIX_ALPHA * (BIMIX_B * s**-BIMIX_BETA + BIMIX_C)).sum(axis=1)


def _mixtures(n: int, seed: int, concentration: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(K, concentration), size=n)


def _curve_data(n: int, seed: int, noise: float = 0.003) -> MetricData:
    """Learning curves from the BiMix truth at three volumes, with the target's alignment."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(K), size=n)
    proxy = np.repeat(np.arange(n), len(VOLUMES))
    volume = np.tile(VOLUMES, n)
    y = _bimix(x[proxy], volume) + rng.normal(0.0, noise, proxy.size)
    full = volume == 1.0
    return MetricData(x, y[full], Metric("web", "bpb"), Curve(proxy, volume, y), ALIGNMENT)


def _roundtrip(model: MetricModel) -> MetricModel:
    stored = json.loads(json.dumps({"kind": model.kind, **model.to_json()}))
    return type(model).from_json(stored)


@pytest.fixture(scope="module")
def data() -> MetricData:
    return _curve_data(24, seed=3)


def test_kinds_registered() -> None:
    for cls in NEW_KINDS:
        assert KINDS[cls.kind] is cls
    assert GPModel.has_std and AlignedModel.has_std and not LogLinearModel.has_std
    assert BiMixModel.volume_aware and not GPModel.volume_aware


@pytest.mark.parametrize("cls", NEW_KINDS, ids=lambda c: c.kind)
def test_fit_predict_roundtrip_determinism(cls: type[MetricModel], data: MetricData) -> None:
    cls.check(data)
    model = cls()
    model.fit(data, seed=5)
    fresh = _mixtures(50, seed=11)
    pred = model.predict(fresh)
    assert pred.shape == (50,) and np.all(np.isfinite(pred))
    assert model.predict(fresh[0]).shape == (1,)

    again = _roundtrip(model)
    assert np.allclose(again.predict(fresh), pred, rtol=0, atol=1e-10)
    if cls.has_std:
        std = model.predict_std(fresh)
        assert std is not None and std.shape == (50,) and np.all(std > 0)
        assert np.allclose(again.predict_std(fresh), std, rtol=0, atol=1e-10)
    else:
        assert model.predict_std(fresh) is None

    twin = cls()
    twin.fit(data, seed=5)
    assert json.dumps(twin.to_json()) == json.dumps(model.to_json())
    json.dumps(model.summary())
    if not cls.volume_aware:
        with pytest.raises(PredictorError, match="bimix"):
            model.predict(fresh, volume=2.0)


@pytest.mark.parametrize("cls", NEW_KINDS, ids=lambda c: c.kind)
def test_too_few_points(cls: type[MetricModel], data: MetricData) -> None:
    with pytest.raises(PredictorError, match=f"at least {cls.min_points}"):
        cls.check(data.subset(np.arange(cls.min_points - 1)))


def test_log_linear_recovers_law() -> None:
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(K), size=40)
    y = _law(x) + rng.normal(0.0, 0.003, 40)
    model = LogLinearModel()
    model.fit(MetricData(x, y, Metric("web", "bpb")), seed=0)
    assert model.c == pytest.approx(LAW_C, abs=0.1)
    assert model.k == pytest.approx(LAW_K, abs=0.1)
    assert model.t is not None and np.abs(model.t - LAW_T).max() < 0.15
    fresh = _mixtures(500, seed=1)
    pred = model.predict(fresh)
    assert spearman(pred, _law(fresh)) > 0.99
    assert np.sqrt(np.mean((pred - _law(fresh)) ** 2)) < 0.02
    summary = model.summary()
    assert summary["converged"] and summary["huber_delta"] > 0 and summary["starts"] >= 20


def test_log_linear_accuracy_is_modelled_as_error_rate() -> None:
    x = _mixtures(30, seed=2)
    error = 0.2 + 0.3 * np.exp(x @ LAW_T)
    model = LogLinearModel()
    model.fit(MetricData(x, 1.0 - error, Metric("mmlu", "accuracy"), alignment=ALIGNMENT), seed=0)
    fresh = _mixtures(200, seed=3)
    assert np.abs(model.predict(fresh) - (1.0 - 0.2 - 0.3 * np.exp(fresh @ LAW_T))).max() < 0.01
    assert model.summary()["starts"] == 21  # the alignment start is added


def test_log_linear_flat_target_fits() -> None:
    x = _mixtures(10, seed=4)
    model = LogLinearModel()
    model.fit(MetricData(x, np.full(10, 0.9), Metric("web", "bpb")), seed=0)
    assert np.allclose(model.predict(_mixtures(20, seed=5)), 0.9, atol=1e-4)


def test_no_finite_fit_raises_fit_failed(monkeypatch: pytest.MonkeyPatch, data: MetricData) -> None:
    # An optimiser that blows up at every start stands in for a law that cannot be fitted.
    def blown_up(fun: object, x0: np.ndarray, **kwargs: object) -> OptimizeResult:
        return OptimizeResult(x=np.full_like(x0, np.nan), fun=np.nan, success=False, status=2)

    monkeypatch.setattr(law, "minimize", blown_up)
    with pytest.raises(FitFailed, match="log_linear"):
        LogLinearModel().fit(data, seed=0)
    with pytest.raises(FitFailed, match="bimix"):
        BiMixModel().fit(data, seed=0)


def test_gp_learns_quadratic_and_std_grows_away_from_data() -> None:
    optimum = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.full(K, 3.0), size=40)
    y = -((x - optimum) ** 2).sum(axis=1) + rng.normal(0.0, 0.002, 40)
    model = GPModel()
    model.fit(MetricData(x, y, Metric("mmlu", "accuracy")), seed=0)
    fresh = rng.dirichlet(np.full(K, 3.0), size=300)
    assert spearman(model.predict(fresh), -((fresh - optimum) ** 2).sum(axis=1)) > 0.8
    vertex = np.eye(K)[:1]
    near, far = model.predict_std(np.vstack([x[:1], vertex]))
    assert 0 < near < far


def test_gp_alignment_trend_kept_when_it_helps() -> None:
    rng = np.random.default_rng(1)
    x = rng.dirichlet(np.ones(K), size=20)
    y = 1.2 - 0.5 * (x @ ALIGNMENT) + rng.normal(0.0, 0.002, 20)
    model = GPModel()
    model.fit(MetricData(x, y, Metric("web", "bpb"), alignment=ALIGNMENT), seed=0)
    assert model.summary()["trend_slope"] == pytest.approx(-0.5, abs=0.1)
    fresh = _mixtures(30, seed=7)
    again = _roundtrip(model)
    assert np.allclose(again.predict(fresh), model.predict(fresh), rtol=0, atol=1e-10)
    # The same trend is the wrong way round for accuracy: dropped.
    wrong = GPModel()
    wrong.fit(MetricData(x, y, Metric("mmlu", "accuracy"), alignment=ALIGNMENT), seed=0)
    assert wrong.summary()["trend_slope"] == 0.0 and wrong.summary()["trend_dropped"]


def test_bimix_recovers_law_and_extrapolates() -> None:
    model = BiMixModel()
    model.fit(_curve_data(40, seed=0), seed=0)
    assert model.beta == pytest.approx(BIMIX_BETA, abs=0.1)
    fresh = _mixtures(500, seed=1)
    for volume in (1.0, 4.0):
        pred, true = model.predict(fresh, volume), _bimix(fresh, volume)
        assert spearman(pred, true) > 0.95
        assert np.sqrt(np.mean((pred - true) ** 2)) < 0.02
    assert model.summary()["volumes"] == list(VOLUMES)


def test_bimix_optimal_mixture_beats_candidates() -> None:
    model = BiMixModel()
    model.fit(_curve_data(24, seed=1), seed=0)
    best = optimal_mixture(model, 4.0)
    assert best.shape == (K,) and np.all(best >= 0) and best.sum() == pytest.approx(1.0)
    candidates = _mixtures(5000, seed=2, concentration=0.5)
    assert model.predict(best, 4.0)[0] <= model.predict(candidates, 4.0).min() + 1e-9


def test_bimix_needs_curves(data: MetricData) -> None:
    no_curve = MetricData(data.weights, data.values, data.metric)
    with pytest.raises(PredictorError, match="eval_fractions"):
        BiMixModel.check(no_curve)
    full_only = Curve(np.arange(data.n), np.ones(data.n), data.values)
    with pytest.raises(PredictorError, match="eval_fractions"):
        BiMixModel.check(MetricData(data.weights, data.values, data.metric, full_only))


def test_bimix_refuses_accuracy(data: MetricData) -> None:
    acc = MetricData(data.weights, 1.0 - data.values / 4, Metric("mmlu", "accuracy"), data.curve)
    with pytest.raises(PredictorError, match="target 'mmlu' is scored by accuracy"):
        BiMixModel.check(acc)


def test_aligned_ranks_by_alignment() -> None:
    # Per-cluster power laws weighted by the target's distribution: loss falls as the mixture
    # moves towards the target's distribution.
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.full(K, 0.7), size=16)

    def loss(m: np.ndarray) -> np.ndarray:
        return ((m + 0.01) ** -0.3) @ ALIGNMENT

    model = AlignedModel()
    model.fit(
        MetricData(
            x, loss(x) + rng.normal(0.0, 0.005, 16), Metric("web", "bpb"), alignment=ALIGNMENT
        ),
        seed=0,
    )
    fresh = rng.dirichlet(np.full(K, 0.7), size=500)
    assert spearman(model.predict(fresh), loss(fresh)) > 0.9
    assert model.summary()["slope"] < 0
    std = model.predict_std(np.vstack([np.full(K, 1.0 / K), np.eye(K)[-1]]))
    assert std is not None and 0 < std[0] < std[1]


def test_aligned_needs_alignment(data: MetricData) -> None:
    with pytest.raises(PredictorError, match="alignment"):
        AlignedModel.check(MetricData(data.weights, data.values, data.metric))

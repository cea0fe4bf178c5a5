from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import pytest

from climb_assets.lib.mixture import candidate_pool
from climb_assets.lib.predictors.report import (
    feature_importance_png,
    predicted_vs_actual_png,
    spearman,
)
from climb_assets.lib.predictors.tree import (
    MIN_POINTS,
    PAPER_PARAMS,
    PredictorError,
    PredictorFit,
    fit_predictor,
    load_predictor,
    predict,
    predictor_to_string,
    save_predictor,
)

K = 6
ALPHA_STAR = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _objective(x: np.ndarray) -> np.ndarray:
    return -((x - ALPHA_STAR) ** 2).sum(axis=1)


def _data(n: int, seed: int = 0, noise: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(K), size=n)
    return x, _objective(x) + rng.normal(0.0, noise, size=n)


@pytest.fixture(scope="module")
def synthetic_fit() -> tuple[PredictorFit, np.ndarray, np.ndarray]:
    x, y = _data(64)
    return fit_predictor(x, y, seed=0), x, y


def test_paper_params() -> None:
    assert PAPER_PARAMS["learning_rate"] == 0.01
    assert PAPER_PARAMS["max_depth"] == 4
    assert PAPER_PARAMS["min_data_in_leaf"] == 5
    assert PAPER_PARAMS["lambda_l1"] == PAPER_PARAMS["lambda_l2"] == 1.0
    assert PAPER_PARAMS["num_iterations"] == 1000
    assert PAPER_PARAMS["early_stopping_round"] == 20


def test_synthetic_objective_is_learned(synthetic_fit) -> None:
    # Paper settings: early stopping on a 6-point split. Out-of-fold Spearman (models trained on
    # ~51 points) is ~0.67 here; on 500 fresh mixtures the refitted model reaches ~0.83.
    fit, _, _ = synthetic_fit
    assert fit.n_points == 64
    assert fit.cv_spearman is not None and fit.cv_spearman > 0.6
    assert fit.cv_predictions.shape == (64,) and np.all(np.isfinite(fit.cv_predictions))
    assert 1 <= fit.num_rounds <= 1000
    assert fit.feature_importance.shape == (K,) and fit.feature_importance.sum() > 0
    assert fit.params["min_data_in_leaf"] == 5
    pool = candidate_pool(np.full(K, 1 / K), 20_000, seed=1)
    best = pool[np.argmax(predict(fit, pool))]
    dist = np.linalg.norm(pool - ALPHA_STAR, axis=1)
    assert np.linalg.norm(best - ALPHA_STAR) < dist.mean()
    assert np.linalg.norm(best - ALPHA_STAR) < np.quantile(dist, 0.1)
    held_x, _ = _data(500, seed=9)
    assert spearman(predict(fit, held_x), _objective(held_x)) > 0.75


def test_full_round_budget_without_early_stopping() -> None:
    x, y = _data(64)
    fit = fit_predictor(x, y, seed=0, params={"early_stopping_round": 0})
    assert fit.num_rounds == 1000
    assert fit.cv_spearman is not None and fit.cv_spearman > 0.65
    held_x, _ = _data(500, seed=9)
    assert spearman(predict(fit, held_x), _objective(held_x)) > 0.75


def test_predictions_are_in_target_units() -> None:
    # Accuracy-like scores that differ by hundredths: without standardisation lambda_l1 = 1
    # would zero every leaf and the model would predict a constant.
    x, y = _data(40, seed=2)
    acc = 0.45 + 0.01 * (y - y.mean()) / y.std()
    fit = fit_predictor(x, acc, seed=0)
    pred = predict(fit, x)
    assert pred.std() > 0.003
    assert pred.mean() == pytest.approx(acc.mean(), abs=0.003)
    assert spearman(pred, acc) > 0.8


def test_determinism() -> None:
    x, y = _data(24, seed=3)
    a = fit_predictor(x, y, seed=5)
    b = fit_predictor(x, y, seed=5)
    assert predictor_to_string(a) == predictor_to_string(b)
    np.testing.assert_array_equal(predict(a, x), predict(b, x))
    np.testing.assert_array_equal(a.cv_predictions, b.cv_predictions)
    assert a.cv_spearman == b.cv_spearman


def test_text_round_trip(tmp_path: Path, synthetic_fit) -> None:
    fit, x, _ = synthetic_fit
    path = save_predictor(fit, tmp_path / "model" / "predictor.txt")
    text = path.read_text()
    assert text.startswith("tree")
    loaded = load_predictor(path)
    assert isinstance(loaded, lightgbm.Booster)
    np.testing.assert_array_equal(predict(loaded, x), predict(fit, x))
    np.testing.assert_array_equal(predict(load_predictor(text), x), predict(fit, x))
    np.testing.assert_array_equal(predict(load_predictor(str(path)), x), predict(fit, x))
    with pytest.raises(PredictorError, match="no predictor model"):
        load_predictor(tmp_path / "missing.txt")


def test_too_few_points() -> None:
    x, y = _data(MIN_POINTS - 1)
    with pytest.raises(PredictorError) as err:
        fit_predictor(x, y, seed=0)
    assert str(err.value) == (
        f"need at least {MIN_POINTS} trained proxies to fit the predictor, got {MIN_POINTS - 1}; "
        "raise the round-1 budget"
    )


def test_tiny_data() -> None:
    x, y = _data(8, seed=4)
    fit = fit_predictor(x, y, seed=0)
    assert fit.num_rounds == 1000  # too few points for an early-stopping split
    assert fit.params["min_data_in_leaf"] == 2
    assert fit.cv_spearman is not None
    assert predict(fit, x).shape == (8,)
    few = fit_predictor(*_data(MIN_POINTS, seed=5), seed=0)
    assert few.cv_spearman is None and np.all(np.isnan(few.cv_predictions))


def test_constant_target() -> None:
    x, _ = _data(12, seed=6)
    fit = fit_predictor(x, np.full(12, 0.5), seed=0)
    np.testing.assert_allclose(predict(fit, x), 0.5)
    assert fit.cv_spearman is not None and np.isnan(fit.cv_spearman)


def test_param_overrides_and_names() -> None:
    x, y = _data(30, seed=7)
    names = [f"cluster_{i}" for i in range(K)]
    fit = fit_predictor(
        x,
        y,
        seed=1,
        params={"min_child_samples": 3, "n_estimators": 50, "early_stopping_round": 0},
        feature_names=names,
    )
    assert fit.params["min_data_in_leaf"] == 3
    assert fit.num_rounds == 50
    assert fit.booster.feature_name() == names
    assert fit.feature_names == names


def test_input_errors() -> None:
    x, y = _data(10)
    with pytest.raises(PredictorError, match="one score per trained proxy"):
        fit_predictor(x, y[:-1], seed=0)
    bad = y.copy()
    bad[0] = np.nan
    with pytest.raises(PredictorError, match="drop failed proxy runs"):
        fit_predictor(x, bad, seed=0)
    with pytest.raises(PredictorError, match="one per column"):
        fit_predictor(x, y, seed=0, feature_names=["a"])
    fit = fit_predictor(x, y, seed=0)
    with pytest.raises(PredictorError, match="one weight per super-cluster"):
        predict(fit, np.ones((2, K + 1)))


def test_spearman() -> None:
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert np.isnan(spearman([1.0], [2.0]))
    assert spearman([1, 2, np.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)


def test_pngs(synthetic_fit) -> None:
    fit, _, y = synthetic_fit
    png = predicted_vs_actual_png(y, fit.cv_predictions, "round 1")
    assert png.startswith(PNG_MAGIC)
    assert predicted_vs_actual_png([1.0, 1.0], [np.nan, 2.0], "degenerate").startswith(PNG_MAGIC)
    assert feature_importance_png(fit.feature_importance, fit.feature_names).startswith(PNG_MAGIC)
    with pytest.raises(PredictorError, match="one each"):
        feature_importance_png([1.0, 2.0], ["a"])

"""Kind `lightgbm`: the paper's LightGBM regressor f(alpha) -> metric, fitted on the proxies.

The paper's predictor is a LightGBM regressor (gbdt, learning rate 0.01, up to 1000 rounds,
max_depth 4, min_child_samples 5, reg_alpha 1.0, reg_lambda 1.0, early stopping after 20 rounds
on a 10% validation split). This module uses LightGBM's native API and stores models in its
text format only (never pickled). By convention a higher target is better: callers negate
losses such as bits-per-byte before fitting.

Choices beyond the paper, for the small data a CLIMB round has (8-112 points):

* Targets are standardised before boosting and the trees' leaf values are rescaled afterwards,
  so the booster predicts in the target's own units. Without this, ``lambda_l1 = 1`` (an
  absolute threshold on a leaf's summed gradient) zeroes every leaf when scores differ by
  hundredths, as accuracies and bits-per-byte do, and the model never leaves the mean.
* ``min_data_in_leaf`` is capped at ``max(1, n_train // 4)`` and ``min_data_in_bin`` at that
  value (at most LightGBM's default 3): with 8 points the paper's 5 would forbid every split.
  From 20 training points on, the paper's value holds.
* The number of rounds is chosen by early stopping on a 10% validation split, as in the paper,
  when that split has at least 2 points (n >= 20). With fewer points, or with
  ``early_stopping_round = 0``, the full ``num_iterations`` (1000) is boosted: on synthetic
  quadratic objectives (K = 8, n = 8..112, two noise levels) the full budget gave a higher
  held-out Spearman than both early stopping and rounds picked by k-fold CV, whose choice on
  8-16 points was erratic (often a single round). The learning rate of 0.01 and the L1/L2
  penalties are the regularisation. The returned booster is refitted on *all* points with the
  chosen number of rounds, so no expensive proxy run is left out of the final model.
* ``cv_spearman`` is k-fold cross-validated (out-of-fold predictions of boosters trained with
  the chosen number of rounds), a held-out check of the paper's "Spearman 0.94".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightgbm
import numpy as np

from climb_assets.lib.predictors.base import (
    MetricData,
    MetricModel,
    PredictorError,
    as_rows,
    register,
)
from climb_assets.lib.predictors.report import spearman

PAPER_PARAMS: dict[str, Any] = {
    "objective": "regression",
    "boosting": "gbdt",
    "learning_rate": 0.01,
    "num_iterations": 1000,
    "early_stopping_round": 20,
    "max_depth": 4,
    "min_data_in_leaf": 5,
    "lambda_l1": 1.0,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 1,
    "verbosity": -1,
    "seed": 0,
}
"""The paper's LightGBM settings under their native names, plus reproducibility settings.

``num_iterations`` is the most rounds boosted and ``early_stopping_round`` the patience; both
are consumed by :func:`fit_predictor` rather than passed to the booster.
"""

VALID_FRACTION = 0.1
"""Share of the points held out for early stopping (paper: 10%)."""

MIN_POINTS = 4
"""Fewest (mixture, score) pairs :func:`fit_predictor` accepts."""

CV_MIN_POINTS = 6
"""Fewest points for which a cross-validated Spearman is reported."""

_ALIASES = {
    "min_child_samples": "min_data_in_leaf",
    "reg_alpha": "lambda_l1",
    "reg_lambda": "lambda_l2",
    "num_boost_round": "num_iterations",
    "n_estimators": "num_iterations",
    "early_stopping_rounds": "early_stopping_round",
    "boosting_type": "boosting",
    "random_state": "seed",
    "n_jobs": "num_threads",
    "verbose": "verbosity",
}


@dataclass
class PredictorFit:
    """A fitted predictor and how well it generalises.

    Attributes:
        booster: LightGBM booster trained on all points; predicts in the target's units.
        params: Effective LightGBM parameters (after the small-data adjustments).
        num_rounds: Boosting rounds of ``booster``.
        cv_spearman: Spearman correlation of out-of-fold predictions with the targets; None
            with fewer than :data:`CV_MIN_POINTS` points, NaN when either side is constant.
        cv_predictions: (n,) out-of-fold predictions (NaN where not computed).
        feature_importance: (K,) total split gain per feature.
        n_points: Number of (mixture, score) pairs fitted.
        feature_names: Name per feature.
    """

    booster: lightgbm.Booster
    params: dict[str, Any]
    num_rounds: int
    cv_spearman: float | None
    cv_predictions: np.ndarray
    feature_importance: np.ndarray
    n_points: int
    feature_names: list[str] = field(default_factory=list)


def fit_predictor(
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    params: Mapping[str, Any] | None = None,
    cv_folds: int | None = 5,
    feature_names: Sequence[str] | None = None,
) -> PredictorFit:
    """Fit the LightGBM predictor on mixtures X and their scores y (higher is better).

    Args:
        X: (n, K) mixture weights of the trained proxies.
        y: (n,) target score per proxy; negate losses so that higher is better.
        seed: Seed of LightGBM and of the validation split and folds.
        params: Overrides of :data:`PAPER_PARAMS` (native or sklearn-style names).
        cv_folds: Folds of the cross-validation (capped at n); None skips it (the family's
            cross-validation in ``auto.py`` scores every kind the same way).
        feature_names: Name per feature (default ``sc_0 .. sc_{K-1}``).

    Returns:
        The fitted predictor; see the module docstring for the choices made on small data.

    Raises:
        PredictorError: On malformed input or fewer than :data:`MIN_POINTS` points.
    """
    X, y = _check_xy(X, y)
    n, k = X.shape
    if n < MIN_POINTS:
        raise PredictorError(
            f"need at least {MIN_POINTS} trained proxies to fit the predictor, got {n}; "
            "raise the round-1 budget"
        )
    if cv_folds is not None and cv_folds < 2:
        raise PredictorError(f"cv_folds = {cv_folds}; use at least 2 folds")
    names = _feature_names(feature_names, k)
    merged = _merge_params(params, seed)
    max_rounds = int(merged.pop("num_iterations"))
    patience = int(merged.pop("early_stopping_round"))
    if max_rounds < 1:
        raise PredictorError(f"num_iterations = {max_rounds}; boost at least 1 round")

    rng = np.random.default_rng(seed)
    folds = _folds(n, min(cv_folds or 2, n), rng)
    n_valid = int(n * VALID_FRACTION)
    y_mean, y_scale = _standardiser(y)
    z = (y - y_mean) / y_scale
    if n_valid >= 2 and patience > 0:
        perm = rng.permutation(n)
        valid, train = perm[:n_valid], perm[n_valid:]
        p = _small_data_params(merged, train.size)
        dtrain = _dataset(X[train], z[train], p, names)
        dvalid = _dataset(X[valid], z[valid], p, names, reference=dtrain)
        booster = lightgbm.train(
            p,
            dtrain,
            num_boost_round=max_rounds,
            valid_sets=[dvalid],
            callbacks=[lightgbm.early_stopping(patience, verbose=False)],
        )
        num_rounds = booster.best_iteration if booster.best_iteration > 0 else booster.num_trees()
    else:
        num_rounds = max_rounds
    num_rounds = max(1, int(num_rounds))

    cv_predictions = np.full(n, np.nan)
    cv_spearman: float | None = None
    if cv_folds is not None and n >= CV_MIN_POINTS:
        for train, test in folds:
            fold_booster, _ = _train(X[train], y[train], merged, num_rounds, names)
            cv_predictions[test] = fold_booster.predict(X[test])
        cv_spearman = spearman(cv_predictions, y)

    booster, effective = _train(X, y, merged, num_rounds, names)
    effective = {**effective, "num_iterations": max_rounds, "early_stopping_round": patience}
    return PredictorFit(
        booster=booster,
        params=effective,
        num_rounds=booster.num_trees(),
        cv_spearman=cv_spearman,
        cv_predictions=cv_predictions,
        feature_importance=booster.feature_importance(importance_type="gain").astype(np.float64),
        n_points=n,
        feature_names=names,
    )


def predict(model: PredictorFit | lightgbm.Booster, X: np.ndarray) -> np.ndarray:
    """Predicted objective (higher is better) for each row of X."""
    booster = model.booster if isinstance(model, PredictorFit) else model
    x = np.asarray(X, dtype=np.float64)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != booster.num_feature():
        raise PredictorError(
            f"X has shape {x.shape} but the predictor expects {booster.num_feature()} "
            "features; give one weight per super-cluster"
        )
    return np.asarray(booster.predict(x), dtype=np.float64)


def predictor_to_string(model: PredictorFit | lightgbm.Booster) -> str:
    """The model in LightGBM's text format (starts with ``tree``)."""
    booster = model.booster if isinstance(model, PredictorFit) else model
    return booster.model_to_string()


def save_predictor(model: PredictorFit | lightgbm.Booster, path: str | os.PathLike[str]) -> Path:
    """Write the model to ``path`` in LightGBM's text format (never pickled).

    For object stores, write :func:`predictor_to_string` with the storage layer instead.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(predictor_to_string(model), encoding="utf-8")
    return target


def load_predictor(path_or_string: str | os.PathLike[str]) -> lightgbm.Booster:
    """Load a booster from a LightGBM text model file or from the model text itself."""
    if isinstance(path_or_string, str) and path_or_string.startswith("tree"):
        return lightgbm.Booster(model_str=path_or_string)
    path = Path(path_or_string)
    if not path.is_file():
        raise PredictorError(
            f"no predictor model at {path}; pass a LightGBM text model file or its contents"
        )
    return lightgbm.Booster(model_str=path.read_text(encoding="utf-8"))


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2:
        raise PredictorError(f"X must be (n, K) mixture weights, got shape {x.shape}")
    if x.shape[0] != t.size:
        raise PredictorError(
            f"{x.shape[0]} mixtures but {t.size} scores; give one score per trained proxy"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(t))):
        raise PredictorError(
            "mixtures or scores contain NaN or inf; drop failed proxy runs before fitting"
        )
    return x, t


def _feature_names(names: Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        return [f"sc_{i}" for i in range(k)]
    out = [str(v) for v in names]
    if len(out) != k:
        raise PredictorError(f"{len(out)} feature names for {k} features; give one per column")
    return out


def _merge_params(params: Mapping[str, Any] | None, seed: int) -> dict[str, Any]:
    merged = dict(PAPER_PARAMS)
    merged["seed"] = int(seed)
    for key, value in (params or {}).items():
        merged[_ALIASES.get(key, key)] = value
    return merged


def _small_data_params(params: Mapping[str, Any], n_train: int) -> dict[str, Any]:
    """Cap min_data_in_leaf at max(1, n_train // 4) and min_data_in_bin at that (<= 3)."""
    p = dict(params)
    leaf = min(int(p.get("min_data_in_leaf", 20)), max(1, n_train // 4))
    p["min_data_in_leaf"] = leaf
    p["min_data_in_bin"] = min(int(p.get("min_data_in_bin", 3)), leaf)
    p.pop("num_iterations", None)
    p.pop("early_stopping_round", None)
    return p


def _standardiser(y: np.ndarray) -> tuple[float, float]:
    mean = float(y.mean())
    scale = float(y.std())
    return mean, scale if scale > 0 else 1.0


def _dataset(
    x: np.ndarray,
    z: np.ndarray,
    params: Mapping[str, Any],
    names: list[str],
    reference: lightgbm.Dataset | None = None,
) -> lightgbm.Dataset:
    return lightgbm.Dataset(
        x,
        label=z,
        params=dict(params),
        feature_name=names,
        reference=reference,
        free_raw_data=False,
    )


def _train(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    num_rounds: int,
    names: list[str],
) -> tuple[lightgbm.Booster, dict[str, Any]]:
    """Boost a fixed number of rounds on standardised targets; predict in the target's units."""
    mean, scale = _standardiser(y)
    p = _small_data_params(params, x.shape[0])
    booster = lightgbm.train(
        p, _dataset(x, (y - mean) / scale, p, names), num_boost_round=num_rounds
    )
    _rescale_leaves(booster, mean, scale)
    return booster, p


def _rescale_leaves(booster: lightgbm.Booster, mean: float, scale: float) -> None:
    """Turn a booster of standardised targets into one of raw targets, in place.

    The prediction is the sum of one leaf per tree, so multiplying every leaf by ``scale`` and
    adding ``mean`` to every leaf of the first tree gives ``scale * z + mean``.
    """
    trees = booster.dump_model()["tree_info"]
    for t, tree in enumerate(trees):
        for leaf in range(int(tree["num_leaves"])):
            value = booster.get_leaf_output(t, leaf) * scale + (mean if t == 0 else 0.0)
            booster.set_leaf_output(t, leaf, value)


def _folds(n: int, k: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """k shuffled folds as (train_rows, test_rows), every row tested exactly once."""
    perm = rng.permutation(n)
    return [(np.sort(np.setdiff1d(perm, test)), np.sort(test)) for test in np.array_split(perm, k)]


@register
class LightGBMModel(MetricModel):
    """The paper's predictor behind the family's interface (see the module docstring)."""

    kind: ClassVar[str] = "lightgbm"
    min_points: ClassVar[int] = MIN_POINTS

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params or {})
        self.booster: lightgbm.Booster | None = None
        self.fit_info: dict[str, Any] = {}

    def fit(self, data: MetricData, seed: int) -> None:
        fit = fit_predictor(data.weights, data.values, seed, self.params, cv_folds=None)
        self.booster = fit.booster
        self.fit_info = {
            "num_rounds": fit.num_rounds,
            "feature_importance": fit.feature_importance.round(6).tolist(),
        }

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        self._check_volume(volume)
        if self.booster is None:
            raise PredictorError("the lightgbm model is not fitted")
        return predict(self.booster, as_rows(x))

    def summary(self) -> dict[str, Any]:
        return dict(self.fit_info)

    def to_json(self) -> dict[str, Any]:
        return {"model": predictor_to_string(self.booster), **self.fit_info}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LightGBMModel:
        model = cls()
        model.booster = load_predictor(str(data["model"]))
        model.fit_info = {k: v for k, v in data.items() if k not in ("model", "kind")}
        return model

"""Kind `aligned`: the metric as a linear function of how well a mixture matches the target.

A Domain2Vec-style distribution-alignment predictor (Domain2Vec (2025), arXiv 2506.10952: a
validation loss is lower the more the training mixture's distribution over domains is aligned
with the validation set's). With ``a`` the target's distribution over the K super-clusters (the
target alignment asset), the feature is the negative cross-entropy

    f(r) = sum_i a_i * log(r_i + eps),   eps = 0.01,

and the metric is fitted as ``m0 + m1 * f(r)`` by ordinary least squares (2 parameters).

Why this feature and not the plain overlap ``r . a``: a target's loss is roughly the
``a``-weighted sum of per-cluster losses, each falling with its own share like a power law
(``r_i^-alpha ~ 1 - alpha * log r_i``), which is what ``f`` linearises. Its maximiser is
``r = a`` (Gibbs' inequality), the distribution-matching mixture, whereas the overlap is
maximised by putting everything on the target's largest cluster, a one-hot mixture a search
would then chase. On synthetic targets (K = 6, 20 seeds, Spearman on fresh mixtures) each feature
ranks ~1.0 on data generated from itself; on a per-cluster power law ``sum_i a_i (r_i +
1e-3)^-0.15`` the log feature ranks 0.95 and the overlap 0.63, on a law linear in the overlap the
log feature still ranks 0.80. ``eps = 0.01`` (a quarter of a uniform share at K = 24) bounds the
price of a missing cluster; 1e-3 ranked better on the power law but worse (0.71) on the linear
one.

:meth:`AlignedModel.predict_std` is the least-squares prediction interval's standard deviation,
``sigma * sqrt(1 + h(r))`` with the residual standard deviation ``sigma`` (``n - 2`` degrees of
freedom) and the leverage ``h(r) = 1/n + (f(r) - mean f)^2 / S_ff``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from climb_assets.lib.predictors.base import (
    FitFailed,
    MetricData,
    MetricModel,
    PredictorError,
    as_rows,
    register,
)

EPS = 0.01


def alignment_feature(x: np.ndarray, alignment: np.ndarray) -> np.ndarray:
    """``sum_i a_i * log(r_i + eps)`` for each mixture row (higher is better aligned)."""
    return np.log(as_rows(x, alignment.size) + EPS) @ alignment


@register
class AlignedModel(MetricModel):
    """Least squares on the alignment feature (see the module docstring)."""

    kind: ClassVar[str] = "aligned"
    min_points: ClassVar[int] = 3
    has_std: ClassVar[bool] = True

    def __init__(self) -> None:
        self.alignment: np.ndarray | None = None
        self.coef = (0.0, 0.0)
        self.sigma = 0.0
        self.n = 0
        self.f_mean = 0.0
        self.s_ff = 1.0

    @classmethod
    def check(cls, data: MetricData) -> None:
        if data.alignment is None:
            raise PredictorError(
                f"predictor kind 'aligned' needs target '{data.metric.name}''s distribution over "
                "super-clusters, which is unavailable; materialise the target alignment asset "
                "or use another kind"
            )
        super().check(data)

    def fit(self, data: MetricData, seed: int) -> None:
        self.check(data)
        assert data.alignment is not None
        f = alignment_feature(data.weights, data.alignment)
        y = data.values
        n = y.size
        f_mean = float(f.mean())
        s_ff = float(((f - f_mean) ** 2).sum())
        if not s_ff > 1e-12 * max(1.0, f_mean**2) * n:
            raise FitFailed(
                "aligned: every proxy's mixture is equally aligned with the target, so the "
                "alignment feature cannot explain the metric"
            )
        m1 = float(((f - f_mean) * (y - y.mean())).sum() / s_ff)
        m0 = float(y.mean() - m1 * f_mean)
        resid = y - (m0 + m1 * f)
        self.alignment = data.alignment.copy()
        self.coef = (m0, m1)
        self.sigma = float(np.sqrt((resid @ resid) / max(n - 2, 1)))
        self.n, self.f_mean, self.s_ff = n, f_mean, s_ff

    def _feature(self, x: np.ndarray) -> np.ndarray:
        if self.alignment is None:
            raise PredictorError("the aligned model is not fitted")
        return alignment_feature(x, self.alignment)

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        self._check_volume(volume)
        return self.coef[0] + self.coef[1] * self._feature(x)

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        f = self._feature(x)
        leverage = 1.0 / self.n + (f - self.f_mean) ** 2 / self.s_ff
        return self.sigma * np.sqrt(1.0 + leverage)

    def summary(self) -> dict[str, Any]:
        if self.alignment is None:
            return {}
        return {
            "intercept": self.coef[0],
            "slope": self.coef[1],
            "residual_std": self.sigma,
            "points": self.n,
            "eps": EPS,
        }

    def to_json(self) -> dict[str, Any]:
        if self.alignment is None:
            raise PredictorError("the aligned model is not fitted")
        return {
            "eps": EPS,
            "alignment": [float(v) for v in self.alignment],
            "coef": [self.coef[0], self.coef[1]],
            "sigma": self.sigma,
            "n": self.n,
            "f_mean": self.f_mean,
            "s_ff": self.s_ff,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlignedModel:
        if float(data.get("eps", EPS)) != EPS:
            raise PredictorError(
                f"aligned model stored with eps {data['eps']}, this version uses {EPS}; re-run "
                "the round to fit it again"
            )
        model = cls()
        model.alignment = np.asarray(data["alignment"], dtype=np.float64)
        model.coef = (float(data["coef"][0]), float(data["coef"][1]))
        model.sigma = float(data["sigma"])
        model.n = int(data["n"])
        model.f_mean = float(data["f_mean"])
        model.s_ff = float(data["s_ff"])
        return model

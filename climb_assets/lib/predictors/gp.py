"""Kind `gp`: Gaussian-process regression of the metric on the mixture, with a predictive std.

Kernel ``C * RBF(l) + White(noise)`` (one isotropic length scale: with 8-16 proxies per-cluster
length scales are not identifiable), scikit-learn's :class:`GaussianProcessRegressor` with
``normalize_y=True`` so the bounds below hold in units of the target's standard deviation:

* ``C`` in ``[1e-2, 1e3]``: the signal variance of standardised targets (a long length
  scale needs a large variance to bend the function across the simplex).
* ``l`` in ``[0.05, 10]``: mixtures live on the simplex, whose vertices are ``sqrt(2)`` apart
  and where Dirichlet draws are typically 0.3-0.6 apart; 0.05 is finer than any two proxies a
  round tells apart, 10 is a nearly linear trend.
* ``noise`` in ``[1e-6, 1]``: from nearly exact repeats up to pure noise.

The marginal likelihood is maximised from the initial kernel and :data:`RESTARTS` seeded random
restarts (``random_state = seed``), so the fit is deterministic for a seed.

Prior mean: when the target's alignment ``a`` (its distribution over super-clusters) is known,
``y ~ m0 + m1 * (r . a)`` is fitted by least squares and the GP models the residual. The trend is
kept only when its slope says more overlap with the target is better (``m1 < 0`` for a loss,
``m1 > 0`` for accuracy); a slope of the other sign is noise or a confound and would be
extrapolated far from the data, so it is dropped (the GP then has a zero trend and
``normalize_y`` supplies the mean).

:meth:`GPModel.predict_std` is the GP's predictive std *including* the fitted white noise, i.e.
the spread of the metric a new proxy at that mixture would score, not only of its mean.

Storage: the fitted hyper-parameters, the training mixtures and residuals, and the trend; the
stored model is refitted with ``optimizer=None`` and the fitted kernel, which for fixed
hyper-parameters is an exact (deterministic) computation, so predictions match the original.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from climb_assets.lib.predictors.base import (
    FitFailed,
    MetricData,
    MetricModel,
    PredictorError,
    as_rows,
    register,
)

RESTARTS = 3
CONSTANT_BOUNDS = (1e-2, 1e3)
LENGTH_SCALE_BOUNDS = (0.05, 10.0)
NOISE_BOUNDS = (1e-6, 1.0)


def _kernel(constant: float, length_scale: float, noise: float, fixed: bool) -> ConstantKernel:
    """``C * RBF + White``; ``fixed`` freezes the hyper-parameters of a stored model."""
    if fixed:
        return ConstantKernel(constant, "fixed") * RBF(length_scale, "fixed") + WhiteKernel(
            noise, "fixed"
        )
    return ConstantKernel(constant, CONSTANT_BOUNDS) * RBF(
        length_scale, LENGTH_SCALE_BOUNDS
    ) + WhiteKernel(noise, NOISE_BOUNDS)


@register
class GPModel(MetricModel):
    """Gaussian process on the mixture weights (see the module docstring).

    Args:
        restarts: Seeded random restarts of the marginal-likelihood optimiser.
    """

    kind: ClassVar[str] = "gp"
    min_points: ClassVar[int] = 4
    has_std: ClassVar[bool] = True

    def __init__(self, restarts: int = RESTARTS) -> None:
        self.restarts = int(restarts)
        self.gp: GaussianProcessRegressor | None = None
        self.x: np.ndarray | None = None
        self.residual: np.ndarray | None = None
        self.alignment: np.ndarray | None = None
        self.trend = (0.0, 0.0)
        self.hyper: dict[str, float] = {}
        self.fit_info: dict[str, Any] = {}

    def fit(self, data: MetricData, seed: int) -> None:
        self.check(data)
        x, y = data.weights, data.values
        trend = (0.0, 0.0)
        trend_dropped = False
        if data.alignment is not None:
            overlap = x @ data.alignment
            if np.ptp(overlap) > 0:
                m1, m0 = np.polyfit(overlap, y, 1)
                if m1 * data.metric.sign > 0:
                    trend = (float(m0), float(m1))
                else:
                    trend_dropped = True
        residual = y - self._trend(x, trend, data.alignment)
        gp = GaussianProcessRegressor(
            kernel=_kernel(1.0, 0.3, 0.1, fixed=False),
            normalize_y=True,
            n_restarts_optimizer=self.restarts,
            random_state=int(seed) % (2**32),
        )
        try:
            with warnings.catch_warnings():
                # Hyper-parameters at a bound are expected with a handful of points; the fit is
                # still the constrained optimum, and the summary lists them (``at_bound``).
                warnings.simplefilter("ignore", ConvergenceWarning)
                gp.fit(x, residual)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise FitFailed(f"gp: the Gaussian process fit failed ({exc})") from exc
        params = gp.kernel_.get_params()
        hyper = {
            "constant": float(params["k1__k1__constant_value"]),
            "length_scale": float(params["k1__k2__length_scale"]),
            "noise": float(params["k2__noise_level"]),
        }
        lml = float(gp.log_marginal_likelihood_value_)
        if not all(np.isfinite(v) for v in hyper.values()) or not np.isfinite(lml):
            raise FitFailed("gp: the fitted kernel has non-finite hyper-parameters")
        self._set(x, residual, data.alignment, trend, hyper, gp)
        bounds = {
            "constant": CONSTANT_BOUNDS,
            "length_scale": LENGTH_SCALE_BOUNDS,
            "noise": NOISE_BOUNDS,
        }
        self.fit_info = {
            "log_marginal_likelihood": lml,
            "at_bound": [
                name
                for name, (lo, hi) in bounds.items()
                if not lo * 1.001 < hyper[name] < hi / 1.001
            ],
            "trend_dropped": trend_dropped,
            "restarts": self.restarts,
            "converged": True,
        }

    def _set(
        self,
        x: np.ndarray,
        residual: np.ndarray,
        alignment: np.ndarray | None,
        trend: tuple[float, float],
        hyper: dict[str, float],
        gp: GaussianProcessRegressor,
    ) -> None:
        self.x, self.residual = x.copy(), residual.copy()
        self.alignment = None if alignment is None else alignment.copy()
        self.trend, self.hyper, self.gp = trend, hyper, gp

    @staticmethod
    def _trend(
        x: np.ndarray, trend: tuple[float, float], alignment: np.ndarray | None
    ) -> np.ndarray:
        if alignment is None or trend == (0.0, 0.0):
            return np.zeros(x.shape[0])
        return trend[0] + trend[1] * (x @ alignment)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        if self.gp is None or self.x is None:
            raise PredictorError("the gp model is not fitted")
        return as_rows(x, self.x.shape[1])

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        self._check_volume(volume)
        rows = self._rows(x)
        return self._trend(rows, self.trend, self.alignment) + self.gp.predict(rows)

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        rows = self._rows(x)
        _, std = self.gp.predict(rows, return_std=True)
        return np.asarray(std, dtype=np.float64)

    def summary(self) -> dict[str, Any]:
        if self.gp is None:
            return {}
        return {
            **self.hyper,
            "trend_intercept": self.trend[0],
            "trend_slope": self.trend[1],
            **self.fit_info,
        }

    def to_json(self) -> dict[str, Any]:
        if self.gp is None or self.x is None or self.residual is None:
            raise PredictorError("the gp model is not fitted")
        return {
            "hyper": dict(self.hyper),
            "x": self.x.tolist(),
            "residual": self.residual.tolist(),
            "alignment": None if self.alignment is None else self.alignment.tolist(),
            "trend": [self.trend[0], self.trend[1]],
            "fit_info": dict(self.fit_info),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GPModel:
        hyper = {key: float(v) for key, v in data["hyper"].items()}
        x = np.asarray(data["x"], dtype=np.float64)
        residual = np.asarray(data["residual"], dtype=np.float64)
        alignment = data.get("alignment")
        trend = (float(data["trend"][0]), float(data["trend"][1]))
        gp = GaussianProcessRegressor(
            kernel=_kernel(hyper["constant"], hyper["length_scale"], hyper["noise"], fixed=True),
            normalize_y=True,
            optimizer=None,
        )
        gp.fit(x, residual)
        model = cls()
        model._set(
            x,
            residual,
            None if alignment is None else np.asarray(alignment, dtype=np.float64),
            trend,
            hyper,
            gp,
        )
        model.fit_info = dict(data.get("fit_info", {}))
        return model

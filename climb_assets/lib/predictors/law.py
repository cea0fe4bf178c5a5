"""Kind `log_linear`: the Data Mixing Law, ``L(r) = c + k * exp(sum_j t_j * r_j)``.

Ye et al. 2024 ("Data Mixing Laws", arXiv 2403.16952) model a validation loss as an offset
``c`` (the irreducible part) plus an exponential in the mixture. The law is fitted on the metric
*as a loss* (:meth:`Metric.as_loss`): bits per byte as is, and for an accuracy target the error
rate ``1 - accuracy``; predictions are converted back, so :meth:`LogLinearModel.predict` returns
accuracy for an accuracy target.

Fit, for the small data of a CLIMB round (8-112 proxies, K = 6..24 super-clusters):

* Parameters ``c`` in ``[0, min(loss)]`` (the law never predicts below ``c``, so the smallest
  observed loss bounds it), ``log k`` (k > 0) and ``t_j`` in ``[-20, 20]``; L-BFGS-B with
  analytic gradients.
* Huber loss on residuals measured in units of the loss spread ``max - min`` with
  ``delta = 0.05`` (:data:`HUBER_DELTA`), i.e. quadratic up to 5% of the spread and linear
  beyond, so one bad proxy run does not bend the law. Olmix uses 0.02 on raw losses whose spread
  is typically a few tenths, which is about the same share; a relative delta keeps the choice
  valid for error rates and bits per byte alike.
* Ridge ``RIDGE * ||t||^2`` (1e-4) added to the *sum* of the Huber terms, so its weight relative
  to the data falls as ``1 / n``. It makes the fit defined when there are fewer proxies than the
  ``K + 2`` parameters, and it resolves the law's one exact degeneracy: mixtures sum to 1, so
  ``(log k, t)`` and ``(log k - m, t + m)`` predict the same, and the ridge picks the centred
  ``t`` (``sum_j t_j = 0``); ``k`` is then the reducible loss at a mixture where ``t . r = 0``.
  On synthetic laws (K = 6 and 12, n = 8-40, noise 0.5-6% of the spread) strengths from 1e-5
  to 1e-3 ranked fresh mixtures alike; 1e-3 shrank ``t`` visibly at n = 40 with little noise
  (held-out RMSE up to 5x), so the smaller value is used.
* Starts: four least-squares starts (with ``c`` fixed at ``0`` or at ``min(loss)`` minus 5%,
  25% or 100% of the spread, ``log(loss - c)`` is linear in ``r``; a ridge regression gives
  ``t`` and ``log k``), :data:`RANDOM_STARTS` seeded random starts (``t ~ N(0, 2^2)``,
  ``c ~ U(0, min(loss))``, ``k`` matched to the mean loss), and, when the target's alignment is
  known, one start with ``t`` proportional to minus the alignment (more of what the target looks
  like, lower loss). Every start runs :data:`SCREEN_ITER` iterations and the best :data:`KEEP`
  continue (:func:`best_start`). The end with the lowest training objective is kept, as Olmix
  does (Ye et al. keep the best on held-out points; with 8-16 proxies there is nothing to hold
  out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import OptimizeResult, minimize

from climb_assets.lib.predictors.base import (
    FitFailed,
    Metric,
    MetricData,
    MetricModel,
    PredictorError,
    as_rows,
    register,
)

HUBER_DELTA = 0.05
"""Huber threshold as a share of the spread (max - min) of the training losses."""
RIDGE = 1e-4
"""Weight of ``||t||^2`` against the sum (not the mean) of the Huber terms."""
RANDOM_STARTS = 16
T_BOUND = 20.0
MAX_ITER = 500
SCREEN_ITER = 60
"""Iterations every start runs before the best :data:`KEEP` continue to the full budget."""
KEEP = 4


def huber(u: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of ``u`` and its derivative (quadratic within ``delta``, linear beyond)."""
    a = np.abs(u)
    quad = a <= delta
    value = np.where(quad, 0.5 * u * u, delta * (a - 0.5 * delta))
    return value, np.clip(u, -delta, delta)


def loss_scale(loss: np.ndarray) -> float:
    """The spread residuals are measured in; never zero, so a flat target still fits."""
    spread = float(np.ptp(loss)) if loss.size else 0.0
    return max(spread, 1e-6 * max(1.0, float(np.abs(loss).max(initial=0.0))))


def best_start(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
    starts: Sequence[np.ndarray],
    bounds: Sequence[tuple[float, float]],
    max_iter: int,
    screen_iter: int = SCREEN_ITER,
    keep: int = KEEP,
) -> tuple[OptimizeResult | None, int]:
    """Multi-start L-BFGS-B: the end with the lowest objective, and how many ends converged.

    Every start runs ``screen_iter`` iterations; the ``keep`` lowest continue up to ``max_iter``
    more. Spending the long runs on the promising starts only keeps a fit well under a second
    where a flat valley would otherwise take every start to the iteration limit.

    Every finite end counts, converged or not: L-BFGS-B returns the best point it reached, never
    worse than its start, and with fewer points than parameters the optimum lies in a flat
    valley the optimiser crawls along until its iteration limit, where the point reached fits as
    well as a converged one. Whether the chosen end converged is reported beside the fit. None
    when no start ends finite.
    """
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    def run(theta0: np.ndarray, iters: int) -> OptimizeResult | None:
        res = minimize(
            objective,
            np.clip(theta0, lo, hi),
            jac=True,
            method="L-BFGS-B",
            bounds=list(bounds),
            options={"maxiter": iters},
        )
        return res if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) else None

    screened = [r for r in (run(t, min(screen_iter, max_iter)) for t in starts) if r is not None]
    screened.sort(key=lambda r: r.fun)
    ends = [r if r.success else (run(r.x, max_iter) or r) for r in screened[:keep]]
    ends += screened[keep:]
    best = min(ends, key=lambda r: r.fun, default=None)
    return best, sum(int(r.success) for r in ends)


def _ridge_log_start(
    x: np.ndarray, loss: np.ndarray, c: float, lam: float
) -> tuple[float, np.ndarray]:
    """``log(loss - c) ~ log k + t . r`` by ridge regression on centred columns."""
    z = np.log(np.maximum(loss - c, 1e-12))
    xm, zm = x.mean(axis=0), z.mean()
    xc = x - xm
    t = np.linalg.solve(xc.T @ xc + lam * np.eye(x.shape[1]), xc.T @ (z - zm))
    t = np.clip(t, -T_BOUND, T_BOUND)
    return float(zm - xm @ t), t


@register
class LogLinearModel(MetricModel):
    """The Data Mixing Law ``c + k * exp(t . r)`` (see the module docstring).

    Args:
        random_starts: Seeded random L-BFGS-B starts, beside the least-squares ones.
        ridge: Weight of ``||t||^2`` against the summed Huber loss.
        huber_delta: Huber threshold as a share of the loss spread.
        max_iter: L-BFGS-B iterations per start.
    """

    kind: ClassVar[str] = "log_linear"
    min_points: ClassVar[int] = 4

    def __init__(
        self,
        random_starts: int = RANDOM_STARTS,
        ridge: float = RIDGE,
        huber_delta: float = HUBER_DELTA,
        max_iter: int = MAX_ITER,
    ) -> None:
        self.random_starts = int(random_starts)
        self.ridge = float(ridge)
        self.huber_delta = float(huber_delta)
        self.max_iter = int(max_iter)
        self.metric_kind = "bpb"
        self.c = 0.0
        self.k = 0.0
        self.t: np.ndarray | None = None
        self.fit_info: dict[str, Any] = {}

    def fit(self, data: MetricData, seed: int) -> None:
        self.check(data)
        x = data.weights
        loss = data.metric.as_loss(data.values)
        n, k_dim = x.shape
        scale = loss_scale(loss)
        delta = self.huber_delta
        lam = self.ridge

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            c, log_k, t = theta[0], theta[1], theta[2:]
            e = np.exp(log_k + x @ t)
            u = (c + e - loss) / scale
            h, dh = huber(u, delta)
            g = dh / scale
            grad = np.empty_like(theta)
            grad[0] = g.sum()
            grad[1] = g @ e
            grad[2:] = x.T @ (g * e) + 2.0 * lam * t
            return float(h.sum() + lam * t @ t) / n, grad / n

        c_hi = max(float(loss.min()), 0.0)
        log_k_hi = float(np.log(max(float(loss.max()), 1e-12))) + T_BOUND + 5.0
        bounds = [(0.0, c_hi), (-60.0, log_k_hi)] + [(-T_BOUND, T_BOUND)] * k_dim

        starts = []
        for below in (None, 1.0, 0.25, 0.05):
            c0 = 0.0 if below is None else min(max(c_hi - below * scale, 0.0), c_hi)
            # The log-space ridge only has to keep the start finite with fewer points than K.
            log_k0, t0 = _ridge_log_start(x, loss, c0, lam=max(1e-3, 0.1 * k_dim / n))
            starts.append(np.concatenate([[c0, log_k0], t0]))
        rng = np.random.default_rng(seed)
        for _ in range(self.random_starts):
            t0 = np.clip(rng.normal(0.0, 2.0, size=k_dim), -T_BOUND, T_BOUND)
            starts.append(self._matched_start(x, loss, rng.uniform(0.0, c_hi), t0))
        if data.alignment is not None:
            a = data.alignment - data.alignment.mean()
            t0 = -5.0 * a / max(float(np.abs(a).max()), 1e-12)
            starts.append(self._matched_start(x, loss, 0.5 * c_hi, t0))

        best, n_ok = best_start(objective, starts, bounds, self.max_iter)
        if best is None:
            raise FitFailed(
                f"log_linear: L-BFGS-B failed from all {len(starts)} starts on {n} proxies "
                "(no finite fit)"
            )
        self.metric_kind = data.metric.kind
        self.c = float(best.x[0])
        self.k = float(np.exp(best.x[1]))
        self.t = best.x[2:].copy()
        if not (np.isfinite(self.k) and self.k > 0):
            raise FitFailed("log_linear: the fitted k is not a positive finite number")
        self.fit_info = {
            "huber_delta": delta * scale,
            "huber_delta_relative": delta,
            "ridge": lam,
            "starts": len(starts),
            "starts_converged": n_ok,
            "converged": bool(best.success),
            "loss": float(best.fun),
        }

    @staticmethod
    def _matched_start(x: np.ndarray, loss: np.ndarray, c: float, t: np.ndarray) -> np.ndarray:
        """A start whose ``k`` makes the mean prediction equal the mean loss."""
        reducible = max(float(loss.mean()) - c, 1e-6 * max(float(loss.mean()), 1e-6))
        log_k = float(np.log(reducible) - np.log(np.mean(np.exp(x @ t))))
        return np.concatenate([[c, log_k], t])

    def predict_loss(self, x: np.ndarray) -> np.ndarray:
        """The law's loss (error rate for an accuracy target) for each row of ``x``."""
        if self.t is None:
            raise PredictorError("the log_linear model is not fitted")
        rows = as_rows(x, self.t.size)
        return self.c + self.k * np.exp(rows @ self.t)

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        self._check_volume(volume)
        return Metric("law", self.metric_kind).from_loss(self.predict_loss(x))

    def summary(self) -> dict[str, Any]:
        if self.t is None:
            return {}
        return {"c": self.c, "k": self.k, "t": [float(v) for v in self.t], **self.fit_info}

    def to_json(self) -> dict[str, Any]:
        if self.t is None:
            raise PredictorError("the log_linear model is not fitted")
        return {
            "metric_kind": self.metric_kind,
            "c": self.c,
            "k": self.k,
            "t": [float(v) for v in self.t],
            "fit_info": dict(self.fit_info),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogLinearModel:
        model = cls()
        model.metric_kind = str(data["metric_kind"])
        model.c = float(data["c"])
        model.k = float(data["k"])
        model.t = np.asarray(data["t"], dtype=np.float64)
        model.fit_info = dict(data.get("fit_info", {}))
        return model

"""Kind `bimix`: BiMix's bivariate law in mixture share and training volume.

BiMix (Ge et al. 2024, arXiv 2405.14908) models domain ``i``'s loss after ``s`` steps as
``L_i(r_i, s) = A_i * r_i^(-alpha_i) * (B_i * s^(-beta_i) + C_i)``. A CLIMB target is not one
of the super-clusters, so this module reads the law as a sum over domains (as Olmix does):

    L(r, s) = sum_i (r_i + eps)^(-alpha_i) * (b_i * s^(-beta) + c_i)

* ``A_i`` is folded into ``b_i = A_i * B_i`` and ``c_i = A_i * C_i``: only the products are
  identifiable, ``A_i`` alone is not, so ``A_i = 1``.
* One volume exponent ``beta`` is shared by all domains: a round has 2-3 volumes per proxy
  (``proxy.eval_fractions``), from which K separate ``beta_i`` are not identifiable.
* ``eps = 1e-3`` keeps a domain that a mixture leaves out finite (many CLIMB mixtures have
  zeros); the power law then charges a steep but finite price for the missing domain.
* Bounds: ``alpha_i`` in ``[0, 2]``, ``beta`` in ``[0, 3]``, ``b_i, c_i >= 0`` (fitted as
  ``log b_i, log c_i``, so a zero coefficient is reached as the lower bound, ``e^-25`` times
  the largest loss).
* ``s`` is the volume as a multiple of the proxy budget (a curve point's share of the budget,
  1 = the full proxy run); :meth:`BiMixModel.predict` extrapolates to any ``s > 0``, e.g.
  ``manifest.total_tokens / proxy tokens`` for the final run.

Fit on every ``(mixture, volume, loss)`` point of the learning curves (:meth:`MetricData.
curve_points`): Huber loss on residuals in units of the spread of the full-budget losses
(``delta = 0.05``, as for ``log_linear``), L-BFGS-B with analytic gradients. For fixed
``alpha`` and ``beta`` the law is linear in ``(b, c)``, so the starts are the best
:data:`GRID_STARTS` of a 4 x 4 grid of common ``(alpha, beta)`` with ``(b, c)`` from
non-negative least squares, plus :data:`RANDOM_STARTS` seeded random starts; every start runs 60
iterations and the best four continue (``law.best_start``). A ridge
``RIDGE * sum_i [(alpha_i - mean alpha)^2 + (log b_i - mean log b)^2 + (log c_i - mean log c)^2]``
(1e-3) against the summed Huber terms shrinks domains towards each other, which keeps the
``3K + 1`` parameters defined when 8-16 proxies give fewer points than that; its weight relative
to the data falls as ``1 / n``. On synthetic sums of BiMix laws the strength hardly mattered at
K = 9 (n = 16-48); at K = 24 with 16 proxies a stronger one helped (Spearman at 4x the volume
0.63, 0.75, 0.78 for 1e-4, 1e-3, 1e-2), while 1e-2 doubled the 4x RMSE at K = 9, n = 16; 1e-3
is the compromise.

Accuracy targets are refused: the law is a loss decreasing in share and volume, and an error
rate of multiple-choice questions does not follow it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import nnls

from climb_assets.lib.predictors.base import (
    FitFailed,
    MetricData,
    MetricModel,
    PredictorError,
    as_rows,
    register,
)
from climb_assets.lib.predictors.law import HUBER_DELTA, best_start, huber, loss_scale

EPS = 1e-3
ALPHA_MAX = 2.0
BETA_MAX = 3.0
LOG_FLOOR = -25.0
"""Lower bound of ``log b_i, log c_i`` relative to the log of the largest loss."""
RIDGE = 1e-3
RANDOM_STARTS = 8
GRID_STARTS = 3
GRID_ALPHA = (0.02, 0.1, 0.3, 0.7)
GRID_BETA = (0.1, 0.3, 0.6, 1.0)
MAX_ITER = 1000


def _terms(
    x: np.ndarray, s: np.ndarray, alpha: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log(r + eps)``, ``(r + eps)^-alpha`` per domain, and ``s^-beta`` per point."""
    log_r = np.log(x + EPS)
    return log_r, np.exp(-log_r * alpha), np.exp(-beta * np.log(s))


@register
class BiMixModel(MetricModel):
    """BiMix's law summed over super-clusters (see the module docstring).

    Args:
        random_starts: Seeded random L-BFGS-B starts beside the grid ones.
        ridge: Weight of the across-domain shrinkage against the summed Huber loss.
        huber_delta: Huber threshold as a share of the full-budget loss spread.
        max_iter: L-BFGS-B iterations per start.
    """

    kind: ClassVar[str] = "bimix"
    min_points: ClassVar[int] = 4
    volume_aware: ClassVar[bool] = True

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
        self.alpha: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.c: np.ndarray | None = None
        self.beta = 0.0
        self.fit_info: dict[str, Any] = {}

    @classmethod
    def check(cls, data: MetricData) -> None:
        if data.metric.kind != "bpb":
            raise PredictorError(
                f"bimix models a loss in share and volume; target '{data.metric.name}' is scored "
                "by accuracy; use log_linear, gp, lightgbm or auto"
            )
        super().check(data)
        volumes = np.unique(data.curve_points()[1])
        if data.curve is None or volumes.size < 2:
            raise PredictorError(
                "bimix fits learning curves: set proxy.eval_fractions to at least two "
                "fractions, e.g. [0.25, 0.5, 1.0]"
            )

    def fit(self, data: MetricData, seed: int) -> None:
        self.check(data)
        x, s, loss = data.curve_points()
        k_dim = x.shape[1]
        scale = loss_scale(data.values)
        delta, lam = self.huber_delta, self.ridge
        log_r = np.log(x + EPS)
        log_s = np.log(s)
        top = float(np.log(max(float(loss.max()), 1e-12)))
        lo_log = top + LOG_FLOOR
        hi_log = top + 5.0
        kk = slice(0, k_dim), slice(k_dim, 2 * k_dim), slice(2 * k_dim, 3 * k_dim)

        def penalty(v: np.ndarray) -> tuple[float, np.ndarray]:
            d = v - v.mean()
            return float(d @ d), 2.0 * d

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            alpha, log_b, log_c, beta = theta[kk[0]], theta[kk[1]], theta[kk[2]], theta[-1]
            p = np.exp(-log_r * alpha)
            sv = np.exp(-beta * log_s)
            bb, cc = np.exp(log_b), np.exp(log_c)
            kterm = sv[:, None] * bb + cc
            pred = (p * kterm).sum(axis=1)
            h, dh = huber((pred - loss) / scale, delta)
            g = dh / scale
            grad = np.empty_like(theta)
            gpd = g[:, None] * p
            grad[kk[0]] = -(gpd * kterm * log_r).sum(axis=0)
            grad[kk[1]] = (gpd * sv[:, None]).sum(axis=0) * bb
            grad[kk[2]] = gpd.sum(axis=0) * cc
            grad[-1] = -(g * sv * log_s * (p @ bb)).sum()
            total = float(h.sum())
            for part in kk:
                value, dv = penalty(theta[part])
                total += lam * value
                grad[part] += lam * dv
            return total / loss.size, grad / loss.size

        bounds = [(0.0, ALPHA_MAX)] * k_dim + [(lo_log, hi_log)] * (2 * k_dim) + [(0.0, BETA_MAX)]
        starts = self._grid_starts(log_r, log_s, loss, lo_log, hi_log)
        rng = np.random.default_rng(seed)
        for _ in range(self.random_starts):
            alpha = rng.uniform(0.0, 0.6, size=k_dim)
            beta = rng.uniform(0.05, 1.0)
            share = rng.uniform(0.2, 0.8, size=k_dim)
            p = np.exp(-log_r * alpha)
            pred = (p * (np.exp(-beta * log_s)[:, None] * share + (1.0 - share))).sum(axis=1)
            f = float(loss.mean() / pred.mean())
            starts.append(
                np.concatenate([alpha, np.log(f * share), np.log(f * (1.0 - share)), [beta]])
            )

        best, n_ok = best_start(objective, starts, bounds, self.max_iter)
        if best is None:
            raise FitFailed(
                f"bimix: L-BFGS-B failed from all {len(starts)} starts on {loss.size} curve "
                "points (no finite fit)"
            )
        theta = best.x
        self.alpha = theta[kk[0]].copy()
        self.b = np.exp(theta[kk[1]])
        self.c = np.exp(theta[kk[2]])
        self.beta = float(theta[-1])
        self.fit_info = {
            "huber_delta": delta * scale,
            "huber_delta_relative": delta,
            "ridge": lam,
            "points": int(loss.size),
            "volumes": sorted({float(v) for v in s}),
            "starts": len(starts),
            "starts_converged": n_ok,
            "converged": bool(best.success),
            "loss": float(best.fun),
        }

    @staticmethod
    def _grid_starts(
        log_r: np.ndarray, log_s: np.ndarray, loss: np.ndarray, lo_log: float, hi_log: float
    ) -> list[np.ndarray]:
        """Best grid points of common ``(alpha, beta)``, ``(b, c)`` by non-negative LS."""
        k_dim = log_r.shape[1]
        scored = []
        for alpha in GRID_ALPHA:
            p = np.exp(-log_r * alpha)
            for beta in GRID_BETA:
                design = np.hstack([p * np.exp(-beta * log_s)[:, None], p])
                coef, rnorm = nnls(design, loss)
                logs = np.log(np.maximum(coef, np.exp(lo_log)))
                theta = np.concatenate([np.full(k_dim, alpha), logs.clip(lo_log, hi_log), [beta]])
                scored.append((float(rnorm), len(scored), theta))
        scored.sort(key=lambda item: (item[0], item[1]))
        return [theta for _, _, theta in scored[:GRID_STARTS]]

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        if self.alpha is None or self.b is None or self.c is None:
            raise PredictorError("the bimix model is not fitted")
        if not (np.isfinite(volume) and volume > 0):
            raise PredictorError(
                f"bimix: volume must be a positive multiple of the proxy budget, got {volume}"
            )
        rows = as_rows(x, self.alpha.size)
        return (np.exp(-np.log(rows + EPS) * self.alpha) * self.domain_weights(volume)).sum(axis=1)

    def domain_weights(self, volume: float) -> np.ndarray:
        """``K_i = b_i * s^-beta + c_i``: each domain's loss coefficient at volume ``s``."""
        if self.b is None or self.c is None:
            raise PredictorError("the bimix model is not fitted")
        return self.b * float(volume) ** (-self.beta) + self.c

    def summary(self) -> dict[str, Any]:
        if self.alpha is None or self.b is None or self.c is None:
            return {}
        return {
            "alpha": [float(v) for v in self.alpha],
            "b": [float(v) for v in self.b],
            "c": [float(v) for v in self.c],
            "beta": self.beta,
            **self.fit_info,
        }

    def to_json(self) -> dict[str, Any]:
        if self.alpha is None or self.b is None or self.c is None:
            raise PredictorError("the bimix model is not fitted")
        return {
            "eps": EPS,
            "alpha": [float(v) for v in self.alpha],
            "b": [float(v) for v in self.b],
            "c": [float(v) for v in self.c],
            "beta": self.beta,
            "fit_info": dict(self.fit_info),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BiMixModel:
        if float(data.get("eps", EPS)) != EPS:
            raise PredictorError(
                f"bimix model stored with eps {data['eps']}, this version uses {EPS}; re-run the "
                "round to fit it again"
            )
        model = cls()
        model.alpha = np.asarray(data["alpha"], dtype=np.float64)
        model.b = np.asarray(data["b"], dtype=np.float64)
        model.c = np.asarray(data["c"], dtype=np.float64)
        model.beta = float(data["beta"])
        model.fit_info = dict(data.get("fit_info", {}))
        return model


def optimal_mixture(model: BiMixModel, volume: float = 1.0) -> np.ndarray:
    """The mixture minimising the fitted law at ``volume`` (a multiple of the proxy budget).

    ``sum_i K_i * (r_i + eps)^(-alpha_i)`` with ``K_i = b_i * s^-beta + c_i`` is convex on the
    simplex. Stationarity with the constraint ``r_i >= 0`` (KKT) gives
    ``r_i = max(0, (alpha_i * K_i / lambda)^(1 / (1 + alpha_i)) - eps)``, and the total falls
    monotonically in ``lambda``, which is found by bisection (in ``log lambda``) so the shares sum
    to 1. A domain with ``alpha_i * K_i = 0`` does not move the loss and gets share 0; if no domain
    does, every mixture is optimal and the uniform one is returned.

    Args:
        model: A fitted :class:`BiMixModel`.
        volume: Training volume as a multiple of the proxy budget.

    Returns:
        (K,) mixture summing to 1.
    """
    if model.alpha is None:
        raise PredictorError("the bimix model is not fitted")
    w = model.alpha * model.domain_weights(volume)
    active = w > 0
    if not active.any():
        return np.full(w.size, 1.0 / w.size)
    a, wa = model.alpha[active], w[active]
    expo = 1.0 / (1.0 + a)

    def shares(log_lam: float) -> np.ndarray:
        return np.maximum(np.exp((np.log(wa) - log_lam) * expo) - EPS, 0.0)

    # At lambda = min(w) some share is >= 1 - eps; above max(w * eps^-(1+alpha)) all are 0.
    lo = float(np.log(wa.min())) - 1.0
    hi = float(np.max(np.log(wa) + (1.0 + a) * np.log(1.0 / EPS))) + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if shares(mid).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    r = np.zeros(w.size)
    r[active] = shares(0.5 * (lo + hi))
    return r / r.sum()

"""Pictures and rank figures of predictors: Spearman, predicted vs actual, importance."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr

from climb_assets.lib.predictors.base import PredictorError


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation over the pairs where both values are finite.

    Returns NaN (not 0) when fewer than 2 pairs remain or either side is constant, so that an
    uninformative predictor is never mistaken for an uncorrelated one.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    v = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != v.shape:
        raise PredictorError(f"spearman needs equal lengths, got {x.size} and {v.size}")
    ok = np.isfinite(x) & np.isfinite(v)
    x, v = x[ok], v[ok]
    if x.size < 2 or np.all(x == x[0]) or np.all(v == v[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, v).statistic)


def predicted_vs_actual_png(
    actual: Sequence[float] | np.ndarray,
    predicted: Sequence[float] | np.ndarray,
    title: str = "predicted vs actual",
) -> bytes:
    """Scatter of predicted against actual scores with the y = x line and the Spearman."""
    x = np.asarray(actual, dtype=np.float64).reshape(-1)
    v = np.asarray(predicted, dtype=np.float64).reshape(-1)
    ok = np.isfinite(x) & np.isfinite(v)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x[ok], v[ok], s=18, alpha=0.8)
    if ok.any():
        lo = float(min(x[ok].min(), v[ok].min()))
        hi = float(max(x[ok].max(), v[ok].max()))
        pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", lw=1)
    rho = spearman(x, v)
    label = "n/a" if math.isnan(rho) else f"{rho:.3f}"
    ax.text(0.03, 0.97, f"Spearman {label}\nn = {int(ok.sum())}", transform=ax.transAxes, va="top")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    return _png(fig)


def feature_importance_png(
    importance: Sequence[float] | np.ndarray, names: Sequence[str] | None = None
) -> bytes:
    """Horizontal bars of feature importance (gain), largest on top."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    labels = list(names) if names is not None else [f"sc_{i}" for i in range(imp.size)]
    if len(labels) != imp.size:
        raise PredictorError(f"{len(labels)} names for {imp.size} importances; give one each")
    order = np.argsort(imp, kind="stable")
    fig, ax = plt.subplots(figsize=(6, max(2.0, 0.25 * imp.size + 1)))
    ax.barh(np.arange(imp.size), imp[order], color="tab:blue")
    ax.set_yticks(np.arange(imp.size), [labels[i] for i in order])
    ax.set_xlabel("gain")
    ax.set_title("predictor feature importance")
    return _png(fig)


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

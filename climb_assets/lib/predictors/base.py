"""The interface every mixture predictor implements, and the objective built from them.

A search objective can combine several targets: bits per byte on held-out text (a loss, lower
is better) and multiple-choice accuracy (higher is better), each with a weight. A mixing law
fits a loss, not a weighted sum of losses and accuracies, so every target's metric is modelled
on its own (:class:`MetricModel`) and :class:`ObjectivePredictor` combines the predictions with
the objective's weights and signs: ``objective = sum_t weight_t * (-bpb_t or accuracy_t)``,
higher is better, exactly as ``climb_assets.lib.targets.objective`` scores a proxy.

Kinds register themselves in :data:`KINDS`; each lives in its own module. A kind stores
itself as JSON (LightGBM's text model inside it for the tree kind), never pickled.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

MetricKind = Literal["bpb", "accuracy"]


class PredictorError(ValueError):
    """Predictor inputs, settings or stored models that cannot be used."""


class FitFailed(PredictorError):
    """A kind could not fit the data it was given (a law that did not converge, a singular
    system); callers fall back to another kind with a warning rather than stop the round."""


@dataclass(frozen=True)
class Metric:
    """One target's metric as the objective uses it.

    Attributes:
        name: Target name.
        kind: ``bpb`` (a loss) or ``accuracy``.
        weight: The target's weight in the objective.
    """

    name: str
    kind: MetricKind
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("bpb", "accuracy"):
            raise PredictorError(
                f"target '{self.name}': metric {self.kind!r} cannot be modelled; the predictors "
                "know bpb (text targets) and accuracy (choice targets)"
            )

    @property
    def sign(self) -> float:
        """+1 where a higher metric is better (accuracy), -1 for a loss (bpb)."""
        return 1.0 if self.kind == "accuracy" else -1.0

    def as_loss(self, values: np.ndarray) -> np.ndarray:
        """The metric as a positive loss: bpb itself, or the error rate ``1 - accuracy``."""
        v = np.asarray(values, dtype=np.float64)
        return v if self.kind == "bpb" else 1.0 - v

    def from_loss(self, loss: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`as_loss`."""
        v = np.asarray(loss, dtype=np.float64)
        return v if self.kind == "bpb" else 1.0 - v

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "weight": self.weight}


@dataclass(frozen=True)
class Curve:
    """Learning-curve points: the metric of proxy ``proxy[j]`` after ``volume[j]`` of its budget.

    ``volume`` is the share of the proxy's token budget seen (1.0 = the whole budget), so the
    laws work in units that do not depend on the proxy size.
    """

    proxy: np.ndarray
    volume: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.proxy, dtype=np.int64).reshape(-1)
        v = np.asarray(self.volume, dtype=np.float64).reshape(-1)
        y = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if not (p.size == v.size == y.size):
            raise PredictorError(
                f"curve arrays differ in length ({p.size}, {v.size}, {y.size}); give one proxy "
                "index, volume and value per point"
            )
        if np.any(~np.isfinite(v)) or np.any(v <= 0) or np.any(v > 1):
            raise PredictorError("curve volumes must lie in (0, 1] (share of the proxy budget)")
        object.__setattr__(self, "proxy", p)
        object.__setattr__(self, "volume", v)
        object.__setattr__(self, "values", y)

    @property
    def size(self) -> int:
        return int(self.proxy.size)


@dataclass(frozen=True)
class MetricData:
    """What a model of one metric is fitted on.

    Attributes:
        weights: (n, K) mixtures of the trained proxies.
        values: (n,) the metric of each proxy at its full budget.
        metric: Which metric and how it enters the objective.
        curve: Points at earlier shares of the budget (may include the full-budget ones);
            None when the proxies were evaluated at the end only.
        alignment: (K,) the target's distribution over super-clusters, when known.
    """

    weights: np.ndarray
    values: np.ndarray
    metric: Metric
    curve: Curve | None = None
    alignment: np.ndarray | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.weights, dtype=np.float64)
        y = np.asarray(self.values, dtype=np.float64).reshape(-1)
        if x.ndim != 2:
            raise PredictorError(f"weights must be (n, K) mixtures, got shape {x.shape}")
        if x.shape[0] != y.size:
            raise PredictorError(
                f"{x.shape[0]} mixtures but {y.size} values; give one value per trained proxy"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise PredictorError(
                f"target '{self.metric.name}': mixtures or values contain NaN or inf; drop "
                "failed proxy runs before fitting"
            )
        if self.alignment is not None:
            a = np.asarray(self.alignment, dtype=np.float64).reshape(-1)
            if a.size != x.shape[1]:
                raise PredictorError(
                    f"alignment has {a.size} entries for {x.shape[1]} super-clusters"
                )
            object.__setattr__(self, "alignment", a)
        if self.curve is not None and self.curve.size and self.curve.proxy.max() >= y.size:
            raise PredictorError("a curve point names a proxy that is not among the mixtures")
        object.__setattr__(self, "weights", x)
        object.__setattr__(self, "values", y)

    @property
    def n(self) -> int:
        return int(self.values.size)

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    def subset(self, rows: Sequence[int] | np.ndarray) -> MetricData:
        """The data of the proxies in ``rows`` (their curve points too, re-indexed)."""
        rows = np.asarray(rows, dtype=np.int64)
        curve = None
        if self.curve is not None:
            where = np.full(self.n, -1, dtype=np.int64)
            where[rows] = np.arange(rows.size)
            keep = where[self.curve.proxy] >= 0
            curve = Curve(
                where[self.curve.proxy[keep]], self.curve.volume[keep], self.curve.values[keep]
            )
        return MetricData(self.weights[rows], self.values[rows], self.metric, curve, self.alignment)

    def curve_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mixtures, volumes, values) of every point, the full-budget ones included once."""
        x, v, y = [self.weights], [np.ones(self.n)], [self.values]
        if self.curve is not None:
            early = self.curve.volume < 1.0
            x.append(self.weights[self.curve.proxy[early]])
            v.append(self.curve.volume[early])
            y.append(self.curve.values[early])
        return np.concatenate(x), np.concatenate(v), np.concatenate(y)


class MetricModel(ABC):
    """A model of one target metric as a function of the mixture (and, for some, volume).

    Subclasses set :attr:`kind`, implement :meth:`fit`, :meth:`predict`, :meth:`to_json` and
    :meth:`from_json`, and register with :func:`register`.
    """

    kind: ClassVar[str]
    min_points: ClassVar[int] = 4
    """Fewest trained proxies the kind fits on."""
    has_std: ClassVar[bool] = False
    """Whether :meth:`predict_std` returns a predictive standard deviation."""
    volume_aware: ClassVar[bool] = False
    """Whether :meth:`predict` can extrapolate to volumes other than the proxy budget."""

    @classmethod
    def check(cls, data: MetricData) -> None:
        """Raises :class:`PredictorError` naming the fix when the kind cannot fit ``data``."""
        if data.n < cls.min_points:
            raise PredictorError(
                f"predictor kind '{cls.kind}' needs at least {cls.min_points} trained proxies, "
                f"got {data.n}; raise the round-1 budget or use another kind"
            )

    @abstractmethod
    def fit(self, data: MetricData, seed: int) -> None:
        """Fits the model; raises :class:`FitFailed` when the fit does not succeed."""

    @abstractmethod
    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        """The metric (its own units: bpb or accuracy) for each row of ``x``.

        ``volume`` is the training volume as a multiple of the proxy budget; only
        :attr:`volume_aware` kinds accept a value other than 1.
        """

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        """Predictive standard deviation of the metric, or None when the kind has none."""
        return None

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready description of the fit for metadata (coefficients, sizes)."""
        return {}

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """Everything needed to predict again, JSON-ready (no pickle)."""

    @classmethod
    @abstractmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricModel:
        """The model stored by :meth:`to_json`."""

    def _check_volume(self, volume: float) -> None:
        if volume != 1.0 and not self.volume_aware:
            raise PredictorError(
                f"predictor kind '{self.kind}' predicts at the proxy budget only; use bimix "
                "(fitted on learning curves) to extrapolate to another training volume"
            )


KINDS: dict[str, type[MetricModel]] = {}
"""Every registered kind by name."""


def register(cls: type[MetricModel]) -> type[MetricModel]:
    """Class decorator adding a kind to :data:`KINDS`."""
    KINDS[cls.kind] = cls
    return cls


def model_class(kind: str) -> type[MetricModel]:
    """The class of ``kind``; a clear error for an unknown one."""
    from climb_assets.lib import predictors  # noqa: F401  (registers every kind)

    if kind not in KINDS:
        raise PredictorError(
            f"unknown predictor kind {kind!r}; use one of {sorted(KINDS)} or 'auto'"
        )
    return KINDS[kind]


def as_rows(x: np.ndarray | Sequence[float], k: int | None = None) -> np.ndarray:
    """``x`` as a (m, K) float array; a single mixture becomes one row."""
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or (k is not None and rows.shape[1] != k):
        raise PredictorError(
            f"mixtures have shape {rows.shape} but the predictor expects {k} weights per row; "
            "give one weight per super-cluster"
        )
    return rows


class ObjectivePredictor:
    """One model per target metric, combined into the search objective (higher is better)."""

    def __init__(self, kind: str, metrics: Sequence[Metric], models: Sequence[MetricModel]):
        if len(metrics) != len(models) or not metrics:
            raise PredictorError("give one fitted model per target metric")
        self.kind = kind
        self.metrics = list(metrics)
        self.models = list(models)

    @property
    def has_std(self) -> bool:
        return all(m.has_std for m in self.models)

    @property
    def volume_aware(self) -> bool:
        return all(m.volume_aware for m in self.models)

    def predict(self, x: np.ndarray, volume: float = 1.0) -> np.ndarray:
        """The objective, ``sum_t weight_t * sign_t * metric_t``, for each mixture."""
        rows = as_rows(x)
        total = np.zeros(rows.shape[0])
        for metric, model in zip(self.metrics, self.models, strict=True):
            total += metric.weight * metric.sign * model.predict(rows, volume)
        return total

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        """Standard deviation of the objective (targets taken as independent), or None."""
        rows = as_rows(x)
        var = np.zeros(rows.shape[0])
        for metric, model in zip(self.metrics, self.models, strict=True):
            std = model.predict_std(rows)
            if std is None:
                return None
            var += (metric.weight * std) ** 2
        return np.sqrt(var)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "climb-predictor/1",
            "kind": self.kind,
            "metrics": [m.to_json() for m in self.metrics],
            "models": [{"kind": m.kind, **m.to_json()} for m in self.models],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ObjectivePredictor:
        if data.get("format") != "climb-predictor/1":
            raise PredictorError(
                "not a climb predictor file (format climb-predictor/1); re-run the round to "
                "write it again"
            )
        metrics = [Metric(m["name"], m["kind"], float(m["weight"])) for m in data["metrics"]]
        models = [model_class(m["kind"]).from_json(m) for m in data["models"]]
        return cls(str(data["kind"]), metrics, models)


def build_models(
    kind: str,
    datas: Sequence[MetricData],
    seed: int,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> ObjectivePredictor:
    """Fits ``kind`` on every target's data; raises :class:`FitFailed` / :class:`PredictorError`."""
    cls = model_class(kind)
    models = []
    for i, data in enumerate(datas):
        cls.check(data)
        model = cls(**dict((options or {}).get(kind, {})))
        model.fit(data, seed + 7919 * i)
        models.append(model)
    return ObjectivePredictor(kind, [d.metric for d in datas], models)


def objective_of(datas: Sequence[MetricData]) -> np.ndarray:
    """The observed objective per proxy, from the per-target values."""
    total = np.zeros(datas[0].n)
    for d in datas:
        total += d.metric.weight * d.metric.sign * d.values
    return total


def finite_or_none(value: float | None) -> float | None:
    """JSON-safe float: None for a missing or NaN figure."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)

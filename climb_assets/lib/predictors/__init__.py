"""Mixture predictors: one module per kind behind :class:`base.MetricModel`.

Kinds: ``lightgbm`` (tree.py, the paper's), ``log_linear`` (law.py, Data Mixing Law),
``bimix`` (bimix.py, BiMix's bivariate law on learning curves), ``gp`` (gp.py, Gaussian
process), ``aligned`` (aligned.py, the target's own distribution over super-clusters), and
``auto`` (auto.py: every kind scored by cross-validation, the best or an ensemble used).
"""

from climb_assets.lib.predictors import tree  # noqa: F401  (registers its kind)
from climb_assets.lib.predictors.base import (
    KINDS,
    Curve,
    FitFailed,
    Metric,
    MetricData,
    MetricModel,
    ObjectivePredictor,
    PredictorError,
)

for _name in ("law", "gp", "bimix", "aligned"):
    try:
        __import__(f"climb_assets.lib.predictors.{_name}")
    except ModuleNotFoundError as _exc:  # a kind still being written is simply not offered
        if _exc.name != f"climb_assets.lib.predictors.{_name}":
            raise

__all__ = [
    "KINDS",
    "Curve",
    "FitFailed",
    "Metric",
    "MetricData",
    "MetricModel",
    "ObjectivePredictor",
    "PredictorError",
]

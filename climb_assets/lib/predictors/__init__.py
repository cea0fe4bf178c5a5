"""Mixture predictors: one module per kind behind :class:`base.MetricModel`.

Kinds: ``lightgbm`` (tree.py, the paper's), ``log_linear`` (law.py, Data Mixing Law),
``bimix`` (bimix.py, BiMix's bivariate law on learning curves), ``gp`` (gp.py, Gaussian
process), ``aligned`` (aligned.py, the target's own distribution over super-clusters), and
``auto`` (auto.py: every kind scored by cross-validation, the best or an ensemble used).
"""

from climb_assets.lib.predictors import aligned, bimix, gp, law, tree  # noqa: F401  (registers)
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

"""The interface every training-free reference mixture implements, and what it is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class BaselineError(ValueError):
    """A reference mixture that cannot be computed from what it was given; says what to fix."""


@dataclass(frozen=True)
class BaselineInputs:
    """What the training-free mixtures are computed from (all per super-cluster).

    Attributes:
        available_tokens: (K,) proxy tokens each super-cluster holds (its natural share).
        trainable_tokens: (K,) of those, the tokens a manifest may train on (validation
            documents held out); the repetition caps use them. None: all of them.
        total_tokens: The manifest's training budget (UniMax spreads it).
        max_epochs: Passes allowed over each super-cluster within that budget.
        token_ids: Returns super-cluster i's token stream (entropy mixtures read it).
        alignment: (K,) the target documents' distribution over super-clusters, when known.
    """

    available_tokens: np.ndarray
    total_tokens: int | None = None
    max_epochs: float | None = None
    token_ids: Callable[[int], np.ndarray] | None = None
    alignment: np.ndarray | None = None
    trainable_tokens: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(np.asarray(self.available_tokens).size)

    @property
    def cap_tokens(self) -> np.ndarray:
        """The tokens `max_epochs` passes are counted over."""
        chosen = self.available_tokens if self.trainable_tokens is None else self.trainable_tokens
        return np.asarray(chosen, dtype=np.float64)


@dataclass(frozen=True)
class ReferenceMixture:
    """One reference mixture: its weights (summing to 1) and how they were obtained."""

    name: str
    weights: np.ndarray
    description: str
    details: dict[str, Any] = field(default_factory=dict)


class ReferenceBaseline(Protocol):
    """A training-free mixture: no proxy is trained to compute it."""

    name: str
    description: str

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture: ...


def normalised(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` scaled to sum to 1; raises naming ``what`` when they cannot be."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or (v < 0).any() or v.sum() <= 0:
        raise BaselineError(f"{what} must be finite, non-negative and not all zero; got {v}")
    return v / v.sum()

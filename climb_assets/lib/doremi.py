"""DoReMi's domain-weight update (Xie et al. 2023), plain and Dagster-free.

A reference proxy is trained on the natural weights; a second proxy of the same size is then
trained with group DRO over the super-clusters. After each step, per super-cluster i:

    lambda_i = mean over i's tokens in the batch of max(loss_proxy - loss_reference, 0)
    log a_i <- log a_i + step_size * lambda_i            (a super-cluster absent from the
                                                          batch keeps its last lambda)
    a <- normalise(a);  a <- (1 - smoothing) * a + smoothing / K

and the proxy's loss weights each token by a_i over its sampling weight. The mixture DoReMi
outputs is the average of ``a`` over all steps. The paper's runs use step size 1.0 and smoothing
1e-3. Its users report near one-hot weights when batches miss domains; `stratified_counts`
gives every super-cluster at least one sequence in every batch, which the trainer must use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DoReMiError(ValueError):
    """Settings or inputs DoReMi cannot run with; says what to change."""


@dataclass(frozen=True)
class DoReMiSettings:
    step_size: float = 1.0
    smoothing: float = 1e-3

    def __post_init__(self) -> None:
        if self.step_size <= 0:
            raise DoReMiError(f"DoReMi step size must be > 0, got {self.step_size}")
        if not 0 <= self.smoothing < 1:
            raise DoReMiError(f"DoReMi smoothing must be in [0, 1), got {self.smoothing}")


def excess_losses(
    proxy_losses: np.ndarray,
    reference_losses: np.ndarray,
    domains: np.ndarray,
    k: int,
) -> np.ndarray:
    """Per super-cluster mean of the clipped excess loss; NaN for one absent from the batch.

    Args:
        proxy_losses: Per-token loss of the DRO proxy.
        reference_losses: Per-token loss of the reference proxy on the same tokens.
        domains: Super-cluster id of each token.
        k: Number of super-clusters.
    """
    excess = np.maximum(np.asarray(proxy_losses) - np.asarray(reference_losses), 0.0)
    domains = np.asarray(domains, dtype=np.int64)
    sums = np.bincount(domains, weights=excess, minlength=k)
    counts = np.bincount(domains, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@dataclass
class DoReMiState:
    """The domain weights during DRO training and their running average (the output)."""

    weights: np.ndarray
    last_excess: np.ndarray
    settings: DoReMiSettings = field(default_factory=DoReMiSettings)
    weight_sum: np.ndarray | None = None
    steps: int = 0

    @classmethod
    def start(cls, k: int, settings: DoReMiSettings | None = None) -> DoReMiState:
        """Uniform weights over ``k`` super-clusters, as the paper starts."""
        if k < 2:
            raise DoReMiError(
                f"DoReMi needs at least 2 super-clusters to weight, got {k}; lower "
                "merge.distance_threshold (or set merge.target_count) to get more"
            )
        return cls(np.full(k, 1.0 / k), np.zeros(k), settings or DoReMiSettings())

    def update(self, excess: np.ndarray) -> np.ndarray:
        """One step: returns the new weights (``excess`` from `excess_losses`)."""
        excess = np.asarray(excess, dtype=np.float64)
        if excess.shape != self.weights.shape:
            raise DoReMiError(f"{excess.size} excess losses for {self.weights.size} super-clusters")
        lam = np.where(np.isnan(excess), self.last_excess, excess)
        self.last_excess = lam
        logits = np.log(self.weights) + self.settings.step_size * lam
        a = np.exp(logits - logits.max())
        a /= a.sum()
        eps = self.settings.smoothing
        self.weights = (1 - eps) * a + eps / a.size
        self.weight_sum = self.weights.copy() if self.weight_sum is None else (
            self.weight_sum + self.weights
        )  # fmt: skip
        self.steps += 1
        return self.weights

    @property
    def average(self) -> np.ndarray:
        """The mixture DoReMi outputs: the weights averaged over every step so far."""
        if self.weight_sum is None:
            return self.weights.copy()
        return self.weight_sum / self.steps


def stratified_counts(batch_size: int, weights: np.ndarray) -> np.ndarray:
    """Sequences per super-cluster in one batch: at least one each, the rest by ``weights``.

    Largest-remainder rounding of the weights over the sequences left after the one each.
    """
    w = np.asarray(weights, dtype=np.float64)
    k = w.size
    if batch_size < k:
        raise DoReMiError(
            f"a batch of {batch_size} sequences cannot cover {k} super-clusters; DoReMi needs "
            f"proxy.batch_size >= {k} so no super-cluster is missing from a batch"
        )
    rest = batch_size - k
    share = w / w.sum() * rest
    counts = np.floor(share).astype(np.int64)
    left = rest - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:left]] += 1
    return counts + 1

"""DoReMi (Xie et al. 2023): its domain-weight update and its group-DRO proxy, Dagster-free.

A reference proxy is trained on the natural weights; a second proxy of the same size is then
trained with group DRO over the super-clusters. After each step, per super-cluster i:

    lambda_i = mean over i's tokens in the batch of max(loss_proxy - loss_reference, 0)
    log a_i <- log a_i + step_size * lambda_i            (a super-cluster absent from the
                                                          batch keeps its last lambda)
    a <- normalise(a);  a <- (1 - smoothing) * a + smoothing / K

and the proxy's loss weights each token by a_i over its sampling weight. The mixture DoReMi
outputs is the average of ``a`` over all steps. The paper's runs use step size 1.0 and smoothing
1e-3. Its users report near one-hot weights when batches miss domains; `StratifiedBatches`
(`stratified_counts`) gives every super-cluster at least one sequence in every batch.

`train_doremi` trains the DRO proxy with `lib.proxy.train_proxy` (its `batches` and
`step_loss` hooks carry `StratifiedBatches` and `GroupDROLoss`), so it shares the optimiser,
schedule, autocast and logging of every other proxy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from climb_assets.lib.proxy import MixtureBatches, ProxyConfig, TrainResult, train_proxy


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
    return domain_means(excess, domains, k)


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


HISTORY_LIMIT = 1000
"""Most rows `train_doremi` keeps of the weights' trajectory."""


def domain_means(values: np.ndarray, domains: np.ndarray, k: int) -> np.ndarray:
    """Mean of `values` per super-cluster id in `domains`; NaN for one with no value."""
    domains = np.asarray(domains, dtype=np.int64)
    sums = np.bincount(domains, weights=np.asarray(values, dtype=np.float64), minlength=k)
    counts = np.bincount(domains, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def check_inputs(k: int, batch_size: int) -> None:
    """Raises `DoReMiError` before any training when DoReMi cannot run on `k` super-clusters."""
    DoReMiState.start(k)
    stratified_counts(batch_size, np.full(k, 1.0 / k))


class StratifiedBatches(MixtureBatches):
    """Training batches holding a fixed number of sequences of every super-cluster each step.

    The counts come from `stratified_counts` over the sampling weights (at least one sequence
    per super-cluster), so no step misses a domain; where each window starts is drawn as in
    `MixtureBatches`, from the same seeded uniforms.
    """

    @cached_property
    def counts(self) -> np.ndarray:
        """Rows of every batch that each super-cluster holds."""
        return stratified_counts(self.batch_size, self.weights)

    @cached_property
    def layout(self) -> np.ndarray:
        """The super-cluster of each row of every batch."""
        return np.repeat(np.arange(len(self.arrays)), self.counts)

    @property
    def shares(self) -> np.ndarray:
        """Each super-cluster's share of every batch (what the loss weights divide by)."""
        return self.counts / self.batch_size

    def _pick(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sizes = self.sizes[self.layout]
        starts = np.minimum((u[:, 1] * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
        return self.layout, starts


class GroupDROLoss:
    """The DRO proxy's loss for one step, updating the domain weights first (DoReMi's order).

    Both models read the batch; each token's excess loss `max(l_proxy - l_reference, 0)` is
    averaged per super-cluster (`lambda`), the weights take one `DoReMiState.update`, and the
    returned loss weights each sequence by its super-cluster's new weight over its share of the
    batch. Rows of `history` hold the weights and `lambda` after every step.
    """

    def __init__(
        self,
        reference: torch.nn.Module,
        batches: StratifiedBatches,
        state: DoReMiState,
        device: str = "cpu",
        record_every: int = 1,
    ) -> None:
        self.reference = reference.to(device).eval()
        self.batches = batches
        self.state = state
        self.device = torch.device(device)
        self.record_every = record_every
        """`history` keeps every this many steps (and step 1): long runs stay small in memory."""
        self.history: list[dict[str, list[float] | int]] = []

    def __call__(
        self, step: int, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            reference_logits = self.reference(input_ids=inputs).logits
        vocab = logits.shape[-1]
        flat = targets.reshape(-1)
        token_loss = F.cross_entropy(
            logits.reshape(-1, vocab).float(), flat, reduction="none"
        ).view(targets.shape)
        reference_loss = F.cross_entropy(
            reference_logits.reshape(-1, vocab).float(), flat, reduction="none"
        ).view(targets.shape)
        # every row has the same number of tokens: the per-domain mean of row means is the
        # per-domain mean over tokens
        excess = (token_loss.detach() - reference_loss).clamp_min(0).mean(dim=1)
        layout = self.batches.layout
        lam = domain_means(excess.cpu().numpy(), layout, len(self.state.weights))
        weights = self.state.update(lam)
        if step % self.record_every == 0:
            self.history.append(
                {"step": step + 1, "weights": weights.tolist(), "excess": lam.tolist()}
            )
        row_weights = torch.as_tensor(
            weights[layout] / self.batches.shares[layout], dtype=torch.float32, device=self.device
        )
        return (token_loss.mean(dim=1) * row_weights).mean()


@dataclass
class DoReMiRun:
    """A trained DRO proxy and DoReMi's mixture.

    Attributes:
        training: The proxy and its training statistics.
        average: The mixture DoReMi outputs (weights averaged over every step).
        final: The weights after the last step.
        history: Weights and per-super-cluster excess loss after steps 1, 1 + n, 1 + 2n, ...
            (n: 1 up to 1,000 steps, then at most 1,000 rows).
        sampling: The share of every batch each super-cluster held.
    """

    training: TrainResult
    average: np.ndarray
    final: np.ndarray
    history: list[dict[str, Any]]
    sampling: np.ndarray


def train_doremi(
    cfg: ProxyConfig,
    cluster_arrays: Sequence[np.ndarray],
    reference: torch.nn.Module,
    vocab_size: int,
    settings: DoReMiSettings | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    eos_token_id: int | None = None,
) -> DoReMiRun:
    """Trains DoReMi's group-DRO proxy against `reference` (trained on the natural weights).

    Same architecture, budget, schedule and seed as the reference (`cfg`). Batches sample the
    super-clusters uniformly (the paper's Algorithm 1), stratified so that each holds
    `batch_size / k` sequences (at least one) of every super-cluster.
    """
    k = len(cluster_arrays)
    check_inputs(k, cfg.batch_size)
    state = DoReMiState.start(k, settings)
    batches = StratifiedBatches(
        cluster_arrays, np.full(k, 1.0 / k), cfg.seq_len, cfg.batch_size, cfg.seed
    )
    loss = GroupDROLoss(reference, batches, state, device, -(-cfg.steps // HISTORY_LIMIT))
    result = train_proxy(
        cfg, cluster_arrays, batches.weights, vocab_size, device=device, log=log,
        threads=threads, eos_token_id=eos_token_id, batches=batches, step_loss=loss,
    )  # fmt: skip
    return DoReMiRun(result, state.average, state.weights.copy(), loss.history, batches.shares)

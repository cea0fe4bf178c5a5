"""The ClimbMix manifest: token budgets under a repetition cap, document selection, exports."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ManifestError(ValueError):
    """A manifest request that cannot be met as asked."""


@dataclass(frozen=True)
class TokenBudget:
    """Tokens to draw from each super-cluster, after the repetition cap."""

    requested: np.ndarray
    granted: np.ndarray
    available: np.ndarray
    epochs: np.ndarray
    redistributed: int
    shortfall: int
    capped: list[int]


def token_budget(
    weights: np.ndarray, available: np.ndarray, total_tokens: int, max_epochs: float
) -> TokenBudget:
    """Splits `total_tokens` by `weights`, capping each super-cluster at `max_epochs` passes.

    Tokens a capped super-cluster cannot supply go to the uncapped ones in proportion to their
    weights (water-filling), repeated until nothing is left or every cluster is at its cap; what
    no cluster can supply is reported as `shortfall` instead of failing.
    """
    if total_tokens <= 0:
        raise ManifestError("manifest.total_tokens must be > 0 (the tokens to train on)")
    weights = np.asarray(weights, dtype=np.float64)
    available = np.asarray(available, dtype=np.float64)
    cap = np.floor(available * max_epochs)
    requested = weights * total_tokens
    granted = np.zeros_like(weights)
    remaining = float(total_tokens)
    active = (weights > 0) & (cap > 0)
    while remaining >= 1 and active.any():
        share = weights * active
        share /= share.sum()
        offer = remaining * share
        room = cap - granted
        take = np.minimum(offer, room)
        granted += take
        remaining -= float(take.sum())
        active &= (cap - granted) >= 1
    granted = np.floor(granted).astype(np.int64)
    capped = [int(i) for i in np.flatnonzero((granted >= cap - 1) & (requested > cap))]
    return TokenBudget(
        requested=np.round(requested).astype(np.int64),
        granted=granted,
        available=available.astype(np.int64),
        epochs=np.divide(granted, available, out=np.zeros_like(weights), where=available > 0),
        redistributed=int(np.clip(granted - requested, 0, None).sum()),
        shortfall=int(max(0, total_tokens - int(granted.sum()))),
        capped=capped,
    )


def stable_order(doc_ids: Sequence[str], seed: int) -> np.ndarray:
    """A seeded order of documents that depends only on each id (not on input order)."""
    keys = [hashlib.blake2b(f"{seed}:{d}".encode(), digest_size=8).digest() for d in doc_ids]
    return np.array(sorted(range(len(doc_ids)), key=keys.__getitem__), dtype=np.int64)


def select_documents(
    doc_ids: Sequence[str], n_tokens: np.ndarray, budget: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Documents (indices) and their pass number that fill `budget` tokens.

    Whole passes over the cluster come first (each in the seeded stable order), then a partial
    pass takes documents in that order until the budget is met.
    """
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    if len(doc_ids) == 0 or budget <= 0 or n_tokens.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    order = stable_order(doc_ids, seed)
    total = int(n_tokens.sum())
    full, rest = divmod(int(budget), total)
    picks = [order] * full
    passes = [np.full(len(order), p, np.int32) for p in range(full)]
    if rest:
        cumulative = np.cumsum(n_tokens[order])
        k = int(np.searchsorted(cumulative, rest, side="left")) + 1
        picks.append(order[:k])
        passes.append(np.full(k, full, np.int32))
    return np.concatenate(picks), np.concatenate(passes)


def megatron_blend(weights: np.ndarray, prefixes: Sequence[str]) -> list[float | str]:
    """Megatron-LM `--data-path` blend: weight, prefix, weight, prefix...; zero weights left out."""
    blend: list[float | str] = []
    for w, prefix in zip(weights.tolist(), prefixes, strict=True):
        if w > 0:
            blend += [round(float(w), 6), prefix]
    return blend

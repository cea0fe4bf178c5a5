"""Entropy mixtures (BiMix, Ge et al., arXiv 2405.14908): weights from each super-cluster's entropy.

BiMix reports that training-free mixtures derived from the entropy of each domain's tokens come
close to, or beat, mixtures found with proxies. Two measures over the super-cluster's proxy
tokens (in bits):

- ``shannon``: ``H(X) = -sum_x p(x) log2 p(x)`` over the unigram distribution;
- ``conditional``: ``H(X_t | X_{t-1}) = H(X_{t-1}, X_t) - H(X_{t-1})`` over adjacent pairs, the
  measure the paper reports strongest (from our reading of it; not re-checked against its code).

and two normalisations: ``proportional`` (``r_i = H_i / sum_j H_j``) and ``softmax``
(``r_i = exp(H_i) / sum_j exp(H_j)``, which leans hard toward the most diverse super-clusters).
Large super-clusters are measured on ``windows`` evenly spaced windows of their stream (pairs never
straddle two windows), so the cost is bounded by ``max_tokens``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from climb_assets.lib.baselines.base import (
    BaselineError,
    BaselineInputs,
    ReferenceMixture,
)

Measure = Literal["shannon", "conditional"]
Normalisation = Literal["proportional", "softmax"]


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def sampled_windows(ids: np.ndarray, max_tokens: int, windows: int) -> list[np.ndarray]:
    """The whole stream when it is short, else ``windows`` evenly spaced slices of it."""
    ids = np.asarray(ids)
    if ids.size <= max_tokens:
        return [ids]
    width = max(2, max_tokens // windows)
    starts = np.linspace(0, ids.size - width, windows).astype(np.int64)
    return [ids[s : s + width] for s in starts]


def shannon_entropy(parts: list[np.ndarray]) -> float:
    """Unigram entropy in bits of the tokens of ``parts``."""
    ids = np.concatenate(parts).astype(np.int64)
    return _entropy_bits(np.bincount(ids))


def conditional_entropy(parts: list[np.ndarray]) -> float:
    """``H(X_t | X_{t-1})`` in bits over adjacent pairs inside each part."""
    firsts, seconds = [], []
    for part in parts:
        p = np.asarray(part, dtype=np.int64)
        firsts.append(p[:-1])
        seconds.append(p[1:])
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    if a.size == 0:
        raise BaselineError("conditional entropy needs at least two tokens")
    pairs = a * (int(max(a.max(), b.max())) + 1) + b
    _, joint = np.unique(pairs, return_counts=True)
    return _entropy_bits(joint) - _entropy_bits(np.bincount(a))


class EntropyMixture:
    """BiMix's entropy-driven mixture for one measure and one normalisation."""

    def __init__(
        self,
        measure: Measure = "conditional",
        normalisation: Normalisation = "proportional",
        max_tokens: int = 4_000_000,
        windows: int = 64,
    ) -> None:
        self.measure, self.normalisation = measure, normalisation
        self.max_tokens, self.windows = max_tokens, windows
        suffix = "" if normalisation == "proportional" else "_softmax"
        self.name = f"entropy_{measure}{suffix}"
        self.description = (
            f"BiMix: weights {'proportional to' if suffix == '' else 'a softmax of'} each "
            f"super-cluster's {measure} entropy of its tokens"
        )

    def entropies(self, inputs: BaselineInputs) -> np.ndarray:
        if inputs.token_ids is None:
            raise BaselineError(f"{self.name} needs the super-clusters' tokens (cluster_tokens)")
        measure = shannon_entropy if self.measure == "shannon" else conditional_entropy
        out = np.zeros(inputs.k)
        for i in range(inputs.k):
            ids = np.asarray(inputs.token_ids(i))
            if ids.size < 2:
                raise BaselineError(
                    f"super-cluster {i} has {ids.size} token(s): its entropy is undefined; "
                    "re-materialize cluster_tokens, or merge or prune that super-cluster"
                )
            out[i] = measure(sampled_windows(ids, self.max_tokens, self.windows))
        return out

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        h = self.entropies(inputs)
        if self.normalisation == "softmax":
            e = np.exp(h - h.max())
            weights = e / e.sum()
        else:
            if h.sum() <= 0:
                raise BaselineError(f"{self.name}: every super-cluster has zero entropy")
            weights = h / h.sum()
        return ReferenceMixture(
            self.name, weights, self.description, {"entropy_bits": h.round(4).tolist()}
        )

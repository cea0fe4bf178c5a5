"""What a round may propose and how it ranks candidates: repetition caps, acquisition, ties.

The manifest trains on ``total_tokens`` drawn with at most ``max_epochs`` passes over each
super-cluster, so a mixture may give super-cluster i at most
``cap_i = available_i * max_epochs / total_tokens`` of the weight. Candidate pools, round
picks and the final choice all respect the caps, so the mixture the predictor picked is the
one the manifest ships (the manifest's own water-filling is left as a safety net only).

Later rounds rank candidates by an acquisition score: the predicted objective (``mean``, the
paper's), an upper confidence bound ``mean + kappa * std`` (``ucb``) or the expected
improvement over the best observed objective (``ei``). The two last need a predictor with an
uncertainty (a Gaussian process, the alignment regression or an ensemble's spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

ACQUISITIONS = ("mean", "ucb", "ei")


class ProposalError(ValueError):
    """Caps or acquisition settings that cannot be met."""


def repetition_caps(
    available_tokens: Sequence[int] | np.ndarray, total_tokens: int, max_epochs: float
) -> np.ndarray:
    """Largest weight each super-cluster may get: ``available * max_epochs / total_tokens``.

    Raises:
        ProposalError: When even every super-cluster at its cap cannot fill ``total_tokens``;
            the message says how many tokens are missing.
    """
    available = np.asarray(available_tokens, dtype=np.float64).reshape(-1)
    if total_tokens <= 0:
        raise ProposalError("manifest.total_tokens must be > 0 (the tokens to train on)")
    if max_epochs <= 0:
        raise ProposalError(f"manifest.max_epochs = {max_epochs}; it must be > 0")
    reachable = float(np.floor(available * max_epochs).sum())
    if reachable < total_tokens:
        raise ProposalError(
            f"the kept super-clusters hold {int(available.sum()):,} tokens; at "
            f"manifest.max_epochs = {max_epochs:g} at most {int(reachable):,} of "
            f"manifest.total_tokens = {total_tokens:,} can be drawn "
            f"({total_tokens - int(reachable):,} tokens missing); lower total_tokens or raise "
            "max_epochs"
        )
    return np.minimum(available * max_epochs / total_tokens, 1.0)


def within_caps(weights: np.ndarray, caps: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Boolean mask of the rows of ``weights`` that no cap forbids."""
    w = np.asarray(weights, dtype=np.float64)
    w = w.reshape(1, -1) if w.ndim == 1 else w
    return np.all(w <= np.asarray(caps, dtype=np.float64) + tol, axis=1)


def acquisition(
    mean: np.ndarray,
    std: np.ndarray | None,
    rule: str,
    best_observed: float,
    kappa: float = 1.0,
) -> np.ndarray:
    """Acquisition score per candidate, higher is better (objectives are higher-is-better).

    Args:
        mean: Predicted objective per candidate.
        std: Its standard deviation (required by ``ucb`` and ``ei``).
        rule: ``mean``, ``ucb`` or ``ei``.
        best_observed: Best objective measured so far (the incumbent of ``ei``).
        kappa: Weight of the standard deviation in ``ucb``.
    """
    mu = np.asarray(mean, dtype=np.float64)
    if rule not in ACQUISITIONS:
        raise ProposalError(f"unknown acquisition {rule!r}; use one of {list(ACQUISITIONS)}")
    if rule == "mean":
        return mu
    if std is None:
        raise ProposalError(
            f"acquisition '{rule}' needs a predictor with an uncertainty (gp, aligned or the "
            "auto ensemble); use acquisition: mean with this kind"
        )
    sd = np.maximum(np.asarray(std, dtype=np.float64), 1e-12)
    if rule == "ucb":
        return mu + kappa * sd
    z = (mu - best_observed) / sd
    return (mu - best_observed) * norm.cdf(z) + sd * norm.pdf(z)


@dataclass(frozen=True)
class TieReport:
    """How many of the top set share its best score (a piecewise-constant predictor ties)."""

    top: int
    tied: int
    distinct: int

    @property
    def degenerate(self) -> bool:
        """Half or more of the top set tie at its best score: the ranking is no ranking."""
        return self.top > 1 and self.tied * 2 >= self.top

    def message(self) -> str:
        return (
            f"{self.tied} of the top {self.top} candidates tie at the best predicted value "
            f"({self.distinct} distinct values in the top set)"
        )


def top_ties(scores: np.ndarray, top: int, rel_tol: float = 1e-9) -> TieReport:
    """Ties among the ``top`` best of ``scores`` (higher is better)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1][: max(1, top)]
    best = s[0]
    tol = rel_tol * max(1.0, abs(best))
    tied = int(np.sum(np.abs(s - best) <= tol))
    distinct = int(np.unique(np.round(s / tol)).size) if tol > 0 else int(np.unique(s).size)
    return TieReport(top=int(s.size), tied=tied, distinct=distinct)


def break_ties(
    scores: np.ndarray, secondary: np.ndarray | None, rel_tol: float = 1e-9
) -> np.ndarray:
    """``scores`` with ties broken by ``secondary`` (higher wins), keeping every strict order.

    The secondary key (an uncertainty) is scaled below the smallest gap between distinct
    scores, so it reorders only candidates whose scores tie.
    """
    s = np.asarray(scores, dtype=np.float64)
    if secondary is None:
        return s
    u = np.unique(s)
    gap = np.min(np.diff(u)) if u.size > 1 else max(1.0, abs(float(s[0])))
    sec = np.asarray(secondary, dtype=np.float64)
    span = float(sec.max() - sec.min())
    if span <= 0:
        return s
    return s + (sec - sec.min()) / span * gap * 0.5 * (1 - rel_tol)


@dataclass(frozen=True)
class RoundPicks:
    """The mixtures a later round trains and how they were ranked.

    Attributes:
        rows: Row indices into the candidate pool.
        mean: Predicted objective of every candidate.
        std: Its standard deviation (None when the predictor has none).
        acquisition: The rule actually used (``mean`` when the one asked needs a std).
        ties: Ties among the top set under that rule.
        tie_break: How ties were broken.
        notes: Warnings for the run's log.
    """

    rows: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None
    acquisition: str
    ties: TieReport
    tie_break: str
    notes: tuple[str, ...] = ()


def pick_next_round(
    pool: np.ndarray,
    predictor: Any,
    n: int,
    seed: int,
    trained_keys: set[str],
    trained_weights: np.ndarray,
    best_observed: float,
    top: int,
    design: str = "maximin",
    rule: str = "mean",
    kappa: float = 1.0,
    exploit: int = 0,
) -> RoundPicks:
    """Ranks the pool by the acquisition rule, reports ties, and picks n from the top set.

    Args:
        pool: (m, K) candidate mixtures (already within the repetition caps).
        predictor: Anything with ``predict(x)`` and ``predict_std(x)`` (objective, higher is
            better), e.g. a fitted ``ObjectivePredictor`` or ensemble.
        n: Mixtures to pick.
        seed: Seed of the picks.
        trained_keys: ``mixture_key`` of mixtures already trained (never proposed again).
        trained_weights: (t, K) those mixtures (anchors of the farthest-point picks).
        best_observed: Best objective measured so far (incumbent of ``ei``).
        top: Size of the top set.
        design: ``random`` (the paper's draw from the top set) or ``maximin``/``cover``
            (farthest-point picks from the top set).
        rule: ``mean``, ``ucb`` or ``ei``.
        kappa: ``ucb``'s weight of the standard deviation.
        exploit: How many picks are the best-scored candidates themselves (see
            ``select_next``); the rest follow ``design``.
    """
    from climb_assets.lib.mixture import select_next

    mean, std = predictor.predict(pool), predictor.predict_std(pool)
    notes: list[str] = []
    if rule != "mean" and std is None:
        notes.append(
            f"acquisition '{rule}' needs an uncertainty but the predictor has none; ranking "
            "by the predicted objective"
        )
        rule = "mean"
    scores = acquisition(mean, std, rule, best_observed, kappa)
    ties = top_ties(scores, top)
    tie_break = "none needed"
    if ties.degenerate:
        tie_break = "predictive std" if std is not None else "spread (farthest-point picks)"
        if design == "random" and std is None:
            tie_break = "random draw (design random)"
        notes.append(f"{ties.message()}; ties broken by {tie_break}")
        scores = break_ties(scores, std)
    rows = select_next(
        pool, scores, n, seed, exclude_keys=trained_keys, top=top,
        design="random" if design == "random" else "maximin", trained=trained_weights,
        exploit=min(exploit, n),
    )  # fmt: skip
    return RoundPicks(rows, mean, std, rule, ties, tie_break, tuple(notes))

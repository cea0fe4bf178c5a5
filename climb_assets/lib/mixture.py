"""Mixture weights on the simplex over the K super-clusters: sampling, de-duplication, selection.

CLIMB's round 1 samples mixtures with RegMix's Dirichlet sampler (sail-sg/regmix,
``mixture_config/synthesize_mixture.py``):

1. the natural prior (each super-cluster's token share) is tempered, ``prior ** 0.5``,
   and renormalised;
2. each candidate picks a concentration strength uniformly from 15 log-spaced values in
   [0.1, 5.0] and is drawn from ``Dirichlet(tempered_prior * strength)``;
3. candidates whose weight for some domain exceeds ``min(15 * prior, 1)`` are rejected
   (RegMix's "maximum usage" bound, taken against the *natural* prior as RegMix does, so a
   small cluster is never asked for more than 15x its share of the corpus);
4. weights below 2e-4 are zeroed, the rest renormalised and rounded to 4 decimals;
5. the pool (100x the number wanted) is de-duplicated and n mixtures are picked at random.

Later rounds score a large fresh candidate pool with the predictor, keep the top
``max(n**2, 128)`` and draw n of them at random (:func:`select_next`). The final mixture is the
predictor's argmax or RegMix's top-k average (:func:`final_mixture`).

Weights are rounded on a grid of ``10 ** -DECIMALS``; :func:`mixture_key` turns a mixture into
the canonical string used to de-duplicate and to never re-propose a mixture already trained.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DECIMALS = 4
"""Decimal places of sampled weights and of :func:`mixture_key` (RegMix rounds to 4 too)."""

_SCALE = 10**DECIMALS


class MixtureError(ValueError):
    """Mixture weights or sampler settings that cannot be used."""


def natural_prior(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Each super-cluster's share of the corpus tokens.

    Args:
        tokens: Token count per super-cluster.

    Returns:
        float64 shares that sum to 1.

    Raises:
        MixtureError: On an empty, negative, non-finite or all-zero count vector.
    """
    counts = np.asarray(tokens, dtype=np.float64).reshape(-1)
    if counts.size == 0:
        raise MixtureError("no super-clusters to mix; run the clustering step first")
    if not np.all(np.isfinite(counts)):
        raise MixtureError("token counts contain NaN or inf; recount the super-cluster tokens")
    if np.any(counts < 0):
        bad = int(np.flatnonzero(counts < 0)[0])
        raise MixtureError(
            f"super-cluster {bad} has a negative token count ({counts[bad]:g}); "
            "token counts must be >= 0"
        )
    total = counts.sum()
    if total <= 0:
        raise MixtureError(
            "all super-clusters have 0 tokens; check the tokenizer and the cluster assignment"
        )
    return counts / total


@dataclass(frozen=True)
class SamplerSettings:
    """Parameters of RegMix's Dirichlet mixture sampler (defaults are the paper's).

    Attributes:
        temperature: The prior is tempered as ``prior ** temperature`` and renormalised
            (< 1 flattens it, giving small clusters more weight).
        min_strength: Smallest Dirichlet concentration strength (few domains per mixture).
        max_strength: Largest strength (mixtures close to the tempered prior).
        n_strengths: Number of log-spaced strengths in [min_strength, max_strength]; each
            candidate picks one uniformly. Concentration = tempered_prior * strength.
        max_ratio: Reject a candidate if a domain's weight exceeds
            ``min(max_ratio * natural_prior, 1)`` (RegMix's ``MAXIMUM_USAGE``). None disables
            the rejection.
        min_weight: Weights below this are zeroed before renormalising and rounding.
        oversample: :func:`sample_mixtures` draws ``n * oversample`` candidates to pick n from.
    """

    temperature: float = 0.5
    min_strength: float = 0.1
    max_strength: float = 5.0
    n_strengths: int = 15
    max_ratio: float | None = 15.0
    min_weight: float = 2e-4
    oversample: int = 100

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise MixtureError(
                f"sampler temperature = {self.temperature}; it must be > 0 (paper: 0.5)"
            )
        if not (math.isfinite(self.min_strength) and self.min_strength > 0):
            raise MixtureError(f"min_strength = {self.min_strength}; it must be > 0 (paper: 0.1)")
        if not (math.isfinite(self.max_strength) and self.max_strength >= self.min_strength):
            raise MixtureError(
                f"max_strength = {self.max_strength} is below min_strength = "
                f"{self.min_strength}; set max_strength >= min_strength (paper: 5.0)"
            )
        if self.n_strengths < 1:
            raise MixtureError(f"n_strengths = {self.n_strengths}; it must be >= 1 (paper: 15)")
        if self.max_ratio is not None and not self.max_ratio >= 1:
            raise MixtureError(
                f"max_ratio = {self.max_ratio}; it must be >= 1 (weights and prior both sum "
                "to 1, so a smaller ratio rejects every mixture) or None to disable (paper: 15)"
            )
        if not (0 <= self.min_weight < 1):
            raise MixtureError(
                f"min_weight = {self.min_weight}; it must be in [0, 1) (paper: 2e-4)"
            )
        if self.min_weight and self.min_weight < 10**-DECIMALS:
            raise MixtureError(
                f"min_weight = {self.min_weight} is below the rounding grid 1e-{DECIMALS}; "
                f"use 0 or a value >= 1e-{DECIMALS}"
            )
        if self.oversample < 1:
            raise MixtureError(f"oversample = {self.oversample}; it must be >= 1 (paper: 100)")

    def strengths(self) -> np.ndarray:
        """The log-spaced concentration strengths candidates pick from."""
        if self.n_strengths == 1 or self.min_strength == self.max_strength:
            return np.array([self.min_strength], dtype=np.float64)
        return np.logspace(
            math.log10(self.min_strength), math.log10(self.max_strength), self.n_strengths
        )


def tempered_prior(prior: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
    """``prior ** temperature`` renormalised to sum 1 (zero entries stay zero)."""
    p = _check_prior(prior)
    t = np.where(p > 0, p**temperature, 0.0)
    return t / t.sum()


def mixture_key(weights: Sequence[float] | np.ndarray, decimals: int = DECIMALS) -> str:
    """Canonical string of a mixture, e.g. ``"0.1234,0.0000,0.8766"``.

    Two mixtures with the same key are the same training run: keys de-duplicate candidate
    pools and keep already-trained mixtures from being proposed again.

    Args:
        weights: One weight per super-cluster.
        decimals: Decimal places kept (the sampler's grid is :data:`DECIMALS`).
    """
    w = np.round(np.asarray(weights, dtype=np.float64).reshape(-1), decimals) + 0.0
    return ",".join(f"{v:.{decimals}f}" for v in w.tolist())


def sample_mixtures(
    prior: Sequence[float] | np.ndarray,
    n: int,
    seed: int,
    settings: SamplerSettings | None = None,
    exclude: Iterable[str] = (),
    design: str = "random",
    center: Sequence[float] | np.ndarray | None = None,
    caps: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Round-1 mixtures: RegMix's Dirichlet sampler, de-duplicated, n picked from the draws.

    Draws ``n * settings.oversample`` candidates, applies the rejection and minimum-weight
    rules, drops duplicates and mixtures whose :func:`mixture_key` is in ``exclude``, then picks
    n of the rest: uniformly at random (``design="random"``, RegMix and the paper), spread
    over the simplex by greedy farthest-point selection (``design="maximin"``, see
    :func:`spread_rows`; its picks are the simplex's corners: one-hot mixtures that tell a
    predictor nothing about the interior), or as the draws nearest the centres of n k-means
    clusters of the draws (``design="cover"``, see :func:`cover_rows`): picks that represent
    where the sampler puts its mass, interior and edges alike, each in a different region.

    Args:
        prior: Natural prior (token share per super-cluster), e.g. from :func:`natural_prior`.
        n: Number of mixtures wanted.
        seed: Seed of ``np.random.default_rng``; the same seed gives the same mixtures.
        settings: Sampler parameters (default: the paper's).
        exclude: Keys of mixtures that must not be returned (already trained).
        design: ``"random"``, ``"maximin"`` or ``"cover"``.
        center: Where the Dirichlet draws are centred (default: ``prior``), e.g. a blend of
            the token prior and the target's distribution over super-clusters. The
            rejection rule stays relative to the natural ``prior`` (it bounds repetition).
        caps: Largest weight each super-cluster may get (the manifest's repetition cap);
            draws above a cap are rejected.

    Returns:
        (n, K) float64 array; every row sums to 1 and each weight is 0 or >= min_weight.

    Raises:
        MixtureError: When fewer than n distinct admissible mixtures were found.
    """
    settings = settings or SamplerSettings()
    p = _check_prior(prior)
    if n < 1:
        raise MixtureError(f"asked for {n} mixtures; ask for at least 1")
    excluded = set(exclude)
    k = p.size
    if np.count_nonzero(p) == 1:
        # One non-empty super-cluster: the only mixture puts all weight on it.
        only = np.where(p > 0, 1.0, 0.0).reshape(1, k)
        left = 0 if mixture_key(only[0]) in excluded else 1
        if n > left:
            raise MixtureError(
                f"with a single non-empty super-cluster there is {left} untrained mixture but "
                f"{n} were asked for; lower the round budget to {left} or add super-clusters"
            )
        return only
    rng = np.random.default_rng(seed)
    units = _draw(p, n * settings.oversample, rng, settings, center, caps)
    units = _dedupe(units)
    if excluded:
        keep = np.array([_units_key(u) not in excluded for u in units], dtype=bool)
        units = units[keep]
    if units.shape[0] < n:
        raise MixtureError(
            f"only {units.shape[0]} distinct admissible mixtures were found for {n} wanted "
            f"(K={k}, {n * settings.oversample} candidates drawn); lower the round budget, add "
            "super-clusters, or raise max_ratio / oversample"
        )
    if design == "maximin":
        pick = np.sort(spread_rows(units / _SCALE, n, rng))
    elif design == "cover":
        pick = np.sort(cover_rows(units / _SCALE, n, seed))
    elif design == "random":
        pick = np.sort(rng.choice(units.shape[0], size=n, replace=False))
    else:
        raise MixtureError(f"unknown design {design!r}; use 'random', 'maximin' or 'cover'")
    return units[pick] / _SCALE


def cover_rows(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of n points that cover the others: the point nearest each k-means centre.

    A centroidal design: the n picks partition the points into regions of similar mass, so
    they follow the sampler's density (mostly the interior of the simplex) while no two picks
    share a region. Farthest-point selection instead takes the extremes (the corners).
    """
    from sklearn.cluster import KMeans

    pts = np.asarray(points, dtype=np.float64)
    if n > pts.shape[0]:
        raise MixtureError(f"cannot pick {n} rows from {pts.shape[0]}; lower the round budget")
    if n == pts.shape[0]:
        return np.arange(n, dtype=np.int64)
    km = KMeans(n_clusters=n, n_init=1, random_state=seed, max_iter=100).fit(pts)
    picked: list[int] = []
    for centre in km.cluster_centers_:
        dist = np.linalg.norm(pts - centre, axis=1)
        dist[picked] = np.inf
        picked.append(int(np.argmin(dist)))
    return np.asarray(picked, dtype=np.int64)


def spread_rows(
    points: np.ndarray,
    n: int,
    rng: np.random.Generator,
    anchors: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy farthest-point (maximin) selection of n rows of ``points``.

    Each pick is the row farthest (Euclidean) from every row picked so far and from every
    ``anchors`` row (mixtures already trained); the first pick, when there are no anchors, is a
    random row. The result covers the region the points span instead of clustering where the
    sampler is dense.

    Returns:
        int64 row indices, in pick order.
    """
    pts = np.asarray(points, dtype=np.float64)
    m = pts.shape[0]
    if n > m:
        raise MixtureError(f"cannot pick {n} rows from {m}; lower the round budget")
    nearest = np.full(m, np.inf)
    if anchors is not None and len(anchors):
        for a in np.asarray(anchors, dtype=np.float64).reshape(-1, pts.shape[1]):
            nearest = np.minimum(nearest, np.linalg.norm(pts - a, axis=1))
    picked: list[int] = []
    for _ in range(n):
        if not picked and not np.isfinite(nearest).any():
            idx = int(rng.integers(m))
        else:
            gaps = nearest.copy()
            gaps[picked] = -1.0
            idx = int(np.argmax(gaps))
        picked.append(idx)
        nearest = np.minimum(nearest, np.linalg.norm(pts - pts[idx], axis=1))
    return np.asarray(picked, dtype=np.int64)


def candidate_pool(
    prior: Sequence[float] | np.ndarray,
    size: int,
    seed: int,
    settings: SamplerSettings | None = None,
    center: Sequence[float] | np.ndarray | None = None,
    caps: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Fresh candidate mixtures from the round-1 sampler, for the predictor to score.

    Draws until ``size`` candidates pass the rejection rule (at most ``size * oversample``
    draws), then de-duplicates, so the pool can be smaller than ``size``. The paper scores
    about 100,000.

    Args:
        prior: Natural prior (token share per super-cluster).
        size: Number of candidates to draw.
        seed: Seed of ``np.random.default_rng``.
        settings: Sampler parameters (default: the paper's).
        center: Centre of the draws (see :func:`sample_mixtures`).
        caps: Largest weight per super-cluster (see :func:`sample_mixtures`).

    Returns:
        (m, K) float64 array of distinct mixtures, m <= size.
    """
    settings = settings or SamplerSettings()
    p = _check_prior(prior)
    if size < 1:
        raise MixtureError(f"candidate pool size = {size}; it must be >= 1 (paper: 100,000)")
    if np.count_nonzero(p) == 1:
        return np.where(p > 0, 1.0, 0.0).reshape(1, p.size)
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    accepted = 0
    for _ in range(settings.oversample):
        batch = _draw(p, size, rng, settings, center, caps)
        chunks.append(batch)
        accepted += batch.shape[0]
        if accepted >= size:
            break
    units = np.concatenate(chunks, axis=0)[:size]
    if units.shape[0] == 0:
        raise MixtureError(
            f"no candidate passed the rejection rule in {size * settings.oversample} draws; "
            "raise max_ratio (or set it to None), raise the sampler temperature, or loosen the "
            "repetition cap (manifest.max_epochs)"
        )
    return _dedupe(units) / _SCALE


def select_next(
    candidates: np.ndarray,
    predicted: Sequence[float] | np.ndarray,
    n: int,
    seed: int,
    exclude_keys: Iterable[str] = (),
    top: int | None = None,
    higher_is_better: bool = True,
    design: str = "random",
    trained: np.ndarray | None = None,
    exploit: int = 0,
) -> np.ndarray:
    """Rows of the candidates to train next round: n picked from the predicted top set.

    Candidates whose key is in ``exclude_keys`` (already trained) and repeated candidates are
    skipped; of the rest, the best ``top`` by predicted value (default ``max(n**2, 128)``) form
    the top set. With ``design="random"`` n of them are drawn uniformly without replacement
    (CLIMB's exploration); with ``design="maximin"`` they are picked by :func:`spread_rows`,
    each as far as possible from the ``trained`` mixtures and from the other picks, so a round
    spends its proxies on the parts of the predicted-good region that no proxy has measured.

    Args:
        candidates: (m, K) candidate mixtures.
        predicted: (m,) predictor output per candidate.
        n: Number of mixtures to train next round.
        seed: Seed of ``np.random.default_rng``; the same seed gives the same rows.
        exclude_keys: :func:`mixture_key` of mixtures that must not be chosen.
        top: Size of the top set (default ``max(n * n, 128)``).
        higher_is_better: False when the prediction is a loss.
        design: ``"random"`` or ``"maximin"``.
        trained: (t, K) mixtures already trained (anchors of ``"maximin"``).
        exploit: How many of the n are the best-ranked candidates themselves, taken before the
            ``design`` picks the rest (which then also keep away from them). One exploit pick
            puts the predictor's own choice to the test every round, so a round can beat the
            best proxy so far whenever the predictor is right, and a wrong predictor is
            corrected by a measured point where it was most confident.

    Returns:
        Sorted int64 row indices into ``candidates``.
    """
    cand = _check_candidates(candidates, predicted)
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if n < 1:
        raise MixtureError(f"asked for {n} mixtures; ask for at least 1")
    top = max(n * n, 128) if top is None else int(top)
    if top < n:
        raise MixtureError(f"top = {top} is smaller than n = {n}; set top >= n")
    excluded = set(exclude_keys)
    order = np.argsort(-pred if higher_is_better else pred, kind="stable")
    chosen: list[int] = []
    seen: set[str] = set()
    for idx in order.tolist():
        key = mixture_key(cand[idx])
        if key in excluded or key in seen:
            continue
        seen.add(key)
        chosen.append(idx)
        if len(chosen) >= top:
            break
    if len(chosen) < n:
        raise MixtureError(
            f"only {len(chosen)} untrained distinct candidates for {n} wanted; enlarge the "
            "candidate pool or lower the round budget"
        )
    if not 0 <= exploit <= n:
        raise MixtureError(f"exploit = {exploit} picks of {n}; use 0..{n}")
    rng = np.random.default_rng(seed)
    best, rows = chosen[:exploit], np.asarray(chosen[exploit:], dtype=np.int64)
    rest = n - exploit
    if design == "maximin":
        known = np.empty((0, cand.shape[1])) if trained is None else np.asarray(trained)
        anchors = np.vstack([known.reshape(-1, cand.shape[1]), cand[best]])
        pick = spread_rows(cand[rows], rest, rng, anchors=anchors if len(anchors) else None)
    elif design == "random":
        pick = rng.choice(len(rows), size=rest, replace=False)
    else:
        raise MixtureError(f"unknown design {design!r}; use 'random' or 'maximin'")
    return np.sort(np.concatenate([np.asarray(best, dtype=np.int64), rows[pick]]))


def final_mixture(
    candidates: np.ndarray,
    predicted: Sequence[float] | np.ndarray,
    method: str = "argmax",
    k: int = 128,
    higher_is_better: bool = True,
) -> np.ndarray:
    """The mixture to train the final model on.

    Args:
        candidates: (m, K) candidate mixtures.
        predicted: (m,) predictor output per candidate.
        method: ``"argmax"`` (CLIMB: the best predicted candidate) or ``"topk_mean"``
            (RegMix: the mean of the k best predicted candidates, renormalised). A tree
            predictor is piecewise constant, so on little data thousands of candidates can tie
            for the best prediction; ``"argmax"`` then returns the mean of the tied set (the
            centre of the predicted-best region) instead of whichever tied row comes first.
        k: Number of candidates averaged by ``"topk_mean"`` (RegMix: 128); capped at m.
        higher_is_better: False when the prediction is a loss.

    Returns:
        (K,) float64 weights summing to 1.
    """
    cand = _check_candidates(candidates, predicted)
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    order = np.argsort(-pred if higher_is_better else pred, kind="stable")
    if method == "argmax":
        best = pred[order[0]]
        tied = order[np.abs(pred[order] - best) <= 1e-12 * max(1.0, abs(best))]
        if len(tied) == 1:
            return cand[tied[0]].copy()
        mean = cand[tied].mean(axis=0)
        return mean / mean.sum()
    if method == "topk_mean":
        if k < 1:
            raise MixtureError(f"k = {k}; average at least 1 candidate (RegMix: 128)")
        mean = cand[order[: min(k, cand.shape[0])]].mean(axis=0)
        return mean / mean.sum()
    raise MixtureError(f"unknown final mixture method {method!r}; use 'argmax' or 'topk_mean'")


def check_weights(weights: Sequence[float] | np.ndarray, k: int, tol: float = 1e-6) -> np.ndarray:
    """Validate user-given mixture weights.

    Args:
        weights: One weight per super-cluster.
        k: Number of super-clusters.
        tol: Allowed deviation of the sum from 1.

    Returns:
        The weights as float64, renormalised to remove the (within-tolerance) rounding error.
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != k:
        raise MixtureError(
            f"got {w.size} weights but there are {k} super-clusters; give one weight per "
            "super-cluster"
        )
    if not np.all(np.isfinite(w)):
        raise MixtureError("weights contain NaN or inf; give finite weights")
    if np.any(w < 0):
        bad = int(np.flatnonzero(w < 0)[0])
        raise MixtureError(f"weight {bad} is negative ({w[bad]:g}); weights must be >= 0")
    total = float(w.sum())
    if abs(total - 1.0) > tol:
        raise MixtureError(f"weights sum to {total:.6g}; they must sum to 1 (normalise them)")
    return w / total


def _check_prior(prior: Sequence[float] | np.ndarray) -> np.ndarray:
    p = np.asarray(prior, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise MixtureError("the prior is empty; there are no super-clusters to mix")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise MixtureError(
            "the prior must be finite, non-negative and not all zero; build it with "
            "natural_prior(token_counts)"
        )
    return p / p.sum()


def _check_center(center: Sequence[float] | np.ndarray, prior: np.ndarray) -> np.ndarray:
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if c.shape != prior.shape or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise MixtureError(
            f"the sampler centre must be {prior.size} finite non-negative weights; blend the "
            "token prior and the target distribution with blend_center"
        )
    if np.any((c <= 0) & (prior > 0)):
        raise MixtureError(
            "the sampler centre gives 0 to a super-cluster that has tokens; blend it with the "
            "token prior (blend_center) so every super-cluster can be drawn"
        )
    return c / c.sum()


def blend_center(
    prior: Sequence[float] | np.ndarray, target: Sequence[float] | np.ndarray, weight: float
) -> np.ndarray:
    """``(1 - weight) * prior + weight * target``: a sampler centre leaning toward the target.

    Args:
        prior: Natural prior (token shares).
        target: The target documents' distribution over super-clusters.
        weight: How far toward the target, in [0, 1); 1 would give zero-token-share
            super-clusters no chance to be drawn.
    """
    if not 0 <= weight < 1:
        raise MixtureError(f"target prior weight = {weight}; it must be in [0, 1)")
    p = _check_prior(prior)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if t.shape != p.shape or np.any(t < 0) or t.sum() <= 0:
        raise MixtureError(
            f"the target distribution must be {p.size} non-negative shares, one per super-cluster"
        )
    return (1 - weight) * p + weight * t / t.sum()


def _check_candidates(
    candidates: np.ndarray, predicted: Sequence[float] | np.ndarray
) -> np.ndarray:
    cand = np.asarray(candidates, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if cand.ndim != 2 or cand.shape[0] == 0:
        raise MixtureError(
            f"candidates must be a non-empty (m, K) array, got shape {cand.shape}; "
            "build them with candidate_pool"
        )
    if pred.shape[0] != cand.shape[0]:
        raise MixtureError(
            f"{pred.shape[0]} predictions for {cand.shape[0]} candidates; predict every "
            "candidate once"
        )
    if not np.all(np.isfinite(pred)):
        raise MixtureError("predictions contain NaN or inf; check the predictor's input features")
    return cand


def _draw(
    p: np.ndarray,
    m: int,
    rng: np.random.Generator,
    settings: SamplerSettings,
    center: Sequence[float] | np.ndarray | None = None,
    caps: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """m raw candidates -> admissible ones as integer weights on the 10**-DECIMALS grid.

    Zero-prior domains always get weight 0 (their bound is 0 and Dirichlet needs alpha > 0).
    """
    live = np.flatnonzero(p > 0)
    base = p if center is None else _check_center(center, p)
    tp = base[live] ** settings.temperature
    tp = tp / tp.sum()
    strengths = settings.strengths()
    which = rng.integers(0, strengths.size, size=m)
    raw = np.empty((m, live.size), dtype=np.float64)
    for s_idx, strength in enumerate(strengths.tolist()):
        rows = np.flatnonzero(which == s_idx)
        if rows.size:
            raw[rows] = rng.dirichlet(tp * strength, size=rows.size)
    # Tiny alphas can underflow; drop rows that are not a proper distribution.
    sums = raw.sum(axis=1)
    ok = np.all(np.isfinite(raw), axis=1) & (sums > 0)
    raw = raw[ok] / sums[ok, None]
    raw = np.where(raw < settings.min_weight, 0.0, raw)
    sums = raw.sum(axis=1)
    raw = raw[sums > 0] / sums[sums > 0, None]
    units = _round_units(raw)
    min_units = math.ceil(settings.min_weight * _SCALE - 1e-9)
    units = units[np.all((units == 0) | (units >= max(min_units, 1)), axis=1)]
    if settings.max_ratio is not None:
        bound = np.minimum(settings.max_ratio * p[live], 1.0)
        units = units[np.all(units <= np.floor(bound * _SCALE + 1e-9), axis=1)]
    if caps is not None:
        cap = np.asarray(caps, dtype=np.float64).reshape(-1)[live]
        units = units[np.all(units <= np.floor(cap * _SCALE + 1e-9), axis=1)]
    full = np.zeros((units.shape[0], p.size), dtype=np.int64)
    full[:, live] = units
    return full


def on_grid(weights: np.ndarray) -> np.ndarray:
    """Mixtures (rows summing to 1) rounded onto the ``10 ** -DECIMALS`` grid, sums kept at 1.

    What :func:`mixture_key` sees: a mixture built outside the sampler (a reference, a blend,
    a local move) gets the same key as the same mixture drawn by it.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows = w.reshape(1, -1) if w.ndim == 1 else w
    rows = rows / rows.sum(axis=1, keepdims=True)
    out = _round_units(rows) / _SCALE
    return out.reshape(w.shape)


def _round_units(w: np.ndarray) -> np.ndarray:
    """Round rows summing to 1 onto the integer grid of 10**DECIMALS units summing exactly.

    The rounding residual goes to each row's largest weight (RegMix rounds without fixing
    the sum; fixing it keeps every mixture exactly on the simplex).
    """
    units = np.rint(w * _SCALE).astype(np.int64)
    if units.shape[0] == 0:
        return units
    residual = _SCALE - units.sum(axis=1)
    biggest = np.argmax(units, axis=1)
    units[np.arange(units.shape[0]), biggest] += residual
    return units


def _dedupe(units: np.ndarray) -> np.ndarray:
    """Distinct rows, in order of first appearance."""
    if units.shape[0] == 0:
        return units
    _, first = np.unique(units, axis=0, return_index=True)
    return units[np.sort(first)]


def _units_key(units: np.ndarray) -> str:
    return mixture_key(units / _SCALE)

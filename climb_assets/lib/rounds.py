"""What a search round trains beyond the predictor's ranking, and how the final pick is measured.

CLIMB's loop trusts its predictor. On a corpus nobody tuned it on that trust failed: round 1
hugged the corners, every predictor had a negative cross-validated Spearman, the search never
trained the training-free mixture that beat it, and it shipped an unmeasured argmax. This module
holds the safeguards, each a plain function the `search_round` op and the benchmark both call:

- **Anchors** (:func:`anchor_mixtures`): round 1 trains the informative training-free
  references (the target's own distribution over super-clusters, the natural mixture), fitted
  under the repetition caps, before its covering design spends the rest of the budget.
- **Coverage** (:func:`interior_share`, :func:`target_coverage`): what share of the picks are in
  the interior of the simplex, and how close the nearest pick comes to the target's distribution.
- **The model-free fallback** (:func:`trust_region_picks`): when no predictor is trusted, a round
  proposes blends of the best measured mixture with the target's distribution and with the
  runner-up, and local moves of bounded size around the best measured mixtures (a trust region,
  as in derivative-free search), so a round can still improve on the last.
- **The noise floor** (:func:`noise_floor`, :func:`spread_warning`): one mixture trained twice
  with two seeds says how much two proxies of the same mixture differ; a round whose measured
  spread is within three floors cannot rank its mixtures.
- **The measured final** (:func:`best_measured`): the manifest ships the best measured of the
  predictor's pick (trained once more as a confirmation proxy), the best proxy and the anchors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from climb_assets.lib import proposals
from climb_assets.lib.mixture import (
    DECIMALS,
    MixtureError,
    SamplerSettings,
    mixture_key,
    sample_mixtures,
)

ANCHOR_NAMES = ("target_aligned", "natural")
"""Training-free mixtures round 1 can train as anchors (`search.anchors`)."""

NOISE_SPREAD_FLOORS = 3.0
"""A round whose objectives span fewer noise floors than this cannot rank its mixtures."""

_SCALE = 10**DECIMALS


def fit_to_caps(
    weights: Sequence[float] | np.ndarray, caps: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``weights`` within the repetition caps, on the rounding grid.

    Weights above their cap are cut to it and the excess goes to the other super-clusters in
    proportion to their weight (water-filling; to their room under the cap when none has
    weight), so a mixture that fits is unchanged but for rounding.

    Raises:
        MixtureError: When the caps sum to less than 1 (no mixture fits).
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    w = np.maximum(w, 0.0)
    if w.sum() <= 0:
        raise MixtureError("a mixture needs a positive weight somewhere")
    w = w / w.sum()
    cap_units = np.floor(np.asarray(caps, dtype=np.float64).reshape(-1) * _SCALE + 1e-9)
    cap_units = np.minimum(cap_units, _SCALE).astype(np.int64)
    if cap_units.shape != w.shape:
        raise MixtureError(f"{cap_units.size} caps for a mixture of {w.size} super-clusters")
    if cap_units.sum() < _SCALE:
        raise MixtureError(
            "the repetition caps sum to less than 1: no mixture fits (lower manifest.total_tokens "
            "or raise manifest.max_epochs)"
        )
    caps_grid = cap_units / _SCALE
    for _ in range(w.size):
        over = w > caps_grid + 1e-12
        if not over.any():
            break
        excess = float((w[over] - caps_grid[over]).sum())
        w[over] = caps_grid[over]
        free = (~over) & (w < caps_grid - 1e-12)
        share = np.where(free, w, 0.0)
        if share.sum() <= 0:
            share = np.where(free, caps_grid - w, 0.0)
        if share.sum() <= 0:
            break
        w = w + excess * share / share.sum()
    # Onto the grid without leaving the caps: floor, then hand the missing units to the
    # largest remainders that still have room (ties by index, the same on any machine).
    units = np.minimum(np.floor(w * _SCALE + 1e-9).astype(np.int64), cap_units)
    remainder = w * _SCALE - units
    order = np.lexsort((np.arange(w.size), -remainder))
    missing = _SCALE - int(units.sum())
    while missing > 0:
        for i in order:
            if missing == 0:
                break
            if units[i] < cap_units[i]:
                units[i] += 1
                missing -= 1
    return units / _SCALE


@dataclass(frozen=True)
class Anchor:
    """A training-free mixture trained in round 1, fitted under the caps."""

    name: str
    weights: np.ndarray
    capped: bool


def anchor_mixtures(
    names: Iterable[str],
    prior: np.ndarray,
    alignment: np.ndarray | None,
    caps: np.ndarray,
) -> tuple[list[Anchor], dict[str, str]]:
    """The named anchors (distinct mixtures only), and those skipped with why.

    Args:
        names: Members of :data:`ANCHOR_NAMES`, in the order they are wanted.
        prior: Natural token shares per super-cluster.
        alignment: The targets' distribution over super-clusters (None without text targets).
        caps: Repetition caps (largest weight per super-cluster).
    """
    anchors: list[Anchor] = []
    skipped: dict[str, str] = {}
    seen: set[str] = set()
    for name in names:
        if name == "natural":
            raw = np.asarray(prior, dtype=np.float64)
        elif name == "target_aligned":
            if alignment is None or float(np.sum(alignment)) <= 0:
                skipped[name] = (
                    "no text target's distribution over the super-clusters (target_alignment); "
                    "round 1 trains the others"
                )
                continue
            raw = np.asarray(alignment, dtype=np.float64)
        else:
            raise MixtureError(f"unknown anchor {name!r}; use any of {list(ANCHOR_NAMES)}")
        raw = raw / raw.sum()
        fitted = fit_to_caps(raw, caps)
        key = mixture_key(fitted)
        if key in seen:
            skipped[name] = "the same mixture as an earlier anchor"
            continue
        seen.add(key)
        capped = bool(np.any(raw > np.asarray(caps) + 1e-9))
        anchors.append(Anchor(name, fitted, capped))
    return anchors, skipped


def interior_share(weights: np.ndarray) -> float:
    """Share of mixtures whose largest weight is below 0.5 (not hugging a corner)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(np.mean(w.max(axis=1) < 0.5)) if w.size else 0.0


def target_coverage(weights: np.ndarray, alignment: np.ndarray | None) -> float | None:
    """How much of the target's distribution the nearest pick holds: max over picks of
    sum_i min(w_i, target_i) (1: a pick is the target's distribution; None without one)."""
    if alignment is None:
        return None
    a = np.asarray(alignment, dtype=np.float64)
    a = a / a.sum()
    w = np.asarray(weights, dtype=np.float64)
    return float(np.minimum(w, a[None, :]).sum(axis=1).max()) if w.size else 0.0


@dataclass(frozen=True)
class TrustRegion:
    """The model-free proposal rule (`search.fallback_radius` and its defaults).

    Attributes:
        radius: Size of a local move: ``(1 - radius) * incumbent + radius * d`` with ``d``
            uniform on the simplex, so a move shifts at most ``radius`` of the weight.
        incumbents: How many of the best measured mixtures are moved around.
        target_blend: Weight of the target's distribution in the blend with the best mixture.
    """

    radius: float = 0.25
    incumbents: int = 3
    target_blend: float = 0.5


def trust_region_picks(
    x: np.ndarray,
    y: np.ndarray,
    n: int,
    seed: int,
    caps: np.ndarray,
    exclude: Iterable[str] = (),
    alignment: np.ndarray | None = None,
    region: TrustRegion | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """n mixtures around the best measured ones, with no predictor: (weights, how each came).

    In order: the best mixture blended with the target's distribution (``target_blend``), the
    midpoint of the two best, then local moves of size ``radius`` around the ``incumbents``
    best, the best first and most often. Every pick is fitted under the caps, on the grid, new
    (not in ``exclude``) and distinct.

    Args:
        x: (t, K) measured mixtures.
        y: (t,) their objectives (higher is better).
        n: Mixtures wanted.
        seed: Seed of the local moves.
        caps: Repetition caps.
        exclude: Keys of mixtures already trained.
        alignment: The targets' distribution over super-clusters, when known.
        region: The rule's parameters.
    """
    region = region or TrustRegion()
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 2 or xs.shape[0] == 0 or xs.shape[0] != ys.size:
        raise MixtureError("the trust region needs measured mixtures and their objectives")
    best = xs[np.lexsort((np.arange(ys.size), -ys))[: max(1, region.incumbents)]]
    taken = set(exclude)
    picks: list[np.ndarray] = []
    how: list[str] = []

    def offer(w: np.ndarray, label: str) -> None:
        fitted = fit_to_caps(w, caps)
        key = mixture_key(fitted)
        if key not in taken and len(picks) < n:
            taken.add(key)
            picks.append(fitted)
            how.append(label)

    if alignment is not None and float(np.sum(alignment)) > 0:
        a = np.asarray(alignment, dtype=np.float64) / float(np.sum(alignment))
        offer((1 - region.target_blend) * best[0] + region.target_blend * a, "target_blend")
    if len(best) >= 2:
        offer((best[0] + best[1]) / 2, "incumbent_blend")
    rng = np.random.default_rng(seed)
    # The best gets every other move; the rest share the others in rank order.
    cycle = [0] if len(best) == 1 else [0, *[j for i in range(1, len(best)) for j in (i, 0)]]
    for attempt in range(200 * n):
        if len(picks) >= n:
            break
        centre = best[cycle[attempt % len(cycle)]]
        direction = rng.dirichlet(np.ones(centre.size))
        offer((1 - region.radius) * centre + region.radius * direction, "local_move")
    if len(picks) < n:
        raise MixtureError(
            f"the trust region found only {len(picks)} new mixtures for {n} wanted; raise "
            "search.fallback_radius or lower the round budget"
        )
    return np.vstack(picks), tuple(how)


def noise_floor(pairs: Sequence[tuple[float, float]]) -> float | None:
    """The standard deviation of one proxy's objective from pairs of same-mixture proxies
    trained with two seeds: ``sqrt(mean((a - b)^2) / 2)`` (None without a pair)."""
    if not pairs:
        return None
    d = np.array([a - b for a, b in pairs], dtype=np.float64)
    return float(np.sqrt(np.mean(d**2) / 2))


def spread_warning(round_key: str, objectives: Sequence[float], floor: float | None) -> str | None:
    """One line when a round's measured spread is within :data:`NOISE_SPREAD_FLOORS` floors."""
    if floor is None or not len(objectives):
        return None
    spread = float(np.max(objectives) - np.min(objectives))
    if spread >= NOISE_SPREAD_FLOORS * floor:
        return None
    return (
        f"round {round_key}: the proxies' objectives span {spread:.4f}, less than "
        f"{NOISE_SPREAD_FLOORS:g} noise floors ({floor:.4f} each, from a mixture trained twice); "
        "the proxies cannot tell these mixtures apart: raise proxy.train_tokens or use a larger "
        "proxy.preset"
    )


@dataclass(frozen=True)
class Measured:
    """A mixture the final choice may ship, with its measured objective."""

    label: str
    mixture_id: str
    weights: np.ndarray
    objective: float


def best_measured(options: Sequence[Measured], caps: np.ndarray) -> Measured:
    """The best measured option within the caps; on a tie the earlier option (the order the
    caller lists them in: the predictor's pick, the best proxy, the anchors).

    Raises:
        MixtureError: When no option fits within the caps.
    """
    fits = [o for o in options if np.all(np.asarray(o.weights) <= np.asarray(caps) + 1e-9)]
    if not fits:
        raise MixtureError(
            "no measured mixture fits within the repetition caps (manifest.max_epochs against "
            "manifest.total_tokens); raise max_epochs or lower total_tokens"
        )
    best = fits[0]
    for option in fits[1:]:
        if option.objective > best.objective:
            best = option
    return best


@dataclass
class Proposal:
    """What one round trains, and how each mixture came to be proposed.

    Attributes:
        weights: (n, K) mixtures.
        designs: Per mixture: ``reference`` (an anchor), the design (``cover``, ...),
            ``exploit``, or the trust region's ``target_blend`` / ``incumbent_blend`` /
            ``local_move``.
        references: The anchor's name per mixture (None for the others).
        predicted: The predictor's objective per mixture (None where none steered).
        std: Its standard deviation (None where the predictor has none).
        method: One line for the round's metadata.
        notes: Warnings for the run's log.
        metadata: Figures for the round's metadata.
    """

    weights: np.ndarray
    designs: list[str]
    references: list[str | None]
    predicted: list[float | None]
    std: list[float | None]
    method: str
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def first_round(
    prior: np.ndarray,
    n: int,
    seed: int,
    caps: np.ndarray,
    settings: SamplerSettings | None = None,
    design: str = "cover",
    alignment: np.ndarray | None = None,
    center: np.ndarray | None = None,
    anchors: Sequence[str] = ANCHOR_NAMES,
    exclude: Iterable[str] = (),
) -> Proposal:
    """Round 1: the anchors, then ``design`` picks from the Dirichlet sampler for the rest."""
    fitted, skipped = anchor_mixtures(anchors, prior, alignment, caps)
    notes = [f"anchor {name} skipped: {why}" for name, why in skipped.items()]
    keys = {mixture_key(a.weights) for a in fitted}
    drawn = sample_mixtures(
        prior, n - len(fitted), seed, settings, exclude=set(exclude) | keys, design=design,
        center=center, caps=caps,
    )  # fmt: skip
    weights = np.vstack([*(a.weights[None, :] for a in fitted), drawn])
    names = [a.name for a in fitted]
    method = f"dirichlet, {design} picks" + (f", anchored on {', '.join(names)}" if names else "")
    coverage = target_coverage(drawn, alignment)
    metadata = {
        "anchors": ", ".join(names) or "none",
        "anchors_capped": ", ".join(a.name for a in fitted if a.capped) or "none",
        "interior_share": round(interior_share(drawn), 4),
        "design_target_coverage": "n/a" if coverage is None else round(coverage, 4),
    }
    return Proposal(
        weights, ["reference"] * len(fitted) + [design] * len(drawn),
        [*names, *([None] * len(drawn))], [None] * n, [None] * n, method, notes, metadata,
    )  # fmt: skip


@dataclass(frozen=True)
class LaterRound:
    """How a later round picks (`search.*`): see `climb_assets.config.SearchSettings`."""

    top: int
    design: str = "cover"
    acquisition: str = "mean"
    kappa: float = 1.0
    exploit: int = 1
    fallback_radius: float = 0.25


def later_round(
    after: str,
    pool: Callable[[], np.ndarray],
    predictor: Any,
    trust_note: str | None,
    measured: tuple[np.ndarray, np.ndarray],
    n: int,
    seed: int,
    trained: tuple[set[str], np.ndarray],
    caps: np.ndarray,
    how: LaterRound,
    alignment: np.ndarray | None = None,
) -> Proposal:
    """A later round: the trusted predictor's picks, else the model-free trust region.

    Args:
        after: The round whose predictor this is (for the notes).
        pool: Builds the fresh candidate pool (only called when the predictor is trusted).
        predictor: The previous round's predictor (``predict``, ``predict_std``).
        trust_note: Why the predictor is not trusted (None when it is).
        measured: (x, y): every proxy measured so far and its objective.
        n: Mixtures wanted.
        seed: Seed of the picks.
        trained: Keys and weights of the mixtures already trained.
        caps: Repetition caps.
        how: The round's settings.
        alignment: The targets' distribution over super-clusters, when known.
    """
    x, y = measured
    keys, weights = trained
    if trust_note is not None:
        picked, designs = trust_region_picks(
            x, y, n, seed, caps, keys, alignment, TrustRegion(radius=how.fallback_radius)
        )
        return Proposal(
            picked, list(designs), [None] * n, [None] * n, [None] * n,
            f"trust region around the best measured mixtures (radius {how.fallback_radius:g}): "
            "no trusted predictor",
            [f"no predictor is trusted after {after} ({trust_note}); proposing around the best "
             "measured mixtures"],
            {"fallback": True},
        )  # fmt: skip
    candidates = pool()
    picks = proposals.pick_next_round(
        candidates, predictor, n, seed, keys, weights, float(np.max(y)), how.top, how.design,
        how.acquisition, how.kappa, how.exploit,
    )  # fmt: skip
    exploit = min(how.exploit, n)
    return Proposal(
        candidates[picks.rows], ["exploit"] * exploit + [how.design] * (n - exploit),
        [None] * n, [float(picks.mean[r]) for r in picks.rows],
        [None] * n if picks.std is None else [float(picks.std[r]) for r in picks.rows],
        f"{picks.acquisition} of predictor top-{how.top} of {len(candidates)}: best {exploit}, "
        f"{how.design} picks for the rest",
        list(picks.notes),
        {"top_set_ties": picks.ties.tied, "top_set_distinct": picks.ties.distinct,
         "tie_break": picks.tie_break, "acquisition": picks.acquisition, "fallback": False},
    )  # fmt: skip

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from climb_assets.lib.mixture import (
    blend_center,
    candidate_pool,
    mixture_key,
    natural_prior,
    sample_mixtures,
)
from climb_assets.lib.proposals import (
    ProposalError,
    acquisition,
    break_ties,
    pick_next_round,
    repetition_caps,
    top_ties,
    within_caps,
)

PRIOR = natural_prior([40_000, 25_000, 12_000, 9_000, 6_000, 4_000, 2_500, 1_000])


def test_caps_follow_tokens_epochs_and_budget():
    caps = repetition_caps([1_000, 4_000, 10_000], total_tokens=10_000, max_epochs=2)
    assert caps.tolist() == [0.2, 0.8, 1.0]
    assert within_caps(np.array([[0.2, 0.8, 0.0], [0.3, 0.7, 0.0]]), caps).tolist() == [
        True,
        False,
    ]


def test_unreachable_budget_says_how_many_tokens_are_missing():
    with pytest.raises(ProposalError, match=r"5,000 tokens missing.*raise max_epochs"):
        repetition_caps([1_000, 2_000], total_tokens=11_000, max_epochs=2)


def test_sampler_and_pool_respect_caps():
    caps = np.full(PRIOR.size, 0.3)
    rounds = sample_mixtures(PRIOR, 8, 0, design="cover", caps=caps)
    pool = candidate_pool(PRIOR, 5_000, 1, caps=caps)
    assert within_caps(rounds, caps).all() and within_caps(pool, caps).all()
    assert within_caps(candidate_pool(PRIOR, 5_000, 1), caps).mean() < 1  # caps do bind


def test_cover_design_reaches_the_interior_where_maximin_takes_corners():
    cover = sample_mixtures(PRIOR, 8, 3, design="cover")
    maximin = sample_mixtures(PRIOR, 8, 3, design="maximin")
    assert (cover.max(axis=1) > 0.95).sum() < (maximin.max(axis=1) > 0.95).sum()
    assert (cover.max(axis=1) < 0.7).sum() >= 3
    assert np.array_equal(cover, sample_mixtures(PRIOR, 8, 3, design="cover"))


def test_target_centred_draws_lean_toward_the_target():
    target = np.zeros(PRIOR.size)
    target[6] = 1.0  # a small super-cluster
    plain = sample_mixtures(PRIOR, 8, 0, design="cover")
    leaning = sample_mixtures(PRIOR, 8, 0, design="cover", center=blend_center(PRIOR, target, 0.6))
    assert leaning[:, 6].mean() > 2 * plain[:, 6].mean()
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        blend_center(PRIOR, target, 1.0)
    with pytest.raises(ValueError, match="blend it with the token prior"):
        sample_mixtures(PRIOR, 4, 0, center=target)


def test_acquisition_rules_match_their_formulas():
    mean, std = np.array([1.0, 0.5]), np.array([0.1, 0.5])
    assert acquisition(mean, None, "mean", 0.0).tolist() == [1.0, 0.5]
    assert acquisition(mean, std, "ucb", 0.0, kappa=2.0).tolist() == pytest.approx([1.2, 1.5])
    z = (mean - 0.8) / std
    expected = (mean - 0.8) * norm.cdf(z) + std * norm.pdf(z)
    assert acquisition(mean, std, "ei", 0.8) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs a predictor with an uncertainty"):
        acquisition(mean, None, "ei", 0.0)
    with pytest.raises(ValueError, match="unknown acquisition"):
        acquisition(mean, std, "pi", 0.0)


def test_ties_are_counted_and_broken_only_among_equals():
    scores = np.array([3.0, 3.0, 3.0, 2.0, 1.0])
    report = top_ties(scores, top=4)
    assert (report.tied, report.distinct, report.degenerate) == (3, 2, True)
    assert not top_ties(np.arange(10.0), top=5).degenerate
    broken = break_ties(scores, np.array([0.1, 0.9, 0.5, 5.0, 5.0]))
    # std decides among the tied
    assert np.argsort(-broken, kind="stable").tolist()[:3] == [1, 2, 0]
    assert broken[2] > broken[3] > broken[4]  # strict order kept


class _Flat:
    """A predictor that says the same thing everywhere, as a tree fitted on corners does."""

    def __init__(self, with_std: bool):
        self.with_std = with_std

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        return np.asarray(x)[:, 0] if self.with_std else None


def test_a_flat_predictor_is_reported_and_std_breaks_its_ties():
    pool = candidate_pool(PRIOR, 2_000, 0)
    trained = pool[:3]
    keys = {mixture_key(w) for w in trained}
    flat = pick_next_round(pool, _Flat(False), 4, 0, keys, trained, 0.0, top=64)
    assert flat.ties.degenerate and flat.tie_break.startswith("spread")
    assert any("tie at the best predicted value" in n for n in flat.notes)
    ucb = pick_next_round(pool, _Flat(False), 4, 0, keys, trained, 0.0, top=64, rule="ucb")
    assert ucb.acquisition == "mean" and any("has none" in n for n in ucb.notes)
    with_std = pick_next_round(pool, _Flat(True), 4, 0, keys, trained, 0.0, top=4)
    assert with_std.tie_break == "predictive std"
    # the top set is then the 4 candidates with the largest std (first weight); rounded weights
    # tie (rows 411, 420 and 1054 share 0.9997) and the product breaks ties by row index
    assert set(with_std.rows.tolist()) == set(np.argsort(-pool[:, 0], kind="stable")[:4].tolist())
    assert not keys & {mixture_key(pool[r]) for r in with_std.rows}


class _FirstWeight:
    """Predicts the first weight: the best candidate is the one with the most of it."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, 0]

    def predict_std(self, x: np.ndarray) -> None:
        return None


def test_an_exploit_pick_trains_the_predictors_own_choice_and_spreads_the_rest():
    pool = candidate_pool(PRIOR, 2_000, 0)
    order = np.argsort(-pool[:, 0], kind="stable")
    best, second = int(order[0]), int(order[1])
    trained = pool[[best]]  # the very best was trained already: the next best is picked
    keys = {mixture_key(trained[0])}
    spread = pick_next_round(pool, _FirstWeight(), 3, 0, keys, trained, 0.0, top=64)
    exploit = pick_next_round(pool, _FirstWeight(), 3, 0, keys, trained, 0.0, top=64, exploit=1)
    assert second in exploit.rows.tolist() and second not in spread.rows.tolist()
    others = [r for r in exploit.rows.tolist() if r != second]
    # the other picks keep away from the exploit pick as from the trained mixtures
    gaps = np.linalg.norm(pool[others] - pool[second], axis=1)
    assert gaps.min() > np.median(np.linalg.norm(pool[order[:64]] - pool[second], axis=1))
    every = pick_next_round(pool, _FirstWeight(), 3, 0, keys, trained, 0.0, top=64, exploit=5)
    assert sorted(every.rows.tolist()) == sorted(order[1:4].tolist())  # capped at n

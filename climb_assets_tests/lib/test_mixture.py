from __future__ import annotations

import numpy as np
import pytest

from climb_assets.lib.mixture import (
    DECIMALS,
    MixtureError,
    SamplerSettings,
    candidate_pool,
    check_weights,
    final_mixture,
    mixture_key,
    natural_prior,
    sample_mixtures,
    select_next,
    spread_rows,
    tempered_prior,
)

PRIOR = natural_prior([40_000, 25_000, 12_000, 9_000, 6_000, 4_000, 2_500, 1_000, 400, 100])


def _on_grid(rows: np.ndarray) -> bool:
    scaled = rows * 10**DECIMALS
    return bool(np.allclose(scaled, np.rint(scaled), atol=1e-6))


# --- natural_prior / settings -------------------------------------------------------------


def test_natural_prior_shares() -> None:
    p = natural_prior([1, 3, 0])
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, [0.25, 0.75, 0.0])


@pytest.mark.parametrize(
    ("tokens", "match"),
    [([0, 0], "all super-clusters have 0 tokens"), ([3, -1], "negative"), ([], "no super")],
)
def test_natural_prior_errors(tokens: list[int], match: str) -> None:
    with pytest.raises(MixtureError, match=match):
        natural_prior(tokens)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "temperature"),
        ({"min_strength": 0}, "min_strength"),
        ({"min_strength": 2.0, "max_strength": 1.0}, "max_strength >= min_strength"),
        ({"n_strengths": 0}, "n_strengths"),
        ({"max_ratio": 0.5}, "max_ratio"),
        ({"min_weight": 1.5}, "min_weight"),
        ({"min_weight": 1e-6}, "rounding grid"),
        ({"oversample": 0}, "oversample"),
    ],
)
def test_sampler_settings_validation(kwargs: dict[str, float], match: str) -> None:
    assert issubclass(MixtureError, ValueError)
    with pytest.raises(MixtureError, match=match):
        SamplerSettings(**kwargs)


def test_strength_grid_is_log_spaced() -> None:
    s = SamplerSettings().strengths()
    assert s.size == 15
    assert s[0] == pytest.approx(0.1) and s[-1] == pytest.approx(5.0)
    np.testing.assert_allclose(np.diff(np.log(s)), np.log(50) / 14)


# --- sample_mixtures -----------------------------------------------------------------------


def test_sample_is_seeded_and_on_the_simplex() -> None:
    a = sample_mixtures(PRIOR, 64, seed=7)
    b = sample_mixtures(PRIOR, 64, seed=7)
    c = sample_mixtures(PRIOR, 64, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (64, PRIOR.size)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(a >= 0)
    assert np.all((a == 0) | (a >= 2e-4 - 1e-12))
    assert _on_grid(a)
    keys = [mixture_key(row) for row in a]
    assert len(set(keys)) == len(keys)


def test_rejection_rule_holds() -> None:
    settings = SamplerSettings(max_ratio=3.0)
    rows = sample_mixtures(PRIOR, 32, seed=1, settings=settings)
    bound = np.minimum(3.0 * PRIOR, 1.0)
    assert np.all(rows <= bound + 1e-12)
    pool = candidate_pool(PRIOR, 2000, seed=2)
    assert np.all(pool <= np.minimum(15.0 * PRIOR, 1.0) + 1e-12)
    # Without the bound, the tempered prior does give small clusters more than 3x their share.
    free = candidate_pool(PRIOR, 2000, seed=2, settings=SamplerSettings(max_ratio=None))
    assert np.any(free > bound + 1e-12)


def test_large_strength_concentrates_near_tempered_prior() -> None:
    settings = SamplerSettings(min_strength=5000.0, max_strength=5000.0, max_ratio=None)
    rows = candidate_pool(PRIOR, 3000, seed=3, settings=settings)
    target = tempered_prior(PRIOR, 0.5)
    np.testing.assert_allclose(rows.mean(axis=0), target, atol=2e-3)
    assert np.abs(rows - target).max() < 0.05
    low = candidate_pool(PRIOR, 3000, seed=3, settings=SamplerSettings(max_ratio=None))
    assert np.abs(low - target).mean() > np.abs(rows - target).mean()


def test_exclude_is_honoured() -> None:
    first = sample_mixtures(PRIOR, 32, seed=11)
    keys = {mixture_key(row) for row in first}
    again = sample_mixtures(PRIOR, 32, seed=11, exclude=keys)
    assert keys.isdisjoint({mixture_key(row) for row in again})


def test_zero_prior_domain_gets_no_weight() -> None:
    rows = sample_mixtures([0.5, 0.0, 0.3, 0.2], 8, seed=0)
    assert np.all(rows[:, 1] == 0)


def test_too_few_unique_mixtures() -> None:
    # A near-deterministic sampler on two clusters yields only a handful of distinct mixtures.
    settings = SamplerSettings(min_strength=1e8, max_strength=1e8, oversample=2)
    with pytest.raises(MixtureError, match="lower the round budget"):
        sample_mixtures([0.5, 0.5], 64, seed=0, settings=settings)


def test_single_super_cluster() -> None:
    np.testing.assert_array_equal(sample_mixtures([7.0], 1, seed=0), [[1.0]])
    with pytest.raises(MixtureError, match="lower the round budget to 1"):
        sample_mixtures([7.0], 2, seed=0)
    with pytest.raises(MixtureError, match="lower the round budget to 0"):
        sample_mixtures([1.0], 1, seed=0, exclude={mixture_key([1.0])})


def test_bad_n_and_prior() -> None:
    with pytest.raises(MixtureError, match="at least 1"):
        sample_mixtures(PRIOR, 0, seed=0)
    with pytest.raises(MixtureError, match="natural_prior"):
        sample_mixtures([0.5, -0.1], 2, seed=0)


# --- candidate_pool / mixture_key ---------------------------------------------------------


def test_candidate_pool() -> None:
    pool = candidate_pool(PRIOR, 5000, seed=4)
    again = candidate_pool(PRIOR, 5000, seed=4)
    np.testing.assert_array_equal(pool, again)
    assert 0 < pool.shape[0] <= 5000 and pool.shape[1] == PRIOR.size
    np.testing.assert_allclose(pool.sum(axis=1), 1.0, atol=1e-9)
    assert len({mixture_key(row) for row in pool}) == pool.shape[0]
    with pytest.raises(MixtureError, match="pool size"):
        candidate_pool(PRIOR, 0, seed=0)


def test_mixture_key() -> None:
    assert mixture_key([0.12344, 1e-7, 0.87656]) == "0.1234,0.0000,0.8766"
    assert mixture_key([-1e-9, 1.0]) == "0.0000,1.0000"
    assert mixture_key([0.5, 0.5], decimals=2) == "0.50,0.50"


# --- select_next / final_mixture ----------------------------------------------------------


def _scored_pool() -> tuple[np.ndarray, np.ndarray]:
    pool = candidate_pool(PRIOR, 3000, seed=5)
    predicted = -np.abs(pool - PRIOR).sum(axis=1)
    return pool, predicted


def test_select_next_draws_from_the_top_set() -> None:
    pool, predicted = _scored_pool()
    idx = select_next(pool, predicted, 16, seed=0)
    again = select_next(pool, predicted, 16, seed=0)
    np.testing.assert_array_equal(idx, again)
    assert idx.size == 16 and len(set(idx.tolist())) == 16
    top = set(np.argsort(-predicted, kind="stable")[:256].tolist())  # max(16**2, 128)
    assert set(idx.tolist()) <= top
    assert not np.array_equal(idx, select_next(pool, predicted, 16, seed=1))
    small = select_next(pool, predicted, 4, seed=0)
    assert set(small.tolist()) <= set(np.argsort(-predicted, kind="stable")[:128].tolist())


def test_select_next_lower_is_better_and_explicit_top() -> None:
    pool, predicted = _scored_pool()
    idx = select_next(pool, -predicted, 5, seed=2, top=5, higher_is_better=False)
    np.testing.assert_array_equal(idx, np.sort(np.argsort(-predicted, kind="stable")[:5]))


def test_select_next_skips_trained() -> None:
    pool, predicted = _scored_pool()
    order = np.argsort(-predicted, kind="stable")
    trained = {mixture_key(pool[i]) for i in order[:3]}
    idx = select_next(pool, predicted, 2, seed=0, exclude_keys=trained, top=2)
    np.testing.assert_array_equal(idx, np.sort(order[3:5]))
    with pytest.raises(MixtureError, match="enlarge the candidate pool"):
        select_next(pool[order[:3]], predicted[order[:3]], 1, seed=0, exclude_keys=trained)


def test_select_next_errors() -> None:
    pool, predicted = _scored_pool()
    with pytest.raises(MixtureError, match="predict every candidate"):
        select_next(pool, predicted[:-1], 2, seed=0)
    with pytest.raises(MixtureError, match="top >= n"):
        select_next(pool, predicted, 8, seed=0, top=4)
    bad = predicted.copy()
    bad[0] = np.nan
    with pytest.raises(MixtureError, match="NaN"):
        select_next(pool, bad, 2, seed=0)


def test_final_mixture() -> None:
    pool, predicted = _scored_pool()
    best = final_mixture(pool, predicted)
    np.testing.assert_array_equal(best, pool[np.argmax(predicted)])
    worst = final_mixture(pool, predicted, higher_is_better=False)
    np.testing.assert_array_equal(worst, pool[np.argmin(predicted)])
    mean = final_mixture(pool, predicted, method="topk_mean", k=10)
    expected = pool[np.argsort(-predicted, kind="stable")[:10]].mean(axis=0)
    np.testing.assert_allclose(mean, expected / expected.sum())
    assert mean.sum() == pytest.approx(1.0)
    everything = final_mixture(pool, predicted, method="topk_mean", k=10**9)
    np.testing.assert_allclose(everything, pool.mean(axis=0) / pool.mean(axis=0).sum())
    with pytest.raises(MixtureError, match="'argmax' or 'topk_mean'"):
        final_mixture(pool, predicted, method="median")


# --- check_weights -------------------------------------------------------------------------


def test_check_weights() -> None:
    w = check_weights([0.25, 0.25, 0.5], 3)
    np.testing.assert_allclose(w, [0.25, 0.25, 0.5])
    with pytest.raises(MixtureError) as err:
        check_weights([0.43, 0.5], 2)
    assert str(err.value) == "weights sum to 0.93; they must sum to 1 (normalise them)"
    with pytest.raises(MixtureError, match="one weight per super-cluster"):
        check_weights([0.5, 0.5], 3)
    with pytest.raises(MixtureError, match="must be >= 0"):
        check_weights([1.5, -0.5], 2)
    with pytest.raises(MixtureError, match="finite"):
        check_weights([np.nan, 1.0], 2)


def test_argmax_averages_candidates_tied_for_the_best_prediction():
    from climb_assets.lib.mixture import final_mixture

    cands = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert final_mixture(cands, [0.9, 0.9, 0.1]).tolist() == [0.5, 0.5]
    assert final_mixture(cands, [0.9, 0.8, 0.1]).tolist() == [1.0, 0.0]


def _min_pair_distance(w: np.ndarray) -> float:
    d = np.linalg.norm(w[:, None] - w[None], axis=2)
    d[np.eye(len(w), dtype=bool)] = np.inf
    return float(d.min())


def test_maximin_round_one_reaches_the_small_cluster_that_random_picks_miss():
    prior = np.array([0.3, 0.3, 0.3, 0.1])
    random_hits = [sample_mixtures(prior, 6, s)[:, 3].max() for s in range(20)]
    spread_hits = [sample_mixtures(prior, 6, s, design="maximin")[:, 3].max() for s in range(20)]
    # a proxy trained mostly on the small cluster: random picks miss it for many seeds
    assert sum(h >= 0.4 for h in spread_hits) >= 19
    assert sum(h >= 0.4 for h in random_hits) <= 12
    spread = [_min_pair_distance(sample_mixtures(prior, 6, s, design="maximin")) for s in range(5)]
    rand = [_min_pair_distance(sample_mixtures(prior, 6, s)) for s in range(5)]
    assert np.mean(spread) > 2 * np.mean(rand)


def test_maximin_is_seeded_and_valid():
    prior = np.array([0.5, 0.2, 0.2, 0.1])
    a = sample_mixtures(prior, 8, 3, design="maximin")
    np.testing.assert_array_equal(a, sample_mixtures(prior, 8, 3, design="maximin"))
    assert not np.array_equal(a, sample_mixtures(prior, 8, 4, design="maximin"))
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    assert len({mixture_key(w) for w in a}) == 8


def test_spread_rows_takes_the_corners_before_the_middle():
    corners = np.eye(3)
    middle = np.full((5, 3), 1 / 3) + np.linspace(-0.01, 0.01, 5)[:, None] * [1, -1, 0]
    points = np.vstack([middle, corners])
    picked = spread_rows(points, 3, np.random.default_rng(0), anchors=np.full((1, 3), 1 / 3))
    assert sorted(picked.tolist()) == [5, 6, 7]


def test_maximin_next_round_avoids_what_was_trained():
    rng = np.random.default_rng(0)
    pool = rng.dirichlet(np.ones(3), size=400)
    predicted = np.zeros(len(pool))  # a flat predictor: every candidate ties
    trained = pool[pool[:, 0] > 0.7][:5]
    rows = select_next(pool, predicted, 4, 1, top=400, design="maximin", trained=trained)
    near = np.linalg.norm(pool[rows][:, None] - trained[None], axis=2).min(axis=1)
    rand = select_next(pool, predicted, 4, 1, top=400)
    near_rand = np.linalg.norm(pool[rand][:, None] - trained[None], axis=2).min(axis=1)
    assert near.min() > 0.3 and near.mean() > near_rand.mean()


def test_unknown_design_names_the_choices():
    with pytest.raises(MixtureError, match="maximin"):
        sample_mixtures(np.array([0.5, 0.5]), 2, 0, design="sobol")
    with pytest.raises(MixtureError, match="maximin"):
        select_next(np.eye(2), np.zeros(2), 1, 0, top=2, design="sobol")

"""The search's safeguards: anchors, coverage, the trust rule, the model-free fallback, the noise
floor and the measured final pick."""

from __future__ import annotations

import numpy as np
import pytest

from climb_assets.lib import rounds
from climb_assets.lib.mixture import MixtureError, mixture_key
from climb_assets.lib.predictors import auto
from climb_assets.lib.predictors.base import Metric, MetricData

PRIOR = np.array([0.4, 0.3, 0.2, 0.1])
OPEN = np.ones(4)  # caps that bind nothing


def test_fit_to_caps_moves_the_excess_and_keeps_a_fitting_mixture():
    caps = np.array([0.25, 1.0, 1.0, 1.0])
    fitted = rounds.fit_to_caps([0.7, 0.2, 0.1, 0.0], caps)
    assert fitted.sum() == pytest.approx(1.0) and np.all(fitted <= caps + 1e-12)
    assert fitted[0] == pytest.approx(0.25)
    # the 0.45 cut from super-cluster 0 goes 2:1 to the two with weight; the empty one stays 0
    assert fitted[1:].tolist() == pytest.approx([0.5, 0.25, 0.0])
    assert rounds.fit_to_caps(PRIOR, OPEN).tolist() == pytest.approx(PRIOR.tolist())
    ugly = rounds.fit_to_caps([1 / 3, 1 / 3, 1 / 3, 0.0], np.array([0.3333, 1, 1, 1]))
    assert ugly.sum() == pytest.approx(1.0) and ugly[0] <= 0.3333
    assert np.allclose(ugly * 10_000, np.round(ugly * 10_000))  # on the grid
    with pytest.raises(MixtureError, match="caps sum to less than 1"):
        rounds.fit_to_caps(PRIOR, np.full(4, 0.2))


def test_anchors_are_target_aligned_and_natural_fitted_and_skipped_with_a_note():
    alignment = np.array([0.0, 0.1, 0.3, 0.6])
    caps = np.array([1.0, 1.0, 1.0, 0.5])
    anchors, skipped = rounds.anchor_mixtures(("target_aligned", "natural"), PRIOR, alignment, caps)
    assert [a.name for a in anchors] == ["target_aligned", "natural"] and not skipped
    aligned = anchors[0]
    assert aligned.capped and aligned.weights[3] == pytest.approx(0.5)
    assert aligned.weights.sum() == pytest.approx(1.0) and aligned.weights[0] == 0
    assert anchors[1].weights.tolist() == pytest.approx(PRIOR.tolist()) and not anchors[1].capped
    # without text targets target_aligned cannot be computed: skipped, not a crash
    anchors, skipped = rounds.anchor_mixtures(("target_aligned", "natural"), PRIOR, None, OPEN)
    assert [a.name for a in anchors] == ["natural"] and "target_alignment" in skipped[
        "target_aligned"
    ]
    # a target distributed like the corpus gives one anchor, not the same mixture twice
    anchors, skipped = rounds.anchor_mixtures(("target_aligned", "natural"), PRIOR, PRIOR, OPEN)
    assert len(anchors) == 1 and "same mixture" in skipped["natural"]


def test_coverage_reports_interior_picks_and_the_targets_nearest_pick():
    corners = np.eye(4)
    interior = np.array([[0.3, 0.3, 0.2, 0.2], [0.8, 0.1, 0.1, 0.0]])
    assert rounds.interior_share(corners) == 0.0
    assert rounds.interior_share(interior) == 0.5
    target = np.array([0.0, 0.0, 0.5, 0.5])
    assert rounds.target_coverage(corners, target) == pytest.approx(0.5)
    assert rounds.target_coverage(np.array([[0, 0, 0.5, 0.5]]), target) == pytest.approx(1.0)
    assert rounds.target_coverage(corners, None) is None


def _measured() -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1],
                  [0.25, 0.25, 0.25, 0.25]])  # fmt: skip
    return x, np.array([-3.0, -2.5, -2.9, -2.8])


def test_the_trust_region_blends_and_moves_around_the_best_measured():
    x, y = _measured()
    target = np.array([0.0, 0.5, 0.0, 0.5])
    trained = {mixture_key(w) for w in x}
    picks, how = rounds.trust_region_picks(x, y, 6, 3, OPEN, trained, target)
    assert how[:2] == ("target_blend", "incumbent_blend") and set(how[2:]) == {"local_move"}
    best, second = x[1], x[3]
    assert picks[0] == pytest.approx(0.5 * best + 0.5 * target)
    assert picks[1] == pytest.approx((best + second) / 2)
    assert np.allclose(picks.sum(axis=1), 1.0)
    # a local move shifts at most `radius` of the weight (L1 distance <= 2 * radius + rounding)
    moved = picks[2:]
    nearest = np.min([np.abs(moved - c).sum(axis=1) for c in x[[1, 3, 2]]], axis=0)
    assert np.all(nearest <= 2 * 0.25 + 1e-3)
    assert not trained & {mixture_key(w) for w in picks}
    assert len({mixture_key(w) for w in picks}) == 6
    again, _ = rounds.trust_region_picks(x, y, 6, 3, OPEN, trained, target)
    assert np.array_equal(picks, again)  # seeded
    caps = np.array([1.0, 0.4, 1.0, 1.0])
    capped, _ = rounds.trust_region_picks(x, y, 4, 3, caps, trained, target)
    assert np.all(capped <= caps + 1e-12)
    no_target, how = rounds.trust_region_picks(x, y, 3, 3, OPEN, trained)
    assert how[0] == "incumbent_blend" and len(no_target) == 3


def test_the_noise_floor_and_a_round_that_cannot_rank():
    assert rounds.noise_floor([]) is None
    assert rounds.noise_floor([(-2.0, -2.02)]) == pytest.approx(0.02 / np.sqrt(2))
    floor = rounds.noise_floor([(-2.0, -2.02), (-3.0, -3.0)])
    assert floor == pytest.approx(np.sqrt((0.02**2) / 2 / 2))
    line = rounds.spread_warning("iter_001", [-2.0, -2.01, -2.02], 0.01)
    assert line and "iter_001" in line and "proxy.train_tokens" in line and "preset" in line
    assert rounds.spread_warning("iter_001", [-2.0, -2.5], 0.01) is None
    assert rounds.spread_warning("iter_001", [-2.0, -2.01], None) is None


def test_best_measured_takes_the_best_within_the_caps_and_the_first_on_a_tie():
    pick = rounds.Measured("pick", "confirmation", np.array([0.5, 0.5, 0, 0]), -2.0)
    proxy = rounds.Measured("proxy", "iter_001-m003", np.array([0.9, 0.1, 0, 0]), -1.9)
    anchor = rounds.Measured("anchor", "iter_001-m000", np.array([0.25] * 4), -2.0)
    assert rounds.best_measured([pick, proxy, anchor], OPEN) is proxy
    caps = np.array([0.6, 1, 1, 1])  # the best proxy asks more than max_epochs allow
    assert rounds.best_measured([pick, proxy, anchor], caps) is pick  # tie: the earlier
    with pytest.raises(MixtureError, match="no measured mixture fits"):
        rounds.best_measured([proxy], caps)


def _data(x: np.ndarray, y: np.ndarray) -> list[MetricData]:
    return [MetricData(x, -y, Metric("t", "bpb", 1.0))]


def test_the_trust_rule_refuses_a_poor_or_out_of_range_predictor():
    rule = auto.TrustRule(min_spearman=0.3, range_margin=0.5)
    y = np.array([-3.0, -2.9, -2.8, -2.7])
    good = auto.CVReport("gp", 0.9, 0.02, np.array([-2.95, -2.9, -2.85, -2.72]))
    assert rule.verdict(good, y) is None
    poor = auto.CVReport("lightgbm", 0.1, 0.05, y.copy())
    assert "below the floor" in rule.verdict(poor, y)
    wild = auto.CVReport("bimix", 0.8, 2.0, np.array([-0.9, -0.85, -0.82, -0.8]))
    assert "leave the measured range" in rule.verdict(wild, y)
    unscored = auto.CVReport("log_linear", None, None, np.full(4, np.nan), "did not converge")
    assert rule.verdict(unscored, y) == "did not converge"


def test_auto_uses_only_trusted_kinds_and_says_when_none_is():
    rng = np.random.default_rng(0)
    x = rng.dirichlet(np.ones(4), size=16)
    bpb = 3.0 - 1.5 * x[:, 2] + rng.normal(0, 0.01, 16)  # domain 2 helps: learnable
    fit = auto.fit_search_predictor("auto", _data(x, -bpb), 0, trust=auto.TrustRule())
    assert fit.trusted and fit.used not in fit.distrust
    assert fit.reports[fit.used].spearman >= 0.3
    noise = 3.0 + rng.normal(0, 0.01, 16)  # nothing to learn
    fit = auto.fit_search_predictor("auto", _data(x, -noise), 0, trust=auto.TrustRule(0.9))
    assert not fit.trusted and set(fit.distrust) == set(fit.reports)
    assert fit.best_spearman is None or fit.best_spearman < 0.9
    # without a rule every kind may steer, as before
    assert auto.fit_search_predictor("auto", _data(x, -noise), 0).trusted


def test_round_one_trains_the_anchors_first_then_the_design():
    prior = np.array([0.4, 0.3, 0.2, 0.05, 0.05])
    target = np.array([0.0, 0.0, 0.1, 0.45, 0.45])
    proposal = rounds.first_round(prior, 8, 7, np.ones(5), alignment=target)
    assert proposal.designs == ["reference", "reference"] + ["cover"] * 6
    assert proposal.references[:2] == ["target_aligned", "natural"]
    assert proposal.weights[0] == pytest.approx(target)
    assert proposal.weights[1] == pytest.approx(prior)
    assert len({mixture_key(w) for w in proposal.weights}) == 8
    assert 0 <= proposal.metadata["interior_share"] <= 1
    assert proposal.metadata["design_target_coverage"] > 0
    assert "anchored on target_aligned, natural" in proposal.method
    bare = rounds.first_round(prior, 8, 7, np.ones(5), alignment=None)
    assert bare.references[:1] == ["natural"] and bare.designs.count("reference") == 1
    assert any("anchor target_aligned skipped" in n for n in bare.notes)
    none = rounds.first_round(prior, 8, 7, np.ones(5), anchors=())
    assert none.designs == ["cover"] * 8 and none.metadata["anchors"] == "none"


class _Constant:
    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, 0]

    def predict_std(self, x: np.ndarray) -> None:
        return None


def test_a_later_round_follows_a_trusted_predictor_and_falls_back_without_one():
    x, y = _measured()
    trained = ({mixture_key(w) for w in x}, x)
    pool_calls = []

    def pool() -> np.ndarray:
        pool_calls.append(1)
        from climb_assets.lib.mixture import candidate_pool

        return candidate_pool(PRIOR, 2_000, 0)

    how = rounds.LaterRound(top=16)
    steered = rounds.later_round(
        "iter_001", pool, _Constant(), None, (x, y), 4, 5, trained, OPEN, how
    )
    assert pool_calls and steered.designs == ["exploit", "cover", "cover", "cover"]
    assert steered.predicted[0] == pytest.approx(steered.weights[0, 0])
    assert not steered.metadata["fallback"]
    pool_calls.clear()
    fallback = rounds.later_round(
        "iter_001", pool, _Constant(), "best CV -0.12", (x, y), 4, 5, trained, OPEN, how
    )
    assert not pool_calls, "no candidate pool is scored by an untrusted predictor"
    assert fallback.notes == [
        "no predictor is trusted after iter_001 (best CV -0.12); proposing around the best "
        "measured mixtures"
    ]
    assert fallback.metadata["fallback"] and fallback.predicted == [None] * 4
    assert set(fallback.designs) <= {"incumbent_blend", "local_move"}

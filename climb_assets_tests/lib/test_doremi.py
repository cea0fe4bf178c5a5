"""DoReMi's update step against a hand-computed case, and its guards."""

import math

import numpy as np
import pytest

from climb_assets.lib.doremi import (
    DoReMiError,
    DoReMiSettings,
    DoReMiState,
    excess_losses,
    stratified_counts,
)


def test_excess_losses_clip_per_token_and_mark_absent_domains():
    proxy = np.array([3.0, 1.0, 2.0, 5.0])
    reference = np.array([2.0, 2.0, 2.5, 1.0])
    # domain 0: tokens 0, 1 -> max(1, 0), max(-1, 0) -> mean 0.5; domain 1: token 2 -> 0;
    # domain 2: token 3 -> 4; domain 3 absent
    got = excess_losses(proxy, reference, np.array([0, 0, 1, 2]), k=4)
    assert got[:3].tolist() == [0.5, 0.0, 4.0] and math.isnan(got[3])


def test_one_update_step_by_hand():
    state = DoReMiState.start(3, DoReMiSettings(step_size=1.0, smoothing=0.1))
    new = state.update(np.array([0.0, math.log(2), np.nan]))
    # log a = log(1/3) + [0, log 2, 0 (absent: last value 0)] -> a ∝ [1, 2, 1] -> [.25, .5, .25]
    # smoothing 0.1: 0.9 * a + 0.1 / 3
    expected = 0.9 * np.array([0.25, 0.5, 0.25]) + 0.1 / 3
    np.testing.assert_allclose(new, expected)
    # second step: domain 2 is absent again and keeps its last lambda (0); domain 1 repeats its
    # last value only when absent, here it is present with 0
    again = state.update(np.array([0.0, 0.0, np.nan]))
    np.testing.assert_allclose(again, 0.9 * expected + 0.1 / 3)
    np.testing.assert_allclose(state.average, (expected + again) / 2)
    assert state.steps == 2


def test_an_absent_domain_keeps_its_last_excess_instead_of_collapsing():
    state = DoReMiState.start(2, DoReMiSettings(step_size=1.0, smoothing=0.0))
    state.update(np.array([1.0, 1.0]))
    for _ in range(5):  # domain 1 missing from every batch: its weight holds
        state.update(np.array([1.0, np.nan]))
    np.testing.assert_allclose(state.weights, [0.5, 0.5])


def test_guards_name_the_fix():
    with pytest.raises(DoReMiError, match="at least 2 super-clusters"):
        DoReMiState.start(1)
    with pytest.raises(DoReMiError, match="step size must be > 0"):
        DoReMiSettings(step_size=0)
    with pytest.raises(DoReMiError, match="proxy.batch_size >= 4"):
        stratified_counts(3, np.full(4, 0.25))


def test_every_batch_covers_every_super_cluster():
    counts = stratified_counts(16, np.array([0.97, 0.01, 0.01, 0.01]))
    assert counts.sum() == 16 and (counts >= 1).all() and counts[0] == 13
    assert stratified_counts(4, np.array([0.7, 0.1, 0.1, 0.1])).tolist() == [1, 1, 1, 1]

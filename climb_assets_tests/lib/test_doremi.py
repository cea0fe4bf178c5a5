"""DoReMi's update step against a hand-computed case, and its guards."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from climb_assets.lib.doremi import (
    DoReMiError,
    DoReMiSettings,
    DoReMiState,
    GroupDROLoss,
    StratifiedBatches,
    check_inputs,
    excess_losses,
    stratified_counts,
    train_doremi,
)
from climb_assets.lib.proxy import ProxyConfig, build_model, train_proxy

VOCAB = 64
CFG = ProxyConfig(
    n_layer=1, n_embd=32, n_head=4, seq_len=32, batch_size=6, train_tokens=32 * 6 * 40, lr=1e-2
)


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    """Three super-clusters with disjoint token ids: two cycles (easy), one iid (no pattern)."""
    rng = np.random.default_rng(0)
    return [
        np.tile(np.arange(0, 16), 200),
        np.tile(np.arange(16, 32)[::-1], 200),
        rng.integers(32, VOCAB, 3200),
    ]


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
    with pytest.raises(DoReMiError, match="at least 2 super-clusters.*merge.distance_threshold"):
        check_inputs(1, 16)  # what doremi_mixture checks before it trains anything
    with pytest.raises(DoReMiError, match="proxy.batch_size >= 3"):
        check_inputs(3, 2)


def test_every_batch_covers_every_super_cluster():
    counts = stratified_counts(16, np.array([0.97, 0.01, 0.01, 0.01]))
    assert counts.sum() == 16 and (counts >= 1).all() and counts[0] == 13
    assert stratified_counts(4, np.array([0.7, 0.1, 0.1, 0.1])).tolist() == [1, 1, 1, 1]


def test_stratified_batches_hold_fixed_rows_of_every_super_cluster(arrays):
    batches = StratifiedBatches(arrays, [0.6, 0.2, 0.2], seq_len=8, batch_size=7, seed=3)
    assert batches.counts.tolist() == [3, 2, 2] and batches.shares.sum() == pytest.approx(1.0)
    for step in range(5):
        rows = batches.batch(step)
        for row, cluster in zip(rows, batches.clusters(step), strict=True):
            low = (0, 16, 32)[cluster]
            assert ((row >= low) & (row < low + (16 if cluster < 2 else 32))).all()
        assert np.bincount(batches.clusters(step), minlength=3).tolist() == [3, 2, 2]
    assert not np.array_equal(batches.batch(0), batches.batch(1))  # windows move with the step


def test_group_dro_loss_is_one_doremi_step_by_hand(arrays):
    """The loss updates the weights from this batch's excess losses, then weights the rows."""
    reference, proxy = build_model(CFG, VOCAB), build_model(replace(CFG, seed=1), VOCAB)
    batches = StratifiedBatches(arrays, np.full(3, 1 / 3), CFG.seq_len, CFG.batch_size)
    state = DoReMiState.start(3, DoReMiSettings(step_size=1.0, smoothing=0.0))
    step_loss = GroupDROLoss(reference, batches, state)
    window = torch.from_numpy(batches.batch(0))
    inputs, targets = window[:, :-1], window[:, 1:]
    logits = proxy(input_ids=inputs).logits
    loss = step_loss(0, inputs, logits, targets)

    def token_losses(model_logits: torch.Tensor) -> np.ndarray:
        flat = model_logits.reshape(-1, VOCAB).float()
        return F.cross_entropy(flat, targets.reshape(-1), reduction="none").detach().numpy()

    with torch.no_grad():
        ours, theirs = token_losses(logits), token_losses(reference(input_ids=inputs).logits)
    lam = excess_losses(ours, theirs, np.repeat(batches.layout, CFG.seq_len), 3)
    expected = np.exp(lam) / np.exp(lam).sum()  # from uniform, step size 1, no smoothing
    np.testing.assert_allclose(state.weights, expected, rtol=1e-5)
    rows = ours.reshape(CFG.batch_size, CFG.seq_len).mean(axis=1)
    by_hand = np.mean(rows * expected[batches.layout] / (2 / 6))
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert step_loss.history[0]["step"] == 1 and step_loss.history[0]["excess"] == lam.tolist()
    loss.backward()
    assert all(p.grad is not None for p in proxy.parameters() if p.requires_grad)


def test_doremi_upweights_what_the_reference_learned_and_is_reproducible(arrays):
    """A reference trained on super-cluster 1 only: the DRO proxy's excess loss is there."""
    reference = train_proxy(CFG, arrays, [0.0, 1.0, 0.0], VOCAB).model
    run = train_doremi(CFG, arrays, reference, VOCAB)
    assert run.average.sum() == pytest.approx(1.0) and int(np.argmax(run.average)) == 1
    assert run.average[1] > 0.5 and run.average.min() >= 1e-3 / 3
    assert len(run.history) == CFG.steps and run.sampling.tolist() == [1 / 3] * 3
    np.testing.assert_allclose(
        np.mean([h["weights"] for h in run.history], axis=0), run.average, rtol=1e-9
    )
    again = train_doremi(CFG, arrays, reference, VOCAB)
    np.testing.assert_array_equal(again.average, run.average)  # same seed, same mixture

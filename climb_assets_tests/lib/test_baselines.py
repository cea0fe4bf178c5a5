"""Training-free reference mixtures against hand-computed cases."""

import math

import numpy as np
import pytest

from climb_assets.lib.baselines import (
    BY_NAME,
    BaselineError,
    BaselineInputs,
    EntropyMixture,
    compute_references,
)
from climb_assets.lib.baselines.entropy import (
    conditional_entropy,
    sampled_windows,
    shannon_entropy,
)
from climb_assets.lib.baselines.unimax import water_fill


def test_unimax_water_fills_from_the_smallest_super_cluster_up():
    # Budget 1,000 over tokens [50, 100, 1000, 2000] at 2 epochs: caps [100, 200, 2000, 4000].
    # Even share 250: the first is capped at 100 (900 left for 3: 300 each), the second at 200
    # (700 left for 2: 350 each), the two large ones take 350 each.
    inputs = BaselineInputs(np.array([50, 100, 1000, 2000]), total_tokens=1000, max_epochs=2)
    mix = BY_NAME["unimax"].compute(inputs)
    assert mix.weights.tolist() == pytest.approx([0.10, 0.20, 0.35, 0.35])
    assert mix.details["capped_super_clusters"] == [0, 1]
    assert water_fill(np.array([5.0, 5.0]), 4.0).tolist() == [2.0, 2.0]  # no cap binds


def test_unimax_says_how_many_tokens_the_cap_leaves_missing():
    inputs = BaselineInputs(np.array([100, 200]), total_tokens=1000, max_epochs=2)
    with pytest.raises(BaselineError, match=r"400 tokens missing at 2 epochs.*raise"):
        BY_NAME["unimax"].compute(inputs)


def test_entropy_of_known_sequences():
    alternating = np.array([0, 1] * 500)
    assert shannon_entropy([alternating]) == pytest.approx(1.0)
    assert conditional_entropy([alternating]) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    iid = rng.integers(0, 4, 200_000)
    assert shannon_entropy([iid]) == pytest.approx(2.0, abs=1e-3)
    assert conditional_entropy([iid]) == pytest.approx(2.0, abs=1e-3)
    # A first-order chain that repeats its symbol with probability 0.9 (else the other one):
    # H(X_t | X_{t-1}) = h(0.9) = 0.469 bits, while each symbol alone is 1 bit.
    flips = rng.random(200_000) < 0.1
    chain = np.cumsum(flips) % 2
    assert shannon_entropy([chain]) == pytest.approx(1.0, abs=1e-3)
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert conditional_entropy([chain]) == pytest.approx(h, abs=5e-3)


def test_entropy_mixtures_normalise_proportionally_and_by_softmax():
    streams = [np.array([0, 1] * 50), np.arange(4).repeat(1).tolist() * 25]
    inputs = BaselineInputs(np.array([100, 100]), token_ids=lambda i: np.asarray(streams[i]))
    shannon = EntropyMixture("shannon").compute(inputs)  # 1 and 2 bits
    assert shannon.weights.tolist() == pytest.approx([1 / 3, 2 / 3])
    soft = EntropyMixture("shannon", "softmax").compute(inputs)
    assert soft.weights.tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])
    assert soft.name == "entropy_shannon_softmax" and shannon.details["entropy_bits"] == [1, 2]


def test_entropy_over_an_empty_super_cluster_names_it():
    inputs = BaselineInputs(np.array([100, 0]), token_ids=lambda i: np.arange(100 if i == 0 else 0))
    with pytest.raises(BaselineError, match="super-cluster 1 has 0 token"):
        EntropyMixture().compute(inputs)


def test_long_streams_are_measured_on_bounded_windows():
    parts = sampled_windows(np.arange(1_000_000), max_tokens=10_000, windows=10)
    assert len(parts) == 10 and sum(p.size for p in parts) == 10_000
    assert parts[0][0] == 0 and parts[-1][-1] == 999_999


def test_references_skip_what_their_inputs_lack_and_say_why():
    inputs = BaselineInputs(np.array([300, 100]), alignment=np.array([0.0, 2.0]))
    done, skipped = compute_references(inputs)
    weights = {m.name: m.weights.tolist() for m in done}
    assert weights["natural"] == pytest.approx([0.75, 0.25])
    assert weights["uniform"] == pytest.approx([0.5, 0.5])
    assert weights["target_aligned"] == pytest.approx([0.0, 1.0])
    assert "manifest.total_tokens" in skipped["unimax"]
    assert "cluster_tokens" in skipped["entropy_conditional"]
    with pytest.raises(BaselineError, match="unknown reference mixture"):
        compute_references(inputs, ("doremi",))
    _, missing = compute_references(BaselineInputs(np.array([1, 1])), ("target_aligned",))
    assert "materialize target_alignment" in missing["target_aligned"]

"""Seeded samples drawn shard by shard equal the samples drawn over all rows at once."""

import numpy as np
import pytest

from climb_assets.lib import sampling
from climb_assets.lib.sampling import SmallestPerGroup, fill_per_group, row_keys


def test_row_keys_depend_on_the_seed_and_the_shard_name_only():
    assert np.array_equal(row_keys(1, "a.parquet", 5), row_keys(1, "a.parquet", 8)[:5])
    assert not np.array_equal(row_keys(1, "a.parquet", 5), row_keys(2, "a.parquet", 5))
    assert not np.array_equal(row_keys(1, "a.parquet", 5), row_keys(1, "b.parquet", 5))
    # Pinned values: the keys (and every sample drawn with them) are the same on any machine.
    assert np.round(row_keys(42, "shard-0.parquet", 3), 6).tolist() == [
        0.239668,
        0.618587,
        0.489447,
    ]


def test_smallest_per_group_over_shards_equals_one_pass_over_all_rows():
    rng = np.random.default_rng(0)
    groups = [rng.integers(0, 4, n) for n in (50, 7, 30)]
    keys = [rng.integers(0, 10, g.size).astype(float) for g in groups]  # many ties
    names = [np.array([f"d{j}-{i}" for i in range(g.size)]) for j, g in enumerate(groups)]
    sample = SmallestPerGroup(3)
    for j, (g, k, d) in enumerate(zip(groups, keys, names, strict=True)):
        sample.add(j, g, k, d)
    rows = [(k, d, j, i, g) for j, (gs, ks, ds) in enumerate(zip(groups, keys, names, strict=True))
            for i, (g, k, d) in enumerate(zip(gs, ks, ds, strict=True))]  # fmt: skip
    expected = {j: [] for j in range(3)}
    for group in range(4):
        for _, _, j, i, _ in sorted(r for r in rows if r[4] == group)[:3]:
            expected[j].append(i)
    for j in range(3):
        assert sample.rows(j).tolist() == sorted(expected[j])
    assert sample.group_sizes(4).tolist() == [3, 3, 3, 3]


def test_fill_per_group_takes_keys_in_order_until_the_budget_is_reached():
    groups = np.array([0, 0, 0, 0, 1, 1])
    keys = np.array([0.4, 0.1, 0.3, 0.2, 0.9, 0.5])
    sizes = np.array([5, 5, 5, 5, 1, 1])
    # group 0 in key order: rows 1, 3, 2, 0; 5 + 5 reaches 8 at the second; group 1 is small.
    assert fill_per_group(groups, keys, sizes, 8).tolist() == [False, True, False, True, True, True]
    assert fill_per_group(groups, keys, sizes, 100).all()


@pytest.mark.parametrize("bins", [1, 7, 4096])
@pytest.mark.parametrize("budget", [0, 1, 500, 20_000, 10**9])
def test_streamed_fill_takes_the_rows_fill_per_group_takes(bins, budget):
    rng = np.random.default_rng(3)
    shard_rows = [0, 300, 1, 2000, 700]
    shards = [(rng.integers(0, 5, n), rng.random(n), rng.integers(1, 200, n)) for n in shard_rows]
    # Equal keys in two shards: the tie goes to the earlier shard, as in the concatenation.
    shards[3][1][:10] = shards[1][1][:10]
    groups, keys, sizes = (np.concatenate(c) for c in zip(*shards, strict=True))
    expected = sampling.fill_per_group(groups, keys, sizes, budget)
    fill = sampling.StreamedFill(budget, bins=bins)
    for g, k, s in shards:
        fill.count(g, k, s)
    for j, (g, k, s) in enumerate(shards):
        fill.offer(j, g, k, s)
    fill.resolve()
    got = np.concatenate([fill.mask(j, g, k) for j, (g, k, _) in enumerate(shards)])
    assert np.array_equal(got, expected)
    assert np.array_equal(fill.group_sizes(), np.bincount(groups, weights=sizes).astype(int))

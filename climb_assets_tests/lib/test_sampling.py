"""Seeded samples drawn shard by shard equal the samples drawn over all rows at once."""

import numpy as np

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

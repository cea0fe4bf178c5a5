import numpy as np
import pytest

from climb_assets.lib.manifest import (
    ManifestError,
    check_token_accounting,
    dominated_by_few,
    hold_out_validation,
    megatron_blend,
    select_documents,
    stable_order,
    token_budget,
    validation_count,
    write_shuffled_parts,
    write_shuffled_splits,
)


def test_budget_splits_by_weight_when_nothing_is_capped():
    b = token_budget(np.array([0.5, 0.3, 0.2]), np.array([1000, 1000, 1000]), 1000, 4.0)
    assert b.granted.tolist() == [500, 300, 200]
    assert b.shortfall == 0 and b.capped == [] and b.redistributed == 0


def test_small_cluster_is_capped_and_excess_redistributed():
    b = token_budget(np.array([0.6, 0.2, 0.2]), np.array([100, 10_000, 10_000]), 1000, 2.0)
    assert b.granted[0] == 200  # 2 epochs of 100 tokens
    assert b.capped == [0]
    assert b.granted.sum() == 1000
    assert b.granted[1] == b.granted[2] == 400  # excess split by the remaining weights
    assert b.epochs[0] == pytest.approx(2.0)


def test_shortfall_reported_when_everything_is_capped():
    b = token_budget(np.array([0.5, 0.5]), np.array([10, 10]), 1000, 1.0)
    assert b.granted.tolist() == [10, 10] and b.shortfall == 980


def test_zero_total_is_an_error():
    with pytest.raises(ManifestError, match="total_tokens must be > 0"):
        token_budget(np.array([1.0]), np.array([10]), 0, 1.0)


def test_stable_order_depends_on_ids_and_seed_only():
    ids = [f"d{i}" for i in range(50)]
    order = stable_order(ids, 7)
    shuffled = ids[::-1]
    assert [ids[i] for i in order] == [shuffled[i] for i in stable_order(shuffled, 7)]
    assert order.tolist() != stable_order(ids, 8).tolist()


def test_select_documents_fills_budget_with_full_then_partial_passes():
    ids = ["a", "b", "c", "d"]
    n_tokens = np.array([10, 20, 30, 40])
    rows, passes = select_documents(ids, n_tokens, 150, seed=1)
    first = rows[passes == 0]
    assert sorted(first.tolist()) == [0, 1, 2, 3]
    assert n_tokens[rows].sum() >= 150
    assert n_tokens[rows[:-1]].sum() < 150
    assert passes.max() == 1
    empty_rows, _ = select_documents(ids, n_tokens, 0, seed=1)
    assert empty_rows.size == 0


def test_megatron_blend_pairs_weights_and_prefixes():
    blend = megatron_blend(np.array([0.7, 0.0, 0.3]), ["a", "b", "c"])
    assert blend == [0.7, "a", 0.3, "c"]


def _selection(n_docs: int = 40, repeats: int = 2):
    import polars as pl

    ids = [f"d{i:03d}" for i in range(n_docs)]
    chosen = pl.DataFrame(
        {
            "doc_id": ids * repeats,
            "cluster_id": [i % 5 for i in range(n_docs)] * repeats,
            "n_tokens": list(range(n_docs)) * repeats,
            "super_cluster_id": [i % 3 for i in range(n_docs)] * repeats,
            "pass": [p for p in range(repeats) for _ in range(n_docs)],
        }
    )
    shards = [
        pl.DataFrame({"doc_id": ids[s::3], "text": [f"text of {d}" for d in ids[s::3]]})
        for s in range(3)
    ]
    return chosen, shards


def test_shuffled_parts_match_the_in_memory_shuffle_and_leave_no_staging(tmp_path):
    import polars as pl

    from climb_assets.lib.storage import Store

    chosen, shards = _selection()
    store = Store(str(tmp_path))
    store.write_bytes("manifest/shards/part-00009.parquet", b"stale part from a larger run")
    paths = write_shuffled_parts(store, chosen, [lambda s=s: s for s in shards], 4, seed=7)
    got = [pl.read_parquet(p) for p in paths]
    everything = chosen.join(pl.concat(shards), on="doc_id", how="left")
    expected = everything[np.random.default_rng(7).permutation(chosen.height).tolist()]
    bounds = np.array_split(np.arange(chosen.height), 4)
    for part, span in zip(got, bounds, strict=True):
        assert part.columns == expected.columns
        assert part.equals(expected[span.tolist()])
    assert store.list("manifest") == [f"manifest/shards/part-{i:05d}.parquet" for i in range(4)]
    assert not store.exists("manifest/_staging")


def test_splits_are_written_in_one_corpus_pass_each_as_its_own_shuffle(tmp_path):
    import polars as pl

    from climb_assets.lib.storage import Store

    chosen, shards = _selection()
    held, train = chosen.head(5), chosen.slice(5)
    reads = []

    def loader(shard):
        def load():
            reads.append(shard.height)
            return shard

        return load

    store = Store(str(tmp_path))
    splits = {"manifest/shards": (train, 3), "manifest/validation": (held, 1)}
    paths = write_shuffled_splits(store, splits, [loader(s) for s in shards], seed=7)
    assert len(reads) == len(shards)  # each corpus shard read once for both outputs
    assert [len(v) for v in paths.values()] == [3, 1]
    for folder, (rows, _) in splits.items():
        got = pl.concat([pl.read_parquet(p) for p in paths[folder]])
        everything = rows.join(pl.concat(shards), on="doc_id", how="left")
        assert got.equals(everything[np.random.default_rng(7).permutation(rows.height).tolist()])
    assert (
        write_shuffled_parts(store, train, [loader(s) for s in shards], 3, seed=7)
        == paths["manifest/shards"]
    )
    assert not store.exists("manifest/_staging")


def test_validation_hold_out_is_seeded_by_id_and_never_takes_a_whole_cluster():
    assert [validation_count(n, 0.01) for n in (0, 1, 2, 99, 150, 1000)] == [0, 0, 1, 1, 2, 10]
    assert validation_count(3, 0.49) == 1 and validation_count(2, 0.9) == 1
    assert validation_count(500, 0.0) == 0
    ids = [f"doc{i}" for i in range(400)]
    held = hold_out_validation(ids, 0.05, seed=3)
    assert held.sum() == 20
    shuffled = ids[::-1]
    again = hold_out_validation(shuffled, 0.05, seed=3)
    assert {ids[i] for i in np.flatnonzero(held)} == {shuffled[i] for i in np.flatnonzero(again)}
    assert held.tolist() != hold_out_validation(ids, 0.05, seed=4).tolist()
    # not the head of the training order: the salt makes it an independent draw
    first = set(stable_order(ids, 3)[:20].tolist())
    assert set(np.flatnonzero(held).tolist()) != first


def test_shuffled_parts_refuse_documents_without_text(tmp_path):
    from climb_assets.lib.storage import Store

    chosen, shards = _selection()
    store = Store(str(tmp_path))
    with pytest.raises(ManifestError, match="no text in the corpus"):
        write_shuffled_parts(store, chosen, [lambda s=s: s for s in shards[:2]], 2, seed=0)
    assert not store.exists("manifest/_staging") and not store.exists("manifest/shards")


def test_one_giant_document_does_not_overshoot_the_budget():
    sizes = np.array([120] * 200 + [2_000_000] + [80] * 100, dtype=np.int64)
    ids = [f"d{i}" for i in range(len(sizes))]
    for budget in (5_000, 30_000, 31_234):
        rows, _ = select_documents(ids, sizes, budget, seed=3)
        assert abs(int(sizes[rows].sum()) - budget) <= 120, budget
        assert 200 not in rows.tolist()


def test_token_accounting_and_dominated_clusters():
    ok = check_token_accounting(np.array([1000, 0, 500]), np.array([1004, 0, 499]))
    assert ok["within_tolerance"] and ok["off_super_clusters"] == []
    bad = check_token_accounting(np.array([1000, 500]), np.array([76_000, 500]))
    assert not bad["within_tolerance"] and bad["off_super_clusters"] == [0]
    assert "76500 tokens against 1500 granted" in bad["note"]
    assert dominated_by_few(np.array([10] * 100 + [5000])) > 0.8
    assert dominated_by_few(np.array([10] * 100)) is None

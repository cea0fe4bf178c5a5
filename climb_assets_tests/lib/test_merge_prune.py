import numpy as np
import pytest

from climb_assets.lib.merge import MergeError, merge_centroids, too_few_warning
from climb_assets.lib.prune import (
    ClusterStats,
    FamilyCounter,
    NearestDocuments,
    TermCounter,
    prune_clusters,
)


def test_ward_threshold_merges_close_centroids_and_orders_by_weight():
    c = np.array([[0, 0], [0.1, 0], [5, 5], [5.1, 5], [5, 5.1]], np.float64)
    labels = merge_centroids(c, weights=np.array([1, 1, 1, 1, 1]), distance_threshold=1.5)
    assert labels.tolist() == [1, 1, 0, 0, 0]
    labels = merge_centroids(c, weights=np.array([10, 10, 1, 1, 1]), distance_threshold=1.5)
    assert labels.tolist() == [0, 0, 1, 1, 1]


def test_target_count_and_errors():
    c = np.random.default_rng(0).normal(size=(10, 3))
    assert len(np.unique(merge_centroids(c, distance_threshold=None, target_count=3))) == 3
    assert merge_centroids(c[:1]).tolist() == [0]
    with pytest.raises(MergeError, match="lower merge.target_count"):
        merge_centroids(c, distance_threshold=None, target_count=11)
    with pytest.raises(MergeError, match="no clusters survived"):
        merge_centroids(c[:0])


def test_a_threshold_that_merges_almost_everything_is_named():
    """The static encoder's space under the demo's threshold merged 54 kept clusters into 2."""
    rng = np.random.default_rng(0)
    tight = rng.normal(0, 0.01, (54, 8))  # every centroid close: one Ward merge takes them all
    labels = merge_centroids(tight, np.ones(54), "ward", 1.5, None)
    warning = too_few_warning(54, int(labels.max()) + 1, 1.5, "models/minilm-static")
    assert warning is not None and warning.startswith(
        "merge.distance_threshold 1.5 merged 54 kept clusters into 1 super-cluster(s)"
    )
    assert "set merge.target_count" in warning and "'models/minilm-static'" in warning
    assert too_few_warning(54, 9, 1.5, "m") is None  # MiniLM's demo: 9
    assert too_few_warning(54, 2, None, "m") is None  # a target count is what was asked for
    assert too_few_warning(2, 2, 1.5, "m") is None  # nothing more to merge into


def test_cluster_stats_and_pruning_reasons():
    stats = ClusterStats.empty(4, ["h"])
    stats.add(
        np.array([0, 0, 1, 3]),
        np.array([10, 20, 5, 7]),
        np.array([0.1, 0.3, 0.2, 0.4]),
        {"h": np.array([4.0, 5.0, 2.0, 3.0])},
    )
    assert stats.size.tolist() == [2, 1, 0, 1]
    assert stats.tokens.tolist() == [30, 5, 0, 7]
    means = stats.means()
    assert means["h"][0] == pytest.approx(4.5)
    kept, reasons = prune_clusters(stats.size, means, {"h": 3.0}, min_size=1)
    assert kept.tolist() == [True, False, False, True]
    assert reasons[1] == "h mean 2.00 < 3.00" and reasons[2] == "empty"
    kept, reasons = prune_clusters(stats.size, means, {"h": 1.0}, min_size=2)
    assert kept.tolist() == [True, False, False, False]
    assert reasons[3] == "size 1 < min_cluster_size 2"


def test_top_terms_distinguish_clusters_and_nearest_documents():
    terms = TermCounter(2)
    texts = ["tensor gradient tensor", "bucket object bucket", "gradient tensor"]
    terms.add(texts, np.array([0, 1, 0]))
    top = terms.top_terms(2)
    assert top[0][0] == "tensor" and top[1][0] == "bucket"
    near = NearestDocuments(2, m=1)
    near.add(["a", "b", "c"], texts, np.array([0, 1, 0]), np.array([0.5, 0.2, 0.1]))
    near.add(["d"], ["x"], np.array([1]), np.array([0.05]))
    best = near.result()
    assert best[0][0][1] == "c" and best[1][0][1] == "d"


def test_pruning_reason_shows_enough_digits_to_be_true():
    from climb_assets.lib.prune import below

    assert below(2.0, 3.0) == "2.00 < 3.00"
    assert below(4.3999, 4.4) == "4.3999 < 4.4000"


def test_a_language_pruned_nearly_whole_is_reported_with_its_share():
    # 3 clusters; German documents sit in clusters 1 and 2, which pruning drops; English mostly
    # in the kept cluster 0. Counted over two shards, as pruned_clusters does.
    families = FamilyCounter(k=3)
    families.add("language", ["en"] * 30 + ["de"] * 15, np.array([0] * 28 + [1] * 2 + [1] * 15))
    families.add("language", ["de"] * 10 + [None] * 3, np.array([2] * 9 + [0] + [0] * 3))
    kept = np.array([True, False, False])
    (loss,) = families.losses(kept)
    assert (loss.column, loss.value, loss.documents, loss.dropped) == ("language", "de", 25, 24)
    assert loss.share == pytest.approx(0.96)
    assert "24 of 25 documents with language = 'de' (96%)" in loss.message()
    # English loses 2 of 30 (7%): below the bar; the 3 unlabelled ones are too few to judge.
    assert families.losses(kept, min_share=0.05)[1].value == "en"
    assert families.losses(kept, min_documents=26) == []


def test_a_column_with_too_many_values_is_not_a_family():
    families = FamilyCounter(k=2, max_values=5)
    families.add("url", [f"https://x/{i}" for i in range(6)], np.zeros(6, np.int64))
    assert families.losses(np.array([False, True]), min_documents=1) == []
    assert families.skipped == {"url"}

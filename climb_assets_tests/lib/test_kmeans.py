import numpy as np
import pytest

from climb_assets.lib.kmeans import (
    KMeansError,
    assign,
    centroid_distances,
    check_k,
    fit_kmeans,
    greedy_kmeans_plus_plus,
    kmeans_plus_plus,
    sample_indices,
)


def blobs(n_per: int = 100, k: int = 4, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 5
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


def test_recovers_planted_blobs_and_is_seeded():
    x, truth = blobs()
    fit = fit_kmeans(x, 4, niter=20, seed=1, spherical=False)
    again = fit_kmeans(x, 4, niter=20, seed=1, spherical=False)
    np.testing.assert_array_equal(fit.centroids, again.centroids)
    ids, _ = assign(x, fit.centroids)
    for blob in range(4):
        assert len(np.unique(ids[truth == blob])) == 1
    assert fit.sample_size == 400 and fit.inertia > 0


def test_spherical_centroids_are_unit_length():
    x, _ = blobs()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    fit = fit_kmeans(x, 4, niter=10, seed=0, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(fit.centroids, axis=1), 1.0, atol=1e-5)


def test_k_larger_than_corpus_names_the_fix():
    with pytest.raises(KMeansError, match=r"kmeans.k = 50 is larger than .* \(10\); lower"):
        check_k(50, 10)
    with pytest.raises(KMeansError):
        fit_kmeans(np.zeros((3, 2), np.float32), 5)


def test_chunked_assignment_equals_one_shot():
    x, _ = blobs(seed=3)
    centroids = fit_kmeans(x, 6, niter=5, seed=0, spherical=False).centroids
    ids1, d1 = assign(x, centroids, chunk_size=7)
    ids2, d2 = assign(x, centroids, chunk_size=10_000)
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_allclose(d1, d2, rtol=1e-5)
    brute = np.linalg.norm(x[:, None, :] - centroids[None], axis=2)
    np.testing.assert_array_equal(ids1, brute.argmin(1))
    np.testing.assert_allclose(d1, brute.min(1), rtol=1e-4)


def test_sample_indices_are_seeded_bounded_and_per_shard():
    a = sample_indices([10, 0, 5], 6, seed=3)
    b = sample_indices([10, 0, 5], 6, seed=3)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert sum(len(x) for x in a) == 6 and len(a[1]) == 0
    assert all((x >= 0).all() and (x < n).all() for x, n in zip(a, [10, 1, 5], strict=True))
    full = sample_indices([3, 2], 100, seed=0)
    assert [x.tolist() for x in full] == [[0, 1, 2], [0, 1]]


def test_centroid_distances_symmetric():
    c = np.array([[0, 0], [3, 4], [6, 8]], np.float32)
    d = centroid_distances(c)
    assert d[0, 1] == pytest.approx(5.0) and d[0, 2] == pytest.approx(10.0)
    np.testing.assert_allclose(d, d.T)


def test_kmeans_plus_plus_start_beats_random_start_on_planted_blobs():
    x, _ = blobs(n_per=50, k=12, d=8, seed=5)
    plus = [fit_kmeans(x, 12, niter=10, seed=s, spherical=False).inertia for s in range(3)]
    rand = [
        fit_kmeans(x, 12, niter=10, seed=s, spherical=False, init="random").inertia
        for s in range(3)
    ]
    assert np.mean(plus) < np.mean(rand)
    with pytest.raises(KMeansError, match="kmeans.init"):
        fit_kmeans(x, 3, init="forgy")


def _seed_inertia(x: np.ndarray, centers: np.ndarray) -> float:
    _, dist = assign(x, centers)
    return float(np.square(dist, dtype=np.float64).sum())


def test_greedy_seeding_starts_lower_than_plain_and_is_seeded():
    x, _ = blobs(n_per=40, k=40, d=8, seed=7)
    greedy = [_seed_inertia(x, greedy_kmeans_plus_plus(x, 40, s)) for s in range(5)]
    plain = [_seed_inertia(x, kmeans_plus_plus(x, 40, s)) for s in range(5)]
    assert np.mean(greedy) < 0.9 * np.mean(plain)
    np.testing.assert_array_equal(
        greedy_kmeans_plus_plus(x, 40, 3), greedy_kmeans_plus_plus(x, 40, 3)
    )


def test_greedy_seeding_uses_a_bounded_subsample():
    x, _ = blobs(n_per=200, k=5, d=4, seed=2)
    centers = greedy_kmeans_plus_plus(x, 5, 0, points_per_centroid=10)
    rows = {tuple(r) for r in x.tolist()}
    assert centers.shape == (5, 4) and all(tuple(c) in rows for c in centers.tolist())
    fit = fit_kmeans(x, 5, niter=10, seed=0, spherical=False, init="greedy_kmeans++")
    ids, _ = assign(x, fit.centroids)
    assert len(np.unique(ids)) == 5

"""FAISS k-means fitted on a seeded sample, then chunked nearest-centroid assignment.

The fit never sees more than `k * max_points_per_centroid` rows, drawn with a seeded generator
across all shards, so its memory does not depend on the corpus size. Assignment streams over a
shard's (memory-mapped) embeddings in fixed-size chunks, so its memory does not grow with the shard.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np


class KMeansError(ValueError):
    """K-means settings that cannot work on the given data."""


@dataclass(frozen=True)
class KMeansFit:
    """Fitted centroids and how they were obtained."""

    centroids: np.ndarray
    sample_size: int
    inertia: float
    objective: list[float]
    seconds: float
    device: str


def gpu_count() -> int:
    """Number of GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def sample_indices(shard_sizes: Sequence[int], sample_size: int, seed: int) -> list[np.ndarray]:
    """Seeded uniform sample of global rows, returned as sorted row indices per shard."""
    total = int(sum(shard_sizes))
    rng = np.random.default_rng(seed)
    if sample_size >= total:
        chosen = np.arange(total)
    else:
        chosen = np.sort(rng.choice(total, size=sample_size, replace=False))
    bounds = np.cumsum([0, *shard_sizes])
    return [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(bounds)]


def check_k(k: int, n_documents: int) -> None:
    """Raises a clear error when there are fewer documents than clusters."""
    if k > n_documents:
        raise KMeansError(
            f"kmeans.k = {k} is larger than the number of documents ({n_documents}); "
            f"lower kmeans.k to at most {n_documents} or add shards"
        )


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability
    proportional to its squared distance from the nearest centre already chosen."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    centers[0] = x[rng.integers(n)]
    sq_norms = np.einsum("ij,ij->i", x, x)
    d2 = np.maximum(sq_norms - 2.0 * (x @ centers[0]) + centers[0] @ centers[0], 0.0)
    for i in range(1, k):
        total = float(d2.sum())
        pick = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[i] = x[pick]
        new = np.maximum(sq_norms - 2.0 * (x @ centers[i]) + centers[i] @ centers[i], 0.0)
        np.minimum(d2, new, out=d2)
    return centers


def fit_kmeans(
    x: np.ndarray,
    k: int,
    niter: int = 25,
    seed: int = 42,
    spherical: bool = True,
    device: str = "auto",
    init: str = "kmeans++",
) -> KMeansFit:
    """Fits k-means with FAISS on `x` (float32, one row per document).

    Args:
        init: `kmeans++` seeds the centroids with k-means++ (seeded); `random` lets FAISS start
            from randomly chosen points, which is faster but converges to worse optima.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_k(k, x.shape[0])
    if init not in ("kmeans++", "random"):
        raise KMeansError(f"kmeans.init '{init}' is not allowed; use kmeans++ or random")
    use_gpu = device == "cuda" or (device == "auto" and gpu_count() > 0)
    if device == "cuda" and gpu_count() == 0:
        raise KMeansError("kmeans.device is 'cuda' but FAISS sees no GPU; install faiss-gpu")
    start = time.perf_counter()
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        gpu=use_gpu,
        max_points_per_centroid=max(1, x.shape[0]),  # the caller already sampled
        min_points_per_centroid=1,
        verbose=False,
    )
    init_centroids = kmeans_plus_plus(x, k, seed) if init == "kmeans++" else None
    if init_centroids is not None and spherical:
        init_centroids /= np.maximum(np.linalg.norm(init_centroids, axis=1, keepdims=True), 1e-12)
    km.train(x, init_centroids=init_centroids)
    seconds = time.perf_counter() - start
    centroids = np.asarray(km.centroids, dtype=np.float32).copy()
    _, dist = assign(x, centroids)
    return KMeansFit(
        centroids=centroids,
        sample_size=int(x.shape[0]),
        inertia=float(np.square(dist, dtype=np.float64).sum()),
        objective=[float(v) for v in km.obj],
        seconds=seconds,
        device="cuda" if use_gpu else "cpu",
    )


def assign(
    x: np.ndarray, centroids: np.ndarray, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (int32) and Euclidean distance (float32) for every row of `x`.

    `x` may be a read-only memory map; only `chunk_size` rows are in memory at a time.
    """
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = x.shape[0]
    ids = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        chunk = np.ascontiguousarray(x[start : start + chunk_size], dtype=np.float32)
        d2, i = index.search(chunk, 1)
        ids[start : start + len(chunk)] = i[:, 0]
        dist[start : start + len(chunk)] = np.sqrt(np.maximum(d2[:, 0], 0.0))
    return ids, dist


def centroid_distances(centroids: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances between centroids (k x k, float32)."""
    c = centroids.astype(np.float64)
    sq = (c * c).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * c @ c.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2).astype(np.float32)

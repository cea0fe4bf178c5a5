"""FAISS k-means fitted on a seeded sample, then chunked nearest-centroid assignment.

The fit never sees more than `k * max_points_per_centroid` rows, drawn with a seeded generator
across all shards, so its memory does not depend on the corpus size. Assignment streams over a
shard's (memory-mapped) embeddings in fixed-size chunks, so its memory does not grow with the shard.
"""

from __future__ import annotations

import hashlib
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


SEEDING_POINTS_PER_CENTROID = 32
"""Greedy k-means++ seeds on a seeded subsample of at most this many rows per centroid."""


def greedy_kmeans_plus_plus(
    x: np.ndarray,
    k: int,
    seed: int,
    trials: int | None = None,
    points_per_centroid: int = SEEDING_POINTS_PER_CENTROID,
) -> np.ndarray:
    """Greedy k-means++ seeding on a subsample.

    Each step draws `trials` (default 2 + ln k, as scikit-learn) candidates with probability
    proportional to their squared distance from the nearest centre so far, and keeps the one
    that lowers the total squared distance most; the candidates' distances are one matrix
    product, so a step costs about what a plain k-means++ step does. Seeding runs on a seeded
    subsample of at most `k * points_per_centroid` rows, which the Lloyd iterations then refine
    on all of `x`.
    """
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if points_per_centroid and n > k * points_per_centroid:
        x = x[np.sort(rng.choice(n, size=k * points_per_centroid, replace=False))]
        n = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    trials = trials or 2 + int(np.log(k))
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", x, x)
    centers[0] = x[rng.integers(n)]
    d2 = np.maximum(sq_norms - 2.0 * (x @ centers[0]) + centers[0] @ centers[0], 0.0)
    for i in range(1, k):
        cumulative = np.cumsum(d2, dtype=np.float64)
        total = cumulative[-1]
        if total <= 0:
            picks = rng.integers(n, size=trials)
        else:
            picks = np.searchsorted(cumulative, rng.random(trials) * total, side="right")
            picks = np.minimum(picks, n - 1)
        cand = x[picks]
        dist = sq_norms[:, None] - 2.0 * (x @ cand.T) + np.einsum("ij,ij->i", cand, cand)
        np.maximum(dist, 0.0, out=dist)
        np.minimum(dist, d2[:, None], out=dist)
        best = int(np.argmin(dist.sum(axis=0, dtype=np.float64)))
        centers[i] = cand[best]
        d2 = dist[:, best].copy()
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
        init: `greedy_kmeans++` seeds with greedy k-means++ on a subsample
            (`greedy_kmeans_plus_plus`), `kmeans++` with plain k-means++ on all of `x`; both are
            seeded. `random` lets FAISS start from randomly chosen points, which is faster but
            converges to worse optima.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_k(k, x.shape[0])
    if init not in ("greedy_kmeans++", "kmeans++", "random"):
        raise KMeansError(
            f"kmeans.init '{init}' is not allowed; use greedy_kmeans++, kmeans++ or random"
        )
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
    seeders = {"greedy_kmeans++": greedy_kmeans_plus_plus, "kmeans++": kmeans_plus_plus}
    init_centroids = seeders[init](x, k, seed) if init in seeders else None
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


DRIFT_QUANTILES = (50, 95, 99)
"""Percentiles of the fit sample's distances to its nearest centroid kept as the drift baseline."""


def centroids_digest(centroids: np.ndarray) -> str:
    """A short content hash of the centroids (float32, C order), to pair files with one fit."""
    data = np.ascontiguousarray(centroids, dtype=np.float32)
    return hashlib.sha256(data.tobytes() + repr(data.shape).encode()).hexdigest()[:16]


def distance_stats(dist: np.ndarray) -> dict[str, float | int]:
    """Count, mean, max and the `DRIFT_QUANTILES` percentiles of nearest-centroid distances.

    `dist` is what `assign` returns (Euclidean distance to the nearest centroid), so the
    figures compare directly with the `distance` column of the cluster assignments.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.size == 0:
        raise KMeansError("no distances to summarize")
    stats: dict[str, float | int] = {
        "n": int(d.size),
        "mean": float(d.mean()),
        "max": float(d.max()),
    }
    for q, value in zip(DRIFT_QUANTILES, np.percentile(d, DRIFT_QUANTILES), strict=True):
        stats[f"p{q}"] = float(value)
    return stats


def share_beyond(dist: np.ndarray, threshold: float) -> float:
    """Share of rows whose nearest-centroid distance exceeds `threshold` (0.0 for no rows).

    With `threshold` the fit sample's 95th percentile, in-distribution data gives about 0.05;
    documents unlike anything the centroids were fitted on push it toward 1.
    """
    d = np.asarray(dist)
    return float((d > threshold).mean()) if d.size else 0.0


def leave_one_out_distances(
    x: np.ndarray, centroids: np.ndarray, spherical: bool, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-centroid distances of the fit sample, as fitted and with each row left out.

    The first array is what `assign` returns. The second is each row's distance to the nearest
    centroid had the row not taken part in the fit (to first order): its own centroid with the
    row's contribution removed (`(n c - x) / (n - 1)`, or for spherical k-means the direction of
    `|S| c - x` with `S` the members' sum), or the next-nearest centroid if that is closer. The
    fitted distances of a small sample understate those of new documents (every centroid sits
    among its own members); the left-out ones do not, so their percentiles are a fair baseline
    for drift. Both use the same Euclidean distance as `assign`.
    """
    k, dim = centroids.shape
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(c)
    n = x.shape[0]
    ids = np.empty(n, dtype=np.int64)
    own = np.empty(n, dtype=np.float32)
    other = np.full(n, np.inf, dtype=np.float32)
    sums = np.zeros((k, dim), dtype=np.float64)
    for start in range(0, n, chunk_size):
        chunk = np.ascontiguousarray(x[start : start + chunk_size], dtype=np.float32)
        d2, i = index.search(chunk, min(2, k))
        end = start + len(chunk)
        ids[start:end] = i[:, 0]
        own[start:end] = np.sqrt(np.maximum(d2[:, 0], 0.0))
        if k > 1:
            other[start:end] = np.sqrt(np.maximum(d2[:, 1], 0.0))
        order = np.argsort(i[:, 0], kind="stable")
        labels, first = np.unique(i[order, 0], return_index=True)
        sums[labels] += np.add.reduceat(chunk[order].astype(np.float64), first, axis=0)
    counts = np.bincount(ids, minlength=k)
    mass = np.linalg.norm(sums, axis=1)
    left_out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        chunk = np.asarray(x[start : start + chunk_size], dtype=np.float64)
        end = start + len(chunk)
        cid = ids[start:end]
        if spherical:
            moved = mass[cid, None] * c[cid] - chunk
            moved /= np.maximum(np.linalg.norm(moved, axis=1, keepdims=True), 1e-12)
        else:
            n_c = counts[cid, None].astype(np.float64)
            moved = (n_c * c[cid] - chunk) / np.maximum(n_c - 1.0, 1.0)
        d = np.linalg.norm(chunk - moved, axis=1)
        d[counts[cid] <= 1] = np.inf  # a singleton's centroid vanishes without it
        left_out[start:end] = np.minimum(d, other[start:end])
    # Only a lone row with k = 1 has no centroid left; its fitted distance (0) stands.
    return own, np.where(np.isfinite(left_out), left_out, own)

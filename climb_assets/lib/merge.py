"""Merging kept clusters into super-clusters by agglomerative linkage of their centroids.

The CLIMB reference pipeline uses Ward linkage cut at a Euclidean distance of 1.5; a target
number of super-clusters can be asked for instead (`maxclust`).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage


class MergeError(ValueError):
    """Merge settings that cannot be applied."""


def merge_centroids(
    centroids: np.ndarray,
    weights: np.ndarray | None = None,
    method: str = "ward",
    distance_threshold: float | None = 1.5,
    target_count: int | None = None,
) -> np.ndarray:
    """Super-cluster label (0..m-1) for each centroid.

    Labels are ordered by decreasing total weight (ties by first member), so super-cluster 0
    is the largest and labels are stable for the same input.

    Args:
        centroids: (n, d) centroids of the clusters to merge.
        weights: Per-cluster sizes used to order the labels (default: all ones).
        method: scipy linkage method.
        distance_threshold: Cut the dendrogram at this linkage distance.
        target_count: Or cut it into at most this many super-clusters.
    """
    n = centroids.shape[0]
    if n == 0:
        raise MergeError("no clusters survived pruning; lower the quality thresholds")
    if (distance_threshold is None) == (target_count is None):
        raise MergeError("give exactly one of merge.distance_threshold or merge.target_count")
    if target_count is not None and target_count > n:
        raise MergeError(
            f"merge.target_count = {target_count} but only {n} clusters were kept; "
            f"lower merge.target_count to at most {n}"
        )
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if n == 1:
        return np.zeros(1, dtype=np.int32)
    z = linkage(centroids.astype(np.float64), method=method)
    if target_count is not None:
        raw = fcluster(z, t=target_count, criterion="maxclust")
    else:
        raw = fcluster(z, t=distance_threshold, criterion="distance")
    groups = sorted(
        set(raw.tolist()),
        key=lambda g: (-weights[raw == g].sum(), int(np.flatnonzero(raw == g)[0])),
    )
    relabel = {g: i for i, g in enumerate(groups)}
    return np.array([relabel[g] for g in raw.tolist()], dtype=np.int32)


def too_few_warning(
    kept: int, merged: int, distance_threshold: float | None, encoder: str
) -> str | None:
    """A line when a distance threshold merged many kept clusters into 2 or fewer.

    The threshold is a distance in the encoder's space: 1.5 suits MiniLM and stella, not the
    static encoder (with it the demo merges into 2 super-clusters, with MiniLM into 9), and a
    search over 2 super-clusters has almost nothing to choose.
    """
    if distance_threshold is None or merged > 2 or kept <= 2:
        return None
    return (
        f"merge.distance_threshold {distance_threshold:g} merged {kept} kept clusters into "
        f"{merged} super-cluster(s), too few to search a mixture over: it is a distance in the "
        f"space of encoder {encoder!r}; set merge.target_count (and distance_threshold: null) "
        "or a smaller threshold"
    )

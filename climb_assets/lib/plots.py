"""Small PNG pictures for asset metadata (matplotlib, no display needed)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows a PNG inline (Dagster renders it in the asset's metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def cluster_sizes_png(size: np.ndarray, kept: np.ndarray) -> bytes:
    """Bar chart of documents per cluster, largest first, kept in blue and dropped in grey."""
    order = np.argsort(-size, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 3))
    colors = np.where(kept[order], "tab:blue", "lightgrey")
    ax.bar(np.arange(len(order)), size[order], color=colors, width=1.0)
    ax.set_xlabel("cluster (by size)")
    ax.set_ylabel("documents")
    ax.set_title(f"{int(kept.sum())} of {len(kept)} clusters kept (grey: pruned)")
    return _png(fig)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of `x`."""
    centered = x - x.mean(0, keepdims=True)
    if centered.shape[0] < 2:
        return np.zeros((centered.shape[0], 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    proj = centered @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))
    return proj


def centroid_projection_png(centroids: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> bytes:
    """Centroids projected on their first two principal components, coloured by super-cluster."""
    xy = pca_2d(centroids.astype(np.float64))
    fig, ax = plt.subplots(figsize=(6, 5))
    area = 10 + 200 * sizes / max(1, sizes.max())
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, s=area, cmap="tab20", alpha=0.8)
    for label in np.unique(labels):
        cx, cy = xy[labels == label].mean(0)
        ax.annotate(str(int(label)), (cx, cy), fontsize=9, weight="bold")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"{len(labels)} kept clusters in {len(np.unique(labels))} super-clusters")
    fig.colorbar(scatter, ax=ax, label="super-cluster")
    return _png(fig)


def weights_png(weights: np.ndarray, natural: np.ndarray, label: str = "ClimbMix") -> bytes:
    """Final mixture weights next to the natural token proportions, per super-cluster."""
    x = np.arange(len(weights))
    fig, ax = plt.subplots(figsize=(max(5, len(weights) * 0.5), 3))
    ax.bar(x - 0.2, natural, width=0.4, label="natural", color="lightgrey")
    ax.bar(x + 0.2, weights, width=0.4, label=label, color="tab:blue")
    ax.set_xticks(x)
    ax.set_xlabel("super-cluster")
    ax.set_ylabel("weight")
    ax.legend()
    return _png(fig)


def rounds_png(rounds: list[str], observed: list[float], predicted: list[float]) -> bytes:
    """Best observed and best predicted objective per search round."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(rounds, observed, "o-", label="best observed")
    ax.plot(rounds, predicted, "s--", label="best predicted")
    ax.set_xlabel("round")
    ax.set_ylabel("objective (higher is better)")
    ax.legend()
    return _png(fig)


def curves_png(proxies: list[str], tokens: list[int], objective: list[float], title: str) -> bytes:
    """One line per proxy: its objective (higher is better) against tokens trained on."""
    fig, ax = plt.subplots(figsize=(6, 4))
    by_proxy: dict[str, list[tuple[int, float]]] = {}
    for name, t, v in zip(proxies, tokens, objective, strict=True):
        by_proxy.setdefault(name, []).append((t, v))
    for name, points in sorted(by_proxy.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=1,
                label=name)  # fmt: skip
    ax.set_xlabel("tokens trained on")
    ax.set_ylabel("objective (higher is better)")
    ax.set_title(title)
    if len(by_proxy) <= 16:
        ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def trajectory_png(steps: list[int], weights: np.ndarray) -> bytes:
    """One line per super-cluster: its weight (rows of `weights`: one per step) over the steps."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i in range(weights.shape[1]):
        ax.plot(steps, weights[:, i], lw=1, label=f"sc {i}")
    ax.set_xlabel("DRO proxy step")
    ax.set_ylabel("domain weight")
    if weights.shape[1] <= 16:
        ax.legend(fontsize=6, ncol=2)
    return _png(fig)

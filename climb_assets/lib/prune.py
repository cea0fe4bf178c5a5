"""Cluster-level statistics, quality pruning and descriptions (top terms, representative docs).

Everything accumulates shard by shard, so memory depends on the number of clusters, not on the
number of documents.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z][a-z0-9_]{2,}")
STOP_WORDS = frozenset(
    """the and for that with this from are was were been have has had not but you your they their
    them its can will would should could may might must shall into onto than then there these those
    which who whom what when where why how all any each other some such only own same too very just
    also more most many much one two three use used using see set get gets returns return default
    none true false value values type types object objects example examples note parameters
    parameter str int bool float list dict tuple self cls args kwargs optional""".split()  # noqa: SIM905
)


@dataclass
class ClusterStats:
    """Per-cluster totals accumulated over shards."""

    size: np.ndarray
    tokens: np.ndarray
    distance_sum: np.ndarray
    score_sums: dict[str, np.ndarray]

    @classmethod
    def empty(cls, k: int, scorers: Sequence[str]) -> ClusterStats:
        return cls(
            size=np.zeros(k, dtype=np.int64),
            tokens=np.zeros(k, dtype=np.int64),
            distance_sum=np.zeros(k, dtype=np.float64),
            score_sums={s: np.zeros(k, dtype=np.float64) for s in scorers},
        )

    def add(
        self,
        cluster_ids: np.ndarray,
        n_tokens: np.ndarray,
        distances: np.ndarray,
        scores: Mapping[str, np.ndarray],
    ) -> None:
        k = self.size.shape[0]
        self.size += np.bincount(cluster_ids, minlength=k)
        self.tokens += np.bincount(cluster_ids, weights=n_tokens, minlength=k).astype(np.int64)
        self.distance_sum += np.bincount(cluster_ids, weights=distances, minlength=k)
        for name, values in scores.items():
            self.score_sums[name] += np.bincount(cluster_ids, weights=values, minlength=k)

    def means(self) -> dict[str, np.ndarray]:
        """Mean score per scorer and cluster (NaN for empty clusters)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return {n: s / self.size for n, s in self.score_sums.items()}

    def mean_distance(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.distance_sum / self.size


def below(value: float, threshold: float) -> str:
    """`value < threshold` with enough decimals that the two printed numbers differ."""
    for digits in range(2, 8):
        v, t = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if v != t:
            return f"{v} < {t}"
    return f"{value!r} < {threshold!r}"


def prune_clusters(
    size: np.ndarray,
    means: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    min_size: int = 1,
) -> tuple[np.ndarray, list[str]]:
    """Keeps a cluster when it has `min_size` documents and every scorer's mean meets its threshold.

    Returns:
        The kept flags and, per cluster, the reason (`kept` or every failed condition).
    """
    kept = np.ones(size.shape[0], dtype=bool)
    reasons: list[str] = []
    for c in range(size.shape[0]):
        failed = []
        if size[c] == 0:
            failed.append("empty")
        elif size[c] < min_size:
            failed.append(f"size {int(size[c])} < min_cluster_size {min_size}")
        else:
            for name, threshold in thresholds.items():
                mean = float(means[name][c])
                if not mean >= threshold:
                    failed.append(f"{name} mean {below(mean, threshold)}")
        kept[c] = not failed
        reasons.append("; ".join(failed) if failed else "kept")
    return kept, reasons


class TermCounter:
    """Class-based TF-IDF (c-TF-IDF) top terms per cluster, from a bounded number of documents."""

    def __init__(self, k: int, max_docs_per_cluster: int = 2000) -> None:
        self.counts: list[Counter[str]] = [Counter() for _ in range(k)]
        self.docs_seen = np.zeros(k, dtype=np.int64)
        self.max_docs = max_docs_per_cluster

    def add(self, texts: Sequence[str], cluster_ids: np.ndarray) -> None:
        for text, c in zip(texts, cluster_ids.tolist(), strict=True):
            if self.docs_seen[c] >= self.max_docs:
                continue
            self.docs_seen[c] += 1
            words = _WORD.findall(text.lower())
            self.counts[c].update(w for w in words if w not in STOP_WORDS)

    def top_terms(self, n: int = 10) -> list[list[str]]:
        totals = Counter[str]()
        for counter in self.counts:
            totals.update(counter)
        mean_words = sum(totals.values()) / max(1, len(self.counts))
        result = []
        for counter in self.counts:
            size = sum(counter.values())
            if size == 0:
                result.append([])
                continue
            scored = (
                (cnt / size * math.log(1.0 + mean_words / totals[w]), w)
                for w, cnt in counter.items()
            )
            result.append([w for _, w in heapq.nlargest(n, scored)])
        return result


class NearestDocuments:
    """The `m` documents closest to each centroid (representative samples), over all shards."""

    def __init__(self, k: int, m: int = 3) -> None:
        self.m = m
        self.best: list[list[tuple[float, str, str]]] = [[] for _ in range(k)]

    def add(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str],
        cluster_ids: np.ndarray,
        distances: np.ndarray,
    ) -> None:
        if self.m <= 0:
            return
        order = np.lexsort((np.asarray(doc_ids), distances, cluster_ids))
        taken: Counter[int] = Counter()
        for i in order.tolist():
            c = int(cluster_ids[i])
            if taken[c] >= self.m:
                continue
            taken[c] += 1
            self.best[c].append((float(distances[i]), doc_ids[i], texts[i][:300]))
        for c in taken:
            self.best[c] = sorted(self.best[c])[: self.m]

    def result(self) -> list[list[tuple[float, str, str]]]:
        return self.best


@dataclass(frozen=True)
class FamilyLoss:
    """One value of a document column (a language, a source) that pruning removes nearly whole."""

    column: str
    value: str
    documents: int
    dropped: int

    @property
    def share(self) -> float:
        return self.dropped / self.documents

    def message(self) -> str:
        return (
            f"pruning drops {self.dropped} of {self.documents} documents with "
            f"{self.column} = {self.value!r} ({self.share:.0%}); if that {self.column} should "
            "stay, lower the quality thresholds or score it with its own rules"
        )


class FamilyCounter:
    """Documents per (column value, cluster), to see which families pruning removes whole.

    Quality rules tuned on one language or source can drop another almost entirely while every
    per-cluster reason looks reasonable; counting the corpus's own label columns (for example a
    ``language`` column in ``corpus.extra_columns``) per cluster shows it. A column with more than
    ``max_values`` distinct values (ids, URLs) is not a family and is skipped.
    """

    def __init__(self, k: int, max_values: int = 1000) -> None:
        self.k, self.max_values = k, max_values
        self.counts: dict[str, dict[str, np.ndarray]] = {}
        self.skipped: set[str] = set()

    def add(self, column: str, values: Sequence[object], cluster_ids: np.ndarray) -> None:
        """Counts one shard's documents of ``column`` (values aligned with ``cluster_ids``)."""
        if column in self.skipped:
            return
        per_value = self.counts.setdefault(column, {})
        labels = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
        for value in np.unique(labels):
            if value not in per_value:
                if len(per_value) >= self.max_values:
                    self.skipped.add(column)
                    del self.counts[column]
                    return
                per_value[value] = np.zeros(self.k, np.int64)
            per_value[value] += np.bincount(cluster_ids[labels == value], minlength=self.k)

    def losses(
        self, kept: np.ndarray, min_documents: int = 20, min_share: float = 0.9
    ) -> list[FamilyLoss]:
        """Values with at least ``min_documents`` of which ``min_share`` or more are dropped."""
        out = []
        for column, per_value in sorted(self.counts.items()):
            for value, counts in sorted(per_value.items()):
                total = int(counts.sum())
                dropped = int(counts[~kept].sum())
                if total >= min_documents and dropped >= min_share * total:
                    out.append(FamilyLoss(column, value, total, dropped))
        return out

"""Evaluation targets: held-out text (bits per byte) and multiple choice (accuracy).

The search maximises one objective, the weighted sum of every target's score, where a text
target scores `-bpb` (lower bits per byte is better, so its negative is higher-is-better) and a
choice target scores its accuracy. Higher objective is always better.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from climb_assets.lib.corpus import content_id


class TargetError(ValueError):
    """A target that cannot be evaluated as configured."""


@dataclass(frozen=True)
class Target:
    """One loaded target."""

    name: str
    kind: str
    weight: float
    texts: list[str]
    items: list[dict[str, Any]]

    @property
    def size(self) -> int:
        return len(self.texts) if self.kind == "text" else len(self.items)


def _read_texts(path: Path, text_column: str) -> list[str]:
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if text_column not in table.column_names:
            raise TargetError(
                f"target file {path} has no column '{text_column}' "
                f"(columns: {', '.join(table.column_names)}); set targets[].text_column"
            )
        return [t for t in table.column(text_column).to_pylist() if isinstance(t, str)]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TargetError(
            f"target file {path} is not UTF-8 (byte {exc.start}); re-encode it"
        ) from exc
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r[text_column] for r in rows if isinstance(r.get(text_column), str)]
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise TargetError(f"{where}: expected an object with context, choices, answer")
    for key in ("context", "choices", "answer"):
        if key not in item:
            raise TargetError(f"{where}: missing key '{key}' (need context, choices, answer)")
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise TargetError(f"{where}: 'choices' must be a list of at least two strings")
    answer = item["answer"]
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise TargetError(
            f"{where}: 'answer' must be an index into choices (0..{len(choices) - 1})"
        )
    return {"context": str(item["context"]), "choices": [str(c) for c in choices], "answer": answer}


def load_target(
    name: str,
    kind: str,
    path: str,
    weight: float = 1.0,
    text_column: str = "text",
    max_documents: int | None = None,
) -> Target:
    """Loads a target file: text (.txt split on blank lines, .jsonl, .parquet) or choice (.jsonl).

    Raises:
        TargetError: missing or empty file, wrong format, unknown kind.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise TargetError(f"target '{name}': file {file} does not exist; fix targets[].path")
    if kind == "text":
        texts = _read_texts(file, text_column)[: max_documents or None]
        if not any(t.strip() for t in texts):
            raise TargetError(f"target '{name}': {file} holds no text; point it at held-out text")
        return Target(name, kind, weight, [t for t in texts if t.strip()], [])
    if kind == "choice":
        lines = [ln for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        items = [_check_item(json.loads(ln), f"{file}:{i + 1}") for i, ln in enumerate(lines)]
        items = items[: max_documents or None]
        if not items:
            raise TargetError(f"target '{name}': {file} holds no items")
        return Target(name, kind, weight, [], items)
    raise TargetError(f"target '{name}': unknown kind '{kind}'; use text or choice")


def target_hashes(target: Target) -> set[str]:
    """Content hashes of a target's documents (text) or contexts (choice)."""
    texts = target.texts if target.kind == "text" else [i["context"] for i in target.items]
    return {content_id(t) for t in texts}


def objective(scores: Mapping[str, Mapping[str, float]], targets: Sequence[Target]) -> float:
    """The weighted objective (higher is better): sum of weight * (-bpb or accuracy)."""
    total = 0.0
    for t in targets:
        s = scores[t.name]
        total += t.weight * (-s["bpb"] if t.kind == "text" else s["accuracy"])
    return total


def target_documents(target: Target) -> list[str]:
    """The texts that stand for a target in embedding space: its documents, or for a choice
    target each question's context followed by its correct answer."""
    if target.kind == "text":
        return [t for t in target.texts if t.strip()]
    return [f"{i['context']} {i['choices'][int(i['answer'])]}" for i in target.items]


def super_cluster_distribution(
    nearest_cluster: Sequence[int], cluster_to_super: Sequence[int], n_super: int
) -> list[float]:
    """The share of a target's documents in each super-cluster.

    Args:
        nearest_cluster: For each target document, its nearest *kept* cluster (documents are
            assigned among the kept centroids only, so every one lands in a super-cluster).
        cluster_to_super: Super-cluster of each cluster id (-1 for a pruned cluster).
        n_super: Number of super-clusters.

    Returns:
        Shares summing to 1.
    """
    mapping = np.asarray(cluster_to_super, dtype=np.int64)
    nearest = np.asarray(nearest_cluster, dtype=np.int64)
    if nearest.size == 0:
        raise TargetError("the target has no documents to place among the super-clusters")
    supers = mapping[nearest]
    if np.any(supers < 0):
        raise TargetError(
            "a target document was placed in a pruned cluster; assign among kept ones"
        )
    counts = np.bincount(supers, minlength=n_super).astype(np.float64)
    return (counts / counts.sum()).tolist()

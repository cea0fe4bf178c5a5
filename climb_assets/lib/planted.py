"""A generated corpus with planted structure, where the best mixture for a target is known.

Each domain speaks its own artificial language: words built from a letter set no other domain
uses, strung together by a domain-specific Markov chain with its own sentence lengths. The
target is held-out text of one domain, so the best mixture puts (nearly) all weight on the
super-cluster(s) holding that domain, while the natural mixture gives it only its small share.
Used by the search-quality test and benchmark; never by the product's algorithms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LETTERS = (
    ("bdg", "ao"),
    ("ktp", "ei"),
    ("mnr", "uy"),
    ("slv", "ae"),
    ("fhz", "io"),
    ("cjw", "ou"),
)


@dataclass(frozen=True)
class PlantedCorpus:
    """Where the generated corpus, its target and its ground truth are."""

    corpus: Path
    target: Path
    target_domain: int
    docs_per_domain: list[int]


def _vocabulary(domain: int, size: int, rng: np.random.Generator) -> list[str]:
    consonants, vowels = LETTERS[domain % len(LETTERS)]
    words: set[str] = set()
    while len(words) < size:
        n_syllables = int(rng.integers(1, 4))
        words.add("".join(rng.choice(list(consonants)) + rng.choice(list(vowels))
                           for _ in range(n_syllables)))  # fmt: skip
    return sorted(words)


def _document(vocab: list[str], chain: np.ndarray, sentence: int, rng: np.random.Generator) -> str:
    n_words = int(rng.integers(40, 90))
    word = int(rng.integers(len(vocab)))
    out, since = [], 0
    for _ in range(n_words):
        out.append(vocab[word])
        since += 1
        if since >= sentence and rng.random() < 0.5:
            out[-1] += "."
            since = 0
        word = int(rng.choice(len(vocab), p=chain[word]))
    return " ".join(out).capitalize() + "."


def build_planted_corpus(
    out_dir: str | Path,
    docs_per_domain: tuple[int, ...] = (30, 90, 90, 90),
    target_domain: int = 0,
    target_docs: int = 30,
    vocab_size: int = 40,
    seed: int = 0,
) -> PlantedCorpus:
    """Writes `corpus/domain-mixed-*.jsonl` shards and `target.txt` under `out_dir`."""
    if not 0 <= target_domain < len(docs_per_domain) <= len(LETTERS):
        raise ValueError(f"target_domain must index docs_per_domain (<= {len(LETTERS)} domains)")
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    rows, target = [], []
    for d, count in enumerate(docs_per_domain):
        vocab = _vocabulary(d, vocab_size, rng)
        chain = rng.dirichlet(np.full(vocab_size, 0.1), size=vocab_size)
        sentence = 4 + 3 * d
        extra = target_docs if d == target_domain else 0
        docs = [_document(vocab, chain, sentence, rng) for _ in range(count + extra)]
        target += docs[count:]
        rows += [{"doc_id": f"d{d}-{i:04d}", "text": t, "domain": str(d)}
                 for i, t in enumerate(docs[:count])]  # fmt: skip
    order = rng.permutation(len(rows))
    for s, part in enumerate(np.array_split(order, 2)):
        lines = "".join(json.dumps(rows[i]) + "\n" for i in part)
        (root / "corpus" / f"shard-{s}.jsonl").write_text(lines)
    (root / "target.txt").write_text("\n\n".join(target) + "\n")
    return PlantedCorpus(root / "corpus", root / "target.txt", target_domain, list(docs_per_domain))

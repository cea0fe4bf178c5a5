"""Search side: proxy tokenizer and cluster tokens, the bootstrapping loop, the ClimbMix manifest.

Why one partitioned graph asset. Every round needs the previous round's predictor, and Dagster
rejects dependency loops through two or more asset keys whatever the partition mapping; an asset
may depend on itself only on time-window partitions. So the four per-round products
(`mixture_batches`, `proxy_checkpoints`, `proxy_evaluations`, `predictor_models`) are the outputs
of one `@graph_multi_asset` partitioned by iteration, whose input is its own `predictor_models`
output one partition back (`TimeWindowPartitionMapping(-1, -1)`). The partitions are daily
windows formatted `iter_%j`, starting on day 1 of 1900 (the date `strptime` gives `iter_001`),
so keys read `iter_001, iter_002, ...` and a backfill of all partitions runs them in order.
Lineage in the UI is honest: each round's outputs hang off the previous round's predictor, and
inside a round every proxy is its own step (dynamic fan-out), GPU-tagged for the executors.

The alternative, one set of asset keys per round from a factory, gives cleaner per-round
lineage but is not partitioning and fixes the rounds at load time just the same.
"""

import datetime as dt
import hashlib
import json
import time
import warnings
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.config import Profile, resolve_location
from climb_assets.defs.common import registered_shards, require_files
from climb_assets.defs.data_side import shard_file, super_clusters
from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib import mixture, plots, predictor, proxy, tokens
from climb_assets.lib.storage import Store
from climb_assets.lib.targets import Target, load_target, objective, target_hashes

# allow_nonexistent_upstream_partitions is beta in dagster 1.13; round 1 has no predecessor.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*allow_nonexistent.*")

GROUP = "search_side"
IO = "climb_io"
FIRST_DAY = dt.datetime(1900, 1, 1)


def iteration_partitions(n_rounds: int) -> dg.TimeWindowPartitionsDefinition:
    """Partitions `iter_001 .. iter_NNN`, one per search round."""
    return dg.TimeWindowPartitionsDefinition(
        start=FIRST_DAY,
        end=FIRST_DAY + dt.timedelta(days=n_rounds),
        cron_schedule="0 0 * * *",
        fmt="iter_%j",
    )


def round_keys(profile: Profile) -> list[str]:
    return [f"iter_{i + 1:03d}" for i in range(len(profile.search.rounds))]


def _sampler(profile: Profile) -> mixture.SamplerSettings:
    s = profile.search
    return mixture.SamplerSettings(
        temperature=s.temperature, max_ratio=s.max_ratio, min_weight=s.min_weight
    )


PROXY_KEYS = ("arch", "n_layer", "n_embd", "n_head", "seq_len", "batch_size", "train_tokens", "lr")
PROXY_KEYS += ("warmup_fraction", "weight_decay", "seed")


def proxy_config(profile: Profile) -> proxy.ProxyConfig:
    """The proxy configuration: the profile's preset with the keys it sets overriding it."""
    p = profile.proxy
    overrides = {k: getattr(p, k) for k in PROXY_KEYS if getattr(p, k) is not None}
    return proxy.proxy_preset(p.preset, **overrides)


def proxy_device(profile: Profile) -> str:
    """`cuda` when asked for or available (auto), else `cpu`."""
    import torch

    if profile.proxy.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("proxy.device is 'cuda' but torch sees no GPU; use auto or cpu")
    return "cuda" if profile.proxy.device != "cpu" and torch.cuda.is_available() else "cpu"


def _cluster_summary(store: Store) -> dict[str, Any]:
    require_files(store, {"cluster_tokens": "cluster_tokens/summary.json"}, "cluster_tokens")
    return store.read_json("cluster_tokens/summary.json")


def _load_targets(store: Store) -> list[Target]:
    require_files(store, {"targets": "targets/targets.json"}, "search_targets")
    return [
        Target(t["name"], t["kind"], t["weight"], t["texts"], t["items"])
        for t in store.read_json("targets/targets.json")
    ]


@dg.asset(group_name=GROUP, deps=[super_clusters], kinds={"tokenizers"})
def proxy_tokenizer(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """The proxies' tokenizer: byte-level BPE trained on a seeded sample of kept documents."""
    profile, store = climb.settings(), climb.store()
    t = profile.tokenizer
    if t.kind == "pretrained":
        tok = tokens.load_tokenizer(climb.fetch(str(t.path)))
        sampled = 0
    else:
        texts = []
        for shard in registered_shards(context):
            members = store.read_parquet(shard_file("super_clusters/members", shard))
            docs = store.read_parquet(shard_file("corpus_documents", shard), ["text"])
            kept = members.column("super_cluster_id").is_valid().to_numpy(zero_copy_only=False)
            texts += [x for x, k in zip(docs.column("text").to_pylist(), kept, strict=True) if k]
        rng = np.random.default_rng(t.seed)
        pick = np.sort(rng.permutation(len(texts))[: t.sample_documents])
        sampled = len(pick)
        start = time.perf_counter()
        tok = tokens.train_bpe_tokenizer([texts[i] for i in pick], vocab_size=t.vocab_size)
        context.log.info(
            f"trained BPE on {sampled} documents in {time.perf_counter() - start:.1f}s"
        )
    store.write_bytes("tokenizer/tokenizer.json", tok.to_str().encode())
    digest = tokens.tokenizer_hash(tok)
    store.write_json("tokenizer/info.json", {"hash": digest, "kind": t.kind, "seed": t.seed})
    return dg.MaterializeResult(
        metadata={
            "tokenizer_hash": digest,
            "kind": t.kind,
            "vocab_size": tok.get_vocab_size(),
            "sample_documents": sampled,
            "seed": t.seed,
            "path": dg.MetadataValue.path(store.uri("tokenizer/tokenizer.json")),
        }
    )


@dg.asset(group_name=GROUP, deps=[proxy_tokenizer, super_clusters], kinds={"numpy"})
def cluster_tokens(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """Each super-cluster's documents tokenized (EOS after each) into arrays proxies sample from."""
    store = climb.store()
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    eos = tokens.eos_id(tok)
    members, texts = [], []
    for shard in registered_shards(context):
        m = pl.from_arrow(store.read_parquet(shard_file("super_clusters/members", shard)))
        d = pl.from_arrow(
            store.read_parquet(shard_file("corpus_documents", shard), ["doc_id", "text"])
        )
        joined = m.join(d, on="doc_id").filter(pl.col("super_cluster_id").is_not_null())
        members.append(joined.select("doc_id", "cluster_id", "super_cluster_id"))
        texts += joined.get_column("text").to_list()
    table = pl.concat(members).with_row_index("row")
    n_super = int(table.get_column("super_cluster_id").max()) + 1
    counts = []
    for sc in range(n_super):
        part = table.filter(pl.col("super_cluster_id") == sc).sort("doc_id")
        ids, offsets = tokens.tokenize_documents(
            tok, [texts[i] for i in part.get_column("row").to_list()], eos
        )
        store.write_npy(f"cluster_tokens/sc_{sc:03d}.tokens.npy", ids)
        store.write_parquet(
            f"cluster_tokens/sc_{sc:03d}.docs.parquet",
            pa.table(
                {
                    "doc_id": part.get_column("doc_id").to_arrow(),
                    "cluster_id": part.get_column("cluster_id").to_arrow(),
                    "n_tokens": pa.array(np.diff(offsets), pa.int64()),
                }
            ),
        )
        counts.append(len(ids))
    digest = hashlib.sha256(json.dumps(counts).encode()).hexdigest()[:16]
    tok_hash = tokens.tokenizer_hash(tok)
    summary = {"tokens": counts, "tokenizer_hash": tok_hash, "digest": f"{tok_hash}-{digest}"}
    store.write_json("cluster_tokens/summary.json", summary)
    prior = mixture.natural_prior(counts)
    return dg.MaterializeResult(
        metadata={
            "super_clusters": n_super,
            "tokens": int(sum(counts)),
            "tokenizer_hash": tok_hash,
            "natural_prior": [round(float(x), 4) for x in prior],
        }
    )


@dg.asset(group_name=GROUP, deps=["corpus_documents"])
def search_targets(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """The profile's evaluation targets, loaded, validated and checked for corpus overlap."""
    profile, store = climb.settings(), climb.store()
    if not profile.targets:
        raise ValueError("the profile lists no targets; add targets: [{name, kind, path}]")
    hashes: set[str] = set()
    for shard in registered_shards(context):
        docs = store.read_parquet(shard_file("corpus_documents", shard), ["text_hash"])
        hashes.update(docs.column("text_hash").to_pylist())
    loaded, metadata = [], {}
    for t in profile.targets:
        path = climb.fetch(resolve_location(t.path))
        target = load_target(t.name, t.kind, path, t.weight, t.text_column, t.max_documents)
        overlap = len(target_hashes(target) & hashes)
        metadata[f"{t.name}_size"] = target.size
        metadata[f"{t.name}_overlap"] = overlap
        if overlap:
            message = (
                f"target '{t.name}': {overlap} of {target.size} documents also appear in the "
                "training corpus; remove them from the target or the corpus"
            )
            if t.on_overlap == "error":
                raise ValueError(message + " (or set on_overlap: warn)")
            context.log.warning(message)
        loaded.append(
            {"name": t.name, "kind": t.kind, "weight": t.weight, "texts": target.texts,
             "items": target.items}
        )  # fmt: skip
    store.write_json("targets/targets.json", loaded)
    return dg.MaterializeResult(metadata={"targets": [t.name for t in profile.targets], **metadata})


def _round_index(profile: Profile, key: str) -> int:
    keys = round_keys(profile)
    if key not in keys:
        raise ValueError(f"round {key} is not one of {keys}; the profile has {len(keys)} rounds")
    return keys.index(key)


def _trained(store: Store, profile: Profile, upto: int) -> tuple[set[str], np.ndarray]:
    """Keys and weights of the mixtures proposed by the rounds before `upto`."""
    done: set[str] = set()
    weights: list[list[float]] = []
    for key in round_keys(profile)[:upto]:
        rel = f"search/{key}/mixtures.parquet"
        if store.exists(rel):
            table = store.read_parquet(rel, ["key", "weights"])
            done.update(table.column("key").to_pylist())
            weights += table.column("weights").to_pylist()
    return done, np.asarray(weights, dtype=np.float64)


def _round_seed(profile: Profile, index: int, salt: int) -> int:
    return profile.search.seed * 1000 + index * 10 + salt


@dg.op(
    ins={
        "previous_predictor": dg.In(),
        "cluster_tokens": dg.In(dg.Nothing),
        "search_targets": dg.In(dg.Nothing),
    },
    out=dg.Out(io_manager_key=IO),
)
def propose_mixtures(
    context: dg.OpExecutionContext, climb: ClimbResource, previous_predictor: Any
) -> dict:
    """Round 1: Dirichlet samples around the token prior. Later: predictor top-set exploration."""
    profile, store = climb.settings(), climb.store()
    key = context.partition_key
    index = _round_index(profile, key)
    n = profile.search.rounds[index]
    if index > 0:
        previous = round_keys(profile)[index - 1]
        if previous_predictor is None or not store.exists(f"search/{previous}/predictor.txt"):
            raise ValueError(
                f"round {key} needs the predictor of round {previous}, which is missing; "
                f"materialize round {previous} first (rounds run in order)"
            )
    prior = mixture.natural_prior(_cluster_summary(store)["tokens"])
    trained, trained_weights = _trained(store, profile, index)
    seed, design = _round_seed(profile, index, 1), profile.search.design
    predicted: list[float | None] = [None] * n
    if index == 0:
        weights = mixture.sample_mixtures(
            prior, n, seed, _sampler(profile), exclude=trained, design=design
        )
        method = f"dirichlet, {design} picks"
    else:
        booster = predictor.load_predictor(
            store.read_bytes(f"search/{previous}/predictor.txt").decode()
        )
        pool = mixture.candidate_pool(prior, profile.search.candidates, seed, _sampler(profile))
        scores = predictor.predict(booster, pool)
        top = max(n * n, profile.search.top_k_min)
        rows = mixture.select_next(
            pool, scores, n, seed + 5, exclude_keys=trained, top=top, design=design,
            trained=trained_weights,
        )  # fmt: skip
        weights, predicted = pool[rows], [float(scores[r]) for r in rows]
        method = f"predictor top-{top} of {len(pool)}, {design} picks"
    mixtures = [
        {"mixture_id": f"{key}-m{j:03d}", "key": mixture.mixture_key(w), "weights": w.tolist(),
         "predicted": predicted[j]}
        for j, w in enumerate(weights)
    ]  # fmt: skip
    store.write_parquet(
        f"search/{key}/mixtures.parquet",
        pa.table(
            {
                "round": [key] * n,
                "mixture_id": [m["mixture_id"] for m in mixtures],
                "key": [m["key"] for m in mixtures],
                "weights": pa.array([m["weights"] for m in mixtures], pa.list_(pa.float64())),
                "predicted_objective": pa.array(predicted, pa.float64()),
                "method": [method] * n,
            }
        ),
    )
    context.add_output_metadata(
        {
            "round": key,
            "proxies": n,
            "method": method,
            "seed": seed,
            "already_trained": len(trained),
        }
    )
    return {"round": key, "method": method, "seed": seed, "mixtures": mixtures}


@dg.op(out=dg.DynamicOut(io_manager_key=IO))
def each_mixture(batch: dict):
    """One dynamic output per mixture, so every proxy run is its own step."""
    for m in batch["mixtures"]:
        yield dg.DynamicOutput(m, mapping_key=m["mixture_id"].replace("-", "_"))


def checkpoint_id(weights_key: str, cfg: proxy.ProxyConfig, data_digest: str) -> str:
    """Content address of a proxy run: same mixture, config, seed and data give the same id."""
    blob = json.dumps([weights_key, cfg.digest(), data_digest]).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _checkpoint_complete(store: Store, rel: str) -> bool:
    """Whether the store holds a finished checkpoint under `rel` (every file and the marker)."""
    local = store.local_path(rel)
    if local is not None:
        return proxy.checkpoint_complete(local)
    names = (*proxy.CHECKPOINT_FILES, proxy.CHECKPOINT_MARKER)
    return all(store.exists(f"{rel}/{name}") for name in names)


def _scratch_folder(store: Store, rel: str) -> str:
    """Where a checkpoint is written: in place when local, else a cache folder then uploaded."""
    local = store.local_path(rel)
    return str(local if local is not None else store.cache_path(rel))


@dg.op(out=dg.Out(io_manager_key=IO), tags=GPU_OP_TAGS, pool=GPU_POOL)
def train_proxy(context: dg.OpExecutionContext, climb: ClimbResource, spec: dict) -> dict:
    """Trains one proxy LM on one mixture, or reuses the finished checkpoint of the same run.

    On a remote root the checkpoint is written to the cache folder and uploaded with its `DONE`
    marker last; a run killed mid-upload is retrained, never half-read.
    """
    profile, store = climb.settings(), climb.store()
    cfg = proxy_config(profile)
    summary = _cluster_summary(store)
    run_id = checkpoint_id(spec["key"], cfg, summary["digest"])
    rel = f"proxies/{run_id}"
    info = {"mixture_id": spec["mixture_id"], "key": spec["key"], "weights": spec["weights"],
            "checkpoint": store.uri(rel), "run_id": run_id}  # fmt: skip
    if _checkpoint_complete(store, rel):
        stats = store.read_json(f"{rel}/proxy.json")
        context.log.info(f"reusing finished proxy {run_id} for {spec['mixture_id']}")
        return {**info, "reused": True, **stats.get("extra", {}).get("training", {})}
    arrays = [
        store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(len(spec["weights"]))
    ]
    vocab = tokens.load_tokenizer(
        str(store.local_copy("tokenizer/tokenizer.json"))
    ).get_vocab_size()
    device = proxy_device(profile)
    result = proxy.train_proxy(
        cfg, arrays, np.asarray(spec["weights"]), vocab, device=device, log=context.log.info,
        threads=profile.proxy.threads,
    )  # fmt: skip
    training = {
        "steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "final_loss": round(result.final_loss, 5), "device": device,
        "epochs_per_cluster": [round(e, 4) for e in result.epochs_per_cluster],
    }  # fmt: skip
    folder = _scratch_folder(store, rel)
    proxy.save_checkpoint(
        result.model, cfg, folder,
        {"mixture": spec, "tokenizer_hash": summary["tokenizer_hash"], "data": summary["digest"],
         "training": training},
    )  # fmt: skip
    store.put_folder(folder, rel, last=proxy.CHECKPOINT_MARKER)
    return {**info, "reused": False, **training}


@dg.op(out=dg.Out(io_manager_key=IO), tags=GPU_OP_TAGS, pool=GPU_POOL)
def evaluate_proxy(context: dg.OpExecutionContext, climb: ClimbResource, trained: dict) -> dict:
    """Scores one proxy on every target and combines them into the objective (higher is better)."""
    profile, store = climb.settings(), climb.store()
    targets = _load_targets(store)
    cfg = proxy_config(profile)
    digest = hashlib.sha256(store.read_bytes("targets/targets.json")).hexdigest()[:16]
    cached = f"proxies/{trained['run_id']}/eval-{digest}.json"
    if store.exists(cached):
        scores = store.read_json(cached)
    else:
        model, _, _ = proxy.load_checkpoint(store.local_copy(f"proxies/{trained['run_id']}"))
        tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
        device = proxy_device(profile)
        model.to(device)
        scores = {}
        for t in targets:
            if t.kind == "text":
                scores[t.name] = proxy.evaluate_bpb(model, tok, t.texts, cfg.seq_len, device)
            else:
                scores[t.name] = proxy.evaluate_choice(model, tok, t.items, cfg.seq_len, device)
        store.write_json(cached, scores)
    value = objective(scores, targets)
    context.log.info(f"{trained['mixture_id']}: objective {value:.4f}")
    return {"mixture_id": trained["mixture_id"], "key": trained["key"],
            "weights": trained["weights"], "scores": scores, "objective": value}  # fmt: skip


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


@dg.op(out=dg.Out(io_manager_key=IO))
def gather_evaluations(
    context: dg.OpExecutionContext, climb: ClimbResource, evaluations: list
) -> dict:
    """The round's target scores and objective per mixture."""
    store, key = climb.store(), context.partition_key
    evaluations = sorted(evaluations, key=lambda e: e["mixture_id"])
    names = sorted(evaluations[0]["scores"]) if evaluations else []
    columns: dict[str, Any] = {
        "round": [key] * len(evaluations),
        "mixture_id": [e["mixture_id"] for e in evaluations],
        "key": [e["key"] for e in evaluations],
        "weights": pa.array([e["weights"] for e in evaluations], pa.list_(pa.float64())),
        "objective": pa.array([e["objective"] for e in evaluations], pa.float64()),
    }
    for name in names:
        for metric in sorted(evaluations[0]["scores"][name]):
            columns[f"{name}_{metric}"] = pa.array(
                [e["scores"][name][metric] for e in evaluations], pa.float64()
            )
    store.write_parquet(f"search/{key}/evaluations.parquet", pa.table(columns))
    best = max(evaluations, key=lambda e: e["objective"])
    context.add_output_metadata(
        {"proxies": len(evaluations), "best_objective": round(best["objective"], 5),
         "best_mixture": best["mixture_id"]}
    )  # fmt: skip
    return {"round": key, "best_objective": best["objective"], "best_mixture": best["mixture_id"]}


def _all_evaluations(store: Store, profile: Profile, upto: int) -> pl.DataFrame:
    frames = []
    for key in round_keys(profile)[: upto + 1]:
        rel = f"search/{key}/evaluations.parquet"
        require_files(store, {key: rel}, "proxy_evaluations")
        frames.append(
            pl.from_arrow(store.read_parquet(rel, ["round", "mixture_id", "weights", "objective"]))
        )
    return pl.concat(frames)


@dg.op(out=dg.Out(io_manager_key=IO))
def fit_round_predictor(
    context: dg.OpExecutionContext, climb: ClimbResource, evaluations: dict, previous_predictor: Any
) -> dict:
    """LightGBM predictor fitted on every (mixture, objective) pair of this and earlier rounds."""
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    index = _round_index(profile, key)
    data = _all_evaluations(store, profile, index)
    x = np.array(data.get_column("weights").to_list(), dtype=np.float64)
    y = data.get_column("objective").to_numpy()
    pr = profile.predictor
    params = {
        "learning_rate": pr.learning_rate, "max_depth": pr.max_depth,
        "min_child_samples": pr.min_child_samples, "reg_alpha": pr.reg_alpha,
        "reg_lambda": pr.reg_lambda, "num_boost_round": pr.num_boost_round,
        "early_stopping_rounds": pr.early_stopping_rounds,
    }  # fmt: skip
    seed = _round_seed(profile, index, 2)
    names = [f"sc_{i:03d}" for i in range(x.shape[1])]
    fit = predictor.fit_predictor(
        x, y, seed, params=params, cv_folds=pr.cv_folds, feature_names=names
    )
    store.write_bytes(f"search/{key}/predictor.txt", predictor.predictor_to_string(fit).encode())
    prior = mixture.natural_prior(_cluster_summary(store)["tokens"])
    pool = mixture.candidate_pool(prior, profile.search.candidates, seed, _sampler(profile))
    pool_scores = predictor.predict(fit.booster, pool)
    store.write_parquet(
        f"search/{key}/predictions.parquet",
        pa.table(
            {
                "round": [key] * len(y),
                "mixture_id": data.get_column("mixture_id").to_arrow(),
                "trained_in": data.get_column("round").to_arrow(),
                "actual": pa.array(y, pa.float64()),
                "cv_predicted": pa.array(fit.cv_predictions, pa.float64()),
                "fitted": pa.array(predictor.predict(fit.booster, x), pa.float64()),
            }
        ),
    )
    summary = {
        "round": key, "points": len(y), "seed": seed, "num_rounds": fit.num_rounds,
        "cv_spearman": fit.cv_spearman, "best_observed": float(y.max()),
        "best_predicted": float(pool_scores.max()), "candidates": len(pool),
        "feature_importance": dict(zip(names, map(float, fit.feature_importance), strict=True)),
    }  # fmt: skip
    store.write_json(f"search/{key}/round.json", summary)
    store.write_parquet(
        f"search/{key}/round.parquet",
        pa.table(
            {
                **{k: [v] for k, v in summary.items() if k != "feature_importance"},
                "feature_importance": [json.dumps(summary["feature_importance"])],
            }
        ),
    )
    scatter = predictor.predicted_vs_actual_png(y, fit.cv_predictions, f"{key}: out-of-fold")
    bars = predictor.feature_importance_png(fit.feature_importance, names)
    context.add_output_metadata(
        {
            "points": len(y),
            "seed": seed,
            "cv_spearman": float("nan") if fit.cv_spearman is None else round(fit.cv_spearman, 4),
            "best_observed_objective": round(float(y.max()), 5),
            "best_predicted_objective": round(float(pool_scores.max()), 5),
            "predicted_vs_actual": dg.MetadataValue.md(
                plots.markdown_image(scatter, "pred vs actual")
            ),
            "feature_importance": dg.MetadataValue.md(plots.markdown_image(bars, "importance")),
            "path": dg.MetadataValue.path(store.uri(f"search/{key}/predictor.txt")),
        }
    )
    return {**summary, "path": store.uri(f"search/{key}/predictor.txt")}


def build_search_round(n_rounds: int) -> dg.AssetsDefinition:
    """The per-round graph asset for a search of `n_rounds` rounds."""
    partitions = iteration_partitions(n_rounds)
    previous = dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
    )

    @dg.graph_multi_asset(
        name="search_round",
        group_name=GROUP,
        partitions_def=partitions,
        outs={
            "mixture_batches": dg.AssetOut(io_manager_key=IO, description="The round's mixtures."),
            "proxy_checkpoints": dg.AssetOut(
                io_manager_key=IO, description="Proxy LM checkpoints."
            ),
            "proxy_evaluations": dg.AssetOut(io_manager_key=IO, description="Target scores."),
            "predictor_models": dg.AssetOut(io_manager_key=IO, description="LightGBM predictor."),
        },
        ins={
            "previous_predictor": dg.AssetIn("predictor_models", partition_mapping=previous),
            "cluster_tokens": dg.AssetIn("cluster_tokens", dagster_type=dg.Nothing),
            "search_targets": dg.AssetIn("search_targets", dagster_type=dg.Nothing),
        },
    )
    def search_round(previous_predictor, cluster_tokens, search_targets):
        batch = propose_mixtures(
            previous_predictor, cluster_tokens=cluster_tokens, search_targets=search_targets
        )
        trained = each_mixture(batch).map(train_proxy)
        evaluated = trained.map(evaluate_proxy)
        checkpoints = gather_checkpoints(trained.collect())
        evaluations = gather_evaluations(evaluated.collect())
        return {
            "mixture_batches": batch,
            "proxy_checkpoints": checkpoints,
            "proxy_evaluations": evaluations,
            "predictor_models": fit_round_predictor(evaluations, previous_predictor),
        }

    return search_round

"""Search side inputs: the proxy tokenizer, cluster tokens, the targets and their alignment.

The per-round loop is in `search_round.py`, the manifest in `manifest.py`.
"""

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.config import Profile, resolve_location
from climb_assets.defs.common import registered_shards, require_files
from climb_assets.defs.data_side import (
    CENTROIDS_FILE,
    kmeans_centroids,
    shard_file,
    super_clusters,
    text_encoder,
)
from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib import kmeans, manifest, mixture, proxy, sampling, tokens
from climb_assets.lib.storage import Store
from climb_assets.lib.targets import (
    Target,
    load_target,
    super_cluster_distribution,
    target_documents,
    target_hashes,
)
from climb_assets.lib.token_pool import PoolStaging, estimate_tokens

GROUP = "search_side"
IO = "climb_io"


def round_keys(profile: Profile) -> list[str]:
    return [f"iter_{i + 1:03d}" for i in range(len(profile.search.rounds))]


def sampler_settings(profile: Profile) -> mixture.SamplerSettings:
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


def cluster_summary(store: Store) -> dict[str, Any]:
    require_files(store, {"cluster_tokens": "cluster_tokens/summary.json"}, "cluster_tokens")
    return store.read_json("cluster_tokens/summary.json")


DOCS_BATCH_ROWS = 65_536
"""Rows of a super-cluster's documents list read at a time for their keys."""


@dataclass(frozen=True)
class SuperClusterDocuments:
    """One super-cluster's documents as numbers, in the order of its documents list
    (`cluster_tokens/sc_<i>.docs.parquet`): about 25 bytes a document, no ids or text."""

    rel: str
    n_tokens: np.ndarray
    held: np.ndarray
    """The manifest's validation documents (`manifest.validation_share`, seeded)."""
    keys: np.ndarray | None
    """The selection keys (`manifest.order_keys` with `manifest.seed`), when asked for."""


def super_cluster_documents(
    store: Store, profile: Profile, sc: int, selection_keys: bool = False
) -> SuperClusterDocuments:
    """Super-cluster `sc`'s token counts, validation mask and (optionally) selection keys,
    its ids read and hashed one batch at a time."""
    rel = f"cluster_tokens/sc_{sc:03d}.docs.parquet"
    m = profile.manifest
    counts, held_keys, keys = [], [], []
    for batch in store.iter_parquet(rel, ["doc_id", "n_tokens"], DOCS_BATCH_ROWS):
        counts.append(batch.column("n_tokens").to_numpy())
        ids = batch.column("doc_id").to_pylist()
        if m.validation_share > 0:
            held_keys.append(manifest.order_keys(ids, m.seed, manifest.VALIDATION_SALT))
        if selection_keys:
            keys.append(manifest.order_keys(ids, m.seed))
    n_tokens = np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64)
    held = (
        manifest.hold_out_by_keys(np.concatenate(held_keys), m.validation_share)
        if held_keys
        else np.zeros(n_tokens.size, bool)
    )
    joined = (np.concatenate(keys) if keys else np.zeros(0, np.uint64)) if selection_keys else None
    return SuperClusterDocuments(rel, n_tokens, held, joined)


def trainable_tokens(store: Store, profile: Profile) -> np.ndarray:
    """Each super-cluster's tokens less the manifest's validation documents: what the
    repetition caps of the search and the manifest's budget are drawn on."""
    available = np.asarray(cluster_summary(store)["tokens"], dtype=np.int64)
    if profile.manifest.validation_share <= 0:
        return available
    held = np.zeros_like(available)
    for sc in range(available.size):
        docs = super_cluster_documents(store, profile, sc)
        held[sc] = int(docs.n_tokens[docs.held].sum())
    return available - held


def load_targets(store: Store) -> list[Target]:
    require_files(store, {"targets": "targets/targets.json"}, "search_targets")
    return [
        Target(t["name"], t["kind"], t["weight"], t["texts"], t["items"])
        for t in store.read_json("targets/targets.json")
    ]


POOL_BATCH_ROWS = 2048
"""Corpus rows read (and tokenized) at a time by the steps that sample the corpus."""


def sampled_kept_texts(store: Store, shards: list[str], n: int, seed: int) -> list[str]:
    """A seeded uniform sample of `n` kept documents' texts, in corpus order, read in batches.

    Memory holds the kept flags of one shard at a time and the sampled texts; every kept
    document is taken, in corpus order, when there are at most `n`.
    """
    kept_rows = []
    for shard in shards:
        members = store.read_parquet(shard_file("super_clusters/members", shard))
        kept = members.column("super_cluster_id").is_valid().to_numpy(zero_copy_only=False)
        kept_rows.append(int(kept.sum()))
    total = sum(kept_rows)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    texts: list[str] = []
    first = 0
    for shard, count in zip(shards, kept_rows, strict=True):
        lo, hi = np.searchsorted(picks, [first, first + count])
        first += count
        if lo == hi:
            continue
        members = store.read_parquet(shard_file("super_clusters/members", shard))
        kept = members.column("super_cluster_id").is_valid().to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(kept)[picks[lo:hi] - (first - count)]
        rel = shard_file("corpus_documents", shard)
        texts += store.take_parquet_rows(rel, rows, ["text"], POOL_BATCH_ROWS).column(0).to_pylist()
    return texts


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
        texts = sampled_kept_texts(store, registered_shards(context), t.sample_documents, t.seed)
        sampled = len(texts)
        start = time.perf_counter()
        tok = tokens.train_bpe_tokenizer(texts, vocab_size=t.vocab_size)
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


def proxy_budget(profile: Profile) -> int:
    """Tokens one proxy trains on: its budget rounded up to whole steps."""
    cfg = proxy_config(profile)
    return cfg.steps * cfg.tokens_per_step


DEFAULT_POOL_BUDGETS = 4
MIN_DEFAULT_POOL = 10_000_000


def token_pool_size(profile: Profile) -> int:
    """`search.token_pool`, or its default; refuses a pool smaller than one proxy's budget."""
    budget = proxy_budget(profile)
    pool = profile.search.token_pool
    if pool is None:
        return max(DEFAULT_POOL_BUDGETS * budget, MIN_DEFAULT_POOL)
    if pool < budget:
        raise ValueError(
            f"search.token_pool is {pool:,} tokens but one proxy trains on {budget:,}; set "
            f"search.token_pool to at least {budget:,} (or null for {DEFAULT_POOL_BUDGETS} "
            "budgets)"
        )
    return pool


def _kept_rows(store: Store, shard: str, j: int, seed: int) -> pl.DataFrame:
    """Shard number `j`'s kept documents: ids, per-shard token count, pool key, row; no text."""
    members = store.read_parquet(shard_file("super_clusters/members", shard))
    counted = store.read_parquet(shard_file("cluster_assignments", shard), ["doc_id", "n_tokens"])
    if not members.column("doc_id").equals(counted.column("doc_id")):
        raise ValueError(
            f"shard {shard}: super_clusters and cluster_assignments list different "
            "documents; re-materialize super_clusters"
        )
    return (
        pl.from_arrow(members)
        .with_columns(
            pl.Series("counted", counted.column("n_tokens").to_numpy()),
            pl.Series("key", sampling.row_keys(seed, shard, members.num_rows)),
            pl.lit(j, pl.Int32).alias("shard"),
            pl.int_range(members.num_rows, dtype=pl.Int64).alias("row"),
        )
        .filter(pl.col("super_cluster_id").is_not_null())
    )


DOCS_SCHEMA = pa.schema(
    [("doc_id", pa.large_string()), ("cluster_id", pa.int32()), ("n_tokens", pa.int64()),
     ("pooled", pa.bool_()), ("shard", pa.int32()), ("row", pa.int64())]
)  # fmt: skip
"""A super-cluster's documents list; `shard` numbers `summary.json`'s `shards` and `row` is the
document's position in that shard, so the manifest reads a selection's texts by place."""


@dg.asset(group_name=GROUP, deps=[proxy_tokenizer, super_clusters], kinds={"numpy"})
def cluster_tokens(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """Each super-cluster's token pool (EOS after each document), which the proxies sample from.

    A super-cluster holding more than `search.token_pool` tokens (per-shard counts) is pooled
    as a seeded uniform document sample of about that size; a smaller one whole. Texts are read
    and tokenized one batch of one shard at a time. `sc_<i>.docs.parquet` lists every document of
    the super-cluster in corpus order (shard, then row) with its proxy-token count (exact when
    pooled, else estimated from the pool's ratio); `summary.json` gives both the pools' and the
    super-clusters' tokens. Memory holds one shard's ids, a key histogram per super-cluster and
    the pools' index, never a table of the corpus's documents: the shards' ids are read four
    times instead (two passes to choose the pools, one to tokenize them, one to list them).
    """
    profile, store = climb.settings(), climb.store()
    s = profile.search
    limit = token_pool_size(profile)
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    eos = tokens.eos_id(tok)
    shards = registered_shards(context)

    def kept_rows():  # one shard's kept documents at a time, never the corpus's
        for j, shard in enumerate(shards):
            yield j, shard, _kept_rows(store, shard, j, s.token_pool_seed)

    # Which documents are pooled: the per-group fill in key order, in two passes over the
    # shards' ids (a histogram of keys, then the rows of each group's boundary bin).
    fill = sampling.StreamedFill(limit)
    columns = ("super_cluster_id", "key", "counted")
    for _, _, rows in kept_rows():
        fill.count(*(rows.get_column(c).to_numpy() for c in columns))
    for j, _, rows in kept_rows():
        fill.offer(j, *(rows.get_column(c).to_numpy() for c in columns))
    fill.resolve()
    n_super = fill.n_groups

    def pooled_of(j: int, rows: pl.DataFrame) -> np.ndarray:
        return fill.mask(
            j, rows.get_column("super_cluster_id").to_numpy(), rows.get_column("key").to_numpy()
        )

    dtype = tokens.token_dtype(tok.get_vocab_size(with_added_tokens=True))
    staging_rel = "cluster_tokens/_staging"
    local = store.local_path(staging_rel) or store.cache_path(staging_rel)
    store.remove(staging_rel)
    staging = PoolStaging(Path(local), n_super, dtype)
    start = time.perf_counter()
    pool_counted = np.zeros(n_super, np.int64)
    documents = np.zeros(n_super, np.int64)
    try:
        for j, shard, rows in kept_rows():
            pooled = pooled_of(j, rows)
            groups = rows.get_column("super_cluster_id").to_numpy()
            documents += np.bincount(groups, minlength=n_super)
            wanted = rows.filter(pl.Series(pooled))
            if not wanted.height:
                continue
            pool_counted += np.bincount(
                groups[pooled], weights=wanted.get_column("counted").to_numpy(), minlength=n_super
            ).astype(np.int64)
            picked_rows = wanted.get_column("row").to_numpy()
            groups_of_rows = groups[pooled]
            rel = shard_file("corpus_documents", shard)
            read = store.iter_parquet_rows(rel, picked_rows, ["doc_id", "text"], POOL_BATCH_ROWS)
            for span, picked in read:
                ids, texts = picked.column("doc_id").to_pylist(), picked.column("text").to_pylist()
                for sc in np.unique(groups_of_rows[span]).tolist():
                    at = np.flatnonzero(groups_of_rows[span] == sc).tolist()
                    flat, offsets = tokens.tokenize_documents(tok, [texts[i] for i in at], eos)
                    staging.add(sc, [ids[i] for i in at], flat, offsets)
            context.log.info(f"pooled {wanted.height} documents of {shard}")
        staging.close()
        pool_sizes, pool_documents, pool_lengths = [], [], []
        for sc in range(n_super):
            pool_lengths.append(staging.lengths_as_added(sc))
            store.write_npy_chunks(
                f"cluster_tokens/sc_{sc:03d}.tokens.npy",
                dtype,
                staging.size(sc),
                staging.tokens(sc),
            )
            pool_sizes.append(staging.size(sc))
            pool_documents.append(pool_lengths[sc].size)
            staging.remove(sc)
        # Every document with its proxy-token count, in corpus order (shard, then row), one
        # shard at a time: exact for the pooled ones (in the order they were added), else
        # estimated from its super-cluster's pool.
        available = np.zeros(n_super, np.int64)
        consumed = np.zeros(n_super, np.int64)
        with contextlib.ExitStack() as stack:
            writers = [
                stack.enter_context(
                    store.parquet_writer(f"cluster_tokens/sc_{sc:03d}.docs.parquet", DOCS_SCHEMA)
                )
                for sc in range(n_super)
            ]
            for j, _, rows in kept_rows():
                pooled_all = pooled_of(j, rows)
                groups = rows.get_column("super_cluster_id").to_numpy()
                for sc in np.unique(groups).tolist():
                    at = groups == sc
                    part = rows.filter(pl.Series(at))
                    pooled = pooled_all[at]
                    counted = part.get_column("counted").to_numpy()
                    n_tokens = estimate_tokens(
                        counted, pooled, pool_sizes[sc], int(pool_counted[sc]), pool_documents[sc]
                    )
                    n_pooled = int(pooled.sum())
                    first = int(consumed[sc])
                    n_tokens[pooled] = pool_lengths[sc][first : first + n_pooled]
                    consumed[sc] += n_pooled
                    available[sc] += int(n_tokens.sum())
                    writers[sc].write_table(
                        pa.table(
                            [part.get_column("doc_id").to_arrow().cast(pa.large_string()),
                             part.get_column("cluster_id").to_arrow().cast(pa.int32()),
                             pa.array(n_tokens, pa.int64()), pa.array(pooled),
                             part.get_column("shard").to_arrow(),
                             part.get_column("row").to_arrow()],
                            schema=DOCS_SCHEMA,
                        )
                    )  # fmt: skip
        available, documents = available.tolist(), documents.tolist()
    finally:
        staging.close()
        store.remove(staging_rel)
    sampled = [sc for sc in range(n_super) if pool_documents[sc] < documents[sc]]
    tok_hash = tokens.tokenizer_hash(tok)
    # Unsampled, the digest is the one of the whole super-clusters' tokens (as before pools);
    # sampled, it names the pool's size and seed too, so proxies of another pool are not reused.
    identity: object = pool_sizes
    if sampled:
        identity = {"pool": pool_sizes, "tokens": available, "limit": limit,
                    "seed": s.token_pool_seed}  # fmt: skip
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    summary = {
        "tokens": available,
        "pool_tokens": pool_sizes,
        "documents": documents,
        "pool_documents": pool_documents,
        "token_pool": limit,
        "token_pool_seed": s.token_pool_seed,
        "sampled_super_clusters": sampled,
        "tokenizer_hash": tok_hash,
        "digest": f"{tok_hash}-{digest}",
        "shards": shards,
    }
    store.write_json("cluster_tokens/summary.json", summary)
    prior = mixture.natural_prior(available)
    return dg.MaterializeResult(
        metadata={
            "super_clusters": n_super,
            "tokens": int(sum(available)),
            "pool_tokens": int(sum(pool_sizes)),
            "token_pool": limit,
            "token_pool_seed": s.token_pool_seed,
            "sampled_super_clusters": len(sampled),
            "pooled_documents": int(sum(pool_documents)),
            "documents": int(sum(documents)),
            "seconds": round(time.perf_counter() - start, 2),
            "tokenizer_hash": tok_hash,
            "natural_prior": [round(float(x), 4) for x in prior],
        }
    )


@dg.asset(group_name=GROUP, deps=["corpus_documents"], kinds={"json"})
def search_targets(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """The profile's evaluation targets, loaded, validated and checked for corpus overlap."""
    profile, store = climb.settings(), climb.store()
    if not profile.targets:
        raise ValueError("the profile lists no targets; add targets: [{name, kind, path}]")
    loaded, metadata, targets = [], {}, []
    for t in profile.targets:
        path = climb.fetch(resolve_location(t.path))
        target = load_target(t.name, t.kind, path, t.weight, t.text_column, t.max_documents)
        targets.append((t, target, pl.Series(sorted(target_hashes(target)), dtype=pl.String)))
    # A hash join per shard: memory holds one shard's hash column and the targets' hashes.
    found: dict[str, set[str]] = {t.name: set() for t in profile.targets}
    for shard in registered_shards(context):
        docs = store.read_parquet(shard_file("corpus_documents", shard), ["text_hash"])
        shard_hashes = pl.from_arrow(docs).get_column("text_hash")
        for t, _, hashes in targets:
            found[t.name].update(hashes.filter(hashes.is_in(shard_hashes.implode())).to_list())
    for t, target, _ in targets:
        overlap = len(found[t.name])
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


ALIGNMENT_FILE = "targets/alignment.json"


@dg.asset(
    group_name=GROUP,
    deps=[search_targets, super_clusters, kmeans_centroids],
    op_tags=GPU_OP_TAGS,
    pool=GPU_POOL,
    kinds={"pytorch", "parquet"},
)
def target_alignment(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """Where the targets fall in the corpus: their documents' shares of each super-cluster.

    Target texts are embedded with the corpus encoder and assigned to the nearest kept
    centroid. The blended distribution (weighted by target weight) can centre round 1's
    sampler (`search.target_prior_weight`) and feeds the predictors as a prior
    (Domain2Vec-style distribution alignment).
    """
    profile, store = climb.settings(), climb.store()
    require_files(
        store,
        {"super_clusters": "super_clusters/cluster_map.parquet", "kmeans": CENTROIDS_FILE},
        "super_clusters",
    )
    cluster_map = store.read_parquet("super_clusters/cluster_map.parquet")
    mapping = np.asarray(
        [-1 if v is None else v for v in cluster_map.column("super_cluster_id").to_pylist()]
    )
    kept = np.flatnonzero(mapping >= 0)
    n_super = int(mapping.max()) + 1
    centroids = store.read_npy(CENTROIDS_FILE, mmap=False)
    encoder = text_encoder(profile)
    per_target, rows = {}, []
    combined = np.zeros(n_super)
    total_weight = 0.0
    for target in load_targets(store):
        texts = target_documents(target)
        vectors, _ = encoder.encode_counted(texts)
        nearest, _ = kmeans.assign(vectors, centroids[kept])
        shares = super_cluster_distribution(kept[nearest], mapping, n_super)
        nearest_any, _ = kmeans.assign(vectors, centroids)
        # Documents whose nearest centroid was pruned are placed at the nearest kept one;
        # a large share says the quality rules removed text that looks like the target.
        pruned_share = float(np.mean(mapping[nearest_any] < 0))
        per_target[target.name] = {
            "shares": shares,
            "documents": len(texts),
            "nearest_pruned_share": pruned_share,
        }
        combined += target.weight * np.asarray(shares)
        total_weight += target.weight
        rows += [(target.name, sc, share) for sc, share in enumerate(shares)]
    combined /= total_weight
    rows += [("combined", sc, float(v)) for sc, v in enumerate(combined)]
    store.write_json(ALIGNMENT_FILE, {"combined": combined.tolist(), "targets": per_target})
    store.write_parquet(
        "targets/alignment.parquet",
        pa.table(
            {
                "target": [r[0] for r in rows],
                "super_cluster_id": pa.array([r[1] for r in rows], pa.int32()),
                "share": pa.array([r[2] for r in rows], pa.float64()),
            }
        ),
    )
    prior = mixture.natural_prior(cluster_summary(store)["tokens"])
    order = np.argsort(-combined, kind="stable")[:3]
    return dg.MaterializeResult(
        metadata={
            "target_shares": [round(float(v), 4) for v in combined],
            "natural": [round(float(v), 4) for v in prior],
            "top_super_clusters": ", ".join(f"sc {i}: {combined[i]:.2f}" for i in order),
            "documents": {k: v["documents"] for k, v in per_target.items()},
            "nearest_pruned_share": {
                k: round(v["nearest_pruned_share"], 4) for k, v in per_target.items()
            },
            "path": dg.MetadataValue.path(store.uri(ALIGNMENT_FILE)),
        }
    )


def load_alignment(store: Store) -> np.ndarray | None:
    """The targets' blended distribution over super-clusters, when `target_alignment` ran."""
    if not store.exists(ALIGNMENT_FILE):
        return None
    return np.asarray(store.read_json(ALIGNMENT_FILE)["combined"], dtype=np.float64)

"""Data-side assets: corpus shard -> embeddings -> k-means -> pruned clusters -> super-clusters.

Per-shard assets are partitioned by shard file (dynamic partitions); the global ones (centroids,
pruning, merging) read every registered shard. Assets write their own files through the
profile's store (local folder or `s3://`), in Parquet, NumPy and JSON, and declare lineage with
`deps`; they stay thin and call the Dagster-free code in `climb_assets.lib`.
"""

import collections
import datetime
import logging
import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.config import Profile, resolve_location
from climb_assets.defs.common import (
    chart,
    marker_path,
    marker_source,
    metadata_table,
    registered_shards,
    require_files,
    write_marker,
)
from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL, shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib import plots, sampling
from climb_assets.lib.corpus import CorpusError, ingest_shard, shard_identity, shard_stem
from climb_assets.lib.embed import TextEncoder
from climb_assets.lib.kmeans import (
    assign,
    centroid_distances,
    centroids_digest,
    check_k,
    distance_stats,
    fit_kmeans,
    leave_one_out_distances,
    sample_indices,
    share_beyond,
)
from climb_assets.lib.machine import usable_cpus
from climb_assets.lib.merge import merge_centroids, too_few_warning
from climb_assets.lib.prune import (
    ClusterStats,
    FamilyCounter,
    NearestDocuments,
    TermCounter,
    prune_clusters,
)
from climb_assets.lib.quality import ScorerSpec, ShardScorer
from climb_assets.lib.sampling import SmallestPerGroup
from climb_assets.lib.shard_ids import first_shared_ids, ids_file, shared_ids_anywhere
from climb_assets.lib.static_encoder import StaticEncoder
from climb_assets.lib.storage import Store

GROUP = "data_side"
CENTROIDS_FILE = "kmeans/centroids.npy"
FIT_STATS_FILE = "kmeans/fit_stats.json"
"""Nearest-centroid distances of the fit sample (p50/p95/p99), the baseline of shard drift."""


def shard_file(folder: str, key: str, suffix: str = ".parquet") -> str:
    """Relative path of one shard's output under `folder` (see `shard_stem`)."""
    return f"{folder}/{shard_stem(key)}{suffix}"


LONG_DOCUMENT_STATS = ("split_documents", "split_parts", "truncated_documents", "truncated_chars")
"""Counts of documents longer than corpus.max_chars, in corpus_documents' metadata."""


@dg.asset(partitions_def=shard_partitions, group_name=GROUP, kinds={"parquet"})
def corpus_documents(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """Clean documents of one corpus shard (stable doc_id, text, length); bad rows reported."""
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    for location in (profile.storage.root, profile.corpus.path):
        climb.check_bucket(location)
    corpus, options = climb.corpus_store(), climb.corpus_options()
    # The identity is taken before reading: a file replaced during the read is read again.
    source = shard_identity(corpus, key, profile.corpus.on_bad_shard)
    shard = ingest_shard(
        corpus, key, options, store, shard_file("corpus_documents", key),
        shard_file("corpus_rejects", key), profile.corpus.on_bad_shard,
    )  # fmt: skip
    if shard.quarantined is not None:
        context.log.warning(f"quarantined (corpus.on_bad_shard: skip): {shard.quarantined}")
    _refuse_shared_ids(store, corpus, key, registered_shards(context))
    path = store.uri(shard_file("corpus_documents", key))
    write_marker(store, profile, "corpus_documents", key, source)
    reasons = collections.Counter(shard.rejects.column("reason").to_pylist())
    if shard.rejects.num_rows:
        context.log.warning(f"shard {key}: rejected {shard.rejects.num_rows} rows: {dict(reasons)}")
    long_docs = {k: shard.stats.get(k, 0) for k in LONG_DOCUMENT_STATS}
    if long_docs["split_documents"] or long_docs["truncated_documents"]:
        context.log.warning(
            f"shard {key}: documents longer than corpus.max_chars={options.max_chars}: "
            f"{long_docs['split_documents']} split into {long_docs['split_parts']} parts, "
            f"{long_docs['truncated_documents']} truncated"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": shard.documents,
            "path": dg.MetadataValue.path(path),
            "source": source,
            "rejected_rows": shard.rejects.num_rows,
            "reject_reasons": dict(reasons),
            "rejects": metadata_table(
                shard.rejects.select(["row", "reason", "preview"]).to_pylist()
            ),
            "total_chars": shard.total_chars,
            **long_docs,
        },
        data_version=dg.DataVersion(source),
    )


def _refuse_shared_ids(store: Store, corpus: Store, key: str, shards: list[str]) -> None:
    """Refuses shard `key` when another shard holds one of its doc_ids (a copy under a new
    name, say), before its embeddings are computed; its documents are removed again so the
    catalog never shows them twice. Memory: one shard's ids at a time."""
    shared = first_shared_ids(store, key, shards)
    if shared is None:
        return
    for folder in ("corpus_documents", "corpus_rejects"):
        store.remove(shard_file(folder, key))
    store.remove(ids_file(key))
    raise CorpusError(
        f"shard {corpus.uri(key)} shares {shared.count} doc_id(s) with shard "
        f"{corpus.uri(shared.other)}, e.g. '{shared.example}'; if one is a copy of the other, "
        "remove it; if the shards number their rows independently, set corpus.id_column: null "
        "to use content hashes"
    )


def shard_source(store: Store, key: str) -> str | None:
    """Identity of the shard file that the shard's documents were read from."""
    return marker_source(store, "corpus_documents", key)


def text_encoder(profile: Profile) -> TextEncoder | StaticEncoder:
    """The profile's document encoder (shared by the corpus and the targets)."""
    e = profile.encoder
    if e.kind == "static":
        return StaticEncoder(resolve_location(e.model), e.max_tokens)
    return TextEncoder(
        e.model, e.revision, e.max_tokens, e.batch_size, e.device, e.dtype, e.threads,
        e.trust_remote_code,
    )  # fmt: skip


@dg.asset(
    partitions_def=shard_partitions,
    group_name=GROUP,
    deps=[corpus_documents],
    op_tags=GPU_OP_TAGS,
    pool=GPU_POOL,
    kinds={"pytorch", "numpy"},
)
def embeddings(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """Unit-length document embeddings of one shard from the profile's encoder, a read batch at a
    time (`encoder.read_batch_rows`), each document tokenized once."""
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    require_files(store, {key: shard_file("corpus_documents", key)}, "corpus_documents")
    rel = shard_file("corpus_documents", key)
    n = store.parquet_rows(rel)
    e = profile.encoder
    encoder = text_encoder(profile)
    dim = encoder.info.dim
    start = time.perf_counter()
    step, done, tokens, truncated = max(1, n // 10), 0, 0, 0

    def progress(batch_done: int, _: int) -> None:
        if (done + batch_done) % step < e.batch_size or done + batch_done == n:
            context.log.info(f"embedded {done + batch_done}/{n} documents of {key}")

    schema = pa.schema([("doc_id", pa.string()), ("n_tokens", pa.int64())])
    counts_rel = shard_file("embeddings", key, ".tokens.parquet")
    # One read batch of texts, its ids and vectors at a time: memory does not grow with the shard.
    with store.parquet_writer(counts_rel, schema) as counts_out:

        def vectors() -> Iterator[np.ndarray]:
            nonlocal done, tokens, truncated
            for batch in store.iter_parquet(rel, ["doc_id", "text"], e.read_batch_rows):
                batch_vectors, n_tokens = encoder.encode_counted(
                    batch.column("text").to_pylist(), progress
                )
                ids = batch.column("doc_id").cast(pa.string())
                counts_out.write_table(pa.table({"doc_id": ids, "n_tokens": n_tokens}, schema))
                done, tokens = done + batch.num_rows, tokens + int(n_tokens.sum())
                truncated += int((n_tokens > encoder.text_tokens).sum())
                yield batch_vectors

        path = store.write_npy_chunks(
            shard_file("embeddings", key, ".npy"), np.float32, (n, dim), vectors()
        )
    seconds = time.perf_counter() - start
    write_marker(store, profile, "embeddings", key, shard_source(store, key))
    info = encoder.info
    store.write_json("embeddings/_encoder.json", info.to_dict())
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": n,
            "path": dg.MetadataValue.path(path),
            "encoder": info.model,
            "encoder_source": info.source,
            "encoder_revision": info.revision,
            "dim": info.dim,
            "max_tokens": info.max_tokens,
            "device": info.device,
            "dtype": info.dtype,
            "seconds": round(seconds, 2),
            "docs_per_second": round(n / max(seconds, 1e-9), 1),
            "tokens": tokens,
            "read_batch_rows": e.read_batch_rows,
            "truncated_fraction": round(truncated / n, 4) if n else 0.0,
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[embeddings],
    op_tags=GPU_OP_TAGS,
    pool=GPU_POOL,
    kinds={"faiss", "numpy"},
    description=(
        "K-means centroids (FAISS) fitted on a seeded sample of every shard's embeddings. "
        "Materializing this asset RE-FITS them for everyone: every cluster id changes, so all "
        "shards are re-assigned (the recluster job and the reassign sensor do it; `climb run` "
        "too) and pruning, super-clusters, the search and the manifest must be rebuilt. After a "
        "corpus refresh it shows new upstream data on purpose: new shards are assigned to the "
        "existing centroids, and no re-fit is needed until drift says so (shard_drift)."
    ),
)
def kmeans_centroids(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """K-means centroids fitted with FAISS on a seeded sample of every shard's embeddings.

    Materializing this asset always re-fits (the `recluster` job and its schedule rely on that;
    only `climb run` consults the completion marker). Next to the centroids it writes
    `kmeans/fit_stats.json`: percentiles of the fit sample's distance to its nearest centroid
    (the same Euclidean distance `cluster_assignments` stores) with each document left out of
    its own centroid, so that they hold for documents the fit never saw; the baseline of the
    per-shard drift figure, tied to these centroids by a content digest. When the new centroids
    differ from the previous ones, the shards' assignment markers are removed: every assignment
    was made against the old centroids, so `climb run` re-assigns all shards.
    """
    profile, store = climb.settings(), climb.store()
    km = profile.kmeans
    shards = registered_shards(context)
    require_files(store, {s: shard_file("embeddings", s, ".npy") for s in shards}, "embeddings")
    # Memory-mapped for their shapes only: the sample is read row by row (read_npy_rows).
    sizes = [store.read_npy(shard_file("embeddings", s, ".npy")).shape[0] for s in shards]
    check_k(km.k, sum(sizes))
    sample_size = min(sum(sizes), km.k * km.max_points_per_centroid)
    picks = sample_indices(sizes, sample_size, km.seed)
    sample = np.concatenate(
        [store.read_npy_rows(shard_file("embeddings", s, ".npy"), idx)
         for s, idx in zip(shards, picks, strict=True)]
    )  # fmt: skip
    fit = fit_kmeans(sample, km.k, km.niter, km.seed, km.spherical, km.device, km.init)
    fitted, left_out = leave_one_out_distances(
        sample, fit.centroids, km.spherical, km.assign_chunk_size
    )
    baseline = distance_stats(left_out)
    digest = centroids_digest(fit.centroids)
    previous = (
        centroids_digest(store.read_npy(CENTROIDS_FILE, mmap=False))
        if store.exists(CENTROIDS_FILE)
        else None
    )
    # fit_stats first: if the run dies before the centroids are replaced, the digest no longer
    # matches them and cluster_assignments reports no drift rather than a wrong one.
    store.write_json(
        FIT_STATS_FILE,
        {
            "centroids_digest": digest,
            "distance": "euclidean distance to the nearest centroid (cluster_assignments.distance)",
            "baseline": "fit sample, each document left out of its own centroid",
            "fitted_at": time.time(),
            **baseline,
            "in_sample": distance_stats(fitted),
        },
    )
    store.write_npy(CENTROIDS_FILE, fit.centroids)
    changed = previous is not None and previous != digest
    if changed:
        store.remove(marker_path("cluster_assignments", "all").rsplit("/", 1)[0])
        context.log.info(
            "centroids changed: removed the assignment markers; every shard must be re-assigned "
            "(the recluster job's sensor does that, or `climb run`)"
        )
    dist = centroid_distances(fit.centroids)
    a, b = np.triu_indices(km.k, k=1)
    store.write_parquet(
        "kmeans/centroid_distances.parquet",
        pa.table(
            {
                "cluster_a": pa.array(a, pa.int32()),
                "cluster_b": pa.array(b, pa.int32()),
                "distance": pa.array(dist[a, b], pa.float32()),
            }
        ),
    )
    summary = {
        "k": km.k,
        "seed": km.seed,
        "niter": km.niter,
        "spherical": km.spherical,
        "init": km.init,
        "sample_size": fit.sample_size,
        "documents": int(sum(sizes)),
        "shards": shards,
        "inertia": fit.inertia,
        "seconds": fit.seconds,
        "device": fit.device,
        "objective": fit.objective,
        "centroids_digest": digest,
        "sample_distance": baseline,
    }
    store.write_json("kmeans/fit.json", summary)
    write_marker(store, profile, "kmeans_centroids", None)
    return dg.MaterializeResult(
        metadata={
            "k": km.k,
            "seed": km.seed,
            "niter": km.niter,
            "spherical": km.spherical,
            "init": km.init,
            "sample_size": fit.sample_size,
            "documents": int(sum(sizes)),
            "shards": len(shards),
            "inertia": round(fit.inertia, 3),
            "fit_seconds": round(fit.seconds, 2),
            "device": fit.device,
            **{f"fit_p{q}_distance": round(baseline[f"p{q}"], 4) for q in (50, 95, 99)},
            "centroids_digest": digest,
            "centroids_changed": changed,
            "path": dg.MetadataValue.path(store.uri(CENTROIDS_FILE)),
        }
    )


@dg.asset(
    partitions_def=shard_partitions,
    group_name=GROUP,
    deps=[embeddings, kmeans_centroids],
    kinds={"faiss", "parquet"},
)
def cluster_assignments(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """Nearest centroid and distance for every document of one shard, computed in chunks.

    Assigns to the existing centroids (never re-fits) and records the shard's drift in
    `drift/<shard>.parquet` and the metadata: the share of its documents farther from every
    centroid than the fit sample's 95th percentile (about 0.05 for data like the fit's).
    """
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    require_files(store, {"centroids": CENTROIDS_FILE}, "kmeans_centroids")
    require_files(store, {key: shard_file("embeddings", key, ".npy")}, "embeddings")
    centroids = store.read_npy(CENTROIDS_FILE, mmap=False)
    vectors = store.read_npy(shard_file("embeddings", key, ".npy"))
    tokens = store.read_parquet(shard_file("embeddings", key, ".tokens.parquet"))
    ids, dist = assign(vectors, centroids, profile.kmeans.assign_chunk_size)
    table = pa.table(
        {
            "doc_id": tokens.column("doc_id"),
            "cluster_id": pa.array(ids, pa.int32()),
            "distance": pa.array(dist, pa.float32()),
            "n_tokens": tokens.column("n_tokens"),
        }
    )
    digest = centroids_digest(centroids)
    drift = shard_drift(key, dist, fit_baseline(store, digest, context.log), digest)
    path = store.write_parquet(shard_file("cluster_assignments", key), table)
    store.write_parquet(shard_file("drift", key), pa.Table.from_pylist([drift], DRIFT_SCHEMA))
    write_marker(store, profile, "cluster_assignments", key, shard_source(store, key))
    metadata: dict[str, dg.RawMetadataValue] = {
        "dagster/row_count": table.num_rows,
        "path": dg.MetadataValue.path(path),
        "clusters_used": int(np.unique(ids).size),
        "mean_distance": round(drift["mean_distance"], 4),
        "centroids_digest": digest,
    }
    if drift["drift_share"] is not None:
        metadata["drift_share"] = round(drift["drift_share"], 4)
        metadata["fit_p95_distance"] = round(drift["fit_p95_distance"], 4)
        if drift["drift_share"] > DRIFT_WARN_SHARE:
            context.log.warning(
                f"shard {key}: {drift['drift_share']:.0%} of its documents lie farther from every "
                f"centroid than 95% of the fit sample did; consider re-clustering (the "
                "recluster job) if this persists"
            )
    return dg.MaterializeResult(metadata=metadata)


DRIFT_WARN_SHARE = 0.25
"""A shard whose drift share exceeds this logs a warning (in-distribution data gives ~0.05)."""

DRIFT_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("documents", pa.int64()),
        ("mean_distance", pa.float64()),
        ("p95_distance", pa.float64()),
        ("fit_p95_distance", pa.float64()),
        ("drift_share", pa.float64()),
        ("centroids_digest", pa.string()),
        ("assigned_at", pa.timestamp("us", tz="UTC")),
    ]
)
"""One row per shard in `drift/<shard>.parquet`; `drift_share` is null without a fit baseline."""


def fit_baseline(store: Store, digest: str, log: logging.Logger) -> dict | None:
    """The fit-time distance percentiles of the centroids with `digest`, or None (warned)."""
    if not store.exists(FIT_STATS_FILE):
        log.warning(
            f"no {FIT_STATS_FILE} (centroids fitted before drift tracking); re-materialize "
            "kmeans_centroids to get drift figures"
        )
        return None
    stats = store.read_json(FIT_STATS_FILE)
    if stats.get("centroids_digest") != digest:
        log.warning(f"{FIT_STATS_FILE} belongs to other centroids; no drift figure recorded")
        return None
    return stats


def shard_drift(key: str, dist: np.ndarray, baseline: dict | None, digest: str) -> dict:
    """The drift row of one shard: its distances against the fit sample's 95th percentile."""
    p95 = None if baseline is None else float(baseline["p95"])
    return {
        "shard": key,
        "documents": int(dist.size),
        "mean_distance": float(dist.mean()) if dist.size else 0.0,
        "p95_distance": float(np.percentile(dist, 95)) if dist.size else 0.0,
        "fit_p95_distance": p95,
        "drift_share": None if p95 is None else share_beyond(dist, p95),
        "centroids_digest": digest,
        "assigned_at": datetime.datetime.now(datetime.UTC),
    }


@dg.asset(
    partitions_def=shard_partitions, group_name=GROUP, deps=[corpus_documents], kinds={"parquet"}
)
def cluster_quality(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """Quality scores (1..5) of one shard's documents from each of the profile's scorers, a read
    batch at a time (`quality.read_batch_rows`), the heuristic scorer on `quality.workers`
    processes."""
    profile, store, key = climb.settings(), climb.store(), context.partition_key
    q = profile.quality
    rel = shard_file("corpus_documents", key)
    require_files(store, {key: rel}, "corpus_documents")
    specs = [ScorerSpec(s.kind, s.name, s.path, s.options) for s in q.scorers]
    workers = q.workers or usable_cpus()
    schema = pa.schema([("doc_id", pa.string())] + [(s.name, pa.float32()) for s in specs])
    sums, n = dict.fromkeys((s.name for s in specs), 0.0), 0
    with (
        ShardScorer(specs, workers) as scorer,
        store.parquet_writer(shard_file("cluster_quality", key), schema) as out,
    ):
        for batch in store.iter_parquet(rel, ["doc_id", "text"], q.read_batch_rows):
            scores = scorer.score(batch.column("text").to_pylist())
            columns = {"doc_id": batch.column("doc_id").cast(pa.string()), **scores}
            out.write_table(pa.table(columns, schema))
            for name, values in scores.items():
                sums[name] += float(values.sum(dtype=np.float64))
            n += batch.num_rows
            context.log.info(f"scored {n} documents of {key}")
    write_marker(store, profile, "cluster_quality", key, shard_source(store, key))
    metadata: dict[str, dg.RawMetadataValue] = {
        "dagster/row_count": n,
        "workers": workers,
        "read_batch_rows": q.read_batch_rows,
    }
    for spec in specs:
        metadata[f"{spec.name}_mean"] = round(sums[spec.name] / n, 3) if n else 0.0
        metadata[f"{spec.name}_seconds"] = round(scorer.seconds[spec.name], 2)
    metadata["path"] = dg.MetadataValue.path(store.uri(shard_file("cluster_quality", key)))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=GROUP,
    deps=[cluster_assignments, cluster_quality, kmeans_centroids],
    kinds={"parquet"},
)
def pruned_clusters(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """Per-cluster size, tokens, mean quality, kept flag with reason, top terms and samples.

    Reads shard by shard: first the assignments and scores (no text), which give the statistics
    and pick the rows that describe each cluster (a seeded sample of `quality.term_documents`
    for its top terms, the `quality.sample_documents` nearest its centroid); then only those
    rows' texts, in batches. Label families (`corpus.extra_columns`) are counted per shard.
    """
    profile, store = climb.settings(), climb.store()
    q = profile.quality
    shards = registered_shards(context)
    require_files(
        store, {s: shard_file("cluster_assignments", s) for s in shards}, "cluster_assignments"
    )
    require_files(store, {s: shard_file("cluster_quality", s) for s in shards}, "cluster_quality")
    k = store.read_npy("kmeans/centroids.npy").shape[0]
    names = [s.name for s in q.scorers]
    stats = ClusterStats.empty(k, names)
    families = FamilyCounter(k)
    term_rows = SmallestPerGroup(q.term_documents)
    nearest_rows = SmallestPerGroup(q.sample_documents)
    # Pass 1, no text: the statistics, and which rows describe each cluster (a seeded sample
    # for the top terms, the nearest to the centroid for the representative documents).
    for j, shard in enumerate(shards):
        assigned = store.read_parquet(shard_file("cluster_assignments", shard))
        quality = store.read_parquet(shard_file("cluster_quality", shard))
        if not (assigned.column("doc_id").equals(quality.column("doc_id"))):
            raise ValueError(
                f"shard {shard}: cluster_assignments and cluster_quality list different documents; "
                "re-materialize both for this shard"
            )
        cids = assigned.column("cluster_id").to_numpy()
        dist = assigned.column("distance").to_numpy()
        scores = {n: quality.column(n).to_numpy() for n in names}
        stats.add(cids, assigned.column("n_tokens").to_numpy(), dist, scores)
        doc_ids = assigned.column("doc_id").to_pylist()
        term_rows.add(j, cids, sampling.row_keys(q.seed, shard, len(cids)))
        nearest_rows.add(j, cids, dist, np.asarray(doc_ids))
        rel = shard_file("corpus_documents", shard)
        labels = [c for c in profile.corpus.extra_columns if c in store.parquet_schema(rel).names]
        if labels:
            docs = store.read_parquet(rel, labels)
            for column in labels:
                families.add(column, docs.column(column).to_pylist(), cids)
    # Pass 2: the texts of those rows only, read in batches.
    terms = TermCounter(k, q.term_documents)
    nearest = NearestDocuments(k, q.sample_documents)
    for j, shard in enumerate(shards):
        for_terms, for_samples = term_rows.rows(j), nearest_rows.rows(j)
        wanted = np.union1d(for_terms, for_samples)
        if not wanted.size:
            continue
        counted, near = np.isin(wanted, for_terms), np.isin(wanted, for_samples)
        # Read again rather than kept from pass 1, so memory holds one shard's columns.
        assigned = store.read_parquet(shard_file("cluster_assignments", shard))
        cids = assigned.column("cluster_id").to_numpy()[wanted]
        dist = assigned.column("distance").to_numpy()[wanted]
        doc_ids = assigned.column("doc_id").take(wanted).to_pylist()
        rel = shard_file("corpus_documents", shard)
        texts = store.take_parquet_rows(rel, wanted, ["text"]).column("text").to_pylist()
        terms.add([t for t, c in zip(texts, counted, strict=True) if c], cids[counted])
        nearest.add(
            [d for d, n in zip(doc_ids, near, strict=True) if n],
            [t for t, n in zip(texts, near, strict=True) if n],
            cids[near], dist[near],
        )  # fmt: skip
    _check_unique_ids(store, shards)
    means = stats.means()
    kept, reasons = prune_clusters(
        stats.size, means, {s.name: s.threshold for s in q.scorers}, q.min_cluster_size
    )
    top = terms.top_terms(q.top_terms)
    term_documents = term_rows.group_sizes(k)
    samples = nearest.result()
    table = pa.table(
        {
            "cluster_id": pa.array(np.arange(k), pa.int32()),
            "size": pa.array(stats.size, pa.int64()),
            "tokens": pa.array(stats.tokens, pa.int64()),
            "mean_distance": pa.array(stats.mean_distance(), pa.float32()),
            **{f"mean_{n}": pa.array(means[n], pa.float32()) for n in names},
            "kept": pa.array(kept),
            "reason": pa.array(reasons, pa.string()),
            "top_terms": pa.array(top, pa.list_(pa.string())),
            "sample_doc_ids": pa.array([[s[1] for s in c] for c in samples], pa.list_(pa.string())),
            "sample_texts": pa.array([[s[2] for s in c] for c in samples], pa.list_(pa.string())),
        }
    )
    path = store.write_parquet("clusters/clusters.parquet", table)
    sizes_chart = chart(
        store, "clusters/cluster_sizes.png", plots.cluster_sizes_png(stats.size, kept),
        "documents per cluster, kept (blue) and pruned (grey)",
    )  # fmt: skip
    write_marker(store, profile, "pruned_clusters", None)
    dropped = [
        {"cluster": c, "size": int(stats.size[c]), "reason": reasons[c], "terms": " ".join(top[c])}
        for c in range(k)
        if not kept[c]
    ]
    losses = families.losses(kept)
    for loss in losses:
        context.log.warning(loss.message())
    total_docs, total_tokens = max(int(stats.size.sum()), 1), max(int(stats.tokens.sum()), 1)
    return dg.MaterializeResult(
        metadata={
            "clusters": k,
            "kept": int(kept.sum()),
            "dropped": int((~kept).sum()),
            "kept_documents": int(stats.size[kept].sum()),
            "kept_tokens": int(stats.tokens[kept].sum()),
            "dropped_documents_share": round(1 - float(stats.size[kept].sum()) / total_docs, 4),
            "dropped_tokens_share": round(1 - float(stats.tokens[kept].sum()) / total_tokens, 4),
            "families_dropped_nearly_whole": metadata_table(
                [
                    {
                        "column": f.column,
                        "value": f.value,
                        "documents": f.documents,
                        "dropped": f.dropped,
                        "share": round(f.share, 4),
                    }
                    for f in losses
                ]
            )
            if losses
            else (
                "none"
                if profile.corpus.extra_columns
                else "not checked: list a label column (e.g. language) in corpus.extra_columns"
            ),
            "thresholds": {s.name: s.threshold for s in q.scorers},
            "term_documents": int(term_documents.sum()),
            "term_sampled_clusters": int((term_documents < stats.size).sum()),
            "term_sample_seed": q.seed,
            "dropped_clusters": metadata_table(dropped),
            **sizes_chart,
            "path": dg.MetadataValue.path(path),
        }
    )


def _check_unique_ids(store: Store, shards: list[str]) -> None:
    """Raises when a doc_id appears in more than one shard, naming one and its shards.

    Ingestion refuses such a shard already; this catches two shards ingested at the same moment
    (two runs from the UI), in memory bounded by a batch of id hashes (`shared_ids_anywhere`).
    """
    shared = shared_ids_anywhere(store, shards)
    if shared is None:
        return
    example, in_shards, count = shared
    raise CorpusError(
        f"{count} doc_id(s) appear in more than one shard, e.g. '{example}' in {in_shards}; "
        "make ids unique across shards, or set corpus.id_column: null to use content hashes"
    )


@dg.asset(
    group_name=GROUP,
    deps=[pruned_clusters, kmeans_centroids, cluster_assignments],
    kinds={"scipy", "parquet"},
)
def super_clusters(context: dg.AssetExecutionContext, climb: ClimbResource) -> dg.MaterializeResult:
    """Kept clusters merged by centroid distance, with each super-cluster's documents and tokens."""
    profile, store = climb.settings(), climb.store()
    m = profile.merge
    shards = registered_shards(context)
    require_files(store, {"clusters": "clusters/clusters.parquet"}, "pruned_clusters")
    clusters = store.read_parquet("clusters/clusters.parquet")
    centroids = store.read_npy("kmeans/centroids.npy", mmap=False)
    kept = clusters.column("kept").to_numpy(zero_copy_only=False)
    kept_ids = np.flatnonzero(kept)
    tokens = clusters.column("tokens").to_numpy()
    labels = merge_centroids(
        centroids[kept_ids], tokens[kept_ids], m.method, m.distance_threshold, m.target_count
    )
    mapping = np.full(centroids.shape[0], -1, dtype=np.int32)
    mapping[kept_ids] = labels
    store.write_parquet(
        "super_clusters/cluster_map.parquet",
        pa.table(
            {
                "cluster_id": pa.array(np.arange(centroids.shape[0]), pa.int32()),
                "super_cluster_id": pa.array(np.where(mapping >= 0, mapping, None), pa.int32()),
                "kept": pa.array(kept),
            }
        ),
    )
    n_super = int(labels.max()) + 1
    few = too_few_warning(kept_ids.size, n_super, m.distance_threshold, profile.encoder.model)
    if few:
        context.log.warning(few)
    docs_per = np.zeros(n_super, dtype=np.int64)
    tokens_per = np.zeros(n_super, dtype=np.int64)
    for shard in shards:
        assigned = store.read_parquet(shard_file("cluster_assignments", shard))
        super_ids = mapping[assigned.column("cluster_id").to_numpy()]
        member = super_ids >= 0
        store.write_parquet(
            shard_file("super_clusters/members", shard),
            pa.table(
                {
                    "doc_id": assigned.column("doc_id"),
                    "cluster_id": assigned.column("cluster_id"),
                    "super_cluster_id": pa.array(np.where(member, super_ids, None), pa.int32()),
                }
            ),
        )
        docs_per += np.bincount(super_ids[member], minlength=n_super)
        tokens_per += np.bincount(
            super_ids[member], weights=assigned.column("n_tokens").to_numpy()[member],
            minlength=n_super,
        ).astype(np.int64)  # fmt: skip
    top_terms = clusters.column("top_terms").to_pylist()
    members = [kept_ids[labels == s].tolist() for s in range(n_super)]
    summary = pa.table(
        {
            "super_cluster_id": pa.array(np.arange(n_super), pa.int32()),
            "n_clusters": pa.array([len(c) for c in members], pa.int32()),
            "cluster_ids": pa.array(members, pa.list_(pa.int32())),
            "documents": pa.array(docs_per, pa.int64()),
            "tokens": pa.array(tokens_per, pa.int64()),
            "token_share": pa.array(tokens_per / max(1, tokens_per.sum()), pa.float64()),
            "top_terms": pa.array(
                [_merge_terms([top_terms[c] for c in cs]) for cs in members], pa.list_(pa.string())
            ),
        }
    )
    path = store.write_parquet("super_clusters/super_clusters.parquet", summary)
    projection_chart = chart(
        store, "super_clusters/centroid_projection.png",
        plots.centroid_projection_png(
            centroids[kept_ids], labels, clusters.column("size").to_numpy()[kept_ids]
        ),
        "kept clusters' centroids (2-D PCA), coloured by super-cluster",
    )  # fmt: skip
    write_marker(store, profile, "super_clusters", None)
    return dg.MaterializeResult(
        metadata={
            "super_clusters": n_super,
            "kept_clusters": len(kept_ids),
            "method": m.method,
            "distance_threshold": m.distance_threshold,
            "target_count": m.target_count,
            "documents": int(docs_per.sum()),
            "tokens": int(tokens_per.sum()),
            "summary": metadata_table(
                [
                    {
                        "super_cluster": r["super_cluster_id"],
                        "clusters": r["n_clusters"],
                        "documents": r["documents"],
                        "token_share": f"{r['token_share']:.3f}",
                        "top_terms": " ".join(r["top_terms"][:6]),
                    }
                    for r in summary.to_pylist()
                ]
            ),
            **projection_chart,
            "path": dg.MetadataValue.path(path),
        }
    )


def _merge_terms(term_lists: list[list[str]], n: int = 10) -> list[str]:
    """Terms ranked by how high and how often they rank in the member clusters' lists."""
    score: collections.Counter[str] = collections.Counter()
    for terms in term_lists:
        for rank, term in enumerate(terms):
            score[term] += 1.0 / (rank + 1)
    return [t for t, _ in score.most_common(n)]

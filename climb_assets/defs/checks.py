"""Asset checks guarding the data side's invariants."""

import warnings

import dagster as dg
import numpy as np

from climb_assets.defs.common import registered_shards
from climb_assets.defs.data_side import (
    cluster_assignments,
    pruned_clusters,
    shard_file,
    super_clusters,
)
from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource

# Partitioned asset checks are a preview feature in dagster 1.13; the check below needs one.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


@dg.asset_check(asset=cluster_assignments, partitions_def=shard_partitions, blocking=True)
def assignment_covers_shard(
    context: dg.AssetCheckExecutionContext, climb: ClimbResource
) -> dg.AssetCheckResult:
    """Every document of the shard has exactly one cluster, in the documents' order."""
    store, key = climb.store(), context.partition_key
    docs = store.read_parquet(shard_file("corpus_documents", key), ["doc_id"]).column(0)
    assigned = store.read_parquet(shard_file("cluster_assignments", key), ["doc_id", "cluster_id"])
    same = assigned.column("doc_id").equals(docs)
    k = store.read_npy("kmeans/centroids.npy").shape[0]
    ids = assigned.column("cluster_id").to_numpy()
    in_range = bool(((ids >= 0) & (ids < k)).all())
    return dg.AssetCheckResult(
        passed=bool(same and in_range),
        metadata={"documents": len(docs), "assigned": assigned.num_rows, "ids_in_range": in_range},
    )


@dg.asset_check(asset=pruned_clusters, blocking=True)
def no_empty_kept_cluster(climb: ClimbResource) -> dg.AssetCheckResult:
    """No kept cluster is empty, and at least one cluster is kept."""
    table = climb.store().read_parquet("clusters/clusters.parquet", ["cluster_id", "size", "kept"])
    size = table.column("size").to_numpy()
    kept = table.column("kept").to_numpy(zero_copy_only=False)
    empty_kept = np.flatnonzero(kept & (size == 0)).tolist()
    return dg.AssetCheckResult(
        passed=not empty_kept and bool(kept.any()),
        metadata={"empty_kept_clusters": empty_kept, "kept": int(kept.sum())},
    )


@dg.asset_check(asset=super_clusters, blocking=True)
def every_document_assigned_once(
    context: dg.AssetCheckExecutionContext, climb: ClimbResource
) -> dg.AssetCheckResult:
    """Every document appears exactly once in the super-cluster membership, kept ones with an id."""
    store = climb.store()
    kept = store.read_parquet("clusters/clusters.parquet", ["kept"]).column(0)
    kept = kept.to_numpy(zero_copy_only=False)
    problems: list[str] = []
    total = 0
    for shard in registered_shards(context):
        docs = store.read_parquet(shard_file("corpus_documents", shard), ["doc_id"]).column(0)
        members = store.read_parquet(shard_file("super_clusters/members", shard))
        total += len(docs)
        if not members.column("doc_id").equals(docs):
            problems.append(f"{shard}: membership does not list the shard's documents once each")
            continue
        cids = members.column("cluster_id").to_numpy()
        has_super = members.column("super_cluster_id").is_valid().to_numpy(zero_copy_only=False)
        if not np.array_equal(has_super, kept[cids]):
            problems.append(f"{shard}: super-cluster ids do not match the kept clusters")
    return dg.AssetCheckResult(
        passed=not problems, metadata={"documents": total, "problems": problems[:10]}
    )

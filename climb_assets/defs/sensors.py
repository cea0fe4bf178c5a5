"""Corpus refresh: new shards are ingested against the existing centroids and the catalog follows;
a schedule (off by default) re-clusters from scratch.

Every sensor and the schedule start STOPPED; an operator turns them on in the UI.

1. `corpus_shards_sensor` registers every new shard file under `corpus.path` as a partition of
   `corpus_shards` and requests one `ingest_shards` run per new shard: corpus_documents,
   embeddings, cluster_quality and cluster_assignments of that shard only. kmeans_centroids is
   not in the job, so nothing re-fits: the shard is assigned to the centroids already fitted and
   its drift (share of documents farther from every centroid than the fit sample's 95th
   percentile) is recorded. Before any centroids exist the run leaves cluster_assignments out;
   run the `recluster` job once (or `climb run`) to fit them.
2. `refresh_catalog_sensor` (a run-status sensor on successful `ingest_shards`, `assign_shards`
   and `refresh_catalog` runs) requests a `refresh_catalog` run: pruned_clusters, super_clusters,
   cluster_catalog and their checks. Those read every registered shard, so it waits while any
   ingest, assign, recluster or refresh run is queued or running; the last one to finish
   requests the refresh. A refresh is keyed (run key and tag) by the newest cluster_assignments
   materialization, so runs that finish together give one refresh, and a refresh that finishes
   while newer assignments exist triggers the next one.
3. `recluster_schedule` (weekly) runs the `recluster` job: kmeans_centroids alone, which always
   re-fits on a seeded sample of every registered shard (the completion markers are consulted
   only by `climb run`). The partitioned assignments cannot share a run with the unpartitioned
   fit, so `reassign_after_recluster_sensor` (a run-status sensor on successful recluster runs)
   requests one `assign_shards` run per registered shard; when the last succeeds, step 2
   refreshes the catalog. A re-fit that changes the centroids also removes the assignment
   markers, so `climb run` re-assigns every shard even when these sensors are off.
"""

import dagster as dg

from climb_assets.defs.data_side import CENTROIDS_FILE
from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import list_shards

REFRESH_TAG = "climb/refresh"
"""Tag on every run these jobs start: ingest, assign, catalog or recluster."""
REFRESHED_UPTO_TAG = "climb/assignments_storage_id"
"""Tag of a refresh_catalog run: the newest cluster_assignments event it includes."""

INGEST_ASSETS = ["corpus_documents", "embeddings", "cluster_quality", "cluster_assignments"]
CATALOG_ASSETS = ["pruned_clusters", "super_clusters", "cluster_catalog"]

ingest_shards_job = dg.define_asset_job(
    "ingest_shards",
    selection=INGEST_ASSETS,
    partitions_def=shard_partitions,
    tags={REFRESH_TAG: "ingest"},
    description=(
        "Read, embed, score and assign one corpus shard to the existing centroids (no re-fit)."
    ),
)
assign_shards_job = dg.define_asset_job(
    "assign_shards",
    selection=["cluster_assignments"],
    partitions_def=shard_partitions,
    tags={REFRESH_TAG: "assign"},
    description="Assign one shard's documents to the current centroids and record its drift.",
)
refresh_catalog_job = dg.define_asset_job(
    "refresh_catalog",
    selection=CATALOG_ASSETS,
    tags={REFRESH_TAG: "catalog"},
    description="Recompute the cluster and super-cluster summaries over every shard, then the "
    "DuckDB catalog.",
)
recluster_job = dg.define_asset_job(
    "recluster",
    selection=["kmeans_centroids"],
    tags={REFRESH_TAG: "recluster"},
    description="Re-fit the k-means centroids from scratch on every registered shard; "
    "reassign_after_recluster_sensor then re-assigns each shard.",
)

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
"""Run states that mean a run will still write outputs the catalog summarizes."""


def new_shards(instance: dg.DagsterInstance, climb: ClimbResource) -> list[str]:
    """Shard files under corpus.path that are not yet registered partitions."""
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    shards = list_shards(climb.corpus_store(), climb.settings().corpus.formats)
    return [s for s in shards if s not in known]


def runs_in_flight(instance: dg.DagsterInstance, job_names: list[str]) -> int:
    """Number of runs of `job_names` that are queued or running."""
    return sum(
        instance.get_runs_count(dg.RunsFilter(job_name=name, statuses=IN_FLIGHT))
        for name in job_names
    )


@dg.sensor(
    job=ingest_shards_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def corpus_shards_sensor(context: dg.SensorEvaluationContext, climb: ClimbResource):
    """Adds a partition for every new shard file and requests its ingestion run.

    The run embeds, scores and assigns that shard alone, to the centroids already fitted; without
    centroids yet, it leaves the assignment out (run the `recluster` job to fit them).
    """
    added = new_shards(context.instance, climb)
    if not added:
        return dg.SkipReason("no new shards")
    selection = None
    if not climb.store().exists(CENTROIDS_FILE):
        selection = [dg.AssetKey(a) for a in INGEST_ASSETS if a != "cluster_assignments"]
        context.log.info("no k-means centroids yet: ingesting without assignment")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=s, run_key=f"ingest:{s}", asset_selection=selection)
            for s in added
        ],
        dynamic_partitions_requests=[shard_partitions.build_add_request(added)],
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_shards_job, assign_shards_job, refresh_catalog_job],
    request_job=refresh_catalog_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def refresh_catalog_sensor(context: dg.RunStatusSensorContext):
    """Refreshes the cluster summaries and the catalog once the last shard run has finished."""
    instance = context.instance
    busy = runs_in_flight(
        instance, [ingest_shards_job.name, assign_shards_job.name, recluster_job.name]
    )
    if busy:
        return dg.SkipReason(f"{busy} shard or recluster run(s) in flight; the last one refreshes")
    if runs_in_flight(instance, [refresh_catalog_job.name]):
        return dg.SkipReason("a catalog refresh is running; its success re-evaluates this sensor")
    latest = instance.fetch_materializations(dg.AssetKey("cluster_assignments"), limit=1).records
    if not latest:
        return dg.SkipReason("no shard is assigned to clusters yet; run the recluster job")
    upto = str(latest[0].storage_id)
    done = instance.get_runs_count(
        dg.RunsFilter(job_name=refresh_catalog_job.name, tags={REFRESHED_UPTO_TAG: upto})
    )
    if done:
        return dg.SkipReason(f"the catalog was already refreshed up to assignment event {upto}")
    return dg.RunRequest(
        run_key=f"refresh:{upto}",
        tags={REFRESHED_UPTO_TAG: upto, "climb/after_run": context.dagster_run.run_id},
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[recluster_job],
    request_job=assign_shards_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def reassign_after_recluster_sensor(context: dg.RunStatusSensorContext):
    """Requests an assign_shards run for every registered shard after a successful re-fit."""
    shards = sorted(context.instance.get_dynamic_partitions(shard_partitions.name))
    run_id = context.dagster_run.run_id
    if not shards:
        return dg.SkipReason("no shards registered")
    return [
        dg.RunRequest(
            partition_key=s, run_key=f"reassign:{run_id}:{s}", tags={"climb/after_run": run_id}
        )
        for s in shards
    ]


@dg.schedule(
    cron_schedule="0 3 * * 0",
    job=recluster_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def recluster_schedule(context: dg.ScheduleEvaluationContext):
    """Weekly (Sunday 03:00) re-clustering from scratch: re-fits kmeans_centroids on every shard.

    reassign_after_recluster_sensor and refresh_catalog_sensor carry it through the assignments
    to the catalog.
    """
    if not context.instance.get_dynamic_partitions(shard_partitions.name):
        return dg.SkipReason("no corpus shards registered")
    return dg.RunRequest()

"""Corpus refresh: new shards are ingested against the existing centroids and the catalog follows;
a schedule (off by default) re-clusters from scratch.

Turning the refresh on is one action: start `corpus_shards_sensor` (or the schedule, for
re-clustering) in the UI. Both start STOPPED. The two run-status sensors that carry their runs
through to the catalog start RUNNING: they only ever follow runs of the refresh jobs, so they
act exactly when an operator turned the refresh on or launched one of those jobs by hand.

1. `corpus_shards_sensor` registers every new shard file under `corpus.path` as a partition of
   `corpus_shards` and requests one `ingest_shards` run per new shard: corpus_documents,
   embeddings, cluster_quality and cluster_assignments of that shard only. kmeans_centroids is
   not in the job, so nothing re-fits: the shard is assigned to the centroids already fitted and
   its drift (share of documents farther from every centroid than the fit sample's 95th
   percentile) is recorded. Before any centroids exist the run leaves cluster_assignments out;
   run the `recluster` job once (or `climb run`) to fit them. A shard replaced in place (its
   size and mtime, or ETag, differ from those its documents were read from) gets a new ingest
   run; a shard whose file is gone is unregistered, its outputs removed, and a
   `refresh_catalog` run recomputes the summaries without it.
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

from dataclasses import dataclass

import dagster as dg

from climb_assets.defs.common import marker_source, remove_shard_outputs
from climb_assets.defs.data_side import CENTROIDS_FILE
from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import list_corpus, shard_identity

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
    "DuckDB catalog. Its steps run in the run's own process: seconds of CPU work each, no GPU.",
    # A process per step spent a minute and a half starting interpreters for seconds of work.
    executor_def=dg.in_process_executor,
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


@dataclass(frozen=True)
class ShardChanges:
    """How the shard files under corpus.path differ from the registered partitions."""

    added: list[str]
    """Files with no partition yet."""
    removed: list[str]
    """Partitions whose file is gone."""
    replaced: dict[str, str]
    """Registered shards whose file changed since its documents were read: key -> identity."""
    unknown: list[str]
    """Files of a type no configured format reads."""
    identities: dict[str, str]
    """Identity (`Store.identity`) of every shard file found, taken once per comparison."""

    def describe(self) -> str:
        parts = [f"{len(self.added)} new", f"{len(self.removed)} gone", f"{len(self.replaced)} "
                 "replaced"]  # fmt: skip
        return ", ".join(parts)


def shard_changes(instance: dg.DagsterInstance, climb: ClimbResource) -> ShardChanges:
    """Compares the corpus folder with the registered shard partitions."""
    corpus, store = climb.corpus_store(), climb.store()
    formats = climb.settings().corpus.formats
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    shards, unknown = list_corpus(corpus, formats)
    on_bad_shard = climb.settings().corpus.on_bad_shard
    identities = {key: shard_identity(corpus, key, on_bad_shard) for key in shards}
    replaced = {}
    for key in sorted(known.intersection(shards)):
        read_from = marker_source(store, "corpus_documents", key)
        if read_from is not None and read_from != identities[key]:
            replaced[key] = identities[key]
    return ShardChanges(
        added=[s for s in shards if s not in known],
        removed=sorted(known - set(shards)),
        replaced=replaced,
        unknown=unknown,
        identities=identities,
    )


def unknown_files_warning(changes: ShardChanges, formats: tuple[str, ...]) -> str | None:
    """One line listing the files no configured format reads, or None."""
    if not changes.unknown:
        return None
    shown = ", ".join(changes.unknown[:5]) + (" and more" if len(changes.unknown) > 5 else "")
    return (
        f"{len(changes.unknown)} file(s) under corpus.path are not read (corpus.formats: "
        f"{', '.join(formats)}): {shown}"
    )


def unregister_shards(instance: dg.DagsterInstance, climb: ClimbResource, keys: list[str]) -> None:
    """Removes the partitions of shards whose file is gone, and everything computed from them."""
    store = climb.store()
    for key in keys:
        remove_shard_outputs(store, key)
        instance.delete_dynamic_partition(shard_partitions.name, key)


def runs_in_flight(instance: dg.DagsterInstance, job_names: list[str]) -> int:
    """Number of runs of `job_names` that are queued or running."""
    return sum(
        instance.get_runs_count(dg.RunsFilter(job_name=name, statuses=IN_FLIGHT))
        for name in job_names
    )


@dg.sensor(
    jobs=[ingest_shards_job, refresh_catalog_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Every minute: registers new shard files under corpus.path and starts one ingest_shards "
        "run each (embed, score, assign to the existing centroids); re-ingests shards replaced "
        "in place; unregisters deleted ones. Turning this on is all the refresh needs: "
        "refresh_catalog_sensor (running by default) then refreshes the summaries and catalog."
    ),
)
def corpus_shards_sensor(context: dg.SensorEvaluationContext, climb: ClimbResource):
    """Registers new shard files, re-ingests replaced ones and unregisters deleted ones.

    A new or replaced shard gets one `ingest_shards` run: it embeds, scores and assigns that
    shard alone, to the centroids already fitted (without centroids yet, the assignment is left
    out; run the `recluster` job to fit them). A shard whose file is gone loses its partition
    and its outputs, and a `refresh_catalog` run recomputes the summaries without it.
    """
    changes = shard_changes(context.instance, climb)
    warning = unknown_files_warning(changes, climb.settings().corpus.formats)
    if warning:
        context.log.warning(warning)
    if not (changes.added or changes.removed or changes.replaced):
        return dg.SkipReason("no new, replaced or deleted shards")
    selection = None
    if not climb.store().exists(CENTROIDS_FILE):
        selection = [dg.AssetKey(a) for a in INGEST_ASSETS if a != "cluster_assignments"]
        context.log.info("no k-means centroids yet: ingesting without assignment")
    ingest = [(s, "new") for s in changes.added] + [
        (s, f"replaced {identity}") for s, identity in changes.replaced.items()
    ]
    requests = [
        dg.RunRequest(
            partition_key=s,
            run_key=f"ingest:{s}" if why == "new" else f"ingest:{s}:{why}",
            asset_selection=selection,
            job_name=ingest_shards_job.name,
        )
        for s, why in ingest
    ]
    partition_requests: list = []
    if changes.added:
        partition_requests.append(shard_partitions.build_add_request(changes.added))
    if changes.removed:
        unregister_shards(context.instance, climb, changes.removed)
        context.log.warning(f"unregistered shard(s) whose file is gone: {changes.removed}")
        requests.append(
            dg.RunRequest(
                job_name=refresh_catalog_job.name,
                tags={"climb/unregistered": ",".join(changes.removed)[:200]},
            )
        )
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_shards_job, assign_shards_job, refresh_catalog_job],
    request_job=refresh_catalog_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After the last ingest_shards / assign_shards run succeeds: one refresh_catalog run "
        "(pruned clusters, super-clusters, catalog). Running by default: it only follows those "
        "jobs, which run when corpus_shards_sensor or the recluster schedule is on."
    ),
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
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After a successful recluster run: one assign_shards run per registered shard against "
        "the new centroids; refresh_catalog_sensor then refreshes the catalog. Running by "
        "default: it only follows recluster runs."
    ),
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
    description=(
        "Sundays 03:00: re-fits the k-means centroids on every registered shard; the two "
        "run-status sensors (running by default) carry the new centroids through the "
        "assignments to the catalog. Turning this on is all re-clustering needs."
    ),
)
def recluster_schedule(context: dg.ScheduleEvaluationContext):
    """Weekly (Sunday 03:00) re-clustering from scratch: re-fits kmeans_centroids on every shard.

    reassign_after_recluster_sensor and refresh_catalog_sensor carry it through the assignments
    to the catalog.
    """
    if not context.instance.get_dynamic_partitions(shard_partitions.name):
        return dg.SkipReason("no corpus shards registered")
    return dg.RunRequest()

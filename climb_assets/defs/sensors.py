"""Registers corpus shards as partitions and requests their ingestion."""

import dagster as dg

from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import list_shards

ingest_shards_job = dg.define_asset_job(
    "ingest_shards",
    selection=["corpus_documents", "embeddings", "cluster_quality"],
    partitions_def=shard_partitions,
    description="Read, embed and score one corpus shard.",
)


def new_shards(instance: dg.DagsterInstance, climb: ClimbResource) -> list[str]:
    """Shard files under corpus.path that are not yet registered partitions."""
    known = set(instance.get_dynamic_partitions(shard_partitions.name))
    shards = list_shards(climb.corpus_store(), climb.settings().corpus.formats)
    return [s for s in shards if s not in known]


@dg.sensor(
    job=ingest_shards_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def corpus_shards_sensor(context: dg.SensorEvaluationContext, climb: ClimbResource):
    """Adds a partition for every new shard file and requests its ingestion run."""
    added = new_shards(context.instance, climb)
    if not added:
        return dg.SkipReason("no new shards")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=s, run_key=f"ingest:{s}") for s in added],
        dynamic_partitions_requests=[shard_partitions.build_add_request(added)],
    )

"""The climb code location: assets, checks, sensors, resources and the executor."""

import dagster as dg

from climb_assets.config import Profile, deployment_kind, load_profile
from climb_assets.defs import (
    catalog,
    checks,
    confirmation,
    data_side,
    doremi,
    exports,
    manifest,
    references,
    search,
    search_round,
    sensors,
)
from climb_assets.defs.cli_jobs import cli_jobs
from climb_assets.defs.io import JsonIOManager
from climb_assets.defs.resources import climb_resource, default_profile_ref
from climb_assets.lib.routing import GPU_TAG

LOCAL_EXECUTOR_CONFIG = {
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": GPU_TAG, "value": "true", "limit": 1}],
}
"""GPU-tagged steps run one at a time on a local machine; CPU steps use the other slots."""


def executor_for(profile: Profile) -> dg.ExecutorDefinition:
    """The executor of the deployment (CLIMB_DEPLOYMENT or deployment.kind).

    local: multiprocess, one GPU step at a time. k8s: one pod per step (dagster-k8s); GPU steps
    carry `dagster-k8s/config` with GPU limits, node selector and tolerations. ecs: one task per
    step (dagster-aws); GPU steps carry `ecs/container_overrides` with a GPU requirement.
    """
    kind = deployment_kind(profile)
    limit = profile.deployment.max_concurrent
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({"max_concurrent": limit}, name="climb_k8s")
    if kind == "ecs":
        from dagster_aws.ecs import ecs_executor

        return ecs_executor.configured({"max_concurrent": limit}, name="climb_ecs")
    config = {**LOCAL_EXECUTOR_CONFIG, "max_concurrent": limit}
    return dg.multiprocess_executor.configured(config, name="climb_local")


def build_definitions(profile_ref: str) -> dg.Definitions:
    """Definitions for one profile (its number of search rounds fixes the iteration partitions)."""
    climb = climb_resource(profile_ref)
    profile = load_profile(profile_ref)
    n_rounds = len(profile.search.rounds)
    assets = [
        *dg.load_assets_from_modules([data_side]),
        catalog.cluster_catalog,
        search.proxy_tokenizer,
        search.cluster_tokens,
        search.search_targets,
        search.target_alignment,
        search_round.build_search_round(n_rounds),
        confirmation.confirmation_proxy,
        references.reference_mixtures,
        doremi.doremi_mixture,
        manifest.climbmix_manifest,
        exports.climbmix_exports,
    ]
    return dg.Definitions(
        assets=assets,
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[
            sensors.ingest_shards_job,
            sensors.assign_shards_job,
            sensors.refresh_catalog_job,
            sensors.recluster_job,
            *cli_jobs(assets),
        ],
        sensors=[
            sensors.corpus_shards_sensor,
            sensors.refresh_catalog_sensor,
            sensors.reassign_after_recluster_sensor,
        ],
        schedules=[sensors.recluster_schedule],
        resources={"climb": climb, search.IO: JsonIOManager(climb=climb)},
        executor=executor_for(profile),
    )


defs = build_definitions(default_profile_ref())

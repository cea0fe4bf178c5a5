"""The climb code location: assets, checks, sensors, resources and the executor."""

import dagster as dg

from climb_assets.config import load_profile
from climb_assets.defs import catalog, checks, data_side, manifest, search, sensors
from climb_assets.defs.io import JsonIOManager
from climb_assets.defs.partitions import GPU_OP_TAGS
from climb_assets.defs.resources import ClimbResource, default_profile_ref

LOCAL_EXECUTOR_CONFIG = {
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": k, "value": v, "limit": 1} for k, v in GPU_OP_TAGS.items()],
}
"""GPU-tagged steps run one at a time on a local machine; CPU steps use the other slots."""

local_executor = dg.multiprocess_executor.configured(LOCAL_EXECUTOR_CONFIG)


def build_definitions(profile_ref: str) -> dg.Definitions:
    """Definitions for one profile (its number of search rounds fixes the iteration partitions)."""
    climb = ClimbResource(profile=profile_ref)
    n_rounds = len(load_profile(profile_ref).search.rounds)
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules([data_side]),
            catalog.cluster_catalog,
            search.proxy_tokenizer,
            search.cluster_tokens,
            search.search_targets,
            search.build_search_round(n_rounds),
            manifest.climbmix_manifest,
        ],
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[sensors.ingest_shards_job],
        sensors=[sensors.corpus_shards_sensor],
        resources={"climb": climb, search.IO: JsonIOManager(climb=climb)},
        executor=local_executor,
    )


defs = build_definitions(default_profile_ref())

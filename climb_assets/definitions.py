"""The climb code location: assets, checks, sensors, resources and the executor."""

import dagster as dg

from climb_assets.defs import catalog, checks, data_side, sensors
from climb_assets.defs.partitions import GPU_OP_TAGS
from climb_assets.defs.resources import ClimbResource, default_profile_ref

LOCAL_EXECUTOR_CONFIG = {
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": k, "value": v, "limit": 1} for k, v in GPU_OP_TAGS.items()],
}
"""GPU-tagged steps run one at a time on a local machine; CPU steps use the other slots."""

local_executor = dg.multiprocess_executor.configured(LOCAL_EXECUTOR_CONFIG)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([data_side, catalog]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[sensors.ingest_shards_job],
    sensors=[sensors.corpus_shards_sensor],
    resources={"climb": ClimbResource(profile=default_profile_ref())},
    executor=local_executor,
)

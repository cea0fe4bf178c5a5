"""Partitions and step routing: one dynamic partition per shard file; GPU tags per deployment."""

import dataclasses

import dagster as dg

from climb_assets.config import deployment_kind, load_profile
from climb_assets.defs.resources import default_profile_ref
from climb_assets.lib.routing import gpu_step_tags

shard_partitions = dg.DynamicPartitionsDefinition(name="corpus_shards")

_PROFILE = load_profile(default_profile_ref())
DEPLOYMENT = deployment_kind(_PROFILE)
GPU_OP_TAGS = gpu_step_tags(DEPLOYMENT, **dataclasses.asdict(_PROFILE.deployment.gpu))
"""Routing tags on GPU-heavy steps for the selected deployment (op_tags reach executors)."""
GPU_POOL = "gpu"

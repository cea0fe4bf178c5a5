"""Partitions: one dynamic partition per corpus shard file (its path relative to corpus.path)."""

import dagster as dg

shard_partitions = dg.DynamicPartitionsDefinition(name="corpus_shards")

GPU_OP_TAGS = {"climb/gpu": "true"}
"""Routing tag on GPU-heavy steps; executors limit or place them by it (op_tags reach executors)."""
GPU_POOL = "gpu"

"""Step tags that route GPU-heavy steps to GPU capacity on each executor.

Executors read routing from op tags (asset `tags` are labels only): the local multiprocess
executor limits concurrency by `climb/gpu`; `k8s_job_executor` reads `dagster-k8s/config`
(container resources, node selector, tolerations); `dagster_aws.ecs.ecs_executor` reads
`ecs/cpu`, `ecs/memory` and `ecs/container_overrides` (GPU as a resourceRequirements entry).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

GPU_TAG = "climb/gpu"


def gpu_step_tags(
    kind: str,
    count: int = 1,
    cpu: str = "4",
    memory: str = "16Gi",
    node_selector: Mapping[str, Any] | None = None,
    tolerations: Sequence[Mapping[str, Any]] = (),
    ecs_cpu: int = 4096,
    ecs_memory: int = 16384,
) -> dict[str, str]:
    """Op tags for a GPU step on the `kind` executor (local, k8s or ecs)."""
    tags = {GPU_TAG: "true"}
    if kind == "k8s":
        config = {
            "container_config": {
                "resources": {
                    "limits": {"nvidia.com/gpu": str(count)},
                    "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": str(count)},
                }
            },
            "pod_spec_config": {
                "node_selector": dict(node_selector or {}),
                "tolerations": [dict(t) for t in tolerations],
            },
        }
        tags["dagster-k8s/config"] = json.dumps(config, sort_keys=True)
    elif kind == "ecs":
        tags["ecs/cpu"] = str(ecs_cpu)
        tags["ecs/memory"] = str(ecs_memory)
        tags["ecs/container_overrides"] = json.dumps(
            {"resourceRequirements": [{"type": "GPU", "value": str(count)}]}
        )
    elif kind != "local":
        raise ValueError(f"unknown deployment kind {kind!r}; use local, k8s or ecs")
    return tags

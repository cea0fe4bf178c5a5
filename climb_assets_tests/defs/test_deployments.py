"""One setting picks the executor; GPU steps carry the routing each executor reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from climb_assets.lib.routing import gpu_step_tags

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
PROBE = """
import json
from climb_assets.definitions import defs
from climb_assets.defs import data_side, proxies
print(json.dumps({
    "executor": defs.executor.name,
    "embeddings": dict(data_side.embeddings.op.tags),
    "kmeans": dict(data_side.kmeans_centroids.op.tags),
    "train_proxy": dict(proxies.train_proxy.tags),
    "corpus_documents": dict(data_side.corpus_documents.op.tags),
}))
"""


def _env(kind: str, home: Path) -> dict[str, str]:
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    return {**os.environ, "CLIMB_DEPLOYMENT": kind, "DAGSTER_HOME": str(home)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "k8s", "ecs"])
def test_each_deployment_validates_and_routes_gpu_steps(kind, tmp_path):
    env = _env(kind, tmp_path)
    validate = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-2000:]
    tags = json.loads(probe.stdout.strip().splitlines()[-1])
    assert tags["executor"] == f"climb_{kind}"
    for gpu_step in ("embeddings", "kmeans", "train_proxy"):
        assert tags[gpu_step]["climb/gpu"] == "true"
        assert ("dagster-k8s/config" in tags[gpu_step]) == (kind == "k8s")
        assert ("ecs/container_overrides" in tags[gpu_step]) == (kind == "ecs")
    cpu = tags["corpus_documents"]
    assert not any(k.startswith(("dagster-k8s/", "ecs/", "climb/gpu")) for k in cpu)


def _k8s_job(tags: dict[str, str]):
    config = DagsterK8sJobConfig(
        job_image="climb:latest", dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent",
    )  # fmt: skip
    return construct_dagster_k8s_job(
        config, ["dagster", "api", "execute_step"], "step", get_user_defined_k8s_config(tags)
    )


def test_k8s_job_spec_for_gpu_and_cpu_steps():
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    gpu = gpu_step_tags("k8s", count=2, node_selector={"pool": "gpu"}, tolerations=[toleration])
    spec = _k8s_job(gpu).spec.template.spec
    assert spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}
    assert spec.node_selector == {"pool": "gpu"}
    assert [(t.key, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "NoSchedule")]
    cpu_spec = _k8s_job({}).spec.template.spec
    assert cpu_spec.containers[0].resources.limits is None


def test_ecs_overrides_for_gpu_steps():
    tags = gpu_step_tags("ecs", count=1, ecs_cpu=8192, ecs_memory=32768)
    assert json.loads(tags["ecs/container_overrides"]) == {
        "resourceRequirements": [{"type": "GPU", "value": "1"}]
    }
    assert tags["ecs/cpu"] == "8192" and tags["ecs/memory"] == "32768"
    assert gpu_step_tags("local") == {"climb/gpu": "true"}
    with pytest.raises(ValueError, match="use local, k8s or ecs"):
        gpu_step_tags("slurm")

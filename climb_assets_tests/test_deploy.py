"""deploy/: what can be checked without a cluster parses and validates against Dagster's schemas."""

import copy
from pathlib import Path

import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
WORKSPACE = yaml.safe_load((DEPLOY.parent / "workspace.yaml").read_text())
MODULE = WORKSPACE["load_from"][0]["python_module"]["module_name"]


def _instance() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())


def test_production_instance_config_validates():
    doc = _instance()
    assert validate_config(dagster_instance_config_schema(), doc).success
    assert validate_config(K8sRunLauncher.config_type(), doc["run_launcher"]["config"]).success
    logs = doc["compute_logs"]["config"]
    assert validate_config(S3ComputeLogManager.config_type(), logs).success
    assert doc["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("run_launcher", "config", "job_namespce"), "x"),
        (("concurrency", "pools", "granularity"), 3),
    ],
)
def test_a_broken_instance_config_is_caught(path, value):
    doc = copy.deepcopy(_instance())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    launcher_ok = validate_config(K8sRunLauncher.config_type(), doc["run_launcher"]["config"])
    instance_ok = validate_config(dagster_instance_config_schema(), doc)
    assert not (launcher_ok.success and instance_ok.success)


def test_helm_values_run_the_code_location_on_k8s_without_secrets():
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", MODULE]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["CLIMB_DEPLOYMENT"] == "k8s"
    text = (DEPLOY / "helm" / "values.yaml").read_text()
    assert "AKIA" not in text

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k).lower()
                yield from keys(v)
        elif isinstance(node, list):
            for item in node:
                yield from keys(item)

    assert not [k for k in keys(values) if "secret_access" in k or k == "password"]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_serve_the_workspace_module(name):
    text = (DEPLOY / name).read_text()
    assert f'"-m", "{MODULE}"' in text
    assert "torch==2.13.0" in text

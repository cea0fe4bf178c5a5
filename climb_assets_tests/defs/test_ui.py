"""The code location as Dagster tooling sees it: `definitions validate` and `dagster dev`."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from climb_assets_tests.conftest import stop_process_group

ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
pytestmark = pytest.mark.slow


def test_definitions_validate_with_the_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    proc = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_dagster_dev_serves_the_assets_on_loopback(tmp_path):
    port = _free_port()
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "CLIMB_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "dagster dev did not answer within 120 s"
                assert proc.poll() is None, "dagster dev exited"
                time.sleep(1)
        status = {}
        while time.monotonic() < deadline:
            entries = _graphql(
                port,
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }",
            )["data"]["workspaceOrError"]["locationEntries"]
            status = {e["name"]: e["loadStatus"] for e in entries}
            if status.get("climb") == "LOADED":
                break
            time.sleep(1)
        assert status.get("climb") == "LOADED"
        nodes = _graphql(port, "{ assetNodes { assetKey { path } isPartitioned } }")
        assets = {
            n["assetKey"]["path"][-1]: n["isPartitioned"] for n in nodes["data"]["assetNodes"]
        }
        assert assets["embeddings"] is True and assets["super_clusters"] is False
        assert len(assets) == 18
        assert assets["predictor_models"] is True
        described = _graphql(
            port,
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { "
            "sensors { name description } schedules { name description } "
            "jobs { name description } } } } }",
        )["data"]["repositoriesOrError"]["nodes"][0]
        for kind in ("sensors", "schedules", "jobs"):
            for item in described[kind]:
                if item["name"].startswith("__"):  # Dagster's implicit asset job
                    continue
                assert len(item["description"] or "") > 40, (kind, item)
        assert len(described["sensors"]) == 3 and len(described["schedules"]) == 1
    finally:
        stop_process_group(proc, grace=30)

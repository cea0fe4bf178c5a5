"""The code location as Dagster tooling sees it: `definitions validate` and `dagster dev`."""

import json
import os
import re
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


@pytest.fixture(scope="module")
def story(tmp_path_factory, small_demo_corpus):
    """A `climb run` with a small search in a DAGSTER_HOME, then a corpus refresh through the
    sensors and jobs the daemon would run; staleness read before and after the refresh."""
    import shutil

    import dagster as dg
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from climb_assets.definitions import build_definitions
    from climb_assets.defs.resources import ClimbResource
    from climb_assets.defs.sensors import refresh_catalog_sensor
    from climb_assets.runner import run_all
    from climb_assets_tests.conftest import (
        after_run,
        ingest_new_shards,
        run_requested,
        write_jsonl,
        write_profile,
    )

    base = tmp_path_factory.mktemp("ui")
    home, corpus = base / "home", base / "corpus"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    shutil.copytree(small_demo_corpus, corpus)
    targets = small_demo_corpus.parent / "targets"
    profile = write_profile(
        base,
        corpus={"path": str(corpus)},
        kmeans={"k": 12, "niter": 10},
        merge={"distance_threshold": None, "target_count": 4},
        tokenizer={"vocab_size": 400},
        proxy={"n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 64, "batch_size": 8,
               "train_tokens": 8_000},
        targets=[{"name": "aws_api", "kind": "text", "path": str(targets / "aws_api.txt")}],
        search={"rounds": [4, 2], "candidates": 2000, "top_k_min": 8},
        manifest={"total_tokens": 10_000, "max_epochs": 2, "parquet_shards": 2},
    )  # fmt: skip
    climb = ClimbResource(profile=str(profile))
    defs = build_definitions(str(profile))
    keys = [dg.AssetKey("climbmix_manifest"), dg.AssetKey("climbmix_exports")]
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        run_all(climb, instance, log=lambda _: None)

        def status():
            resolver = get_stale_status_resolver(instance, list(defs.assets or ()))
            return {
                key.path[-1]: (
                    resolver.get_status(key),
                    {c.key.asset_key.path[-1] for c in resolver.get_stale_root_causes(key)},
                )
                for key in keys
            }

        before = status()
        rows = [
            {"doc_id": f"new-{i}", "text": line, "source": "aws_api"}
            for i, line in enumerate((targets / "aws_api.txt").read_text().split("\n\n"))
            if line.strip()
        ]
        write_jsonl(corpus / "shard-100.jsonl", rows)
        (ingest,) = ingest_new_shards(defs, climb, instance).values()
        request = after_run(refresh_catalog_sensor, ingest, instance)
        refresh = run_requested(defs, "refresh_catalog", request, instance)
        assert ingest.success and refresh.success
        after = status()
    return {"home": home, "profile": profile, "climb": climb, "before": before, "after": after}


@pytest.mark.parametrize("asset", ["climbmix_manifest", "climbmix_exports"])
def test_manifest_and_exports_turn_stale_after_a_corpus_refresh(story, asset):
    """The exports are built from what the manifest reads, so a refresh marks them stale too
    (Dagster flags only an asset's own parents)."""
    status, _ = story["before"][asset]
    assert status.value == "FRESH"  # right after `climb run`
    status, causes = story["after"][asset]
    assert status.value == "STALE"
    assert "super_clusters" in causes or "corpus_documents" in causes, causes


def test_dagster_dev_tells_the_story(story):
    """Through `dagster dev`'s GraphQL API, as the UI shows it: descriptions and kinds of every
    asset, sensor, schedule and job; the manifest's leading metadata and its staleness after the
    refresh; the CLI's runs under named jobs with the command that started them."""
    port = _free_port()
    # As `make dev` starts it: from inside DAGSTER_HOME, with the supersession notice silenced.
    env = {**os.environ, "DAGSTER_HOME": str(story["home"]), "CLIMB_CONFIG": str(story["profile"]),
           "PYTHONWARNINGS": _makefile_value("DEV_WARNINGS")}  # fmt: skip
    env.pop("CLIMB_PROFILE", None)
    log_path = story["home"] / "dagster-dev.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port), "-w", f"{ROOT}/workspace.yaml"],
            cwd=story["home"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_loaded(proc, port)
        nodes = _graphql(
            port, "{ assetNodes { assetKey { path } isPartitioned description kinds } }"
        )["data"]["assetNodes"]
        assets = {n["assetKey"]["path"][-1]: n for n in nodes}
        assert len(assets) == 21
        assert (
            assets["embeddings"]["isPartitioned"] and not assets["super_clusters"]["isPartitioned"]
        )
        for name, node in assets.items():
            assert len((node["description"] or "").strip()) >= 60, name
            assert node["kinds"], name
        assert "RE-FITS" in assets["kmeans_centroids"]["description"]
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

        stale = {
            n["assetKey"]["path"][-1]: n
            for n in _graphql(
                port,
                '{ assetNodes(assetKeys: [{path: ["climbmix_manifest"]}, '
                '{path: ["climbmix_exports"]}]) { assetKey { path } staleStatus '
                "staleCauses { reason key { path } dependency { path } } "
                "assetMaterializations(limit: 1) { metadataEntries { label "
                "... on TableMetadataEntry { table { records schema { columns { name } } } } "
                "... on PathMetadataEntry { path } } } } }",
            )["data"]["assetNodes"]
        }
        for node in stale.values():
            assert node["staleStatus"] == "STALE", node["assetKey"]
            dependencies = {(c["dependency"] or c["key"])["path"][-1] for c in node["staleCauses"]}
            assert dependencies & {"super_clusters", "corpus_documents"}, node["staleCauses"]
        manifest = stale["climbmix_manifest"]
        entries = manifest["assetMaterializations"][0]["metadataEntries"]
        labels = [e["label"] for e in entries]
        assert labels[:8] == [
            "chosen_mixture", "rule", "predicted_objective", "predicted_objective_band",
            "measured_objective", "best_proxy", "predicted_for_best_proxy", "super_clusters",
        ]  # fmt: skip
        # Id, weight, tokens and natural share lead so they fit at 1600 px; terms (<= 4) last.
        table = entries[7]["table"]
        assert [c["name"] for c in table["schema"]["columns"]] == [
            "super_cluster_id", "climbmix_weight", "tokens", "natural_share", "top_terms",
        ]  # fmt: skip
        rows = [json.loads(r) for r in table["records"]]
        assert [r["super_cluster_id"] for r in rows] == list(range(4))
        assert sum(r["climbmix_weight"] for r in rows) == pytest.approx(1.0, abs=1e-3)
        assert all(1 <= len(r["top_terms"].split()) <= 4 for r in rows), rows
        by_label = {e["label"]: e for e in entries}
        references = [json.loads(r) for r in by_label["reference_mixtures"]["table"]["records"]]
        assert references and all(
            len(r["largest_weights"]) <= 48 and "weights" not in r for r in references
        ), references
        charts = {e["label"]: e.get("path") for e in entries if e["label"].startswith("chart_")}
        assert set(charts) == {"chart_weights", "chart_weights_png", "chart_rounds",
                               "chart_rounds_png"}  # fmt: skip
        assert Path(charts["chart_weights_png"]).read_bytes()[:4] == b"\x89PNG"

        runs = _graphql(
            port,
            "{ runsOrError { ... on Runs { results { jobName tags { key value } } } } }",
        )["data"]["runsOrError"]["results"]
        cli = [r for r in runs if {"key": "climb/runner", "value": "cli"} in r["tags"]]
        assert cli and all(r["jobName"].startswith("cli_") for r in cli)
        assert not any(r["jobName"].startswith("__") for r in runs)
        assert {"cli_ingest_shard", "cli_kmeans_centroids", "cli_search_round",
                "cli_climbmix_manifest"} <= {r["jobName"] for r in cli}  # fmt: skip
        # Every run's Job link opens: its job is one the definitions hold.
        defined = {j["name"] for j in described["jobs"]}
        assert {r["jobName"] for r in runs} <= defined, {r["jobName"] for r in runs} - defined
    finally:
        stop_process_group(proc, grace=30)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text())
    warnings = [ln for ln in plain.splitlines() if "WARNING" in ln or "Warning:" in ln]
    assert not warnings, warnings
    assert "Serving dagster-webserver" in plain


def _makefile_value(name: str) -> str:
    """A variable of the Makefile (`NAME := value`), so the test starts what `make dev` does."""
    match = re.search(rf"^{name} := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"{name} is not set in the Makefile"
    return match.group(1)


def _wait_loaded(proc: subprocess.Popen, port: int) -> None:
    """Waits (up to 120 s) until `dagster dev` answers and the climb location is LOADED."""
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
            return
        time.sleep(1)
    assert status.get("climb") == "LOADED"

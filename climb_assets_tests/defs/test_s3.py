"""The whole pipeline with every input and output on S3 (a loopback moto_server).

Corpus shards and the target live in one bucket, every asset is materialized under an `s3://`
root through the dagster-aws resource, and the manifest and the catalog are read back from S3.
Credentials come from the environment (`dg.EnvVar`); the last test searches every log line,
every run record and every stored object for them.
"""

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._serdes import serialize_value

from climb_assets.definitions import build_definitions
from climb_assets.defs.resources import climb_resource
from climb_assets.runner import run_all
from climb_assets_tests.conftest import write_profile

pytestmark = pytest.mark.slow

BUCKET = "climb-e2e"


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory, small_demo_corpus, s3_server):
    base = tmp_path_factory.mktemp("s3run")
    root = s3_server.bucket(BUCKET)
    fs = s3_server.filesystem()
    for shard in sorted(small_demo_corpus.iterdir()):
        fs.put_file(str(shard), f"{BUCKET}/corpus/{shard.name}")
    fs.put_file(str(small_demo_corpus.parent / "targets" / "aws_api.txt"),
                f"{BUCKET}/targets/aws_api.txt")  # fmt: skip
    profile = write_profile(
        base,
        storage={"root": f"{root}/run", "cache": str(base / "cache")},
        corpus={"path": f"{root}/corpus"},
        kmeans={"k": 12, "niter": 10},
        merge={"distance_threshold": None, "target_count": 4},
        tokenizer={"vocab_size": 400},
        proxy={
            "n_layer": 1,
            "n_embd": 32,
            "n_head": 2,
            "seq_len": 64,
            "batch_size": 8,
            "train_tokens": 8_000,
        },
        targets=[{"name": "aws_api", "kind": "text", "path": f"{root}/targets/aws_api.txt"}],
        search={"rounds": [4, 2], "candidates": 2000, "top_k_min": 8},
        manifest={"total_tokens": 10_000, "max_epochs": 2, "parquet_shards": 2},
    )
    saved = {k: os.environ.get(k) for k in s3_server.env}
    os.environ.update(s3_server.env)
    try:
        climb = climb_resource(str(profile))
        with dg.instance_for_test() as instance:
            lines: list[str] = []
            run_all(climb, instance, log=lines.append)
            yield climb, instance, base, lines
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_every_output_is_on_s3_and_the_manifest_reads_back(s3_run, s3_server):
    climb, _, base, _ = s3_run
    assert climb.s3 is not None and not climb.store().is_local
    assert not (base / "out").exists()  # nothing under the local default root
    client = s3_server.client()
    body = client.get_object(Bucket=BUCKET, Key="run/manifest/climbmix.json")["Body"].read()
    manifest = json.loads(body)
    weights = [s["weight"] for s in manifest["super_clusters"]]
    assert abs(sum(weights) - 1.0) < 1e-6 and len(weights) == 4
    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="run/")
        for o in page.get("Contents", [])
    }
    assert {"run/kmeans/centroids.npy", "run/tokenizer/tokenizer.json", "run/catalog.duckdb",
            "run/manifest/megatron_blend.json"} <= keys  # fmt: skip
    done = [k for k in keys if k.startswith("run/proxies/") and k.endswith("/DONE")]
    # the rounds' 6 proxies, round 1's noise replicate and the confirmation proxy
    assert len(done) == 8
    for marker in done:
        folder = marker[: -len("DONE")]
        assert {f"{folder}model.safetensors", f"{folder}config.json"} <= keys
    assert not any(k.endswith((".pkl", ".pickle")) for k in keys)
    record = json.loads(
        client.get_object(Bucket=BUCKET, Key="run/exports/megatron/_export.json")["Body"].read()
    )
    assert record["manifest_digest"] == manifest["manifest_digest"]
    assert {f"run/exports/megatron/{f['path']}" for f in record["files"]} <= keys
    assert any(k.endswith(".idx") for k in keys) and "run/exports/hf/README.md" in keys


def test_catalog_on_s3_opens_in_plain_duckdb_with_an_fsspec_filesystem(s3_run, s3_server):
    _, _, base, _ = s3_run
    local = base / "analyst.duckdb"
    s3_server.client().download_file(BUCKET, "run/catalog.duckdb", str(local))
    con = duckdb.connect(str(local), read_only=True)
    con.register_filesystem(s3_server.filesystem())
    n_docs = con.execute("SELECT count(*) FROM documents WHERE cluster_id IS NOT NULL").fetchone()
    assert n_docs[0] == 180
    assert con.execute("SELECT count(*) FROM mixtures").fetchone()[0] == 7  # with the replicate
    assert con.execute("SELECT count(*) FROM confirmation").fetchone()[0] == 1
    total = con.execute("SELECT sum(weight) FROM manifest_weights").fetchone()[0]
    assert abs(total - 1.0) < 1e-6
    shard = con.execute("SELECT min(shard) FROM documents").fetchone()[0]
    assert shard == "shard-000.parquet"  # the shard's key, not a file name


def test_a_second_run_redoes_nothing(s3_run):
    climb, instance, _, _ = s3_run
    lines: list[str] = []
    timings = run_all(climb, instance, log=lines.append)
    assert "kmeans_centroids" not in timings and "search_round" not in timings
    assert any("already finished" in line for line in lines)


def test_credentials_appear_in_no_log_metadata_or_object(s3_run, s3_server, monkeypatch):
    climb, instance, base, lines = s3_run
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    # the code location's own job, whose S3 resource holds dg.EnvVar references
    defs = build_definitions(climb.profile)
    s3 = defs.resources["climb"].s3
    assert isinstance(s3.aws_secret_access_key, dg.EnvVar)
    assert s3.aws_secret_access_key.env_var_name == "AWS_SECRET_ACCESS_KEY"
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("search_targets")]
    )
    assert result.success  # it read the target from S3 with the resolved credentials
    secrets = (s3_server.SECRET, s3_server.KEY_ID)
    runs = instance.get_runs()
    assert len(runs) > 10
    texts = ["\n".join(lines)]
    for run in runs:
        texts.append(serialize_value(run))
        for record in instance.get_records_for_run(run.run_id).records:
            texts.append(serialize_value(record.event_log_entry))
    blob = "\n".join(texts)
    assert "aws_api" in blob  # the search really is in these records
    for secret in secrets:
        assert secret not in blob
    # compute logs (captured stdout/stderr) and everything the instance stored on disk
    instance_root = Path(instance.root_directory)
    for path in [*instance_root.rglob("*"), *(base / "cache").rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path
    fs = s3_server.filesystem()
    for key in fs.find(f"{BUCKET}/run"):
        data = fs.cat_file(key)
        assert not any(s.encode() in data for s in secrets), key


def test_climb_catalog_command_queries_the_s3_catalog(s3_run, s3_server, monkeypatch, capsys):
    climb, _, _, _ = s3_run
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    from climb_assets.cli import main

    sql = "SELECT count(*) * 1000 + 7 AS n FROM proxy_runs"
    assert main(["--profile", climb.profile, "catalog", sql]) == 0
    assert "7007" in capsys.readouterr().out  # 6 proxies and the noise replicate


def test_gpu_step_runs_on_s3_through_the_multiprocess_executor(s3_run, s3_server, tmp_path):
    """`dagster asset materialize` on the code location: the step runs in a child process that
    resolves the EnvVar credentials itself, and its captured logs hold none of them."""
    import subprocess
    import sys
    import time

    climb, _, _, _ = s3_run
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **s3_server.env, "DAGSTER_HOME": str(home), "CLIMB_CONFIG": climb.profile}
    shard = "shard-000.parquet"
    add = "import dagster as dg; dg.DagsterInstance.get().add_dynamic_partitions('corpus_shards', "
    subprocess.run([sys.executable, "-c", add + f"['{shard}'])"], env=env, check=True)
    client, key = s3_server.client(), "run/embeddings/shard-000.npy"
    before = client.head_object(Bucket=BUCKET, Key=key)["LastModified"]
    time.sleep(1.1)  # LastModified has one-second resolution
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
         "-m", "climb_assets.definitions", "--select", "embeddings", "--partition", shard],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "climb_local" in proc.stderr or "multiprocess" in proc.stderr.lower()
    assert client.head_object(Bucket=BUCKET, Key=key)["LastModified"] > before
    for text in (proc.stdout, proc.stderr):
        assert s3_server.SECRET not in text and s3_server.KEY_ID not in text
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert s3_server.SECRET.encode() not in data and s3_server.KEY_ID.encode() not in data


def test_a_missing_bucket_is_named_with_the_fix(s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    profile = write_profile(tmp_path, storage={"root": "s3://no-such-climb-bucket/run"})
    climb = climb_resource(str(profile))
    climb.store()  # opening the store leaves the missing bucket to the check that names the fix
    with pytest.raises(RuntimeError, match="cannot reach bucket 'no-such-climb-bucket'.*create"):
        climb.check_bucket(climb.settings().storage.root)
    climb.check_bucket(s3_server.bucket("climb-present") + "/run")  # an existing one passes

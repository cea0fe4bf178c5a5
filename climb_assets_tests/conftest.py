"""Shared fixtures: offline settings, a small real corpus, profiles written to temporary folders."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_profile(folder: Path, **sections) -> Path:
    """Writes a profile extending `demo` with the given section overrides; returns its path."""
    data = {"extends": "demo", "storage": {"root": str(folder / "out")}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_readme_queries(con) -> tuple[int, int]:
    """Runs every SQL statement of README.md whose views exist on `con`; (ran, skipped)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    ran = skipped = 0
    for block in re.findall(r"```sql\n(.*?)```", readme, re.S):
        for statement in block.split(";"):
            sql = "\n".join(ln for ln in statement.splitlines() if not ln.strip().startswith("--"))
            if not sql.strip():
                continue
            named = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", sql))
            if named - views:  # e.g. search views on a data-side-only catalog
                skipped += 1
                continue
            con.execute(sql).fetchall()
            ran += 1
    return ran, skipped


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def small_demo_corpus(tmp_path_factory) -> Path:
    """The real demo corpus at 30 documents per source (6 sources, 4 shards)."""
    from climb_assets.lib.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    build_demo_corpus(root, docs_per_source=30, heldout_per_source=5)
    return root / "corpus"


def stop_process_group(proc, grace: float) -> None:
    """SIGTERM to the process group of `proc` (started with a new session), SIGKILL after
    `grace` seconds."""
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class S3Server:
    """A loopback `moto_server` and the settings a client needs to reach it."""

    KEY_ID = "AKIACLIMBTESTKEY0042"
    SECRET = "climb-test-secret/Never+Logged/9f3a77"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.KEY_ID,
            aws_secret_access_key=self.SECRET,
            region_name="us-east-1",
        )

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(
            key=self.KEY_ID,
            secret=self.SECRET,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": "us-east-1"},
        )

    def storage_options(self) -> dict:
        return {
            "key": self.KEY_ID,
            "secret": self.SECRET,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def bucket(self, name: str) -> str:
        """Creates a bucket (if new) and returns its `s3://` URL."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """`moto_server` on a free loopback port, started within 60 s and stopped by its pid."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("moto_server did not answer within 60 s") from None
                time.sleep(0.2)
        yield S3Server(endpoint)
    finally:
        stop_process_group(proc, grace=10)
        log.close()


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def ingest_new_shards(defs, climb, instance) -> dict:
    """Evaluates corpus_shards_sensor and runs what it requests, as the daemon would.

    Returns the `ingest_shards` run per new shard partition.
    """
    import dagster as dg

    from climb_assets.defs.sensors import corpus_shards_sensor

    with dg.build_sensor_context(instance=instance, resources={"climb": climb}) as context:
        result = corpus_shards_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    job = defs.resolve_job_def("ingest_shards")
    return {
        r.partition_key: job.execute_in_process(
            instance=instance,
            partition_key=r.partition_key,
            asset_selection=r.asset_selection,
            tags=r.tags,
            run_config=QUIET,
        )
        for r in result.run_requests
    }


def after_run(sensor, run, instance):
    """Evaluates a run-status sensor on the success of `run` (an ExecuteInProcessResult)."""
    import dagster as dg

    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=run.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=run.dagster_run,
    )
    return sensor(context)


def run_requested(defs, job: str, request, instance):
    """Runs `job` for a sensor's RunRequest in process."""
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags, run_config=QUIET
    )

"""Faults a real user meets: killed runs, replaced, deleted and broken shards, concurrent runs.

Each test is one finding of the fault review and fails on the code before the fix.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import CorpusError
from climb_assets.runner import run_data_side
from climb_assets_tests.conftest import write_jsonl, write_profile

REPO = Path(__file__).resolve().parents[2]
DATA_SIDE = {
    "kmeans": {"k": 4, "niter": 5},
    "quality": {"scorers": [{"name": "heuristic", "threshold": 1.0}]},
    "merge": {"distance_threshold": None, "target_count": 2},
}


def _profile(tmp_path: Path, folder: Path, **sections) -> Path:
    """A data-side profile on `folder`; `corpus=` adds keys to the corpus section."""
    corpus = {"path": str(folder), "extra_columns": ["source"], **sections.pop("corpus", {})}
    return write_profile(tmp_path, corpus=corpus, **{"targets": [], **DATA_SIDE, **sections})


def _documents(climb: ClimbResource, sql: str) -> list[tuple]:
    con = duckdb.connect(climb.store().uri("catalog.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture
def corpus(tmp_path, small_demo_corpus) -> Path:
    folder = tmp_path / "corpus"
    shutil.copytree(small_demo_corpus, folder)
    return folder


def test_replaced_shard_is_read_again_and_deleted_shard_unregistered(tmp_path, corpus):
    climb = ClimbResource(profile=str(_profile(tmp_path, corpus)))
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        run_data_side(climb, instance, log=lines.append)
        before = _documents(climb, "SELECT count(*) FROM documents")[0][0]
        shard = corpus / "shard-000.parquet"
        table = pq.read_table(shard)
        new_ids = pa.array([f"new-{i}" for i in range(table.num_rows)])
        pq.write_table(table.set_column(0, "doc_id", new_ids), shard)  # replaced in place
        lines.clear()
        run_data_side(climb, instance, log=lines.append)
        assert any("materializing corpus_documents" in ln and "shard-000" in ln for ln in lines)
        ids = {r[0] for r in _documents(climb, "SELECT doc_id FROM documents")}
        assert {f"new-{i}" for i in range(table.num_rows)} <= ids
        assert _documents(climb, "SELECT count(*) FROM documents")[0][0] == before

        gone = corpus / "shard-001.jsonl"
        n_gone = sum(1 for _ in gone.open())
        gone.unlink()
        lines.clear()
        run_data_side(climb, instance, log=lines.append)
        assert any("unregistered 1 shard(s) whose file is gone" in ln for ln in lines)
        assert "shard-001.jsonl" not in instance.get_dynamic_partitions("corpus_shards")
        assert _documents(climb, "SELECT count(*) FROM documents")[0][0] == before - n_gone
        assert not (Path(climb.store().uri()) / "corpus_documents" / "shard-001.parquet").exists()


def test_broken_shard_named_then_quarantined_then_deleted(tmp_path, corpus):
    good = pq.read_table(corpus / "shard-000.parquet")
    broken = corpus / "shard-broken.parquet"
    pq.write_table(good, broken)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # cut in half
    (corpus / "notes.csv").write_text("a,b\n")
    climb = ClimbResource(profile=str(_profile(tmp_path, corpus)))
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        with pytest.raises(CorpusError, match=r"shard-broken\.parquet cannot be read as Parquet"):
            run_data_side(climb, instance, log=lines.append)
        assert any("notes.csv" in ln and "not read" in ln for ln in lines)

        skip = ClimbResource(
            profile=str(_profile(tmp_path, corpus, corpus={"on_bad_shard": "skip"}))
        )
        run_data_side(skip, instance, log=lines.append)
        reasons = _documents(
            skip, "SELECT reason FROM rejected_rows WHERE reason LIKE 'unreadable%'"
        )
        assert len(reasons) == 1 and "cannot be read as Parquet" in reasons[0][0]

        broken.unlink()
        run_data_side(climb, instance, log=lines.append)  # no "No such file" any more
        assert "shard-broken.parquet" not in instance.get_dynamic_partitions("corpus_shards")


def test_copied_shard_refused_at_ingestion_naming_both_shards(tmp_path, corpus):
    """A shard copied under a new name is refused when it is read, before its embeddings, and
    its rows never reach the catalog twice (it used to cost a whole ingest first)."""
    shutil.copy(corpus / "shard-000.parquet", corpus / "shard-zz-copy.parquet")
    n_copied = pq.read_metadata(corpus / "shard-zz-copy.parquet").num_rows
    climb = ClimbResource(profile=str(_profile(tmp_path, corpus)))
    lines: list[str] = []
    with (
        dg.instance_for_test() as instance,
        pytest.raises(
            CorpusError,
            match=rf"shard-zz-copy\.parquet shares {n_copied} doc_id\(s\) with shard "
            r"\S*shard-000\.parquet, e\.g\. '.+'; if one is a copy of the other, remove it",
        ),
    ):
        run_data_side(climb, instance, log=lines.append)
    out = Path(climb.store().uri())
    assert (out / "embeddings" / "shard-000.npy").exists()
    for rel in ("embeddings/shard-zz-copy.npy", "corpus_documents/shard-zz-copy.parquet",
                "corpus_ids/shard-zz-copy.npy"):  # fmt: skip
        assert not (out / rel).exists(), rel


def _climb(home: Path, profile: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home), "CLIMB_HOME": str(home.parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "climb_assets.cli", "--profile", str(profile), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def test_sigkilled_run_never_blocks_the_next(tmp_path, corpus):
    """kill -9 while embeddings hold the only `gpu` pool slot; the next run must go through."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # pools: default_limit 1
    profile = _profile(tmp_path, corpus)
    first = _climb(home, profile, "run", "--data-only")
    os.environ["DAGSTER_HOME"] = str(home)
    deadline = time.monotonic() + 300
    try:
        with dg.DagsterInstance.get() as instance:
            while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
                assert first.poll() is None, first.stdout.read()
                assert time.monotonic() < deadline, "embeddings never claimed the gpu slot"
                time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        del os.environ["DAGSTER_HOME"]
    second = _climb(home, profile, "run", "--data-only")
    try:
        out, _ = second.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        pytest.fail("the run after a SIGKILL is wedged")
    assert second.returncode == 0, out
    assert "marked failed 1 run(s) whose process is gone" in out
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as instance:
            assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
            failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert len(failed) == 1 and failed[0].tags["climb/pid"] == str(first.pid)
            assert failed[0].tags["climb/command"].startswith("climb --profile")
    finally:
        del os.environ["DAGSTER_HOME"]


def test_second_run_on_the_same_root_refuses_naming_the_holder(tmp_path, corpus):
    """Two first runs on a new DAGSTER_HOME: one runs, the other says who holds the lock."""
    home = tmp_path / "home"  # not created: both runs race to create the instance
    profile = _profile(tmp_path, corpus)
    runs = [_climb(home, profile, "run", "--data-only") for _ in range(2)]
    outputs = [p.communicate(timeout=400)[0] for p in runs]
    codes = sorted(p.returncode for p in runs)
    assert codes == [0, 2], outputs
    refused = next(o for p, o in zip(runs, outputs, strict=True) if p.returncode == 2)
    assert "another climb process (pid" in refused and "Traceback" not in refused
    assert "table runs already exists" not in "".join(outputs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_ends_with_one_line(tmp_path, corpus, sig):
    home = tmp_path / "home"
    profile = _profile(tmp_path, corpus)
    proc = _climb(home, profile, "run", "--data-only")
    deadline = time.monotonic() + 300
    while not (tmp_path / "out" / "corpus_documents").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert out.strip().endswith("climb: interrupted; finished work is kept; run again to resume")
    assert "Traceback" not in out and "Stack Trace" not in out and " - ERROR - " not in out, out


def test_preflight_lists_every_wrong_path_before_any_work(tmp_path, corpus, capsys, monkeypatch):
    from climb_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "root-is-a-file").write_text("")
    profile = write_profile(
        tmp_path, corpus={"path": str(corpus)},
        storage={"root": str(tmp_path / "root-is-a-file")},
        encoder={"model": str(tmp_path / "no-encoder") + "/"},
        targets=[{"name": "t", "kind": "text", "path": str(tmp_path)}],
        search={"token_pool": 1000},
    )  # fmt: skip
    start = time.perf_counter()
    assert main(["--profile", str(profile), "run"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 30
    assert "4 problem(s) found before any work started" in err, err
    assert "search.token_pool is 1,000 tokens but one proxy trains on" in err, err
    assert "storage.root" in err and "is a file, not a folder" in err
    assert "targets[t].path" in err and "is a folder, not a file" in err
    assert "encoder path" in err and "set encoder.model" in err
    assert not (tmp_path / "home").exists(), "the instance was opened before the checks"


def test_s3_without_credentials_fails_within_seconds(
    tmp_path, corpus, s3_server, monkeypatch, capsys
):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    profile = write_profile(
        tmp_path, corpus={"path": str(corpus)}, targets=[],
        storage={"root": "s3://climb-nocreds/out", "endpoint_url": s3_server.endpoint},
    )  # fmt: skip
    from climb_assets.cli import main

    start = time.perf_counter()
    code = main(["--profile", str(profile), "run", "--data-only"])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - start < 15, err
    assert "no AWS credentials for s3://climb-nocreds/out: set AWS_ACCESS_KEY_ID" in err
    assert len(err.strip().splitlines()) <= 3, err


def test_giant_document_keeps_the_token_accounting(tmp_path):
    """One 10 MB document: split, and the exported shards hold the tokens the manifest grants."""
    from climb_assets.lib import tokens
    from climb_assets.lib.planted import build_planted_corpus
    from climb_assets.runner import run_all
    from climb_assets_tests.defs.test_search import planted_profile

    corpus = build_planted_corpus(tmp_path / "data")
    texts = [
        json.loads(line)["text"]
        for line in (corpus.corpus / "shard-1.jsonl").read_text().splitlines()
    ]
    giant, i = [], 0
    while sum(map(len, giant)) < 10_000_000:
        giant.append(texts[i % len(texts)])
        i += 1
    (corpus.corpus / "shard-giant.jsonl").write_text(
        json.dumps({"doc_id": "giant", "text": "\n\n".join(giant), "domain": "1"}) + "\n"
    )
    profile = planted_profile(
        tmp_path, corpus, tmp_path / "out", search={"rounds": [4], "candidates": 2000,
        "top_k_min": 8, "final": "argmax"},
        manifest={"total_tokens": 3_000_000, "max_epochs": 2, "parquet_shards": 2},
    )  # fmt: skip
    climb = ClimbResource(profile=str(profile))
    with dg.instance_for_test() as instance:
        run_all(climb, instance, log=lambda _: None)
    store = climb.store()
    docs = store.read_parquet("corpus_documents/shard-giant.parquet")
    assert docs.num_rows == 101 and max(docs.column("n_chars").to_pylist()) <= 100_000
    manifest = store.read_json("manifest/climbmix.json")
    granted = manifest["total_tokens"]["granted"]
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    exported = 0
    for rel in store.list("manifest/shards"):
        part = store.read_parquet(rel, ["text"]).column("text").to_pylist()
        exported += sum(len(e.ids) + 1 for e in tok.encode_batch(part))  # + EOS per document
    assert abs(exported - granted) <= 0.01 * granted, (exported, granted)
    assert manifest["total_tokens"]["accounting"]["within_tolerance"]
    assert manifest["total_tokens"]["exported"] == exported
    # Each super-cluster's budget too: the 100k-character pieces used to leave some 20% short.
    for sc in manifest["super_clusters"]:
        assert abs(sc["exported_tokens"] - sc["tokens"]) <= 0.01 * sc["tokens"], sc


def test_sensor_reingests_replaced_and_unregisters_deleted_shards(tmp_path):
    from climb_assets.defs.common import write_marker
    from climb_assets.defs.sensors import corpus_shards_sensor

    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "s1.jsonl", [{"doc_id": "1", "text": "a"}])
    write_jsonl(corpus / "s2.jsonl", [{"doc_id": "2", "text": "b"}])
    climb = ClimbResource(profile=str(write_profile(tmp_path, corpus={"path": str(corpus)})))
    store = climb.store()
    write_marker(store, climb.settings(), "corpus_documents", "s1.jsonl", "size=1;mtime_ns=1")
    (store.local_path("corpus_documents")).mkdir(parents=True)
    (store.local_path("corpus_documents") / "s2.parquet").write_bytes(b"stale")
    (corpus / "s2.jsonl").unlink()
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions("corpus_shards", ["s1.jsonl", "s2.jsonl"])
        with dg.build_sensor_context(instance=inst, resources={"climb": climb}) as ctx:
            result = corpus_shards_sensor(ctx)
        jobs = sorted((r.job_name, r.partition_key) for r in result.run_requests)
        assert jobs == [("ingest_shards", "s1.jsonl"), ("refresh_catalog", None)]
        assert inst.get_dynamic_partitions("corpus_shards") == ["s1.jsonl"]
        assert not store.exists("corpus_documents/s2.parquet")


def test_step_waiting_for_a_pool_slot_names_the_holder():
    import threading

    from climb_assets.runner import Materializer

    @dg.asset(pool="gpu")
    def gpu_step() -> None:
        return None

    pools = {"concurrency": {"pools": {"granularity": "op", "default_limit": 1}}}
    with dg.instance_for_test(overrides=pools) as instance:
        holder = dg.materialize([gpu_step], instance=instance).run_id
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        storage.claim_concurrency_slot("gpu", holder, "gpu_step")  # as a killed run leaves it
        lines: list[str] = []

        def free_when_told() -> None:  # the run stays in the main thread, as in `climb run`
            deadline = time.monotonic() + 60
            while not any("waiting for a slot of pool 'gpu'" in ln for ln in lines):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            storage.free_concurrency_slots_for_run(holder)

        freer = threading.Thread(target=free_when_told, daemon=True)
        freer.start()
        Materializer(instance, {}, lines.append, "WARNING")([gpu_step], "gpu")
        freer.join(timeout=10)
    assert any("waiting for a slot" in ln for ln in lines), lines
    told = next(ln for ln in lines if "waiting for a slot" in ln)
    assert f"held by run {holder[:8]}" in told and "(success)" in told.lower()


SLEEPER = """
import time
import dagster as dg

@dg.asset(pool="gpu")
def sleeper() -> None:
    time.sleep(120)

dg.materialize([sleeper], instance=dg.DagsterInstance.get())
"""


def test_killed_run_of_another_launcher_is_cleaned_up(tmp_path, monkeypatch):
    """A run that is not climb's own (the UI's, a script's) reports its worker pid; reaped too."""
    from climb_assets.run_health import reap_dead_runs

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    deadline = time.monotonic() + 120
    with dg.DagsterInstance.get() as instance:
        try:
            while not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            assert reap_dead_runs(instance) is None, "a live run was reaped"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        note = reap_dead_runs(instance)
        (run,) = instance.get_runs()
        assert note and "marked failed 1 run(s)" in note and run.run_id[:8] in note
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_instance_settings_climb_writes_match_the_repository_template():
    import yaml

    from climb_assets.runner import INSTANCE_YAML

    assert yaml.safe_load(INSTANCE_YAML) == yaml.safe_load((REPO / "dagster.yaml").read_text())


def test_cli_error_is_one_line_without_the_framework_stack(tmp_path, capsys, monkeypatch):
    from climb_assets.cli import main

    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "b.jsonl", [{"doc_id": "1", "text": "fine text"}])
    (corpus / "a-empty.parquet").write_bytes(b"")  # 0 bytes
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    profile = write_profile(tmp_path, corpus={"path": str(corpus)}, targets=[])
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err
    assert "climb: error: shard " in err and "a-empty.parquet cannot be read as Parquet" in err
    assert "Stack Trace" not in err and " - ERROR - " not in err, err


def test_markers_from_before_shard_identities_are_adopted_unless_the_shard_changed(tmp_path):
    from climb_assets.config import load_profile
    from climb_assets.defs.common import adopt_unsourced_markers, is_done, write_marker
    from climb_assets.lib.storage import Store

    store, corpus = Store(str(tmp_path / "out")), Store(str(tmp_path / "corpus"))
    profile = load_profile("demo")
    for name in ("old.jsonl", "touched.jsonl"):
        write_jsonl(tmp_path / "corpus" / name, [{"doc_id": "1", "text": "x"}])
        os.utime(tmp_path / "corpus" / name, (time.time() - 3600, time.time() - 3600))
        for asset in ("corpus_documents", "embeddings"):
            write_marker(store, profile, asset, name)  # as older versions wrote them
    os.utime(tmp_path / "corpus" / "touched.jsonl")  # replaced after it was read
    assert adopt_unsourced_markers(store, corpus, "old.jsonl")
    assert is_done(store, profile, "embeddings", "old.jsonl", corpus.identity("old.jsonl"))
    assert not adopt_unsourced_markers(store, corpus, "touched.jsonl")
    assert not is_done(
        store, profile, "corpus_documents", "touched.jsonl", corpus.identity("touched.jsonl")
    )


def test_link_loop_and_dangling_link_are_one_line_then_quarantined(
    tmp_path, corpus, capsys, monkeypatch
):
    """Both used to end in a traceback during shard registration ([Errno 40], a bare
    [Errno 2]) that `on_bad_shard: skip` could not help with."""
    from climb_assets.cli import main

    (corpus / "loop.jsonl").symlink_to("loop.jsonl")
    (corpus / "dangling.jsonl").symlink_to("missing.jsonl")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    profile = _profile(tmp_path, corpus)
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("climb: error: shard ") and len(err.splitlines()) == 1, err
    assert "dangling.jsonl is a dangling symbolic link (to missing.jsonl" in err
    assert "corpus.on_bad_shard: skip" in err
    (corpus / "dangling.jsonl").unlink()
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "loop.jsonl is a symbolic link loop; fix or remove it" in err and "\n" not in err

    (corpus / "dangling.jsonl").symlink_to("missing.jsonl")
    (tmp_path / "skip").mkdir()
    climb = ClimbResource(
        profile=str(_profile(tmp_path / "skip", corpus, corpus={"on_bad_shard": "skip"}))
    )
    with dg.instance_for_test() as instance:
        run_data_side(climb, instance, log=lambda _: None)
        reasons = sorted(
            r[0] for r in _documents(climb, "SELECT reason FROM rejected_rows WHERE row = -1")
        )
        assert reasons == [
            "unreadable shard: is a dangling symbolic link (to missing.jsonl, which does not "
            "exist)",
            "unreadable shard: is a symbolic link loop",
        ]
        assert _documents(climb, "SELECT count(*) FROM documents")[0][0] > 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_shard_names_the_permission(tmp_path, capsys, monkeypatch):
    from climb_assets.cli import main

    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "b.jsonl", [{"doc_id": "1", "text": "fine text " * 20}])
    write_jsonl(corpus / "c.jsonl", [{"doc_id": "2", "text": "other text " * 20}])
    (corpus / "c.jsonl").chmod(0)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    profile = write_profile(tmp_path, corpus={"path": str(corpus)}, targets=[])
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "c.jsonl cannot be read: permission denied" in err and "\n" not in err


def test_full_disk_is_one_line_naming_the_root_and_the_fix(tmp_path, corpus, capsys, monkeypatch):
    """A full disk used to end in two tracebacks (`SafetensorError: ... No space left on device
    (os error 28)`) and no `climb: error:` line. Here the disk fills while a step writes."""
    import errno

    from climb_assets.cli import main
    from climb_assets.lib.storage import Store

    write_parquet = Store.write_parquet

    def full(self, rel, table):
        if rel.startswith("corpus_rejects/"):
            raise OSError(errno.ENOSPC, "No space left on device", self.uri(rel))
        return write_parquet(self, rel, table)

    monkeypatch.setattr(Store, "write_parquet", full)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    profile = _profile(tmp_path, corpus)
    assert main(["--profile", str(profile), "run", "--data-only"]) == 1
    err = capsys.readouterr().err.strip()
    root = ClimbResource(profile=str(profile)).store().uri()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("climb: error: no space left on the device writing ")
    assert "corpus_rejects/shard-000.parquet" in err
    assert f"free space under storage.root ({root})" in err and "then run again" in err


def test_os_failures_found_through_wrappers_and_rust_messages():
    import errno

    from climb_assets.lib.os_errors import describe_os_failure

    class SafetensorError(Exception):  # safetensors' Rust error: not an OSError
        pass

    rust = SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )
    try:
        try:
            raise rust
        except SafetensorError as inner:
            raise dg.DagsterError("step failed") from inner
    except dg.DagsterError as wrapped:
        line = describe_os_failure(wrapped, "/data/out")
    assert line and line.startswith("no space left on the device: free space under storage.root")
    denied = PermissionError(errno.EACCES, "Permission denied", "/data/out/x.npy")
    assert describe_os_failure(denied) == (
        "Permission denied: /data/out/x.npy; give this user access to it (or point the "
        "profile's path elsewhere), then run again (finished work is kept)"
    )
    assert describe_os_failure(ValueError("kmeans.k too large")) is None


def test_manifest_from_a_corpus_that_changed_is_marked_stale(
    tmp_path, corpus, small_demo_corpus, capsys, monkeypatch
):
    """A deleted shard used to leave manifest/ and exports/ looking current (26 of 85 documents
    from the deleted shard) with nothing saying so: not the JSON, the catalog nor the CLI."""
    from climb_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    target = small_demo_corpus.parent / "targets" / "aws_api.txt"
    profile = _profile(
        tmp_path, corpus,
        targets=[{"name": "aws_api", "kind": "text", "path": str(target)}],
        tokenizer={"vocab_size": 300},
        search={"final": "target_aligned"},
        manifest={"total_tokens": 5_000, "max_epochs": 2, "parquet_shards": 1},
    )  # fmt: skip
    climb = ClimbResource(profile=str(profile))
    store = climb.store()

    def catalog(sql: str) -> list[tuple]:
        return _documents(climb, sql)

    assert main(["--profile", str(profile), "run"]) == 0
    assert "climb: warning" not in capsys.readouterr().err
    built = store.read_json("manifest/climbmix.json")["corpus"]
    assert built["shards"] == 4 and len(built["corpus_digest"]) == 16
    assert catalog("SELECT stale FROM manifest_status") == [(False,)]

    (corpus / "shard-001.jsonl").unlink()
    assert main(["--profile", str(profile), "run", "--data-only"]) == 0
    err = capsys.readouterr().err
    assert "climb: warning: the manifest and exports under " in err, err
    assert "are STALE: built from corpus " in err and "(4 shards), the corpus is now" in err
    assert catalog("SELECT stale, built_from_shards, current_shards FROM manifest_status") == [
        (True, 4, 3)
    ]
    assert catalog("SELECT DISTINCT manifest_stale FROM manifest_documents") == [(True,)]
    assert main(["--profile", str(profile), "catalog", "SELECT 1"]) == 0
    assert "are STALE" in capsys.readouterr().err

    assert main(["--profile", str(profile), "run"]) == 0  # the search catches up
    assert "climb: warning" not in capsys.readouterr().err
    assert catalog("SELECT DISTINCT manifest_stale FROM manifest_weights") == [(False,)]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", r"targets\[aws_api\]: target 'aws_api': \S+aws_api\.txt holds no text"),
        (b"\n\n   \n", r"holds no text; point it at held-out text"),
        ("caf\xe9 cr\xe8me".encode("latin-1"), r"aws_api\.txt is not UTF-8 \(byte 3\)"),
    ],
)
def test_bad_target_file_is_found_before_the_data_side(
    tmp_path, corpus, capsys, monkeypatch, content, problem
):
    """An empty target file used to be found only after the whole data side ran."""
    from climb_assets.cli import main

    target = tmp_path / "aws_api.txt"
    target.write_bytes(content)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    targets = [{"name": "aws_api", "kind": "text", "path": str(target)}]
    profile = _profile(tmp_path, corpus, targets=targets)
    assert main(["--profile", str(profile), "run"]) == 2
    err = capsys.readouterr().err
    assert "problem(s) found before any work started" in err and re.search(problem, err), err
    assert not (Path(ClimbResource(profile=str(profile)).store().uri()) / "embeddings").exists()


def test_absurd_settings_are_refused_with_the_number_that_would_work(
    tmp_path, corpus, small_demo_corpus, capsys, monkeypatch
):
    """`kmeans.k` beyond the documents, and 200,000 proxies, used to be accepted silently."""
    from climb_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    n_docs = sum(
        pq.read_metadata(p).num_rows if p.suffix == ".parquet" else len(p.read_text().splitlines())
        for p in corpus.iterdir()
    )
    profile = _profile(tmp_path, corpus, kmeans={"k": 10**6})
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err
    assert f"kmeans.k = 1,000,000 is more than the corpus's {n_docs:,} documents" in err, err
    assert f"set kmeans.k to at most {n_docs:,}" in err

    target = small_demo_corpus.parent / "targets" / "aws_api.txt"
    profile = _profile(
        tmp_path, corpus, search={"rounds": [100_000, 100_000]},
        targets=[{"name": "aws_api", "kind": "text", "path": str(target)}],
    )  # fmt: skip
    assert main(["--profile", str(profile), "run"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"^plan: about .+ of wall-clock on this machine", captured.out, re.M)
    line = captured.err.strip().splitlines()[-1]
    assert re.match(
        r"climb: error: the plan estimates .+ above deployment\.confirm_above_hours = 24 h; its "
        r"largest part is search \(200000 proxies\) .+: search\.rounds totalling at most "
        r"[\d,]+ proxies \(now 200,000\) fit in it; pass --yes to run it anyway$",
        line,
    ), line
    assert not (Path(ClimbResource(profile=str(profile)).store().uri()) / "embeddings").exists()


def test_cost_gate_is_configurable_and_yes_runs_anyway(tmp_path, corpus, capsys, monkeypatch):
    """Short of disk, the run warns with what it may write, before any work."""
    from collections import namedtuple

    from climb_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    profile = _profile(tmp_path, corpus, deployment={"confirm_above_hours": 1e-9})
    assert main(["--profile", str(profile), "run", "--data-only"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"climb: warning: storage\.root \S+ has 0\.00 GB free; this run may write up "
                     r"to [\d.]+ GB \(most in \w+", err), err  # fmt: skip
    assert "deployment.confirm_above_hours = 1e-09 h" in err
    assert main(["--profile", str(profile), "run", "--data-only", "--yes"]) == 0


def test_permission_refused_names_the_shard_as_any_user(tmp_path, monkeypatch):
    """The same message as for a user without read access (root reads every file, so the
    refusal is raised where the shard is opened)."""
    import errno

    from climb_assets.lib import corpus as corpus_module
    from climb_assets.lib.corpus import CorpusOptions, ShardStream, ShardUnreadable
    from climb_assets.lib.storage import Store

    write_jsonl(tmp_path / "c.jsonl", [{"doc_id": "2", "text": "other text " * 20}])

    def refuse(fs, path, rel):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(corpus_module, "open_shard", refuse)
    stream = ShardStream(Store(str(tmp_path)), "c.jsonl", CorpusOptions())
    with pytest.raises(ShardUnreadable, match=r"c\.jsonl cannot be read: permission denied; fix "
                       r"or remove it, or set corpus\.on_bad_shard: skip") as info:  # fmt: skip
        list(stream)
    assert info.value.reason == "cannot be read: permission denied"

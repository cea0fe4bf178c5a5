"""Corpus refresh: a new shard is embedded alone, assigned to the existing centroids, scored for
drift and shown by the catalog; the recluster schedule re-fits and re-assigns everything."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
from dagster._core.test_utils import create_run_for_test

from climb_assets.definitions import build_definitions
from climb_assets.defs.common import marker_path
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.sensors import (
    corpus_shards_sensor,
    reassign_after_recluster_sensor,
    recluster_schedule,
    refresh_catalog_sensor,
)
from climb_assets.runner import run_data_side
from climb_assets_tests.conftest import (
    after_run,
    ingest_new_shards,
    run_requested,
    write_jsonl,
    write_profile,
)

pytestmark = pytest.mark.slow

IN_DIST = "shard-100.jsonl"  # held-out chunks of the demo sources
OUT_DIST = "shard-101.jsonl"  # random letter strings


@dataclass
class Env:
    climb: ClimbResource
    defs: dg.Definitions
    corpus: Path
    targets: Path

    @property
    def out(self) -> Path:
        return Path(self.climb.store().uri())


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def env(tmp_path_factory, small_demo_corpus, instance) -> Env:
    folder = tmp_path_factory.mktemp("refresh")
    corpus = folder / "corpus"
    shutil.copytree(small_demo_corpus, corpus)  # the shared fixture's folder stays untouched
    profile = write_profile(
        folder,
        corpus={"path": str(corpus)},
        kmeans={"k": 12, "niter": 10},
        merge={"distance_threshold": None, "target_count": 6},
    )
    climb = ClimbResource(profile=str(profile))
    run_data_side(climb, instance, log=lambda _: None)
    return Env(climb, build_definitions(str(profile)), corpus, small_demo_corpus.parent / "targets")


def _ingest_new_shards(env: Env, instance) -> dict[str, dg.ExecuteInProcessResult]:
    return ingest_new_shards(env.defs, env.climb, instance)


def _after(sensor, run: dg.ExecuteInProcessResult, instance):
    return after_run(sensor, run, instance)


def _run(env: Env, job: str, request: dg.RunRequest, instance) -> dg.ExecuteInProcessResult:
    return run_requested(env.defs, job, request, instance)


def _latest(instance, asset: str) -> int:
    """Storage id of the newest materialization of `asset`."""
    return instance.fetch_materializations(dg.AssetKey(asset), limit=1).records[0].storage_id


def _catalog(env: Env) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(env.out / "catalog.duckdb"), read_only=True)


def _drift_share(run: dg.ExecuteInProcessResult) -> float:
    meta = run.asset_materializations_for_node("cluster_assignments")[0].metadata
    return meta["drift_share"].value


@pytest.fixture(scope="module")
def refreshed(env, instance) -> dict:
    """State before the refresh, then one new in-distribution shard taken through the sensors."""
    embeddings = sorted((env.out / "embeddings").glob("*.npy"))
    before = {
        "mtimes": {p.name: p.stat().st_mtime_ns for p in embeddings},
        "centroids": (env.out / "kmeans/centroids.npy").read_bytes(),
        "embeddings_cursor": _latest(instance, "embeddings"),
        "fit_event": _latest(instance, "kmeans_centroids"),
    }
    rows = []
    for path in sorted(env.targets.glob("*.jsonl")):
        for i, line in enumerate(path.read_text().splitlines()):
            text = json.loads(line)["text"]
            rows.append({"doc_id": f"heldout-{path.stem}-{i}", "text": text, "source": path.stem})
    write_jsonl(env.corpus / IN_DIST, rows)
    runs = _ingest_new_shards(env, instance)
    refresh = _after(refresh_catalog_sensor, runs[IN_DIST], instance)
    assert isinstance(refresh, dg.RunRequest), refresh
    refresh_run = _run(env, "refresh_catalog", refresh, instance)
    return {"before": before, "runs": runs, "n_new": len(rows), "refresh_run": refresh_run}


def test_only_the_new_shard_is_embedded_and_nothing_refits(env, refreshed, instance):
    before, runs = refreshed["before"], refreshed["runs"]
    assert list(runs) == [IN_DIST]
    run = runs[IN_DIST]
    assert run.success
    materialized = {
        (e.asset_key.to_user_string(), e.partition) for e in run.get_asset_materialization_events()
    }
    assert materialized == {
        (a, IN_DIST)
        for a in ("corpus_documents", "embeddings", "cluster_quality", "cluster_assignments")
    }
    later = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("embeddings"), after_storage_id=before["embeddings_cursor"]
        ),
        limit=100,
    ).records
    assert [r.partition_key for r in later] == [IN_DIST]
    for name, mtime in before["mtimes"].items():
        assert (env.out / "embeddings" / name).stat().st_mtime_ns == mtime, name
    assert (env.out / "kmeans/centroids.npy").read_bytes() == before["centroids"]
    assert _latest(instance, "kmeans_centroids") == before["fit_event"]  # no re-fit anywhere


def test_catalog_shows_the_new_documents_with_clusters(env, refreshed):
    assert refreshed["refresh_run"].success
    con = _catalog(env)
    n, assigned, with_super, kept_without_super = con.execute(
        f"""SELECT count(*), count(cluster_id), count(super_cluster_id),
                   count(*) FILTER (WHERE cluster_kept AND super_cluster_id IS NULL)
            FROM documents WHERE shard = '{IN_DIST}'"""
    ).fetchone()
    assert n == assigned == refreshed["n_new"] == 30
    assert with_super > 0 and kept_without_super == 0
    assert con.execute("SELECT sum(size) FROM clusters").fetchone()[0] == 180 + 30


def test_drift_is_recorded_against_the_fit_percentile(env, refreshed):
    stats = json.loads((env.out / "kmeans/fit_stats.json").read_text())
    assert stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    share = _drift_share(refreshed["runs"][IN_DIST])
    assert 0.0 <= share <= 1.0
    drift = duckdb.sql(f"SELECT * FROM read_parquet('{env.out}/drift/*.parquet')").pl()
    row = drift.filter(drift["shard"] == IN_DIST).row(0, named=True)
    assert row["drift_share"] == pytest.approx(share, abs=1e-4)
    assert row["fit_p95_distance"] == pytest.approx(stats["p95"])
    assert row["documents"] == 30
    # The fit sample is the whole original corpus here; the baseline leaves each document out of
    # its own centroid, so at most 5% of the fitted documents lie beyond it.
    assert stats["in_sample"]["p95"] <= stats["p95"]
    old = drift.filter(drift["shard"].str.starts_with("shard-00"))
    overall = float((old["drift_share"] * old["documents"]).sum() / old["documents"].sum())
    assert 0.0 < overall <= 0.05


def test_refresh_sensor_waits_for_shard_runs_and_refreshes_once(env, refreshed, instance):
    again = _after(refresh_catalog_sensor, refreshed["refresh_run"], instance)
    assert isinstance(again, dg.SkipReason) and "already refreshed" in again.skip_message
    pending = create_run_for_test(
        instance, job_name="ingest_shards", status=dg.DagsterRunStatus.STARTED
    )
    try:
        waiting = _after(refresh_catalog_sensor, refreshed["runs"][IN_DIST], instance)
        assert isinstance(waiting, dg.SkipReason) and "in flight" in waiting.skip_message
    finally:
        instance.delete_run(pending.run_id)


def test_out_of_distribution_shard_drifts_more(env, refreshed, instance):
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    rows = [
        {
            "doc_id": f"noise-{i}",
            "text": " ".join("".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(60)),
            "source": "noise",
        }
        for i in range(30)
    ]
    write_jsonl(env.corpus / OUT_DIST, rows)
    runs = _ingest_new_shards(env, instance)
    assert list(runs) == [OUT_DIST]
    in_share, out_share = _drift_share(refreshed["runs"][IN_DIST]), _drift_share(runs[OUT_DIST])
    print(f"drift share: held-out shard {in_share:.3f}, random-letter shard {out_share:.3f}")
    assert out_share >= 0.8
    assert out_share - in_share >= 0.5


def test_recluster_schedule_refits_then_reassigns_every_shard(env, refreshed, instance):
    shards = sorted(instance.get_dynamic_partitions("corpus_shards"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (env.out / "embeddings").glob("*.npy")}
    old_digest = json.loads((env.out / "kmeans/fit_stats.json").read_text())["centroids_digest"]
    request = recluster_schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(request, dg.RunRequest)
    recluster = _run(env, "recluster", request, instance)
    meta = recluster.asset_materializations_for_node("kmeans_centroids")[0].metadata
    assert meta["documents"].value == 180 + 30 * (len(shards) - 4)
    digest = meta["centroids_digest"].value
    assert digest != old_digest and meta["centroids_changed"].value
    assert not (env.out / marker_path("cluster_assignments", shards[0])).exists()
    requests = _after(reassign_after_recluster_sensor, recluster, instance)
    assert sorted(r.partition_key for r in requests) == shards
    assigned = [_run(env, "assign_shards", r, instance) for r in requests]
    refresh = _after(refresh_catalog_sensor, assigned[-1], instance)
    assert isinstance(refresh, dg.RunRequest)
    assert _run(env, "refresh_catalog", refresh, instance).success
    drift = duckdb.sql(
        f"SELECT shard, centroids_digest FROM '{env.out}/drift/*.parquet'"
    ).fetchall()
    assert sorted(drift) == [(s, digest) for s in shards]
    n = _catalog(env).execute("SELECT count(cluster_id) FROM documents").fetchone()[0]
    assert n == 180 + 30 * (len(shards) - 4)
    assert {p.name: p.stat().st_mtime_ns for p in (env.out / "embeddings").glob("*.npy")} == mtimes


def test_ingest_without_centroids_leaves_assignment_out(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "s1.jsonl", [{"doc_id": "1", "text": "a"}])
    climb = ClimbResource(profile=str(write_profile(tmp_path, corpus={"path": str(corpus)})))
    with dg.instance_for_test() as inst:
        assert isinstance(
            recluster_schedule(dg.build_schedule_context(instance=inst)), dg.SkipReason
        )
        with dg.build_sensor_context(instance=inst, resources={"climb": climb}) as ctx:
            (request,) = corpus_shards_sensor(ctx).run_requests
        selected = {k.to_user_string() for k in request.asset_selection}
        assert selected == {"corpus_documents", "embeddings", "cluster_quality"}


def test_run_only_materializes_just_the_named_steps(env, refreshed, instance):
    steps = ("pruned_clusters", "super_clusters", "cluster_catalog", "cluster_assignments")
    before = {a: _latest(instance, a) for a in steps}
    timings = run_data_side(env.climb, instance, log=lambda _: None, only={"super_clusters"})
    assert set(timings) == {"super_clusters"}
    after = {a: _latest(instance, a) for a in steps}
    assert after["super_clusters"] > before["super_clusters"]
    for untouched in ("pruned_clusters", "cluster_catalog", "cluster_assignments"):
        assert after[untouched] == before[untouched], untouched


def test_run_only_refuses_an_unknown_step_in_one_line(capsys):
    from climb_assets.cli import main

    assert main(["--profile", "demo", "run", "--only", "super_clusters,embedingz"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("climb: error: --only") and "embedingz" in err
    assert "embeddings" in err and len(err.splitlines()) == 1

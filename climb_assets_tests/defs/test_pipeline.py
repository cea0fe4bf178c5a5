"""The data side materialized end to end with Dagster on a small real corpus."""

import threading

import dagster as dg
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import normalized_mutual_info_score

from climb_assets.defs.data_side import corpus_documents, embeddings, kmeans_centroids
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.sensors import corpus_shards_sensor
from climb_assets.lib.corpus import CorpusError
from climb_assets.lib.embed import EncoderError
from climb_assets.lib.kmeans import KMeansError
from climb_assets.runner import register_shards, run_data_side
from climb_assets_tests.conftest import run_readme_queries, write_jsonl, write_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, small_demo_corpus, instance):
    folder = tmp_path_factory.mktemp("pipeline")
    profile = write_profile(
        folder,
        corpus={"path": str(small_demo_corpus)},
        kmeans={"k": 12, "niter": 10},
        merge={"distance_threshold": None, "target_count": 6},
    )
    climb = ClimbResource(profile=str(profile))
    timings = run_data_side(climb, instance, log=lambda _: None)
    return climb, timings


def _catalog(climb: ClimbResource) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(climb.store().uri("catalog.duckdb"), read_only=True)


def test_every_asset_materialized_with_metadata(pipeline, instance):
    _, timings = pipeline
    assert set(timings) >= {"kmeans_centroids", "super_clusters", "cluster_catalog"}
    event = instance.get_latest_materialization_event(dg.AssetKey("kmeans_centroids"))
    meta = event.asset_materialization.metadata
    assert (
        meta["seed"].value == 42
        and meta["k"].value == 12
        and meta["init"].value == "greedy_kmeans++"
    )
    emb = instance.get_latest_materialization_event(dg.AssetKey("embeddings"))
    emb_meta = emb.asset_materialization.metadata
    assert emb_meta["encoder"].value == "sentence-transformers/all-MiniLM-L6-v2"
    assert emb_meta["encoder_revision"].value.startswith("sha256:")
    supers = instance.get_latest_materialization_event(dg.AssetKey("super_clusters"))
    charts = supers.asset_materialization.metadata
    assert "data:image/png;base64" in charts["chart_centroid_projection"].value
    with open(charts["chart_centroid_projection_png"].value, "rb") as png:
        assert png.read(4) == b"\x89PNG"
    pruned = instance.get_latest_materialization_event(dg.AssetKey("pruned_clusters"))
    pruning = pruned.asset_materialization.metadata
    assert 0.0 <= pruning["dropped_documents_share"].value < 1.0
    assert pruning["families_dropped_nearly_whole"].value == "none"  # the demo's `source`
    runs = instance.get_runs()
    assert runs and all(r.job_name.startswith("cli_") for r in runs), {r.job_name for r in runs}
    partitions = instance.get_materialized_partitions(dg.AssetKey("cluster_assignments"))
    assert len(partitions) == 4


def test_catalog_answers_analyst_queries(pipeline):
    climb, _ = pipeline
    con = _catalog(climb)
    views = {
        r[0]
        for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    }
    assert views >= {
        "documents",
        "clusters",
        "super_clusters",
        "centroid_distances",
        "rejected_rows",
    }
    n_docs, n_unique, n_assigned = con.execute(
        "SELECT count(*), count(DISTINCT doc_id), count(cluster_id) FROM documents"
    ).fetchone()
    assert n_docs == n_unique == n_assigned == 180
    kept_without_super = con.execute(
        "SELECT count(*) FROM documents WHERE cluster_kept AND super_cluster_id IS NULL"
    ).fetchone()[0]
    assert kept_without_super == 0
    clusters = con.execute("SELECT count(*), sum(size) FROM clusters").fetchone()
    assert clusters == (12, 180)
    supers = con.execute("SELECT count(*), sum(token_share) FROM super_clusters").fetchone()
    assert supers[0] == 6 and supers[1] == pytest.approx(1.0)
    rows = con.execute(
        "SELECT source, super_cluster_id FROM documents WHERE cluster_kept"
    ).fetchall()
    nmi = normalized_mutual_info_score([r[0] for r in rows], [r[1] for r in rows])
    assert nmi > 0.3, f"super-clusters barely follow the sources (NMI {nmi:.2f})"
    top = con.execute("SELECT top_terms FROM clusters WHERE size > 0 LIMIT 1").fetchone()[0]
    assert len(top) > 0


def test_rerun_skips_finished_work_and_refits_identically(pipeline, instance):
    climb, _ = pipeline
    store = climb.store()
    before = store.read_bytes("kmeans/centroids.npy")
    timings = run_data_side(climb, instance, log=lambda _: None)
    assert "kmeans_centroids" not in timings
    assert not any("embeddings" in step for step in timings)
    dg.materialize([kmeans_centroids], instance=instance, resources={"climb": climb})
    assert store.read_bytes("kmeans/centroids.npy") == before  # same seed, same centroids


def test_catalog_stays_readable_while_the_pipeline_rewrites_it(pipeline, instance):
    climb, _ = pipeline
    reader = _catalog(climb)
    errors: list[BaseException] = []
    stop = threading.Event()

    def analyst() -> None:
        try:
            while not stop.is_set():
                assert reader.execute("SELECT count(*) FROM clusters").fetchone()[0] == 12
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=analyst)
    thread.start()
    try:
        run_data_side(climb, instance, log=lambda _: None)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert _catalog(climb).execute("SELECT count(*) FROM documents").fetchone()[0] == 180


def test_k_larger_than_corpus_fails_clearly_and_keeps_centroids(pipeline, instance, tmp_path):
    climb, _ = pipeline
    store = climb.store()
    before = store.read_bytes("kmeans/centroids.npy")
    bad = write_profile(
        tmp_path, storage={"root": store.uri()}, kmeans={"k": 5000},
        corpus={"path": climb.settings().corpus.path},
    )  # fmt: skip
    n_docs = _catalog(climb).execute("SELECT count(*) FROM documents").fetchone()[0]
    with pytest.raises(KMeansError, match=f"lower kmeans.k to at most {n_docs}"):
        dg.materialize(
            [kmeans_centroids],
            instance=instance,
            resources={"climb": ClimbResource(profile=str(bad))},
        )
    assert store.read_bytes("kmeans/centroids.npy") == before


def test_missing_encoder_path_fails_clearly(pipeline, instance, tmp_path):
    climb, _ = pipeline
    bad = write_profile(
        tmp_path, storage={"root": str(tmp_path / "out")},
        corpus={"path": climb.settings().corpus.path},
        encoder={"model": str(tmp_path / "missing-model")},
    )  # fmt: skip
    resources = {"climb": ClimbResource(profile=str(bad))}
    key = "shard-000.parquet"
    dg.materialize([corpus_documents], partition_key=key, instance=instance, resources=resources)
    with pytest.raises(EncoderError, match="does not exist or holds no config.json"):
        dg.materialize([embeddings], partition_key=key, instance=instance, resources=resources)


def test_bad_shard_rows_reported_and_missing_column_fails(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", [{"doc_id": "1", "text": "fine"}, {"doc_id": "2", "text": " "}])
    pq.write_table(pa.table({"doc_id": ["x"], "body": ["no text column"]}), corpus / "b.parquet")
    profile = write_profile(tmp_path, corpus={"path": str(corpus), "extra_columns": []})
    climb = ClimbResource(profile=str(profile))
    with dg.instance_for_test() as inst:
        assert register_shards(inst, climb).added == ["a.jsonl", "b.parquet"]
        result = dg.materialize(
            [corpus_documents], partition_key="a.jsonl", instance=inst, resources={"climb": climb}
        )
        meta = result.asset_materializations_for_node("corpus_documents")[0].metadata
        assert meta["rejected_rows"].value == 1
        assert meta["dagster/row_count"].value == 1
        with pytest.raises(CorpusError, match="set corpus.text_column"):
            dg.materialize(
                [corpus_documents], partition_key="b.parquet", instance=inst,
                resources={"climb": climb},
            )  # fmt: skip
        assert climb.store().exists("corpus_documents/a.parquet")  # nothing lost


def test_sensor_registers_new_shards_once(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "s1.jsonl", [{"doc_id": "1", "text": "a"}])
    climb = ClimbResource(profile=str(write_profile(tmp_path, corpus={"path": str(corpus)})))
    with dg.instance_for_test() as inst:

        def evaluate():
            # ClimbResource nests the S3 resource, so the context must be opened as a manager
            with dg.build_sensor_context(instance=inst, resources={"climb": climb}) as ctx:
                return corpus_shards_sensor(ctx)

        result = evaluate()
        assert [r.partition_key for r in result.run_requests] == ["s1.jsonl"]
        assert result.dynamic_partitions_requests[0].partition_keys == ["s1.jsonl"]
        inst.add_dynamic_partitions("corpus_shards", ["s1.jsonl"])
        write_jsonl(corpus / "s2.jsonl", [{"doc_id": "2", "text": "b"}])
        again = evaluate()
        assert [r.partition_key for r in again.run_requests] == ["s2.jsonl"]
        inst.add_dynamic_partitions("corpus_shards", ["s2.jsonl"])
        assert isinstance(evaluate(), dg.SkipReason)


def test_centroids_are_unit_length(pipeline):
    climb, _ = pipeline
    centroids = climb.store().read_npy("kmeans/centroids.npy")
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-4)


def test_ids_repeated_across_shards_fail_when_the_second_shard_is_read(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(
        corpus / "a.jsonl", [{"doc_id": "1", "text": "alpha beta"}, {"doc_id": "2", "text": "x y"}]
    )
    write_jsonl(
        corpus / "b.jsonl", [{"doc_id": "1", "text": "gamma delta"}, {"doc_id": "3", "text": "z"}]
    )
    profile = write_profile(
        tmp_path, corpus={"path": str(corpus), "extra_columns": []}, kmeans={"k": 2},
        quality={"scorers": [{"name": "heuristic", "threshold": 1.0}]},
    )  # fmt: skip
    with (
        dg.instance_for_test() as inst,
        pytest.raises(
            CorpusError, match=r"b\.jsonl shares 1 doc_id\(s\) with shard \S*a\.jsonl, e\.g\. '1'"
        ),
    ):
        run_data_side(ClimbResource(profile=str(profile)), inst, log=lambda _: None)


def test_readme_queries_run_on_the_catalog(pipeline):
    climb, _ = pipeline
    ran, _ = run_readme_queries(_catalog(climb))
    assert ran >= 3


def test_embeddings_stream_a_shard_in_read_batches(pipeline, instance, tmp_path):
    climb, _ = pipeline
    store = climb.store()
    key = "shard-000.parquet"
    small = write_profile(
        tmp_path, storage={"root": str(tmp_path / "out")},
        corpus={"path": climb.settings().corpus.path}, encoder={"read_batch_rows": 7},
    )  # fmt: skip
    resources = {"climb": ClimbResource(profile=str(small))}
    dg.materialize([corpus_documents], partition_key=key, instance=instance, resources=resources)
    result = dg.materialize([embeddings], partition_key=key, instance=instance, resources=resources)
    meta = result.asset_materializations_for_node("embeddings")[0].metadata
    batched = ClimbResource(profile=str(small)).store()
    whole = store.read_npy("embeddings/shard-000.npy")
    assert meta["read_batch_rows"].value == 7 and whole.shape[0] > 7
    counts = pq.read_metadata(batched.local_path("embeddings/shard-000.tokens.parquet"))
    assert counts.num_row_groups == -(-whole.shape[0] // 7)  # one row group per read batch
    # The same counts and ids; the vectors within float noise (batches are length-sorted
    # within a read batch, so their padding differs from the whole shard's).
    assert batched.read_parquet("embeddings/shard-000.tokens.parquet").equals(
        store.read_parquet("embeddings/shard-000.tokens.parquet")
    )
    np.testing.assert_allclose(batched.read_npy("embeddings/shard-000.npy"), whole, atol=1e-5)
    assert meta["tokens"].value == int(
        store.read_parquet("embeddings/shard-000.tokens.parquet")
        .column("n_tokens")
        .to_numpy()
        .sum()
    )

"""The search side end to end on a planted corpus whose best mixture is known."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import pytest

from climb_assets.defs.data_side import shard_file
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search_round import build_search_round
from climb_assets.lib import proxy, tokens
from climb_assets.lib.baselines import BY_NAME
from climb_assets.lib.planted import build_planted_corpus
from climb_assets.runner import run_all
from climb_assets_tests.conftest import run_readme_queries, write_profile

pytestmark = pytest.mark.slow

PROXY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 64, "batch_size": 8}


def planted_profile(folder: Path, corpus, root: Path, **overrides) -> Path:
    sections = {
        "storage": {"root": str(root)},
        "corpus": {"path": str(corpus.corpus), "extra_columns": ["domain"]},
        "kmeans": {"k": 8, "niter": 10},
        "quality": {"scorers": [{"name": "heuristic", "threshold": 1.0}]},
        "merge": {"distance_threshold": None, "target_count": 4},
        "tokenizer": {"vocab_size": 300},
        "proxy": {**PROXY, "train_tokens": 12_000, "lr": 0.01},
        "targets": [{"name": "planted", "kind": "text", "path": str(corpus.target)}],
        "search": {"rounds": [6, 4], "candidates": 4000, "top_k_min": 16},
        "predictor": {"early_stopping_rounds": 0},
        "manifest": {"total_tokens": 20_000, "max_epochs": 2, "parquet_shards": 2},
    }
    sections.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    return write_profile(folder, **sections)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tmp_path_factory.mktemp("planted")
    corpus = build_planted_corpus(base / "data")
    climb = ClimbResource(profile=str(planted_profile(base / "a", corpus, base / "a" / "out")))
    with dg.instance_for_test() as instance:
        run_all(climb, instance, log=lambda _: None)
        yield base, corpus, climb, instance


def _target_supers(climb: ClimbResource) -> set[int]:
    con = duckdb.connect(climb.store().uri("catalog.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT super_cluster_id, avg((domain = '0')::int) FROM documents "
        "WHERE super_cluster_id IS NOT NULL GROUP BY 1"
    ).fetchall()
    return {sc for sc, share in rows if share > 0.5}


def test_manifest_weights_the_planted_domain(planted):
    _, _, climb, _ = planted
    doc = climb.store().read_json("manifest/climbmix.json")
    weights = {r["super_cluster_id"]: r["weight"] for r in doc["super_clusters"]}
    natural = {r["super_cluster_id"]: r["natural"] for r in doc["super_clusters"]}
    good = _target_supers(climb)
    assert good, "no super-cluster is dominated by the target domain"
    assert sum(weights[s] for s in good) > 0.5
    assert sum(weights[s] for s in good) > 2 * sum(natural[s] for s in good)
    assert len(doc["rounds"]) == 2 and doc["seeds"]["search"] == 42
    assert doc["tokenizer"]["hash"] and doc["encoder"]["revision"].startswith("sha256:")


def test_fresh_proxy_on_climbmix_beats_natural_and_uniform(planted):
    _, corpus, climb, _ = planted
    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    tok = tokens.load_tokenizer(store.uri("tokenizer/tokenizer.json"))
    k = len(doc["super_clusters"])
    arrays = [store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(k)]
    # The "final" model: another seed and a larger budget than the proxies (noise floor ~0.02 BPB).
    cfg = proxy.ProxyConfig(
        n_layer=1, n_embd=64, n_head=2, seq_len=64, batch_size=16, train_tokens=64_000, lr=3e-3,
        seed=7,
    )  # fmt: skip
    texts = [t for t in corpus.target.read_text().split("\n\n") if t.strip()]

    def bpb(weights) -> float:
        result = proxy.train_proxy(cfg, arrays, np.asarray(weights), tok.get_vocab_size())
        return proxy.evaluate_bpb(result.model, tok, texts, cfg.seq_len)["bpb"]

    climbmix = bpb([r["weight"] for r in doc["super_clusters"]])
    natural = bpb([r["natural"] for r in doc["super_clusters"]])
    uniform = bpb(np.full(k, 1.0 / k))
    assert climbmix < natural and climbmix < uniform, (climbmix, natural, uniform)


def test_catalog_and_exports(planted):
    _, _, climb, _ = planted
    store = climb.store()
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    # 6 + 4 proxies and round 1's noise replicate (its first mixture with another proxy seed)
    assert con.execute("SELECT count(*) FROM mixtures").fetchone()[0] == 11
    assert con.execute("SELECT count(DISTINCT key) FROM mixtures").fetchone()[0] == 10
    assert con.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 11
    assert con.execute("SELECT count(*) FROM proxy_runs").fetchone()[0] == 11
    assert con.execute("SELECT count(*) FROM rounds").fetchone()[0] == 2
    designs = dict(
        con.execute(
            "SELECT design, count(*) FROM mixtures WHERE round = 'iter_001' GROUP BY 1"
        ).fetchall()
    )
    assert designs == {"reference": 2, "cover": 4, "replicate": 1}
    anchors = con.execute(
        "SELECT reference FROM mixtures WHERE design = 'reference' ORDER BY mixture_id"
    ).fetchall()
    assert anchors == [("target_aligned",), ("natural",)]
    replicate = con.execute(
        "SELECT m.key = o.key, m.proxy_seed FROM mixtures m JOIN mixtures o "
        "ON m.replicate_of = o.mixture_id"
    ).fetchall()
    assert replicate == [(True, 1)]  # the profile's proxy seed is 0
    floors = con.execute("SELECT noise_floor, trusted FROM rounds ORDER BY round").fetchall()
    assert all(f is not None and f > 0 for f, _ in floors)
    n_docs, n_tokens = con.execute(
        "SELECT count(*), sum(n_tokens) FROM manifest_documents"
    ).fetchone()
    doc = store.read_json("manifest/climbmix.json")
    granted = sum(r["tokens"] for r in doc["super_clusters"])
    # the selection holds the granted tokens within the accounting's 1% (whole documents only);
    # what the capped clusters could not supply is reported
    assert n_docs > 0 and abs(n_tokens - granted) <= 0.01 * granted
    assert doc["total_tokens"]["accounting"]["within_tolerance"]
    assert granted == doc["total_tokens"]["granted"]
    assert granted + doc["total_tokens"]["shortfall"] >= 20_000 - len(doc["super_clusters"])
    for r in doc["super_clusters"]:
        assert r["tokens"] <= 2 * r["available_tokens"]  # max_epochs 2
    # the caps bound the search itself, so the manifest ships the mixture that was chosen
    assert doc["total_tokens"]["capped_super_clusters"] == []
    assert doc["total_tokens"]["redistributed"] <= len(doc["super_clusters"])
    blend = store.read_json("manifest/megatron_blend.json")["data_path"]
    assert abs(sum(blend[0::2]) - 1.0) < 1e-3 and all(isinstance(p, str) for p in blend[1::2])
    assert store.read_bytes("manifest/weights.png")[:4] == b"\x89PNG"


def test_same_seed_same_mixtures_predictor_and_manifest(planted):
    base, corpus, first, _ = planted
    again = ClimbResource(profile=str(planted_profile(base / "b", corpus, base / "b" / "out")))
    with dg.instance_for_test() as instance:
        run_all(again, instance, log=lambda _: None)
    a, b = first.store(), again.store()
    for key in ("iter_001", "iter_002"):
        ma = a.read_parquet(f"search/{key}/mixtures.parquet").column("key").to_pylist()
        mb = b.read_parquet(f"search/{key}/mixtures.parquet").column("key").to_pylist()
        assert ma == mb
        assert a.read_bytes(f"search/{key}/predictor.json") == b.read_bytes(
            f"search/{key}/predictor.json"
        )
    wa = [r["weight"] for r in a.read_json("manifest/climbmix.json")["super_clusters"]]
    wb = [r["weight"] for r in b.read_json("manifest/climbmix.json")["super_clusters"]]
    assert wa == wb


def test_round_before_its_predecessor_fails_naming_it(planted, tmp_path):
    _, corpus, _, _ = planted
    fresh = ClimbResource(profile=str(planted_profile(tmp_path, corpus, tmp_path / "out")))
    from climb_assets.defs.io import JsonIOManager

    resources = {"climb": fresh, "climb_io": JsonIOManager(climb=fresh)}
    with (
        dg.instance_for_test() as instance,  # nothing has run round iter_001 here
        pytest.raises(ValueError, match="needs the predictor of round iter_001"),
    ):
        dg.materialize(
            [build_search_round(2)], partition_key="iter_002", instance=instance,
            resources=resources,
        )  # fmt: skip


def test_killed_round_resumes_without_retraining_finished_proxies(planted, tmp_path):
    _, corpus, _, _ = planted
    root = tmp_path / "out"
    profile = planted_profile(
        tmp_path, corpus, root, proxy={**PROXY, "train_tokens": 60_000, "lr": 0.01}
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "CLIMB_HOME": str(tmp_path)}
    (tmp_path / "home").mkdir()
    cmd = [sys.executable, "-m", "climb_assets.cli", "--profile", str(profile), "run"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    proxies = root / "proxies"
    deadline = time.monotonic() + 600
    try:
        while True:  # round 1 has 6 proxies and a replicate; wait for one of round 2
            done = [p for p in proxies.glob("*/DONE")] if proxies.exists() else []
            if len(done) >= 8:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in proxies.glob("*/DONE")}
    assert 8 <= len(finished) < 11, "kill landed outside round 2"
    climb = ClimbResource(profile=str(profile))
    os.environ["CLIMB_HOME"] = str(tmp_path)
    with dg.instance_for_test() as instance:
        run_all(climb, instance, log=lambda _: None)
    after = {p.parent.name: p.stat().st_mtime_ns for p in proxies.glob("*/DONE")}
    confirmed = json.loads((root / "search" / "confirmation.json").read_text())["run_id"]
    rounds_runs = {
        r["run_id"]
        for key in ("iter_001", "iter_002")
        for r in climb.store().read_parquet(f"search/{key}/proxy_runs.parquet").to_pylist()
    }
    assert len(rounds_runs) == 11 and len(after) == len(rounds_runs | {confirmed})
    assert all(after[k] == v for k, v in finished.items()), "a finished proxy was retrained"
    runs = climb.store().read_parquet("search/iter_002/proxy_runs.parquet").to_pylist()
    reused = {r["run_id"] for r in runs if r["reused"]}
    assert reused == {r["run_id"] for r in runs} & set(finished)
    assert json.loads((root / "manifest" / "climbmix.json").read_text())["documents"] > 0


def test_target_overlapping_the_corpus_is_refused(planted, tmp_path):
    base, corpus, climb, instance = planted
    leaked = json.loads((corpus.corpus / "shard-0.jsonl").read_text().splitlines()[0])["text"]
    target = tmp_path / "leaky.txt"
    target.write_text(f"{leaked}\n\nsome unseen text\n")
    profile = planted_profile(
        tmp_path, corpus, base / "a" / "out",
        targets=[{"name": "leaky", "kind": "text", "path": str(target)}],
    )  # fmt: skip
    from climb_assets.defs.search import search_targets

    with pytest.raises(ValueError, match="1 of 2 documents also appear in the training corpus"):
        dg.materialize(
            [search_targets], instance=instance,
            resources={"climb": ClimbResource(profile=str(profile))},
        )  # fmt: skip
    assert climb.store().read_json("targets/targets.json")[0]["name"] == "planted"  # kept


def test_best_observed_final_takes_the_best_trained_mixture(planted, tmp_path):
    _, corpus, climb, instance = planted
    from climb_assets.defs.manifest import climbmix_manifest

    store = climb.store()
    profile = planted_profile(
        tmp_path, corpus, Path(store.uri()), search={"rounds": [6, 4], "candidates": 4000,
        "top_k_min": 16, "final": "best_observed"},
    )  # fmt: skip
    other = ClimbResource(profile=str(profile))
    before = store.read_json("manifest/climbmix.json")
    try:
        dg.materialize([climbmix_manifest], instance=instance, resources={"climb": other})
        doc = store.read_json("manifest/climbmix.json")
        con = duckdb.connect()
        best_id, best_weights, best_objective = con.execute(
            "SELECT mixture_id, weights, objective FROM "
            f"read_parquet('{store.uri()}/search/*/evaluations.parquet') "
            "WHERE replicate_of IS NULL ORDER BY objective DESC LIMIT 1"
        ).fetchone()
        got = [s["weight"] for s in doc["super_clusters"]]
        assert doc["final"]["method"] == "best_observed"
        assert doc["final"]["mixture_id"] == best_id
        assert doc["final"]["observed_objective"] == pytest.approx(best_objective)
        np.testing.assert_allclose(got, np.asarray(best_weights) / np.sum(best_weights), atol=1e-9)
        assert before["final"]["method"] == "confirmed" and before["final"]["mixture_id"]
    finally:  # leave the module's manifest as the other tests expect it
        dg.materialize([climbmix_manifest], instance=instance, resources={"climb": climb})


def test_learning_curves_predictor_report_and_alignment(planted):
    _, _, climb, _ = planted
    store = climb.store()
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    # every proxy scored at 25%, 50% and 100% of its budget; on average the target BPB falls
    # (a proxy on other domains may get worse on the target as it specialises)
    per_proxy = con.execute(
        "SELECT mixture_id, list(fraction ORDER BY fraction), list(planted_bpb ORDER BY fraction)"
        " FROM proxy_curves GROUP BY 1"
    ).fetchall()
    assert len(per_proxy) == 11
    assert all(f == [0.25, 0.5, 1.0] for _, f, _ in per_proxy)
    assert np.mean([b[0] for _, _, b in per_proxy]) > np.mean([b[-1] for _, _, b in per_proxy])
    final = dict(con.execute("SELECT mixture_id, planted_bpb FROM evaluations").fetchall())
    ends = {m: b[-1] for m, _, b in per_proxy}
    assert all(ends[m] == pytest.approx(final[m]) for m in final)
    # every kind cross-validated each round, exactly one used (or an ensemble)
    cv = con.execute("SELECT round, kind, cv_spearman, used FROM predictor_cv").fetchall()
    kinds = {k for _, k, _, _ in cv}
    assert {"lightgbm", "log_linear", "gp", "bimix", "aligned"} <= kinds
    for key in ("iter_001", "iter_002"):
        assert sum(u for r, _, _, u in cv if r == key) >= 1
    # the target's distribution over super-clusters puts most of its mass where domain 0 is
    shares = dict(
        con.execute(
            "SELECT super_cluster_id, share FROM target_alignment WHERE target = 'planted'"
        ).fetchall()
    )
    assert sum(shares.values()) == pytest.approx(1.0)
    assert sum(shares[s] for s in _target_supers(climb)) > 0.8
    doc = store.read_json("manifest/climbmix.json")
    assert doc["final"]["predictor_kind"] == "auto" and doc["final"]["predictor_used"]
    assert doc["final"]["predicted_objective_band"] is not None
    assert set(doc["rounds"][-1]["cv_by_kind"]) == kinds
    assert store.read_bytes("search/iter_001/curves.png")[:4] == b"\x89PNG"


def test_every_readme_query_runs_on_a_search_catalog(planted):
    _, _, climb, _ = planted
    con = duckdb.connect(climb.store().uri("catalog.duckdb"), read_only=True)
    ran, skipped = run_readme_queries(con)
    assert ran >= 6 and skipped == 0


def test_manifest_selects_what_selecting_by_ids_over_the_whole_lists_selects(planted):
    """The manifest holds each super-cluster's documents as keys and counts; its parts hold the
    rows the id-based selection picks over each super-cluster's whole documents list."""
    from climb_assets.defs.manifest import climbmix_manifest
    from climb_assets.lib.manifest import hold_out_validation, select_documents

    _, _, climb, instance = planted
    store, m = climb.store(), climb.settings().manifest
    # other tests rewrite the shared manifest; build the module's own
    dg.materialize([climbmix_manifest], instance=instance, resources={"climb": climb})
    doc = store.read_json("manifest/climbmix.json")
    chosen = pl.concat([pl.read_parquet(p) for p in doc["shards"]])
    held_out = pl.concat([pl.read_parquet(p) for p in doc["validation"]["parts"]])
    assert m.validation_share > 0 and held_out.height > 0
    for sc, row in enumerate(doc["super_clusters"]):
        listed = pl.from_arrow(store.read_parquet(f"cluster_tokens/sc_{sc:03d}.docs.parquet"))
        ids = listed.get_column("doc_id").to_list()
        held = hold_out_validation(ids, m.validation_share, m.seed)
        train = listed.filter(pl.Series(~held))
        picks, passes = select_documents(
            train.get_column("doc_id").to_list(), train.get_column("n_tokens").to_numpy(),
            row["tokens"], m.seed,
        )  # fmt: skip
        expected = sorted(
            zip(train.get_column("doc_id").gather(picks).to_list(), passes.tolist(), strict=True)
        )
        mine = chosen.filter(pl.col("super_cluster_id") == sc)
        assert sorted(mine.select("doc_id", "pass").rows()) == expected
        validation = held_out.filter(pl.col("super_cluster_id") == sc)
        assert sorted(validation.get_column("doc_id").to_list()) == sorted(
            d for d, h in zip(ids, held.tolist(), strict=True) if h
        )


def test_manifest_lists_its_exports_and_its_blend_points_at_their_files(planted):
    from climb_assets.defs.exports import climbmix_exports

    _, _, climb, instance = planted
    store = climb.store()
    # other tests rewrite the shared manifest; export the one that is there now
    dg.materialize([climbmix_exports], instance=instance, resources={"climb": climb})
    doc = store.read_json("manifest/climbmix.json")
    blend = store.read_bytes("manifest/megatron_blend.txt").decode().split()
    assert blend and all(
        store.exists(f"{prefix}.bin") and store.exists(f"{prefix}.idx") for prefix in blend[1::2]
    )
    assert set(doc["exports"]) == {"tokenizer", "megatron", "hf", "climblab"}
    assert {e["manifest_digest"] for e in doc["exports"].values()} == {doc["manifest_digest"]}
    megatron = store.read_json("exports/megatron/_export.json")
    trained = [s["training_tokens"] for s in megatron["super_clusters"].values()]
    # same tokenizer: the same tokens (each prefix's epochs rounded to a token)
    assert abs(sum(trained) - doc["total_tokens"]["exported"]) <= len(trained)
    hf = store.read_json("exports/hf/_export.json")
    assert 1 <= hf["max_repeats"] <= doc["max_epochs"] == 2
    # the validation split: every super-cluster with two documents holds some out
    held = doc["validation"]
    assert held["documents"] > 0 and held["parts"]
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    leaked = con.execute(
        "SELECT count(*) FROM manifest_validation v JOIN manifest_documents t USING (doc_id)"
    ).fetchone()
    assert leaked == (0,)


def test_catalog_answers_pandas_and_polars_without_quoting_keywords(planted):
    _, _, climb, _ = planted
    con = duckdb.connect(climb.store().uri("catalog.duckdb"), read_only=True)
    try:
        frame = con.sql(
            "SELECT super_cluster_id, round(natural_share, 4) AS n, weight FROM manifest_weights"
        ).df()
        assert list(frame.columns) == ["super_cluster_id", "n", "weight"] and len(frame) == 4
        assert con.sql("SELECT * FROM exports").pl().height > 0
    finally:
        con.close()


def test_confirmed_final_ships_the_best_measured_mixture(planted):
    _, _, climb, _ = planted
    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    record = store.read_json("search/confirmation.json")
    final = doc["final"]
    assert final["method"] == "confirmed" and final["measured_objective"] is not None
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    measured = con.execute(
        "SELECT mixture_id, objective, weights FROM evaluations WHERE replicate_of IS NULL"
    ).fetchall()
    options = [("confirmation", record["objective"], record["weights"]), *measured]
    best_id, best_objective, best_weights = max(options, key=lambda r: r[1])
    assert final["mixture_id"] == best_id
    assert final["measured_objective"] == pytest.approx(best_objective)
    assert final["confirmation_objective"] == pytest.approx(record["objective"])
    np.testing.assert_allclose(
        [r["weight"] for r in doc["super_clusters"]], best_weights, atol=1e-9
    )
    # the pick is a real, content-addressed proxy, and the page compares like with like
    assert (Path(store.uri()) / "proxies" / record["run_id"] / "DONE").exists()
    assert final["predicted_for_best_proxy"] is not None
    assert "the anchor target_aligned" in final["how"] or "target_aligned" in final["how"]


def test_reference_mixtures_sit_beside_climbmix_with_predicted_objectives(planted):
    _, _, climb, _ = planted
    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    skipped = store.read_json("references/skipped.json")
    refs = {r["name"]: r for r in doc["reference_mixtures"]}
    expected = set(BY_NAME)  # every training-free mixture the product knows
    assert set(refs) | set(skipped) == expected and set(refs) >= {"natural", "entropy_shannon"}
    natural = [s["natural"] for s in doc["super_clusters"]]
    np.testing.assert_allclose(refs["natural"]["weights"], natural, atol=1e-6)
    for ref in refs.values():
        assert sum(ref["weights"]) == pytest.approx(1.0, abs=1e-5)
        gap = doc["final"]["predicted_objective"] - ref["predicted_objective"]
        assert ref["predicted_gap_to_final"] == pytest.approx(gap)
    # A reference may ask more of a super-cluster than max_epochs passes give within the budget
    # (the search's candidates never do); the manifest says which ones.
    # (the caps count the tokens a manifest may train on: validation documents held out)
    trainable = [s["available_tokens"] - s["validation_tokens"] for s in doc["super_clusters"]]
    caps = np.array(trainable) * 2 / 20_000
    for ref in refs.values():
        fits = bool(np.all(np.asarray(ref["weights"]) <= caps + 1e-6))
        assert ref["within_repetition_caps"] is fits, ref["name"]
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM reference_mixtures").fetchone()[0] == len(refs)


def test_a_reference_final_ships_without_training_a_proxy(planted, tmp_path, capsys):
    _, corpus, _, _ = planted
    root = tmp_path / "out"
    search = {"rounds": [6, 4], "candidates": 4000, "top_k_min": 16, "final": "target_aligned"}
    climb = ClimbResource(profile=str(planted_profile(tmp_path, corpus, root, search=search)))
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        run_all(climb, instance, log=lines.append)
    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    assert not (root / "search").exists() and not (root / "proxies").exists()
    assert any("no proxy trained" in ln for ln in lines)
    weights = [s["weight"] for s in doc["super_clusters"]]
    aligned = store.read_json("targets/alignment.json")["combined"]
    np.testing.assert_allclose(weights, np.asarray(aligned) / np.sum(aligned), atol=1e-9)
    assert (
        doc["final"]["method"] == "target_aligned" and doc["final"]["predicted_objective"] is None
    )
    assert doc["rounds"] == [] and doc["documents"] > 0
    assert "predicted_objective" not in doc["reference_mixtures"][0]
    from climb_assets.cli import _print_manifest

    capsys.readouterr()
    _print_manifest(climb)  # what `climb run` prints at the end
    assert "no CLIMB predictor, no prediction" in capsys.readouterr().out


def test_doremi_method_trains_two_proxies_and_ships_their_mixture(planted, tmp_path, capsys):
    _, corpus, _, _ = planted
    root = tmp_path / "out"
    search = {"rounds": [6, 4], "candidates": 4000, "top_k_min": 16, "method": "doremi"}
    climb = ClimbResource(profile=str(planted_profile(tmp_path, corpus, root, search=search)))
    with dg.instance_for_test() as instance:
        run_all(climb, instance, log=lambda _: None)
        store = climb.store()
        first = store.read_json("doremi/result.json")
        assert first["reused"] == [False, False] and first["proxies"] == 2
        run_all(climb, instance, log=lambda _: None)  # a rerun trains nothing again
        assert store.read_json("doremi/result.json")["reused"] == [True, True]
        runs = instance.get_runs(dg.RunsFilter(job_name="cli_doremi_mixture"))
        steps = {e.step_key for e in instance.all_logs(runs[-1].run_id) if e.step_key}
        tagged = {s for s in steps if "train_proxy" in s or "train_dro_proxy" in s}
        assert len(tagged) == 2  # the reference proxy and the DRO proxy: a step each
    doc = store.read_json("manifest/climbmix.json")
    assert not (root / "search").exists()  # no CLIMB round ran
    assert (root / "doremi" / "doremi_trajectory.png").exists()
    checkpoints = {p.name for p in (root / "proxies").iterdir()}
    assert checkpoints == {first["proxy_run_id"], first["reference_run_id"]}
    assert first["proxy_run_id"].startswith("doremi-")
    weights = np.array([s["weight"] for s in doc["super_clusters"]])
    np.testing.assert_allclose(weights, first["weights"], atol=1e-9)
    natural = np.array([s["natural"] for s in doc["super_clusters"]])
    np.testing.assert_allclose(first["natural"], natural, atol=1e-6)
    assert np.abs(weights - natural).max() > 0.01 and weights.min() >= 1e-3 / weights.size
    assert doc["final"]["method"] == "doremi" and doc["final"]["predicted_objective"] is None
    assert doc["final"]["proxy_run_id"] == first["proxy_run_id"]
    refs = {r["name"]: r for r in doc["reference_mixtures"]}
    np.testing.assert_allclose(refs["doremi"]["weights"], weights, atol=1e-6)
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM doremi_weights").fetchone()[0] == weights.size
        steps_seen = con.execute("SELECT count(DISTINCT step) FROM doremi_trajectory").fetchone()
        cfg = proxy.ProxyConfig.from_dict(doc["proxy"])
        assert steps_seen[0] == cfg.steps == first["steps"]
    finally:
        con.close()
    from climb_assets.cli import _print_manifest

    capsys.readouterr()
    _print_manifest(climb)
    assert "DoReMi: group-DRO weights averaged over" in capsys.readouterr().out


def test_doremi_over_one_super_cluster_fails_before_training(planted, tmp_path):
    _, corpus, climb, _ = planted
    from climb_assets.defs.doremi import doremi_mixture
    from climb_assets.defs.io import JsonIOManager
    from climb_assets.defs.search import IO

    root = tmp_path / "one"
    summary = climb.store().read_json("cluster_tokens/summary.json")
    (root / "cluster_tokens").mkdir(parents=True)
    (root / "cluster_tokens" / "summary.json").write_text(
        json.dumps({**summary, "tokens": [sum(summary["tokens"])]})
    )
    search = {"rounds": [6, 4], "method": "doremi"}
    other = ClimbResource(profile=str(planted_profile(tmp_path, corpus, root, search=search)))
    with (
        dg.instance_for_test() as instance,
        pytest.raises(Exception, match="DoReMi needs at least 2 super-clusters to weight, got 1"),
    ):
        dg.materialize([doremi_mixture], instance=instance,
                       resources={"climb": other, IO: JsonIOManager(climb=other)})  # fmt: skip
    assert not (root / "proxies").exists()


def test_reference_final_that_cannot_be_computed_says_why(planted, tmp_path):
    _, corpus, climb, instance = planted
    from climb_assets.defs.references import reference_mixtures

    store = climb.store()
    tokens = sum(store.read_json("cluster_tokens/summary.json")["tokens"])
    profile = planted_profile(
        tmp_path, corpus, Path(store.uri()),
        search={"rounds": [6, 4], "candidates": 4000, "top_k_min": 16, "final": "unimax"},
        manifest={"total_tokens": tokens * 3, "max_epochs": 2, "parquet_shards": 2},
    )  # fmt: skip
    other = ClimbResource(profile=str(profile))
    try:
        with pytest.raises(Exception, match=r"unimax.*tokens missing at 2 epochs"):
            dg.materialize([reference_mixtures], instance=instance, resources={"climb": other})
    finally:  # leave the module's references as the other tests expect them
        dg.materialize([reference_mixtures], instance=instance, resources={"climb": climb})


def _whole_super_clusters(store) -> dict[int, tuple[np.ndarray, pl.DataFrame]]:
    """Every kept document of every super-cluster tokenized in doc_id order, all texts at once
    (cluster_tokens before token pools): the reference the streamed pools are checked against."""
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    frames = []
    for rel in store.list("super_clusters/members"):
        members = pl.from_arrow(store.read_parquet(rel))
        texts = rel.replace("super_clusters/members", "corpus_documents")
        docs = pl.from_arrow(store.read_parquet(texts, ["doc_id", "text"]))
        frames.append(members.join(docs, on="doc_id").drop_nulls("super_cluster_id"))
    table = pl.concat(frames)
    out = {}
    for (sc,), part in table.partition_by("super_cluster_id", as_dict=True).items():
        part = part.sort("doc_id")
        ids, offsets = tokens.tokenize_documents(
            tok, part.get_column("text").to_list(), tokens.eos_id(tok)
        )
        out[int(sc)] = (ids, part.select("doc_id", "cluster_id").with_columns(
            pl.Series("n_tokens", np.diff(offsets))))  # fmt: skip
    return out


def test_unsampled_token_pools_are_the_whole_super_clusters(planted):
    _, _, climb, _ = planted
    store = climb.store()
    reference = _whole_super_clusters(store)
    summary = store.read_json("cluster_tokens/summary.json")
    assert summary["sampled_super_clusters"] == []
    assert summary["tokens"] == summary["pool_tokens"]
    for sc, (ids, docs) in reference.items():
        stored = store.read_npy(f"cluster_tokens/sc_{sc:03d}.tokens.npy")
        assert stored.dtype == ids.dtype and np.array_equal(stored, ids)
        listed = pl.from_arrow(store.read_parquet(f"cluster_tokens/sc_{sc:03d}.docs.parquet"))
        # Listed in corpus order: each row names the shard and the row its document is at.
        assert listed.select("shard", "row").equals(listed.select("shard", "row").sort("*"))
        for (j,), rows in listed.partition_by("shard", as_dict=True).items():
            rel = shard_file("corpus_documents", summary["shards"][j])
            at = store.take_parquet_rows(rel, rows.get_column("row").to_numpy(), ["doc_id"])
            assert at.column("doc_id").to_pylist() == rows.get_column("doc_id").to_list()
        listed = listed.sort("doc_id")
        assert listed.get_column("pooled").all()
        assert listed.drop("pooled", "shard", "row").equals(docs)
        assert summary["tokens"][sc] == ids.size


def test_token_pool_samples_large_super_clusters_and_still_counts_every_token(planted, tmp_path):
    import shutil

    from climb_assets.defs.search import cluster_tokens

    _, corpus, climb, instance = planted
    reference = _whole_super_clusters(climb.store())
    pooled_ids = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        root = tmp_path / name
        shutil.copytree(climb.store().uri(), root)
        profile = planted_profile(
            tmp_path / f"profile_{name}", corpus, root,
            proxy={**PROXY, "train_tokens": 1000, "lr": 0.01},
            search={"rounds": [6, 4], "token_pool": 2000, "token_pool_seed": seed},
        )  # fmt: skip
        other = ClimbResource(profile=str(profile))
        dg.materialize([cluster_tokens], instance=instance, resources={"climb": other})
        store = other.store()
        summary = store.read_json("cluster_tokens/summary.json")
        assert summary["sampled_super_clusters"] == sorted(reference)
        pooled_ids[name] = []
        for sc, (ids, docs) in reference.items():
            listed = pl.from_arrow(store.read_parquet(f"cluster_tokens/sc_{sc:03d}.docs.parquet"))
            listed = listed.sort("doc_id")  # listed in corpus order
            assert listed.get_column("doc_id").to_list() == docs.get_column("doc_id").to_list()
            pooled = listed.filter(pl.col("pooled"))
            assert 0 < pooled.height < docs.height
            exact = docs.filter(pl.col("doc_id").is_in(pooled.get_column("doc_id").implode()))
            assert pooled.get_column("n_tokens").to_list() == exact.get_column("n_tokens").to_list()
            # The pool is the pooled documents' tokens, in doc_id order.
            offsets = np.r_[0, np.cumsum(docs.get_column("n_tokens").to_numpy())]
            keep = listed.get_column("pooled").to_numpy()
            expected = np.concatenate(
                [ids[offsets[i] : offsets[i + 1]] for i in np.flatnonzero(keep)]
            )
            assert np.array_equal(
                store.read_npy(f"cluster_tokens/sc_{sc:03d}.tokens.npy"), expected
            )
            assert summary["pool_tokens"][sc] == expected.size
            # Every document counts toward the super-cluster's tokens, estimated when not pooled.
            assert abs(summary["tokens"][sc] / ids.size - 1) < 0.15
            pooled_ids[name] += pooled.get_column("doc_id").to_list()
    assert pooled_ids["a"] == pooled_ids["b"] and pooled_ids["a"] != pooled_ids["c"]


def test_token_pool_smaller_than_a_proxy_budget_is_refused_with_the_size_needed(planted, tmp_path):
    from climb_assets.defs.search import cluster_tokens

    _, corpus, _, instance = planted
    root = tmp_path / "small"
    profile = planted_profile(tmp_path, corpus, root, search={"rounds": [6, 4], "token_pool": 5000})
    other = ClimbResource(profile=str(profile))
    with pytest.raises(Exception, match=r"search.token_pool to at least 12,288"):
        dg.materialize([cluster_tokens], instance=instance, resources={"climb": other})
    assert not (root / "cluster_tokens").exists()


def test_tokenizer_sample_is_seeded_uniform_and_whole_when_small(planted):
    from climb_assets.defs.search import sampled_kept_texts

    _, _, climb, instance = planted
    store = climb.store()
    shards = sorted(instance.get_dynamic_partitions("corpus_shards"))
    every = []
    for shard in shards:
        members = store.read_parquet(shard_file("super_clusters/members", shard))
        texts = store.read_parquet(shard_file("corpus_documents", shard), ["text"])
        kept = members.column("super_cluster_id").is_valid().to_pylist()
        every += [x for x, k in zip(texts.column("text").to_pylist(), kept, strict=True) if k]
    assert sampled_kept_texts(store, shards, len(every) + 5, 42) == every
    sample = sampled_kept_texts(store, shards, 40, 42)
    assert len(sample) == 40 and sample == sampled_kept_texts(store, shards, 40, 42)
    positions = [every.index(x) for x in sample]
    assert positions == sorted(positions), "the sample keeps the corpus order"
    assert sample != sampled_kept_texts(store, shards, 40, 43)


def test_cluster_descriptions_read_shard_by_shard_equal_the_all_texts_ones(planted, tmp_path):
    import shutil

    from climb_assets.defs.data_side import pruned_clusters
    from climb_assets.lib.prune import NearestDocuments, TermCounter

    _, corpus, climb, instance = planted
    store = climb.store()
    shards = sorted(instance.get_dynamic_partitions("corpus_shards"))
    clusters = pl.from_arrow(store.read_parquet("clusters/clusters.parquet"))
    k = clusters.height
    terms, nearest = TermCounter(k), NearestDocuments(k, 3)
    for shard in shards:  # every text of the corpus at once, as before the streamed step
        assigned = store.read_parquet(shard_file("cluster_assignments", shard))
        docs = store.read_parquet(shard_file("corpus_documents", shard), ["doc_id", "text"])
        cids = assigned.column("cluster_id").to_numpy()
        texts = docs.column("text").to_pylist()
        terms.add(texts, cids)
        nearest.add(docs.column("doc_id").to_pylist(), texts, cids,
                    assigned.column("distance").to_numpy())  # fmt: skip
    assert clusters.get_column("top_terms").to_list() == terms.top_terms(10)
    assert clusters.get_column("sample_doc_ids").to_list() == [
        [s[1] for s in c] for c in nearest.result()
    ]
    # A small seeded term sample: about that many documents per cluster, the same each time.
    root = tmp_path / "sampled"
    shutil.copytree(store.uri(), root)
    quality = {"scorers": [{"name": "heuristic", "threshold": 1.0}], "term_documents": 4}
    other = ClimbResource(profile=str(planted_profile(tmp_path, corpus, root, quality=quality)))
    results = [
        dg.materialize([pruned_clusters], instance=instance, resources={"climb": other})
        for _ in range(2)
    ]
    meta = results[0].asset_materializations_for_node("pruned_clusters")[0].metadata
    sizes = clusters.get_column("size").to_numpy()
    assert meta["term_documents"].value == int(np.minimum(sizes, 4).sum())
    assert meta["term_sampled_clusters"].value == int((sizes > 4).sum()) > 0
    sampled = pl.from_arrow(other.store().read_parquet("clusters/clusters.parquet"))
    assert sampled.get_column("top_terms").to_list() != terms.top_terms(10)
    assert sampled.get_column("sample_doc_ids").equals(clusters.get_column("sample_doc_ids"))
    again = results[1].asset_materializations_for_node("pruned_clusters")[0].metadata
    assert again["term_documents"].value == meta["term_documents"].value

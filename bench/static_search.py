"""The demo's search with the static encoder against MiniLM: where the clusters lead the search.

`bench/static_encoder.py` compares the two encoders' speed and their k-means clusters against
the demo's `source` labels. This one runs the whole demo (`climb run`, the demo profile: its
k-means, merge, quality, proxy, rounds and confirmation) four times on the same demo corpus
(seed 0, `--docs-per-source` per source): once with MiniLM and twice with a static model
distilled from it (`climb distill-static`'s defaults, dim 256), with the demo's merge (Ward,
distance threshold 1.5, a distance in MiniLM's space) and with `merge.target_count` set to the
super-clusters MiniLM's run made, so that the second comparison is of the clusters, not of the
threshold's scale. A fourth run (`static_tuned_same_count`) uses a static model tuned on the
demo corpus itself (`climb distill-static --tune-corpus`, 2,000 documents, seed 0: what a user
without a GPU runs on their corpus) with MiniLM's super-cluster count. Each run has its own
storage root and DAGSTER_HOME; they run one after the other. `--runs` runs some of them and
takes the others from the last results file (said under `reused`). Reported per run: the
super-clusters' NMI and ARI against `source` (every kept document, from the catalog), their
number, the shipped mixture and its measured target objective
(`final.measured_objective`, higher is better: minus target BPB), the best proxy of the rounds,
the measured objectives of the natural and target-aligned anchors (the strongest cheap
baselines; round 1 trains them), and the run's seconds. One seed: the runs differ by the encoder
(and the merge) only, and the proxies' noise floor (`rounds[].noise_floor`) says how much a
difference means.

Run: `TOKENIZERS_PARALLELISM=false .venv/bin/python -m bench.static_search [--docs-per-source N]`
(about 17 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from bench.common import REPO_ROOT, RESULTS_DIR, load_average, write_result
from climb_assets.lib.demo_corpus import build_demo_corpus

RUNS = ("minilm", "static", "static_same_count", "static_tuned_same_count")
TUNE_DOCUMENTS = 2000


def _climb(args: list[str], home: Path) -> float:
    env = {**os.environ, "DAGSTER_HOME": str(home), "CLIMB_HOME": str(REPO_ROOT),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "climb_assets.cli", *args], env=env, check=True)
    return time.perf_counter() - start


def _scores(root: Path) -> dict[str, Any]:
    """NMI/ARI of super-clusters against `source`, and the search's figures, from one root."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT source, super_cluster_id FROM documents WHERE super_cluster_id IS NOT NULL"
        ).fetchall()
        anchors = dict(
            con.execute(
                "SELECT reference, objective FROM evaluations WHERE design = 'reference' "
                "ORDER BY reference"
            ).fetchall()
        )
    finally:
        con.close()
    sources, groups = [r[0] for r in rows], [r[1] for r in rows]
    doc = json.loads((root / "manifest" / "climbmix.json").read_text())
    rounds = doc.get("rounds", [])
    return {
        "kept_documents": len(rows),
        "super_clusters": len(doc["super_clusters"]),
        "nmi_vs_source": round(float(normalized_mutual_info_score(sources, groups)), 4),
        "ari_vs_source": round(float(adjusted_rand_score(sources, groups)), 4),
        "final": doc["final"].get("winner") or doc["final"].get("method"),
        "measured_objective": doc["final"].get("measured_objective"),
        "anchors_measured": anchors,
        "best_proxy": max((r["best_observed"] for r in rounds), default=None),
        "noise_floor": rounds[-1].get("noise_floor") if rounds else None,
        "weights": [round(s["weight"], 4) for s in doc["super_clusters"]],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-source", type=int, default=1000)
    parser.add_argument("--work", help="folder to work in (default: a temporary one)")
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=list(RUNS),
        help="runs to do; the others are read from the last results/static_search.json",
    )  # fmt: skip
    args = parser.parse_args(argv)
    previous = RESULTS_DIR / "static_search.json"
    earlier = json.loads(previous.read_text())["encoders"] if previous.exists() else {}
    reused = [name for name in RUNS if name not in args.runs]
    missing = [name for name in reused if name not in earlier]
    if missing:
        parser.error(f"no earlier results for {missing} in {previous}; run them too")
    start_load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        info = build_demo_corpus(str(work / "demo"), docs_per_source=args.docs_per_source)
        static_model, tuned_model = work / "minilm-static", work / "minilm-static-tuned"
        distill_s = tune_s = None
        if {"static", "static_same_count"} & set(args.runs):
            distill_s = _climb(["distill-static", "--out", str(static_model), "--overwrite"],
                               work / "home-distill")  # fmt: skip
        if "static_tuned_same_count" in args.runs:
            tune = ["distill-static", "--out", str(tuned_model), "--overwrite", "--tune-corpus",
                    str(work / "demo" / "corpus"), "--tune-documents", str(TUNE_DOCUMENTS),
                    "--tune-seed", "0"]  # fmt: skip
            tune_s = _climb(tune, work / "home-tune")
        results: dict[str, Any] = {name: earlier[name] for name in reused}
        static = {"kind": "static", "model": str(static_model)}
        tuned = {"kind": "static", "model": str(tuned_model)}
        # The third run gives the static encoder as many super-clusters as MiniLM's merge made:
        # the demo's Ward threshold (1.5) is a distance in MiniLM's space, not the static one's.
        for name, encoder, merge in (
            ("minilm", None, None),
            ("static", static, None),
            ("static_same_count", static, "minilm"),
            ("static_tuned_same_count", tuned, "minilm"),
        ):
            if name not in args.runs:
                continue
            profile = work / f"{name}.yaml"
            sections: dict[str, Any] = {
                "extends": "demo",
                "storage": {"root": str(work / f"out-{name}")},
                "corpus": {"path": str(work / "demo" / "corpus")},
                "targets": [{"name": "aws_api", "kind": "text",
                             "path": str(work / "demo" / "targets" / "aws_api.txt")}],
            }  # fmt: skip
            if encoder:
                sections["encoder"] = encoder
            if merge:
                count = results[merge]["super_clusters"]
                sections["merge"] = {"distance_threshold": None, "target_count": count}
            profile.write_text(json.dumps(sections))  # JSON is YAML
            seconds = _climb(["--profile", str(profile), "run", "--yes"], work / f"home-{name}")
            results[name] = {**_scores(work / f"out-{name}"), "seconds": round(seconds, 1)}
            print(name, json.dumps(results[name]), flush=True)
    m, st, same = results["minilm"], results["static"], results["static_same_count"]
    tuned_run = results["static_tuned_same_count"]

    def gap(other: dict[str, Any]) -> float | None:
        if m["measured_objective"] is None or other["measured_objective"] is None:
            return None
        return round(m["measured_objective"] - other["measured_objective"], 5)

    payload = {
        "description": __doc__.splitlines()[0],
        "params": {
            "docs_per_source": args.docs_per_source,
            "documents": info.n_documents,
            "profile": "demo",
            "static_dim": 256,
        },
        "distill_seconds": None if distill_s is None else round(distill_s, 1),
        "tune_seconds": None if tune_s is None else round(tune_s, 1),
        "tune": {"corpus": "the demo corpus itself", "documents": TUNE_DOCUMENTS, "seed": 0},
        "runs": args.runs,
        "reused": reused,
        "encoders": results,
        "measured_objective_minilm_minus_static": gap(st),
        "measured_objective_minilm_minus_static_same_count": gap(same),
        "measured_objective_minilm_minus_static_tuned_same_count": gap(tuned_run),
        "summary": [
            {
                "what": f"demo search, static encoder ({label}): the shipped mixture's measured "
                "target objective (minus BPB, higher is better; one seed), super-clusters and "
                "their NMI vs source; baseline MiniLM",
                "ours": f"{r['measured_objective']:.4f}, {r['super_clusters']} super-clusters, "
                f"NMI {r['nmi_vs_source']}",
                "baseline": f"{m['measured_objective']:.4f}, {m['super_clusters']} "
                f"super-clusters, NMI {m['nmi_vs_source']}",
                "ratio": f"MiniLM minus static {gap(r)} "
                f"(MiniLM noise floor {m['noise_floor']:.4f})",
            }
            for label, r in (
                ("demo merge threshold", st),
                ("MiniLM's super-cluster count", same),
                ("tuned on the demo corpus, MiniLM's super-cluster count", tuned_run),
            )
        ],
        "load_average_start": start_load,
        "load_average_end": load_average(),
    }
    write_result("static_search", payload)
    return payload


if __name__ == "__main__":
    main()

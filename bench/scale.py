"""The whole pipeline at 10^4, 10^5 and 10^6 documents: seconds, docs/s and peak RSS per stage.

The corpus is the demo's real text (`climb_assets.lib.demo_corpus`, 1,000 documents per source, 6
sources, its held-out `aws_api` target) resampled with replacement to each size (seed
`--seed`) and de-duplicated by id: document `i` is a copy of a demo document under the id
`<demo id>~<i>`, so texts repeat (about 167 times each at 10^6) while every id is unique. Shards
hold `--shard-docs` documents each (Parquet), so per-shard steps see the same shard size at every
corpus size and the global steps see more shards.

The profile is the demo's with `encoder.kind: static` (a model distilled once with `climb
distill-static`'s defaults, or `--static-folder`): the demo's clustering, pruning, search
(rounds [8, 4, 4] of tiny proxies, `search.final: confirmed`), manifest and exports. Every stage
runs as `climb run --only <stage>` in a process of its own, one after the other, so each peak is
its own: wall seconds, CPU seconds (the process and the workers it waited for) and peak RSS (the
largest of the process and its workers, from `wait4`). The process baseline is the same command
on a stage already done (imports, instance, shard registration; nothing materialized); the
memory goal is on each stage's peak minus that baseline.

Goals (issue 20): every global step's peak within 1.5 GB of the baseline at every size and flat
(within 20%) from 10^5 to 10^6; every stage's cost per document within 1.5x across sizes, read
as its growth: seconds per document (net of the process start-up, which does not grow) at the
largest size over the cheapest size's, so that a step that grows slower than the corpus (the
k-means fit on a bounded sample) passes and one that grows faster fails; for the search, whose
work does not depend on the corpus, its seconds; 10^6 documents end to end under 45 minutes on
this 2-core machine. `spread` (largest over smallest per-document cost) is recorded too.

Run: `TOKENIZERS_PARALLELISM=false .venv/bin/python -m bench.scale [--sizes 10000 100000
1000000] [--shard-docs 50000] [--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from bench.common import (
    QUICK_DIR,
    RESULTS_DIR,
    CpuMonitor,
    add_run_options,
    finish_result,
    load_average,
    machine_info,
    wait_for_quiet,
)

NAME = "scale"
DATA_STAGES = (
    "corpus_documents",
    "embeddings",
    "cluster_quality",
    "kmeans_centroids",
    "cluster_assignments",
    "pruned_clusters",
    "super_clusters",
    "cluster_catalog",
)
SEARCH_STAGES = (
    "proxy_tokenizer",
    "cluster_tokens",
    "search_targets",
    "target_alignment",
    "reference_mixtures",
    "search_round",
    "confirmation_proxy",
    "climbmix_manifest",
    "climbmix_exports",
)
PER_SHARD = {"corpus_documents", "embeddings", "cluster_quality", "cluster_assignments"}
FIXED_COST = {"search_round", "confirmation_proxy", "reference_mixtures"}
"""Stages whose work does not grow with the corpus (the proxies train on fixed budgets)."""
GLOBAL_MEMORY_GOAL_MB = 1536
FLAT_SHARE = 0.20
COST_RATIO_GOAL = 1.5
END_TO_END_GOAL_S = 45 * 60
MIN_NET_SECONDS = 2.0
"""Below this many seconds beyond the process start-up a stage's time is noise, not a cost."""


def write_corpus(base: pa.Table, out: Path, n_docs: int, shard_docs: int, seed: int) -> dict:
    """`n_docs` documents drawn with replacement from `base`, `shard_docs` per Parquet shard.

    Memory holds one shard: each shard's draws come from its own seeded generator.
    """
    out.mkdir(parents=True, exist_ok=True)
    ids = base.column("doc_id").to_pylist()
    n_shards = -(-n_docs // shard_docs)
    chars = 0
    for s in range(n_shards):
        lo, hi = s * shard_docs, min(n_docs, (s + 1) * shard_docs)
        picks = np.random.default_rng([seed, s]).integers(0, base.num_rows, hi - lo)
        table = base.take(pa.array(picks)).select(["text", "source"])
        new_ids = [f"{ids[p]}~{lo + i}" for i, p in enumerate(picks.tolist())]
        table = table.add_column(0, "doc_id", pa.array(new_ids, pa.string()))
        chars += int(pc.sum(pc.utf8_length(table.column("text"))).as_py())
        pq.write_table(table, out / f"shard-{s:05d}.parquet", compression="zstd")
    return {"documents": n_docs, "shards": n_shards, "chars": chars}


def write_profile(path: Path, root: Path, corpus: Path, targets: Path, static: str) -> None:
    """The demo profile on this corpus, with the static encoder."""
    profile = {
        "extends": "demo",
        "storage": {"root": str(root)},
        "corpus": {"path": str(corpus), "formats": ["parquet"]},
        "encoder": {"kind": "static", "model": static},
        "targets": [
            {"name": "aws_api", "kind": "text", "path": str(targets / "aws_api.txt"), "weight": 1.0}
        ],
    }
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def run_stage(
    profile: Path, home: Path, stage: str, log: Path, code: Path | None = None
) -> dict[str, Any]:
    """`climb run --only stage` in its own process: wall and CPU seconds, peak RSS (MB).

    `code` runs another checkout's `climb_assets` (say, a worktree of an older commit).
    """
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-m", "climb_assets.cli", "--profile", str(profile), "run",
           "--only", stage]  # fmt: skip
    start = time.perf_counter()
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"stage {stage} failed (rc {proc.returncode}):\n" + "\n".join(tail))
    return {
        "stage": stage,
        "seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
    }


def run_size(
    work: Path, base: pa.Table, targets: Path, static: str, n_docs: int, shard_docs: int, seed: int
) -> dict[str, Any]:
    """Every stage of one corpus size, each in its own process."""
    here = work / f"n{n_docs}"
    shutil.rmtree(here, ignore_errors=True)
    start = time.perf_counter()
    corpus = write_corpus(base, here / "corpus", n_docs, shard_docs, seed)
    corpus["write_seconds"] = round(time.perf_counter() - start, 1)
    profile = here / "profile.yaml"
    write_profile(profile, here / "out", here / "corpus", targets, static)
    log = here / "climb.log"
    stages = []
    for stage in (*DATA_STAGES, *SEARCH_STAGES):
        row = run_stage(profile, here / ".dagster", stage, log)
        row["docs_per_second"] = round(n_docs / max(row["seconds"], 1e-9), 1)
        stages.append(row)
        print(f"  n={n_docs:,} {stage}: {row['seconds']:.1f} s, {row['peak_rss_mb']:.0f} MB",
              flush=True)  # fmt: skip
    baseline = run_stage(profile, here / ".dagster", "corpus_documents", log)  # all done: no-op
    for row in stages:
        row["peak_over_baseline_mb"] = round(row["peak_rss_mb"] - baseline["peak_rss_mb"], 1)
        row["net_seconds"] = round(max(row["seconds"] - baseline["seconds"], 0.0), 2)
        row["net_docs_per_second"] = round(n_docs / max(row["net_seconds"], 1e-9), 1)
    # The confirmation proxy trains nothing when its mixture was already a round's proxy: that
    # size's seconds and peak are not the step's cost, and the goals leave them out.
    confirmation = here / "out" / "search" / "confirmation.json"
    if confirmation.exists():
        run_id = json.loads(confirmation.read_text()).get("run_id")
        rounds = sorted((here / "out" / "search").glob("iter_*/proxy_runs.parquet"))
        earlier = {
            r for p in rounds for r in pq.read_table(p, columns=["run_id"]).column(0).to_pylist()
        }
        for row in stages:
            if row["stage"] == "confirmation_proxy":
                row["reused"] = run_id in earlier
    manifest = json.loads((here / "out" / "manifest" / "climbmix.json").read_text())
    shutil.rmtree(here / "out" / "exports", ignore_errors=True)  # the largest outputs
    return {
        "documents": n_docs,
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "corpus": corpus,
        "baseline": baseline,
        "stages": stages,
        "end_to_end_seconds": round(sum(r["seconds"] for r in stages), 1),
        "manifest": {
            "documents": manifest["documents"],
            "tokens": manifest["total_tokens"]["granted"],
            "weights": [round(s["weight"], 4) for s in manifest["super_clusters"]],
            "measured_objective": manifest["final"].get("measured_objective"),
            "how": manifest["final"].get("how"),
        },
    }


def goals(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals checked on the measured sizes."""
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for size in sizes:
        for row in size["stages"]:
            if row.get("reused"):  # a reused confirmation measured nothing (see run_size)
                continue
            by_stage.setdefault(row["stage"], []).append({**row, "documents": size["documents"]})
    memory, flat, flat_largest, cost = {}, {}, {}, {}
    for stage, rows in by_stage.items():
        over = [r["peak_over_baseline_mb"] for r in rows]
        if stage not in PER_SHARD:
            memory[stage] = max(over) <= GLOBAL_MEMORY_GOAL_MB
        peak = {r["documents"]: r["peak_rss_mb"] for r in rows}
        if 100_000 in peak and 1_000_000 in peak:  # the goal
            flat[stage] = peak[1_000_000] <= peak[100_000] * (1 + FLAT_SHARE)
        largest_here = max(peak)
        if 100_000 in peak and largest_here > 1_000_000:
            flat_largest[stage] = peak[largest_here] <= peak[100_000] * (1 + FLAT_SHARE)
        # Net of the process start-up (~10 s of imports), which does not grow with the corpus;
        # a size where the step took under MIN_NET_SECONDS is start-up noise, not a cost.
        timed = [r for r in rows if r["net_seconds"] >= MIN_NET_SECONDS]
        per = [r["net_seconds"] if stage in FIXED_COST else r["net_seconds"] / r["documents"]
               for r in timed]  # fmt: skip
        cost[stage] = {
            "sizes_timed": [r["documents"] for r in timed],
            "growth": round(per[-1] / min(per), 2) if len(per) >= 2 else None,
            "spread": round(max(per) / min(per), 2) if len(per) >= 2 else None,
        }
    largest = max(sizes, key=lambda s: s["documents"])
    at_1e6 = next((s for s in sizes if s["documents"] == 1_000_000), None)
    return {
        "global_peak_within_1_5_gb": memory,
        "peak_flat_within_20pct_1e5_to_1e6": flat,
        "peak_flat_within_20pct_1e5_to_largest": flat_largest or None,
        "cost_ratio_across_sizes": cost,
        "cost_growth_within_1_5x": {
            s: r["growth"] <= COST_RATIO_GOAL for s, r in cost.items() if r["growth"] is not None
        },
        "largest_end_to_end_seconds": largest["end_to_end_seconds"],
        "largest_documents": largest["documents"],
        "end_to_end_seconds_at_1e6": at_1e6 and at_1e6["end_to_end_seconds"],
        "end_to_end_under_45_min_at_1e6": (
            at_1e6["end_to_end_seconds"] <= END_TO_END_GOAL_S if at_1e6 else None
        ),
    }


def summary_rows(sizes: list[dict[str, Any]], met: dict[str, Any]) -> list[dict[str, str]]:
    """README rows: end to end per size, and the worst global peak and cost ratio."""
    rows = []
    for size in sizes:
        worst = max(
            (r for r in size["stages"] if r["stage"] not in PER_SHARD),
            key=lambda r: r["peak_over_baseline_mb"],
        )
        rows.append(
            {
                "what": f"climb run, {size['documents']:,} docs (demo text resampled, static "
                "encoder, demo search), each stage in its own process: end-to-end seconds; "
                "largest global-step peak over the process baseline",
                "ours": f"{size['end_to_end_seconds']:,.0f} s",
                "baseline": f"{worst['peak_over_baseline_mb']:,.0f} MB ({worst['stage']})",
                "ratio": f"{size['documents'] / size['end_to_end_seconds']:,.0f} docs/s",
            }
        )
    timed = {s: r for s, r in met["cost_ratio_across_sizes"].items() if r["growth"] is not None}
    if not timed:  # one size so far: no growth to show
        return rows
    worst_cost = max(timed.items(), key=lambda kv: kv[1]["growth"])
    rows.append(
        {
            "what": "growth of the cost per document (seconds net of start-up; the search "
            "stages: seconds) from the cheapest size to the largest, worst stage",
            "ours": f"{worst_cost[1]['growth']:.2f}x ({worst_cost[0]})",
            "baseline": f"goal {COST_RATIO_GOAL}x",
            "ratio": "",
        }
    )
    return rows


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/scale.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="documents per run")
    parser.add_argument("--shard-docs", type=int, help="documents per shard (50,000)")
    parser.add_argument("--seed", type=int, default=0, help="resampling seed")
    parser.add_argument("--static-folder", help="a static model (default: distil one)")
    parser.add_argument("--workdir", help="keep the runs here (default: a temporary folder)")
    parser.add_argument(
        "--add", action="store_true",
        help="keep the other sizes of the existing result (a larger size run in a later session)",
    )  # fmt: skip
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    sizes = args.sizes or ([2_000, 8_000] if quick else [10_000, 100_000, 1_000_000])
    shard_docs = args.shard_docs or (2_000 if quick else 50_000)
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine, load, monitor = machine_info(), load_average(), CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="climb-bench-scale-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        from climb_assets.lib.demo_corpus import build_demo_corpus

        demo = build_demo_corpus(str(work / "demo"), docs_per_source=1000)
        base = pa.concat_tables(
            [pq.read_table(p, columns=["doc_id", "text", "source"]) for p in
             sorted((work / "demo" / "corpus").glob("*.parquet"))]
            + [_jsonl_table(p) for p in sorted((work / "demo" / "corpus").glob("*.jsonl"))]
        )  # fmt: skip
        static, distill_s = args.static_folder, None
        if static is None:
            static = str(work / "static")
            start = time.perf_counter()
            distill = [sys.executable, "-m", "climb_assets.cli", "distill-static", "--out", static]
            subprocess.run([*distill, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
            distill_s = round(time.perf_counter() - start, 1)
        # With --add, the sizes measured before (each with its date) stay in the result, so a
        # size too long for one session is added to the others instead of replacing them.
        kept = _earlier_sizes(quick, exclude=sizes) if args.add else []
        runs: list[dict[str, Any]] = []
        for n in sizes:
            print(f"== {n:,} documents", flush=True)
            runs.append(run_size(work, base, work / "demo" / "targets", static, n, shard_docs,
                                 args.seed))  # fmt: skip
            # Written after every size, so a run stopped at a larger one keeps the smaller ones.
            params = {
                "sizes": sizes,
                "sizes_done": [r["documents"] for r in runs],
                "sizes_kept": [r["documents"] for r in kept],
                "shard_docs": shard_docs,
                "seed": args.seed,
                "base_documents": base.num_rows,
                "base_demo_documents_per_source": demo.per_source,
                "static_folder": args.static_folder or "(distilled)",
                "distill_seconds": distill_s,
                "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                "rss_source": "wait4 ru_maxrss: the largest of the stage process and its waited "
                "workers (not their sum)",
            }
            measured = sorted([*kept, *runs], key=lambda r: r["documents"])
            result = _result(params, measured, monitor, load, machine, quick)
    return result


def _result(
    params: dict[str, Any],
    runs: list[dict[str, Any]],
    monitor: CpuMonitor,
    load: Any,
    machine: dict[str, Any],
    quick: bool,
) -> dict[str, Any]:
    """The result of the sizes run so far, written to `bench/results/scale.json`."""
    met = goals(runs)
    result = {
        "description": (
            "climb run on the demo's text resampled to each size (static encoder, demo search), "
            "every stage as `climb run --only STAGE` in its own process: seconds, CPU seconds, "
            "docs/s and peak RSS (of the process and the workers it waited for)"
        ),
        "params": params,
        "sizes": runs,
        "goals": met,
        "summary": summary_rows(runs, met),
        "own_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    # The CPU monitor's figures so far: it keeps counting for the next size.
    return finish_result(NAME, result, monitor, load, machine, quick)


def _earlier_sizes(quick: bool, exclude: Sequence[int]) -> list[dict[str, Any]]:
    """The sizes of the existing result other than `exclude` (none when there is no result)."""
    path = (QUICK_DIR if quick else RESULTS_DIR) / f"{NAME}.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())["sizes"]
    return [r for r in earlier if r["documents"] not in set(exclude)]


def _jsonl_table(path: Path) -> pa.Table:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pa.table({k: [r[k] for r in rows] for k in ("doc_id", "text", "source")})


if __name__ == "__main__":
    main()

"""Reference mixtures and DoReMi against CLIMB and the proxy baselines, on the same corpora.

Every mixture of `reference_mixtures` (`climb_assets/lib/baselines/`: natural, uniform, UniMax,
BiMix's four entropy mixtures, target-aligned) and DoReMi's (`climb_assets/lib/doremi.py`: a
reference proxy on the natural weights, then a group-DRO proxy, both of the search's proxy
configuration and seeded by the search seed; two proxies spent) is computed on the corpora of
`bench.search_quality` and scored exactly as that benchmark scores its strategies: a final model
with the proxies' architecture, `final_multiplier` times their tokens and seed 1000 + search seed
(common random numbers), target bits per byte. The proxy configuration, seeds and corpora are read
from `search_quality.json`, whose per-seed figures of CLIMB, RegMix, best-of-random, uniform and
the oracle join the table; its natural mixture is scored again here and must agree to 1e-6 (a
check that both benchmarks score alike). UniMax spreads the final model's token budget under a cap
of `--max-epochs` passes per super-cluster.

Columns: final BPB mean ± std over the seeds, mean rank among the strategies of the table, mean
paired difference to natural (negative = better), proxy-equivalents of compute spent (a
training-free mixture spends none, DoReMi two). Result: `bench/results/reference_mixtures.json`.

Run after `bench.search_quality`: `.venv/bin/python -m bench.reference_mixtures [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import QUICK_DIR, RESULTS_DIR, add_run_options, machine_info, write_result
from bench.corpora import prepare_blend, prepare_demo, prepare_planted
from bench.search_quality import FINAL_SEED_OFFSET, Scorer

NAME = "reference_mixtures"
FROM_SEARCH = ("climb", "regmix", "best_of_random", "oracle")
"""Strategies of search_quality.json shown beside the references (natural is re-scored here)."""


def _rank(rows: list[list[float]]) -> list[float]:
    """Mean rank (1 = lowest BPB, ties averaged) of each column over the rows (one per seed)."""
    from scipy.stats import rankdata

    return np.mean([rankdata(r) for r in rows], axis=0).tolist()


def run_doremi(prepared: Any, cfg: Any, device: str) -> dict[str, Any]:
    """DoReMi's mixture on one corpus: a reference proxy on the natural weights, then DRO."""
    from climb_assets.lib.doremi import train_doremi
    from climb_assets.lib.proxy import train_proxy
    from climb_assets.lib.tokens import eos_id

    vocab, eos = prepared.tok.get_vocab_size(), eos_id(prepared.tok)
    start = time.perf_counter()
    reference = train_proxy(cfg, prepared.arrays, prepared.prior, vocab, device, eos_token_id=eos)
    run = train_doremi(cfg, prepared.arrays, reference.model, vocab, device=device,
                       eos_token_id=eos)  # fmt: skip
    return {
        "seed": cfg.seed,
        "weights": run.average.round(5).tolist(),
        "last_step_weights": run.final.round(5).tolist(),
        "max_weight": round(float(run.average.max()), 4),
        "steps": run.training.steps,
        "seconds": round(time.perf_counter() - start, 2),
    }


def run_corpus(prepared: Any, search: dict[str, Any], params: dict[str, Any], args) -> dict:
    """Every reference mixture of one corpus, scored per seed, joined with the search's figures."""
    from climb_assets.lib.baselines import BaselineInputs, compute_references
    from climb_assets.lib.proxy import ProxyConfig

    cfg = ProxyConfig.from_dict(params["proxy_config"])
    final_tokens = round(cfg.train_tokens * params["final_multiplier"])
    inputs = BaselineInputs(
        available_tokens=np.array([len(a) for a in prepared.arrays]),
        total_tokens=final_tokens,
        max_epochs=args.max_epochs,
        token_ids=lambda i: np.asarray(prepared.arrays[i]),
        alignment=prepared.alignment,
    )
    start = time.perf_counter()
    mixtures, skipped = compute_references(inputs)
    compute_seconds = time.perf_counter() - start
    scorer = Scorer(prepared, args.device)
    by_seed = {s["seed"]: s["strategies"] for s in search["per_seed"]}
    names = [m.name for m in mixtures]
    table: dict[str, list[float]] = {n: [] for n in (*names, "doremi", *FROM_SEARCH)}
    doremi_runs: list[dict[str, Any]] = []
    for seed in params["seeds"]:
        final_cfg = ProxyConfig.from_dict(
            {**cfg.to_dict(), "train_tokens": final_tokens, "seed": FINAL_SEED_OFFSET + seed}
        )
        for m in mixtures:
            table[m.name].append(scorer(final_cfg, m.weights)["bpb"])
        doremi_runs.append(run_doremi(prepared, replace(cfg, seed=seed), args.device))
        table["doremi"].append(scorer(final_cfg, np.asarray(doremi_runs[-1]["weights"]))["bpb"])
        for name in FROM_SEARCH:
            table[name].append(by_seed[seed][name]["final_bpb"])
        rescored = table["natural"][-1]
        recorded = by_seed[seed]["natural"]["final_bpb"]
        if abs(rescored - recorded) > 1e-6:
            raise RuntimeError(
                f"{prepared.name} seed {seed}: natural scores {rescored} here but {recorded} in "
                "search_quality.json; the two benchmarks no longer score alike (rerun both)"
            )
    columns = list(table)
    ranks = _rank([[table[c][i] for c in columns] for i in range(len(params["seeds"]))])
    natural = np.asarray(table["natural"])
    proxies = {"doremi": 2, "climb": search["strategies"]["climb"]["proxies"],
               "regmix": search["strategies"]["regmix"]["proxies"],
               "best_of_random": search["strategies"]["best_of_random"]["proxies"]}  # fmt: skip
    strategies = {}
    for column, rank in zip(columns, ranks, strict=True):
        values = np.asarray(table[column])
        strategies[column] = {
            "bpb_per_seed": values.round(5).tolist(),
            "bpb_mean": round(float(values.mean()), 5),
            "bpb_std": round(float(values.std(ddof=1)) if values.size > 1 else 0.0, 5),
            "rank_mean": round(rank, 2),
            "paired_diff_to_natural": round(float((values - natural).mean()), 5),
            "proxies": proxies.get(column, 0),
        }
    for m in mixtures:
        strategies[m.name].update(weights=m.weights.round(4).tolist(), details=m.details)
    strategies["doremi"]["per_seed"] = doremi_runs
    return {
        "strategies": strategies,
        "skipped": skipped,
        "noise_floor": search["noise_floor"]["bpb_std"],
        "final_train_tokens": final_tokens,
        "compute_seconds": round(compute_seconds, 2),
        "best": min(strategies, key=lambda c: strategies[c]["bpb_mean"]),
    }


def summary_rows(name: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """README rows: each reference mixture's (and DoReMi's) BPB against natural."""
    rows = []
    natural = record["strategies"]["natural"]
    for key, row in record["strategies"].items():
        if key in FROM_SEARCH or key == "natural":
            continue
        spent = f"{row['proxies']} proxies" if row["proxies"] else "no proxies"
        kind = "DoReMi's mixture" if key == "doremi" else f"the training-free mixture {key}"
        rows.append(
            {
                "what": (
                    f"{name} corpus, target BPB of a final model "
                    f"({record['final_train_tokens']:,} tokens) on {kind}, {spent}, "
                    f"{len(row['bpb_per_seed'])} seeds; mean ± std, mean rank "
                    f"of {len(record['strategies'])}; ratio to natural, lower is better"
                ),
                "ours": f"{row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}, rank {row['rank_mean']}",
                "baseline": f"{natural['bpb_mean']:.4f} ± {natural['bpb_std']:.4f} (natural)",
                "ratio": f"{row['bpb_mean'] / natural['bpb_mean']:.3f}",
            }
        )
    return rows


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/reference_mixtures.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=float, default=4.0, help="UniMax's cap (default 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workdir", help="keep the corpora here (default: temporary)")
    parser.add_argument("--results-dir", help="default bench/results (quick: results/quick)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    out_dir = Path(args.results_dir) if args.results_dir else (QUICK_DIR if quick else RESULTS_DIR)
    source = out_dir / "search_quality.json"
    if not source.exists():
        raise SystemExit(f"{source} is missing; run bench.search_quality first (same --quick)")
    search = json.loads(source.read_text())
    params = search["params"]

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    corpora: dict[str, Any] = {}
    summary: list[dict[str, str]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="climb-references-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        for name in search["corpora"]:
            docs = params.get("demo_docs", 300)  # search_quality's default before it was recorded
            prepared = {
                "planted": lambda: prepare_planted(root / "planted"),
                "demo": lambda d=docs: prepare_demo(root / "demo", d),
                "blend": lambda d=docs: prepare_blend(root / "blend", d),
            }[name]()
            corpora[name] = run_corpus(prepared, search["corpora"][name], params, args)
            summary += summary_rows(name, corpora[name])
            print(f"[{name}] best: {corpora[name]['best']}", flush=True)
            for key, row in corpora[name]["strategies"].items():
                print(
                    f"  {key:28s} {row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}  rank "
                    f"{row['rank_mean']:.2f}  vs natural {row['paired_diff_to_natural']:+.4f}",
                    flush=True,
                )
    result = {
        "description": (
            "target BPB of a final model trained on each training-free reference mixture, beside "
            "CLIMB and the proxy baselines of search_quality.json (same corpora, seeds and final "
            "model configuration)"
        ),
        "params": {"max_epochs": args.max_epochs, "from": str(source.name), **params},
        "corpora": corpora,
        "summary": summary,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": machine_info(),
    }
    write_result(NAME, result, out_dir)
    return result


if __name__ == "__main__":
    main()

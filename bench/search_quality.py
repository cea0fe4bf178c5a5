"""Search quality: CLIMB's mixture against baselines at the same number of proxies.

Corpus. The planted corpus (`climb_assets.lib.planted.build_planted_corpus`: 4 artificial
languages, 30/90/90/90 documents, the target is held-out text of domain 0, so the best mixture
is known to favour the super-cluster(s) of domain 0). With `--demo`, also the demo corpus
(real documentation, target held-out AWS API text; slow on 2 cores, off by default). The data
side runs once per corpus through the runner (`climb_assets.runner.run_data_side`, in a
throw-away Dagster instance, as the search test does), then the tokenizer, the super-clusters'
token arrays and the targets are materialized (`proxy_tokenizer`, `cluster_tokens`,
`search_targets`, no search round). Everything after that works at the library level on
`cluster_tokens/sc_XXX.tokens.npy`, `cluster_tokens/summary.json` and the target texts.

Strategies, for each search seed, all with the same proxy configuration and the same number of
proxies (default 12):

- `climb`: rounds (default [6, 4, 2]); round 1 `sample_mixtures(design="maximin")`; each later
  round refits the predictor (`fit_predictor`, `{"early_stopping_round": 0}`) on every point so
  far, scores a fresh `candidate_pool` and picks the round's mixtures with
  `select_next(design="maximin")` (already trained keys excluded, top set
  `max(n^2, --top-k-min)`, each pick farthest from the trained mixtures and earlier picks); after
  the last round the predictor is refitted on all points and the final mixture is
  `final_mixture(method="argmax")` over a fresh pool;
- `regmix`: all proxies in one round from `sample_mixtures`, one fit, final
  `final_mixture(method="topk_mean", k=128)` over a fresh pool;
- `best_of_random`: the same random proxies as `regmix` (same mixtures, same scores), final =
  the mixture with the best observed objective;
- `natural` (token shares) and `uniform` (1/K): no proxies;
- references, not ranked: `oracle`, the planted answer (all weight on the super-clusters where
  the target domain is the majority, in proportion to their tokens); `climb_topk_mean` and
  `climb_best_observed`, CLIMB's own proxies with RegMix's final rule and with the best-observed
  rule (they separate the quality of CLIMB's proposals from that of its argmax final pick);
  `climb_paper_design`, the same search with uniformly random picks (`design="random"`), as in
  the paper.

Proxies (defaults): GPT-2, 1 layer x 64, 2 heads, seq 64, batch 16, lr 3e-3 (the tiny preset's),
32,768 tokens (32 steps). Smaller budgets or the search test's lr 0.01 gave final models whose
seed-to-seed spread (0.05 BPB at 16k tokens, lr 0.01, batch 8) swamped the differences between
mixtures; this setting costs about 0.5 s per proxy on one core.

Scoring. Each strategy's final mixture trains a "final" model with the same architecture and
`--final-multiplier` (default 3) times the proxies' token budget, seeded `1000 + search seed`
(the proxies use `search seed`), and is scored by its bits per byte on the target texts (lower
is better). Within one search seed every strategy's final model has the same initialisation and
data stream (common random numbers), so per-seed ranks and paired differences compare mixtures
only. Noise floor: the natural mixture's final model trained with 3 different seeds, std of
its BPB.

Reported per strategy: mean and standard deviation of the final BPB over the search seeds, the
mean rank among the 5 ranked strategies (1 = best), the mean paired difference to `natural`, and
every mixture, proxy score and timing. Result: `bench/results/search_quality.json`.

Run: `.venv/bin/python -m bench.search_quality [--seeds 0 1 2] [--proxy-tokens 32768] [--quick]
[--demo]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CONTENDED_CORES,
    HIGH_LOAD,
    QUICK_DIR,
    RESULTS_DIR,
    CpuMonitor,
    add_run_options,
    load_average,
    machine_info,
    wait_for_quiet,
    write_result,
)

NAME = "search_quality"
RANKED = ("climb", "regmix", "best_of_random", "natural", "uniform")
REFERENCE = ("oracle", "climb_topk_mean", "climb_best_observed", "climb_paper_design")
LABELS = {
    "climb": "CLIMB (iterative, maximin picks, argmax)",
    "regmix": "RegMix (one shot, top-128 mean)",
    "best_of_random": "best of random proxies",
    "natural": "natural proportions",
    "uniform": "uniform",
    "oracle": "oracle (planted answer, reference)",
    "climb_topk_mean": "CLIMB's proxies, top-128 mean final (reference)",
    "climb_best_observed": "CLIMB's best observed proxy (reference)",
    "climb_paper_design": "CLIMB with random picks, the paper's design (reference)",
}
PREDICTOR_PARAMS: dict[str, Any] = {"early_stopping_round": 0}
FINAL_SEED_OFFSET = 1000
NOISE_SEEDS = 3


@dataclass
class Prepared:
    """A corpus after the data side: what the strategies need.

    Attributes:
        name: `planted` or `demo`.
        arrays: One token array per super-cluster.
        prior: Natural prior (token share per super-cluster).
        tok: The proxies' tokenizer.
        texts: Target texts.
        oracle: The known-good mixture (weight on the target-dominated super-clusters).
        details: JSON-ready description (composition, sizes, timings).
    """

    name: str
    arrays: list[np.ndarray]
    prior: np.ndarray
    tok: Any
    texts: list[str]
    oracle: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)


def _write_profile(folder: Path, sections: dict[str, Any]) -> Path:
    """A profile extending `demo` with `sections` merged in (as the tests' `write_profile`)."""
    import yaml

    data: dict[str, Any] = {"extends": "demo"}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _materialize_search_inputs(climb: Any, instance: Any) -> dict[str, float]:
    """Data side through the runner, then the tokenizer, cluster tokens and targets (no round)."""
    import dagster as dg

    from climb_assets.defs.search import cluster_tokens, proxy_tokenizer, search_targets
    from climb_assets.runner import run_data_side

    timings = dict(run_data_side(climb, instance, log=lambda _: None))
    for asset in (proxy_tokenizer, cluster_tokens, search_targets):
        start = time.perf_counter()
        dg.materialize(
            [asset],
            instance=instance,
            resources={"climb": climb},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        timings[asset.key.path[-1]] = time.perf_counter() - start
    return timings


def _load_prepared(
    name: str, climb: Any, domain_column: str, target_domain: str, timings: dict[str, float]
) -> Prepared:
    """Reads the token arrays, prior, tokenizer and targets, and the domain composition."""
    import duckdb

    from climb_assets.lib import tokens
    from climb_assets.lib.mixture import natural_prior

    store = climb.store()
    summary = store.read_json("cluster_tokens/summary.json")
    counts = [int(c) for c in summary["tokens"]]
    arrays = [store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(len(counts))]
    tok = tokens.load_tokenizer(store.uri("tokenizer/tokenizer.json"))
    targets = store.read_json("targets/targets.json")
    texts = [t for target in targets for t in target["texts"] if t.strip()]
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    rows = con.execute(
        f'SELECT super_cluster_id, "{domain_column}", count(*) FROM documents '
        "WHERE super_cluster_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    con.close()
    composition: list[dict[str, Any]] = [
        {"super_cluster": i, "tokens": counts[i], "documents": {}} for i in range(len(counts))
    ]
    for sc, domain, n in rows:
        composition[int(sc)]["documents"][str(domain)] = int(n)
    for entry in composition:
        docs = entry["documents"]
        entry["target_share"] = docs.get(target_domain, 0) / max(1, sum(docs.values()))
    good = np.array([c["target_share"] > 0.5 for c in composition])
    if not good.any():  # no majority cluster: the one with the largest share
        good[int(np.argmax([c["target_share"] for c in composition]))] = True
    oracle = np.where(good, np.asarray(counts, dtype=np.float64), 0.0)
    prior = natural_prior(counts)
    return Prepared(
        name=name,
        arrays=arrays,
        prior=prior,
        tok=tok,
        texts=texts,
        oracle=oracle / oracle.sum(),
        details={
            "super_clusters": len(counts),
            "tokens": counts,
            "natural_prior": prior.round(4).tolist(),
            "composition": composition,
            "target_domain": target_domain,
            "target_texts": len(texts),
            "target_bytes": sum(len(t.encode("utf-8")) for t in texts),
            "vocab_size": tok.get_vocab_size(),
            "tokenizer_hash": summary["tokenizer_hash"],
            "data_side_seconds": {k: round(v, 2) for k, v in timings.items()},
        },
    )


def prepare_planted(workdir: Path) -> Prepared:
    """Builds the planted corpus and runs the data side on it (the search test's settings)."""
    import dagster as dg

    from climb_assets.defs.resources import ClimbResource
    from climb_assets.lib.planted import build_planted_corpus

    corpus = build_planted_corpus(workdir / "data")
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(corpus.corpus), "extra_columns": ["domain"]},
        "kmeans": {"k": 8, "niter": 10},
        "quality": {"scorers": [{"name": "heuristic", "threshold": 1.0}]},
        "merge": {"distance_threshold": None, "target_count": 4},
        "tokenizer": {"vocab_size": 300},
        "targets": [{"name": "planted", "kind": "text", "path": str(corpus.target)}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = _materialize_search_inputs(climb, instance)
    prepared = _load_prepared("planted", climb, "domain", str(corpus.target_domain), timings)
    prepared.details["docs_per_domain"] = corpus.docs_per_domain
    return prepared


def prepare_demo(workdir: Path, docs_per_source: int) -> Prepared:
    """Builds the demo corpus (real documentation) and runs the data side with the demo profile.

    The target is the held-out AWS API text, as in the demo profile.
    """
    import dagster as dg

    from climb_assets.defs.resources import ClimbResource
    from climb_assets.lib.demo_corpus import build_demo_corpus

    info = build_demo_corpus(
        workdir / "data", docs_per_source=docs_per_source, heldout_per_source=50
    )
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(info.root / "corpus")},
        "targets": [{"name": "aws_api", "kind": "text", "path": str(info.targets["aws_api"])}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = _materialize_search_inputs(climb, instance)
    prepared = _load_prepared("demo", climb, "source", "aws_api", timings)
    prepared.details["docs_per_source"] = info.per_source
    return prepared


class Scorer:
    """Trains a model on a mixture and scores its target BPB, caching identical runs."""

    def __init__(self, prepared: Prepared, device: str = "cpu") -> None:
        from climb_assets.lib.tokens import eos_id

        self.prepared = prepared
        self.device = device
        self.vocab = prepared.tok.get_vocab_size()
        self.eos = eos_id(prepared.tok)
        self.cache: dict[tuple[str, str], dict[str, float]] = {}
        self.trained = 0
        self.seconds = 0.0

    def __call__(self, cfg: Any, weights: np.ndarray) -> dict[str, float]:
        """`{"bpb", "seconds"}` of a model trained with `cfg` on `weights`."""
        from climb_assets.lib.proxy import evaluate_bpb, train_proxy

        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
        key = (",".join(repr(float(v)) for v in w), cfg.digest())
        if key not in self.cache:
            start = time.perf_counter()
            result = train_proxy(
                cfg, self.prepared.arrays, w, self.vocab, self.device, eos_token_id=self.eos
            )
            bpb = evaluate_bpb(
                result.model, self.prepared.tok, self.prepared.texts, cfg.seq_len, self.device
            )["bpb"]
            seconds = time.perf_counter() - start
            self.cache[key] = {"bpb": float(bpb), "seconds": round(seconds, 3)}
            self.trained += 1
            self.seconds += seconds
        return self.cache[key]


@dataclass(frozen=True)
class SearchSetup:
    """What every strategy of one search seed shares."""

    prior: np.ndarray
    proxy_cfg: Any
    rounds: tuple[int, ...]
    seed: int
    candidates: int
    top_k_min: int
    settings: Any

    @property
    def budget(self) -> int:
        """Proxies per strategy."""
        return sum(self.rounds)


def _fit(x: list[np.ndarray], y: list[float], seed: int) -> Any:
    from climb_assets.lib.predictor import fit_predictor

    return fit_predictor(np.array(x), np.array(y), seed, params=PREDICTOR_PARAMS)


def _pool_scores(setup: SearchSetup, fit: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from climb_assets.lib.predictor import predict

    from climb_assets.lib.mixture import candidate_pool

    pool = candidate_pool(setup.prior, setup.candidates, seed, setup.settings)
    return pool, predict(fit, pool)


def _proxy_rows(weights: np.ndarray, scores: Sequence[dict[str, float]]) -> list[dict[str, Any]]:
    return [
        {"weights": w.round(4).tolist(), "bpb": s["bpb"]}
        for w, s in zip(weights, scores, strict=True)
    ]


def run_climb(
    setup: SearchSetup,
    score: Callable[[Any, np.ndarray], dict[str, float]],
    design: str = "maximin",
) -> dict:
    """CLIMB's iterative search; returns the final mixture and the history.

    `design` is how each round picks its mixtures: "maximin" (climb's default, spread over the
    sampler's draws and the predicted top set) or "random" (the paper's).
    """
    from climb_assets.lib.predictor import predict

    from climb_assets.lib.mixture import final_mixture, mixture_key, sample_mixtures, select_next

    x: list[np.ndarray] = []
    y: list[float] = []
    trained: set[str] = set()
    history = []
    base = setup.seed * 1000
    for index, n in enumerate(setup.rounds):
        round_seed = base + index * 10 + 1
        info: dict[str, Any] = {"round": index + 1, "proxies": n}
        if index == 0:
            weights = sample_mixtures(setup.prior, n, round_seed, setup.settings, design=design)
        else:
            fit = _fit(x, y, round_seed + 1)
            pool, predicted = _pool_scores(setup, fit, round_seed)
            top = max(n * n, setup.top_k_min)
            rows = select_next(
                pool, predicted, n, round_seed + 5, exclude_keys=trained, top=top,
                design=design, trained=np.array(x),
            )  # fmt: skip
            weights = pool[rows]
            info.update(
                predictor_points=len(y),
                cv_spearman=fit.cv_spearman,
                pool=len(pool),
                top=top,
                predicted_bpb=(-predicted[rows]).round(4).tolist(),
            )
        scores = [score(setup.proxy_cfg, w) for w in weights]
        for w, s in zip(weights, scores, strict=True):
            x.append(w)
            y.append(-s["bpb"])
            trained.add(mixture_key(w))
        info["mixtures"] = _proxy_rows(weights, scores)
        history.append(info)
    fit = _fit(x, y, base + 99)
    pool, predicted = _pool_scores(setup, fit, base + 98)
    final = final_mixture(pool, predicted, method="argmax")
    return {
        "weights": final,
        "topk_mean_weights": final_mixture(pool, predicted, method="topk_mean", k=128),
        "best_observed_weights": x[int(np.argmax(y))].copy(),
        "proxies": len(y),
        "best_proxy_bpb": -max(y),
        "predicted_bpb": float(-predict(fit, final)[0]),
        "predicted_bpb_at_best_proxy": float(-predict(fit, x[int(np.argmax(y))])[0]),
        # The predictor is piecewise constant: how many pool candidates share the top prediction
        # (argmax takes the first of them in pool order).
        "pool_size": len(pool),
        "pool_ties_at_max": int(np.sum(predicted >= predicted.max() - 1e-12)),
        "cv_spearman": fit.cv_spearman,
        "rounds": history,
    }


def run_random(
    setup: SearchSetup, score: Callable[[Any, np.ndarray], dict[str, float]]
) -> tuple[dict, dict]:
    """RegMix one-shot and best-of-random, on the same `setup.budget` random proxies."""
    from climb_assets.lib.predictor import predict

    from climb_assets.lib.mixture import final_mixture, sample_mixtures

    base = setup.seed * 1000 + 500
    weights = sample_mixtures(setup.prior, setup.budget, base + 1, setup.settings)
    scores = [score(setup.proxy_cfg, w) for w in weights]
    y = [-s["bpb"] for s in scores]
    fit = _fit(list(weights), y, base + 2)
    pool, predicted = _pool_scores(setup, fit, base + 3)
    final = final_mixture(pool, predicted, method="topk_mean", k=128)
    proxies = _proxy_rows(weights, scores)
    best = int(np.argmax(y))
    regmix = {
        "weights": final,
        "proxies": len(y),
        "best_proxy_bpb": -max(y),
        "predicted_bpb": float(-predict(fit, final)[0]),
        "predicted_bpb_at_best_proxy": float(-predict(fit, weights[best])[0]),
        "cv_spearman": fit.cv_spearman,
        "random_proxies": proxies,
    }
    best_of = {
        "weights": weights[best].copy(),
        "proxies": len(y),
        "best_proxy_bpb": -max(y),
        "note": "same random proxies as regmix",
    }
    return regmix, best_of


def _rank(values: Sequence[float]) -> list[float]:
    """Ranks, 1 = lowest value, ties share the mean rank."""
    from scipy.stats import rankdata

    return [float(r) for r in rankdata(values, method="average")]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def run_corpus(
    prepared: Prepared,
    seeds: Sequence[int],
    proxy_cfg: Any,
    rounds: tuple[int, ...],
    final_multiplier: float,
    candidates: int,
    top_k_min: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every strategy for every seed on one prepared corpus; returns the per-corpus record."""
    from climb_assets.lib.mixture import SamplerSettings, mixture_key

    scorer = Scorer(prepared, device)
    k = len(prepared.arrays)
    final_tokens = round(proxy_cfg.train_tokens * final_multiplier)
    per_seed = []
    for seed in seeds:
        start = time.perf_counter()
        cfg = replace(proxy_cfg, seed=seed)
        setup = SearchSetup(
            prior=prepared.prior,
            proxy_cfg=cfg,
            rounds=rounds,
            seed=seed,
            candidates=candidates,
            top_k_min=top_k_min,
            settings=SamplerSettings(),
        )
        strategies: dict[str, dict[str, Any]] = {}
        t0 = time.perf_counter()
        strategies["climb"] = run_climb(setup, scorer)
        strategies["climb"]["search_seconds"] = round(time.perf_counter() - t0, 2)
        paper = run_climb(setup, scorer, design="random")
        strategies["climb_paper_design"] = {
            "weights": paper["weights"],
            "proxies": paper["proxies"],
            "best_proxy_bpb": paper["best_proxy_bpb"],
            "cv_spearman": paper["cv_spearman"],
            "rounds": paper["rounds"],
            "note": "run_climb(design='random'): round 1 and later picks at random (the paper)",
        }
        t0 = time.perf_counter()
        strategies["regmix"], strategies["best_of_random"] = run_random(setup, scorer)
        strategies["regmix"]["search_seconds"] = round(time.perf_counter() - t0, 2)
        strategies["natural"] = {"weights": prepared.prior.copy(), "proxies": 0}
        strategies["uniform"] = {"weights": np.full(k, 1.0 / k), "proxies": 0}
        strategies["oracle"] = {"weights": prepared.oracle.copy(), "proxies": 0}
        climb = strategies["climb"]
        strategies["climb_topk_mean"] = {
            "weights": climb.pop("topk_mean_weights"),
            "proxies": climb["proxies"],
            "note": "CLIMB's proxies and final predictor, final_mixture(topk_mean, k=128)",
        }
        strategies["climb_best_observed"] = {
            "weights": climb.pop("best_observed_weights"),
            "proxies": climb["proxies"],
            "note": "the best of CLIMB's own proxies",
        }
        final_cfg = replace(proxy_cfg, train_tokens=final_tokens, seed=FINAL_SEED_OFFSET + seed)
        for entry in strategies.values():
            result = scorer(final_cfg, entry["weights"])
            entry["final_bpb"] = result["bpb"]
            entry["final_seconds"] = result["seconds"]
            entry["weights"] = np.asarray(entry["weights"]).round(4).tolist()
            entry["key"] = mixture_key(entry["weights"])
        ranks = _rank([strategies[n]["final_bpb"] for n in RANKED])
        for name, rank in zip(RANKED, ranks, strict=True):
            strategies[name]["rank"] = rank
        seconds = time.perf_counter() - start
        per_seed.append(
            {
                "seed": seed,
                "proxy_seed": seed,
                "final_seed": FINAL_SEED_OFFSET + seed,
                "seconds": round(seconds, 1),
                "strategies": strategies,
            }
        )
        print(
            f"[{prepared.name}] seed {seed} ({seconds:.0f} s): "
            + ", ".join(f"{n} {strategies[n]['final_bpb']:.4f}" for n in (*RANKED, *REFERENCE)),
            flush=True,
        )

    noise_runs = []
    for s in range(NOISE_SEEDS):
        cfg = replace(proxy_cfg, train_tokens=final_tokens, seed=FINAL_SEED_OFFSET + s)
        noise_runs.append({"final_seed": cfg.seed, "bpb": scorer(cfg, prepared.prior)["bpb"]})
    noise_mean, noise_std = _mean_std([r["bpb"] for r in noise_runs])

    table: dict[str, dict[str, Any]] = {}
    for name in (*RANKED, *REFERENCE):
        values = [run["strategies"][name]["final_bpb"] for run in per_seed]
        diffs = [
            run["strategies"][name]["final_bpb"] - run["strategies"]["natural"]["final_bpb"]
            for run in per_seed
        ]
        mean, std = _mean_std(values)
        diff_mean, diff_std = _mean_std(diffs)
        row: dict[str, Any] = {
            "label": LABELS[name],
            "bpb_mean": mean,
            "bpb_std": std,
            "bpb_per_seed": values,
            "diff_vs_natural_mean": diff_mean,
            "diff_vs_natural_std": diff_std,
            "proxies": per_seed[0]["strategies"][name]["proxies"],
        }
        if name in RANKED:
            ranks = [run["strategies"][name]["rank"] for run in per_seed]
            row["rank_mean"] = float(np.mean(ranks))
            row["rank_per_seed"] = ranks
        table[name] = row
    return {
        "corpus": prepared.details,
        "final_train_tokens": final_tokens,
        "per_seed": per_seed,
        "strategies": table,
        "noise_floor": {
            "mixture": "natural",
            "runs": noise_runs,
            "bpb_mean": noise_mean,
            "bpb_std": noise_std,
            "note": (
                "the natural mixture's final model with final seeds "
                f"{[r['final_seed'] for r in noise_runs]} (same seeds as the natural rows when "
                "the search seeds are 0..2)"
            ),
        },
        "models_trained": scorer.trained,
        "training_seconds": round(scorer.seconds, 1),
    }


def summary_rows(name: str, record: dict[str, Any], seeds: Sequence[int]) -> list[dict[str, str]]:
    """One README-table row per strategy: mean ± std BPB (mean rank); baseline natural."""
    table = record["strategies"]
    natural = table["natural"]
    noise = record["noise_floor"]["bpb_std"]
    rows = []
    for key in (*RANKED, *REFERENCE):
        row = table[key]
        ranked = "rank_mean" in row
        rank = f", rank {row['rank_mean']:.2f}" if ranked else ""
        how = f"mean ± std, mean rank of {len(RANKED)}" if ranked else "mean ± std, unranked"
        if key == "natural":
            baseline = f"noise floor: seed std {noise:.4f}"
            ratio = "1"
        else:
            baseline = f"{natural['bpb_mean']:.4f} ± {natural['bpb_std']:.4f} (natural)"
            ratio = f"{row['bpb_mean'] / natural['bpb_mean']:.3f}"
        proxies = f"{row['proxies']} proxies" if row["proxies"] else "no proxies"
        rows.append(
            {
                "what": (
                    f"{name} corpus, target BPB of a final model ({record['final_train_tokens']:,}"
                    f" tokens) on the mixture of {row['label']}, {proxies}, {len(seeds)} seeds; "
                    f"{how}; ratio to natural, lower is better"
                ),
                "ours": f"{row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}{rank}",
                "baseline": baseline,
                "ratio": ratio,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/search_quality.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run (used by `bench.run_all --quick`); the result
            goes to `bench/results/quick/` so the full figures are kept.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="search seeds (default 0 1 2; 0 with --quick)"
    )
    parser.add_argument(
        "--proxy-tokens", type=int, help="proxy token budget (default 32768; 8192 with --quick)"
    )
    parser.add_argument(
        "--rounds", type=int, nargs="+", help="CLIMB proxies per round (default 6 4 2; 4 2 2 quick)"
    )
    parser.add_argument("--final-multiplier", type=float, default=3.0)
    parser.add_argument("--candidates", type=int, help="candidate pool (default 20000; 4000 quick)")
    parser.add_argument("--top-k-min", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=1)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--demo", action="store_true", help="also the demo corpus (slow)")
    parser.add_argument("--demo-docs", type=int, default=300, help="demo documents per source")
    parser.add_argument("--workdir", help="keep the corpora and stores here (default: temporary)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    seeds = args.seeds or ([0] if quick else [0, 1, 2])
    proxy_tokens = args.proxy_tokens or (8192 if quick else 32_768)
    rounds = tuple(args.rounds or ((4, 2, 2) if quick else (6, 4, 2)))
    candidates = args.candidates or (4000 if quick else 20_000)

    import torch

    from climb_assets.lib.proxy import ProxyConfig, count_parameters

    torch.set_num_threads(args.threads)
    proxy_cfg = ProxyConfig(
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        train_tokens=proxy_tokens,
        lr=args.lr,
    )
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine = machine_info()
    load = load_average()
    monitor = CpuMonitor()
    wall_start = time.perf_counter()
    corpora: dict[str, Any] = {}
    summary: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="climb-search-quality-") as tmp:
        root = Path(args.workdir) if args.workdir else Path(tmp)
        names = ["planted", *(["demo"] if args.demo else [])]
        for name in names:
            start = time.perf_counter()
            if name == "planted":
                prepared = prepare_planted(root / "planted")
            else:
                prepared = prepare_demo(root / "demo", args.demo_docs)
            prep_seconds = time.perf_counter() - start
            print(
                f"[{name}] data side done in {prep_seconds:.0f} s: "
                f"{len(prepared.arrays)} super-clusters, prior {prepared.details['natural_prior']}"
                f", oracle {prepared.oracle.round(3).tolist()}",
                flush=True,
            )
            record = run_corpus(
                prepared,
                seeds,
                proxy_cfg,
                rounds,
                args.final_multiplier,
                candidates,
                args.top_k_min,
                args.device,
            )
            record["prepare_seconds"] = round(prep_seconds, 1)
            record["parameters"] = count_parameters(proxy_cfg, prepared.tok.get_vocab_size())
            corpora[name] = record
            summary += summary_rows(name, record, seeds)
    wall = time.perf_counter() - wall_start
    result: dict[str, Any] = {
        "description": (
            "target BPB of a final model (same architecture, more tokens, another seed) trained "
            "on the mixture each strategy picks with the same number of proxies; mean ± std "
            "over search seeds, mean rank, noise floor of the final model"
        ),
        "params": {
            "seeds": list(seeds),
            "proxies_per_strategy": sum(rounds),
            "climb_rounds": list(rounds),
            "proxy_config": proxy_cfg.to_dict(),
            "proxy_seed": "search seed",
            "final_multiplier": args.final_multiplier,
            "final_seed": f"{FINAL_SEED_OFFSET} + search seed",
            "candidates": candidates,
            "top_k_min": args.top_k_min,
            "predictor_params": PREDICTOR_PARAMS,
            "regmix_final": {"method": "topk_mean", "k": 128},
            "climb_final": {"method": "argmax"},
            "sampler": "SamplerSettings() (paper defaults)",
            "threads": args.threads,
            "device": args.device,
            "corpora": list(corpora),
            "ranked": list(RANKED),
            "reference": list(REFERENCE),
        },
        "corpora": corpora,
        "wall_seconds": round(wall, 1),
        "summary": summary,
        "machine": machine,
    }
    result["cpu"] = monitor.stop()
    result["load_average_start"] = load
    result["load_average_end"] = load_average()
    result["high_load_at_start"] = bool(load and load[0] > HIGH_LOAD)
    other = result["cpu"].get("other_cores")
    # Contention slows the run down but does not change the BPB figures (CPU training is
    # deterministic for the same inputs and thread count).
    result["contended"] = result["high_load_at_start"] or bool(other and other > CONTENDED_CORES)
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    for name, record in corpora.items():
        print(f"{name}: final BPB over seeds {list(seeds)} (mean ± std, mean rank)")
        for key, row in record["strategies"].items():
            rank = f"  rank {row['rank_mean']:.2f}" if "rank_mean" in row else ""
            print(f"  {key:15s} {row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}{rank}")
        noise = record["noise_floor"]
        print(f"  noise floor (natural, 3 final seeds): std {noise['bpb_std']:.4f}")
    print(f"wall time {wall:.0f} s")
    return result


if __name__ == "__main__":
    main()

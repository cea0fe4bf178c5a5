"""Static encoder (model2vec's format, distilled from MiniLM) against MiniLM: speed and clusters.

The demo corpus (`climb_assets.lib.demo_corpus`, seed 0, 1,000 documents per source, 6 sources)
is built in a temporary folder and read back with its `source` labels. A static model is
distilled from the bundled all-MiniLM-L6-v2 with `climb distill-static`'s defaults (dim 256, no
SIF weighting; timed) unless `--static-folder` names one. Then, in one process, side by side:

- `--rounds` rounds, each timing the static encoder (`StaticEncoder`, max 128 tokens) on every
  document and then MiniLM (`TextEncoder`, CPU float32, batch 64, max 128 tokens, `--threads`
  torch threads) on the round's slice of the first `--minilm-docs` documents (default all), both
  through `encode_counted` as the `embeddings` asset calls it (one tokenization: vectors and token
  counts). Drifting background load hits both alike; the CPU time other processes used is recorded
  per timed run. Static docs/s is the median of the rounds, MiniLM's its documents over its
  seconds, and the paired ratio the median of the per-round ratios;
- model2vec's own `StaticModel.encode` on the same folder and documents (max_length 128): a
  reference for speed and for agreement (cosine per document).

Both sets of embeddings of the same documents (MiniLM's) are clustered with the project's k-means
(`fit_kmeans` + `assign`, the demo profile's k, iterations, spherical and init) with `--seeds`
seeds, and NMI and ARI (scikit-learn) against `source` are reported per seed and as means; so is
the same table with model2vec's default SIF weighting (1e-4, applied after the PCA, as
`distill_static` applies it), the ablation behind the default. Goals (issue 20): static >= 50x
MiniLM's docs/s, and mean NMI within 0.05 of MiniLM's.

Then the corpus-adapted build (`tune_static`, what `climb distill-static --tune-corpus` does,
with the default `TuneSettings`: chosen on held-out library docstrings, never on the demo) is
fitted, without labels, to MiniLM's vectors of (a) `--tune-per-source` demo-source documents per
source that are not among the evaluated ones (the "user's own corpus" case) and (b)
`--tune-per-library` docstring chunks of each of dagster, networkx, scipy and sympy (transfer
from other text); each tuned model's k-means of the evaluated documents is scored the same way,
and its docs/s is timed against the plain model's in alternating rounds.

`TOKENIZERS_PARALLELISM` is left as found (`make bench` sets it to false, so the tokenizers run
on one thread) and recorded.

Run: `TOKENIZERS_PARALLELISM=false .venv/bin/python -m bench.static_encoder [--dim 256]
[--minilm-docs N] [--seeds 10] [--tune-per-source 500] [--tune-per-library 750]
[--wait-quiet S]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
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
    median,
    time_it,
    wait_for_quiet,
    write_result,
)

NAME = "static_encoder"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128


def demo_documents(folder: Path, docs_per_source: int) -> tuple[list[str], list[str]]:
    """The demo corpus's texts and `source` labels, in shard order, then row order."""
    import pyarrow.parquet as pq

    from climb_assets.lib.demo_corpus import build_demo_corpus

    info = build_demo_corpus(folder, docs_per_source=docs_per_source, heldout_per_source=10)
    texts: list[str] = []
    sources: list[str] = []
    for shard in info.shards:
        if shard.suffix == ".parquet":
            table = pq.read_table(shard, columns=["text", "source"])
            texts += table.column("text").to_pylist()
            sources += table.column("source").to_pylist()
        else:
            for line in shard.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                texts.append(row["text"])
                sources.append(row["source"])
    return texts, sources


def timed_encode(encoder: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, float, Any]:
    """`encode_counted`, as the embeddings asset calls it: vectors, token counts, seconds, and
    the cores other processes kept busy meanwhile."""
    monitor = CpuMonitor()
    (vectors, counts), seconds = time_it(encoder.encode_counted, texts)
    return vectors, counts, seconds, monitor.stop()["other_cores"]


def sif_variant(folder: str, out: Path, coefficient: float) -> Path:
    """A copy of the static model `folder` (distilled without SIF) with its rows scaled by SIF
    weights, as `distill_static(sif_coefficient=coefficient)` scales them after the PCA."""
    import re

    from safetensors.numpy import load_file, save_file

    from climb_assets.lib.static_encoder import UNUSED_TOKENS, StaticEncoder, sif_weights

    source = StaticEncoder(folder)
    vocab = source.tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    fit = np.asarray([re.fullmatch(UNUSED_TOKENS, t) is None for t in tokens])
    weights = np.ones(len(tokens))
    weights[fit] = sif_weights(int(fit.sum()), coefficient)
    shutil.copytree(folder, out)
    table = load_file(str(Path(folder) / "model.safetensors"))["embeddings"]
    scaled = (table.astype(np.float64) * weights[:, None]).astype(np.float32)
    save_file({"embeddings": scaled}, str(out / "model.safetensors"))
    return out


def cluster_scores(x: np.ndarray, labels: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """NMI and ARI against `labels` of the demo profile's k-means on `x`, one fit per seed."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from climb_assets.config import load_profile
    from climb_assets.lib.kmeans import assign, fit_kmeans

    km = load_profile("demo").kmeans
    nmi, ari = [], []
    for seed in seeds:
        fit = fit_kmeans(x, km.k, km.niter, seed, km.spherical, "cpu", km.init)
        ids, _ = assign(x, fit.centroids)
        nmi.append(float(normalized_mutual_info_score(labels, ids)))
        ari.append(float(adjusted_rand_score(labels, ids)))
    return {
        "k": km.k,
        "seeds": list(seeds),
        "nmi": nmi,
        "ari": ari,
        "nmi_mean": float(np.mean(nmi)),
        "nmi_std": float(np.std(nmi)),
        "ari_mean": float(np.mean(ari)),
        "ari_std": float(np.std(ari)),
    }


TUNE_LIBRARIES = ("dagster", "networkx", "scipy", "sympy")
"""Library docstrings for the transfer check: neither demo sources nor the held-out search
corpora's (huggingface_hub, pandas, matplotlib, sklearn)."""
TUNE_SEED = 0


def disjoint_demo_sample(evaluated: Sequence[str], per_source: int, seed: int) -> list[str]:
    """Demo-source chunks not among the `evaluated` texts, `per_source` of each source (fewer
    where a source has fewer left), seeded: the "user's own corpus" for the tuning check. The
    sources only balance the draw as the demo corpus is balanced; the fit never sees them."""
    from climb_assets.lib import demo_corpus

    collected = demo_corpus._collect_many(list(demo_corpus.DEMO_SOURCES))
    seen = set(evaluated)
    picked: list[str] = []
    for source in demo_corpus.DEMO_SOURCES:
        pool = [t for t in collected[source] if t not in seen]
        seen.update(pool)
        rng = np.random.default_rng([seed, demo_corpus._stable_int(source)])
        picked += [pool[i] for i in np.sort(rng.permutation(len(pool))[:per_source])]
    return picked


def library_sample(per_library: int, seed: int) -> list[str]:
    """`per_library` docstring chunks of each of `TUNE_LIBRARIES`, seeded."""
    from bench.heldout_sources import collect_library_chunks

    picked: list[str] = []
    for i, library in enumerate(TUNE_LIBRARIES):
        chunks = collect_library_chunks(library)
        rng = np.random.default_rng([seed, i])
        picked += [chunks[j] for j in np.sort(rng.permutation(len(chunks))[:per_library])]
    return picked


def tuned_variants(
    workdir: Path,
    static_folder: str,
    texts: Sequence[str],
    labels: Sequence[str],
    seeds: Sequence[int],
    tune_per_source: int,
    tune_per_library: int,
    threads: int,
    rounds: int,
) -> dict[str, Any]:
    """`tune_static` (the default `TuneSettings`, chosen on held-out library docstrings) on a
    sample of demo text disjoint from the evaluated documents and on library docstrings; each
    tuned model's clusters of the evaluated documents, and its docs/s against the plain model's
    in alternating rounds."""
    from climb_assets.lib.static_encoder import StaticEncoder, TuneSettings, tune_static

    samples = {}
    if tune_per_source:
        samples["demo_disjoint"] = disjoint_demo_sample(texts, tune_per_source, TUNE_SEED)
    if tune_per_library:
        samples["libraries"] = library_sample(tune_per_library, TUNE_SEED)
    plain = StaticEncoder(static_folder, max_tokens=MAX_TOKENS)
    out: dict[str, Any] = {}
    for name, sample in samples.items():
        monitor = CpuMonitor()
        record, seconds = time_it(
            tune_static,
            static_folder,
            workdir / f"tuned-{name}",
            sample,
            settings=TuneSettings(seed=TUNE_SEED, threads=threads),
            source={"sample": name, "seed": TUNE_SEED},
        )
        tuned = StaticEncoder(str(workdir / f"tuned-{name}"), max_tokens=MAX_TOKENS)
        tuned.encode_counted(texts[:500])
        plain_s, tuned_s = [], []
        for _ in range(rounds):
            plain_s.append(time_it(plain.encode_counted, texts)[1])
            tuned_s.append(time_it(tuned.encode_counted, texts)[1])
        vectors, _ = tuned.encode_counted(texts[: len(labels)])
        out[name] = {
            "tune_documents": len(sample),
            "tuning": {k: v for k, v in record.items() if k != "epoch_losses"},
            "seconds_tuning": seconds,
            "cpu": monitor.stop(),
            "clusters": cluster_scores(vectors, labels, seeds),
            "docs_per_s_plain_median": len(texts) / median(plain_s),
            "docs_per_s_tuned_median": len(texts) / median(tuned_s),
            "docs_per_s_tuned_over_plain": median(plain_s) / median(tuned_s),
        }
        print(
            f"tuned on {name} ({len(sample)} docs, {seconds:.0f} s): NMI "
            f"{out[name]['clusters']['nmi_mean']:.3f}, docs/s tuned/plain "
            f"{out[name]['docs_per_s_tuned_over_plain']:.2f}",
            flush=True,
        )
    return out


def run(
    workdir: Path,
    docs_per_source: int = 1000,
    dim: int = 256,
    rounds: int = 5,
    minilm_docs: int | None = None,
    seeds: int = 10,
    threads: int = 2,
    static_folder: str | None = None,
    tune_per_source: int = 500,
    tune_per_library: int = 750,
) -> dict[str, Any]:
    """Runs the comparison and returns the result record (not yet written)."""
    import torch

    from climb_assets.lib.embed import TextEncoder
    from climb_assets.lib.static_encoder import StaticEncoder, distill_static

    torch.set_num_threads(threads)
    texts, sources = demo_documents(workdir / "demo", docs_per_source)
    print(f"demo corpus: {len(texts)} documents", flush=True)

    distill: dict[str, Any] | None = None
    if static_folder is None:
        monitor = CpuMonitor()
        result = distill_static(workdir / "static", MODEL, dim=dim, threads=threads)
        static_folder = str(result.folder)
        distill = {
            "model": MODEL,
            "model_revision": result.source_revision,
            "dim": result.dim,
            "sif_coefficient": None,
            "vocab_size": result.vocab_size,
            "explained_variance": result.explained_variance,
            "seconds": result.seconds,
            "seconds_vocabulary_pass": result.seconds_forward,
            "cpu": monitor.stop(),
        }
        print(f"distilled {result.vocab_size} tokens x {dim} in {result.seconds:.0f} s", flush=True)

    static = StaticEncoder(static_folder, max_tokens=MAX_TOKENS)
    minilm = TextEncoder(
        MODEL, max_tokens=MAX_TOKENS, batch_size=64, device="cpu", dtype="float32", threads=threads
    )
    static.encode_counted(texts[:500])  # warm-ups
    minilm.encode_counted(texts[:128])
    n_minilm = len(texts) if minilm_docs is None else min(minilm_docs, len(texts))
    cuts = np.linspace(0, n_minilm, rounds + 1).round().astype(int)
    static_s: list[float] = []
    minilm_s: list[float] = []
    others: dict[str, list[Any]] = {"static": [], "minilm": []}
    minilm_parts: list[np.ndarray] = []
    minilm_counts: list[np.ndarray] = []
    emb_static = counts = np.zeros(0)
    for r in range(rounds):
        emb_static, counts, seconds, other = timed_encode(static, texts)
        static_s.append(seconds)
        others["static"].append(other)
        part = texts[cuts[r] : cuts[r + 1]]
        vectors, part_counts, seconds, other = timed_encode(minilm, part)
        minilm_parts.append(vectors)
        minilm_counts.append(part_counts)
        minilm_s.append(seconds)
        others["minilm"].append(other)
        print(
            f"round {r + 1}/{rounds}: static {len(texts) / static_s[-1]:,.0f} docs/s, MiniLM "
            f"{len(part) / seconds:.1f} docs/s on {len(part)} (other processes: "
            f"{others['static'][-1]} and {other} cores)",
            flush=True,
        )
    emb_minilm = np.concatenate(minilm_parts)
    counts_agree = bool(np.array_equal(np.concatenate(minilm_counts), counts[:n_minilm]))

    from model2vec import StaticModel

    m2v = StaticModel.from_pretrained(static_folder, force_download=False)
    m2v.encode(texts[:500], max_length=MAX_TOKENS)
    m2v_s = []
    theirs = np.zeros(0)
    for _ in range(3):
        theirs, seconds = time_it(m2v.encode, texts, max_length=MAX_TOKENS)
        m2v_s.append(seconds)
    cos = np.sum(emb_static * theirs, axis=1) / np.maximum(np.linalg.norm(theirs, axis=1), 1e-12)
    reference = {
        "seconds": m2v_s,
        "docs_per_s_median": len(texts) / median(m2v_s),
        "cosine_min": float(cos.min()),
        "cosine_median": float(np.median(cos)),
        "share_cosine_above_0_999": float(np.mean(cos > 0.999)),
        "note": "model2vec also cuts each text at max_length x its median token length in "
        "characters before tokenizing, so long documents can differ",
    }

    seed_list = [42 + i for i in range(seeds)]
    labels = sources[:n_minilm]
    clusters: dict[str, Any] = {
        "documents": n_minilm,
        "minilm": cluster_scores(emb_minilm, labels, seed_list),
        "static": cluster_scores(emb_static[:n_minilm], labels, seed_list),
    }
    config = json.loads((Path(static_folder) / "config.json").read_text(encoding="utf-8"))
    if config.get("climb", {}).get("sif_coefficient", 0) is None:
        variant = StaticEncoder(str(sif_variant(static_folder, workdir / "sif", 1e-4)), MAX_TOKENS)
        vectors, _ = variant.encode_counted(texts[:n_minilm])
        clusters["static_sif_1e-4"] = cluster_scores(vectors, labels, seed_list)

    tuned = tuned_variants(
        workdir, static_folder, texts, labels, seed_list, tune_per_source, tune_per_library,
        threads, rounds,
    )  # fmt: skip
    for name, variant in tuned.items():
        clusters[f"static_tuned_{name}"] = variant["clusters"]

    static_dps = len(texts) / median(static_s)
    minilm_dps = n_minilm / sum(minilm_s)
    ratio = static_dps / minilm_dps
    paired = [
        (len(texts) / static_s[r]) / ((cuts[r + 1] - cuts[r]) / minilm_s[r]) for r in range(rounds)
    ]
    nmi_gap = clusters["minilm"]["nmi_mean"] - clusters["static"]["nmi_mean"]
    flat = [*others["static"], *others["minilm"]]
    summary = [
        {
            "what": f"docs/s, demo corpus ({len(texts):,} docs; MiniLM {n_minilm:,}), CPU, max "
            f"{MAX_TOKENS} tokens, encode_counted: static (dim {static.info.dim}, numpy) vs MiniLM "
            f"(torch fp32, {threads} threads); ratio static/MiniLM",
            "ours": f"{static_dps:,.0f} docs/s",
            "baseline": f"{minilm_dps:.1f} docs/s (MiniLM)",
            "ratio": f"{ratio:.0f}",
        },
        {
            "what": f"NMI vs source, demo k-means (k={clusters['static']['k']}, {seeds} seeds, "
            f"mean, {n_minilm:,} docs): static vs MiniLM; ratio static/MiniLM",
            "ours": f"{clusters['static']['nmi_mean']:.3f}",
            "baseline": f"{clusters['minilm']['nmi_mean']:.3f} (MiniLM)",
            "ratio": f"{clusters['static']['nmi_mean'] / clusters['minilm']['nmi_mean']:.3f}",
        },
        {
            "what": "ARI vs source, same fits: static vs MiniLM; ratio static/MiniLM",
            "ours": f"{clusters['static']['ari_mean']:.3f}",
            "baseline": f"{clusters['minilm']['ari_mean']:.3f} (MiniLM)",
            "ratio": f"{clusters['static']['ari_mean'] / clusters['minilm']['ari_mean']:.3f}",
        },
    ]
    for name, variant in tuned.items():
        what = {
            "demo_disjoint": "demo-source documents disjoint from the evaluated ones (the "
            "user's own corpus)",
            "libraries": f"docstrings of {', '.join(TUNE_LIBRARIES)} (transfer)",
        }[name]
        nmi = variant["clusters"]["nmi_mean"]
        summary.append(
            {
                "what": f"NMI vs source, same fits, static tuned (climb distill-static "
                f"--tune-corpus) on {variant['tune_documents']:,} {what}: tuned vs MiniLM; gap "
                f"MiniLM - tuned (plain {nmi_gap:.3f}); tuned/plain docs/s "
                f"{variant['docs_per_s_tuned_over_plain']:.2f}",
                "ours": f"{nmi:.3f}",
                "baseline": f"{clusters['minilm']['nmi_mean']:.3f} (MiniLM)",
                "ratio": f"{clusters['minilm']['nmi_mean'] - nmi:.3f}",
            }
        )
    if distill:
        summary.append(
            {
                "what": f"climb distill-static from all-MiniLM-L6-v2 ({distill['vocab_size']:,} "
                f"tokens), dim {dim}, CPU, {threads} threads: seconds (of which the vocabulary "
                "pass)",
                "ours": f"{distill['seconds']:.0f} s",
                "baseline": f"{distill['seconds_vocabulary_pass']:.0f} s (pass)",
                "ratio": "",
            }
        )
    return {
        "description": (
            "docs/s (encode_counted, as the embeddings asset calls it) of the static encoder "
            "distilled from all-MiniLM-L6-v2 (model2vec's format) and of MiniLM itself "
            "(TextEncoder, CPU float32), timed in alternating rounds on the demo corpus, and "
            "NMI/ARI against `source` of the demo profile's k-means on each one's embeddings of "
            "the same documents"
        ),
        "params": {
            "model": MODEL,
            "static_folder": static_folder if distill is None else "(distilled in a temp folder)",
            "static_revision": static.info.revision,
            "static_dim": static.info.dim,
            "static_sif_coefficient": config.get("sif_coefficient"),
            "n_documents": len(texts),
            "minilm_documents": n_minilm,
            "documents_per_source": {s: sources.count(s) for s in sorted(set(sources))},
            "mean_chars": float(np.mean([len(t) for t in texts])),
            "mean_tokens_untruncated": float(counts.mean()),
            "share_truncated": float(np.mean(counts > MAX_TOKENS)),
            "max_tokens": MAX_TOKENS,
            "rounds": rounds,
            "minilm_batch_size": 64,
            "threads_torch": threads,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        },
        "distill": distill,
        "seconds": {"static": static_s, "minilm": minilm_s},
        "minilm_documents_per_round": np.diff(cuts).tolist(),
        "other_cores": others,
        "docs_per_s": {
            "static_median": static_dps,
            "static_runs": [len(texts) / s for s in static_s],
            "minilm": minilm_dps,
            "minilm_runs": [int(d) / s for d, s in zip(np.diff(cuts), minilm_s, strict=True)],
        },
        "ratio_static_over_minilm": ratio,
        "ratio_paired_median": median(paired),
        "token_counts_agree": counts_agree,
        "model2vec_reference": reference,
        "clusters": clusters,
        "nmi_gap_minilm_minus_static": nmi_gap,
        "tuned": tuned,
        "nmi_gap_minilm_minus_tuned": {
            name: clusters["minilm"]["nmi_mean"] - v["clusters"]["nmi_mean"]
            for name, v in tuned.items()
        },
        "goals": {
            "speed_ratio_at_least_50": ratio >= 50,
            "nmi_within_0_05": nmi_gap <= 0.05,
            "nmi_within_0_05_tuned": {
                name: clusters["minilm"]["nmi_mean"] - v["clusters"]["nmi_mean"] <= 0.05
                for name, v in tuned.items()
            },
        },
        "contended_runs": any(v is not None and v > CONTENDED_CORES for v in flat),
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/static_encoder.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run; the result goes to `bench/results/quick/`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-source", type=int, help="demo documents per source (1000)")
    parser.add_argument("--dim", type=int, default=256, help="static model dimensions")
    parser.add_argument("--rounds", type=int, help="alternating timed rounds (default 5)")
    parser.add_argument("--minilm-docs", type=int, help="documents MiniLM embeds (default all)")
    parser.add_argument("--seeds", type=int, help="k-means seeds (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--static-folder", help="use this static model instead of distilling")
    parser.add_argument(
        "--tune-per-source",
        type=int,
        help="disjoint demo documents per source to tune on (default 500; 0: skip)",
    )
    parser.add_argument(
        "--tune-per-library",
        type=int,
        help="docstring chunks per library to tune on (default 750; 0: skip)",
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine = machine_info()
    load = load_average()
    monitor = CpuMonitor()
    with tempfile.TemporaryDirectory(prefix="climb-bench-static-") as tmp:
        result = run(
            Path(tmp),
            docs_per_source=args.docs_per_source or (100 if quick else 1000),
            dim=args.dim,
            rounds=args.rounds or (2 if quick else 5),
            minilm_docs=args.minilm_docs,
            seeds=args.seeds or (2 if quick else 10),
            threads=args.threads,
            static_folder=args.static_folder,
            tune_per_source=(50 if quick else 500)
            if args.tune_per_source is None
            else args.tune_per_source,
            tune_per_library=(50 if quick else 750)
            if args.tune_per_library is None
            else args.tune_per_library,
        )
    result["cpu"] = monitor.stop()
    result["load_average_start"] = load
    result["load_average_end"] = load_average()
    result["high_load_at_start"] = bool(load and load[0] > HIGH_LOAD)
    result["contended"] = result["high_load_at_start"] or result["contended_runs"]
    result["machine"] = machine
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    for row in result["summary"]:
        print(f"{row['what']}: {row['ours']} vs {row['baseline']} -> {row['ratio']}")
    return result


if __name__ == "__main__":
    main()

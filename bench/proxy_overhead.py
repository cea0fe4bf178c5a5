"""Proxy training throughput: `train_proxy` against a bare PyTorch loop on the same model and data.

Both train the `tiny` preset (GPT-2, 2 layers x 128 wide, 4 heads, 128-token context, batch 16,
vocabulary 4,096) for the same number of steps on the CPU:

- ours: `climb_assets.lib.proxy.train_proxy(cfg, arrays, weights, vocab)`: AdamW (foreach, decay
  on matrices only), the learning rate set every step (warm-up + cosine), global gradient-norm
  clipping, per-step losses collected in a tensor and copied back once;
- bare: the same model from `build_model(cfg, vocab)` (same seed, same initialisation), the same
  batches from `MixtureBatches.for_config(cfg, arrays, weights).batch(step)`, `torch.optim.AdamW`
  with the preset's learning rate, betas and weight decay on all parameters (PyTorch's default
  implementation choice), and per step only forward, cross-entropy, backward, `step`,
  `zero_grad`. No scheduler, no clipping, no logging.

The token arrays are synthetic (4 super-clusters of random ids, seeded): the content does not
change the cost of a step. Both loops are timed the same way, from the first step to the last
(model construction excluded), and also as whole calls (model construction included). For each
thread count (`torch.set_num_threads`, default 1 and 2), one short warm-up of each, then timed
runs alternate ours, bare, ours, bare, ... so drifting background load hits both alike. The CPU
time other processes used is recorded for every run; when some rounds were quiet the headline
figures come from those rounds only. Reported per thread count: median tokens/s of each and the
overhead ratio bare/ours of the medians (1.0 = no overhead; above 1, ours is slower).

Run: `.venv/bin/python -m bench.proxy_overhead [--tokens 65536] [--rounds 3] [--threads 1 2]`.
"""

from __future__ import annotations

import argparse
import time
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
    utilization,
    wait_for_quiet,
    write_gpu_result,
    write_result,
)

NAME = "proxy_overhead"
PRESET = "tiny"
VOCAB = 4096
N_CLUSTERS = 4
CLUSTER_TOKENS = 250_000
GPU_PRESETS = ("tiny", "62M")
GPU_VOCAB = 32_000


def synthetic_clusters(
    n_clusters: int = N_CLUSTERS, size: int = CLUSTER_TOKENS, vocab: int = VOCAB, seed: int = 0
) -> list[np.ndarray]:
    """`n_clusters` uint16 arrays of `size` random ids in [1, vocab), each ending with EOS 0."""
    rng = np.random.default_rng(seed)
    arrays = []
    for _ in range(n_clusters):
        arr = rng.integers(1, vocab, size=size, dtype=np.int64).astype(np.uint16)
        arr[-1] = 0
        arrays.append(arr)
    return arrays


def train_bare(cfg: Any, arrays: Sequence[np.ndarray], weights: np.ndarray) -> dict[str, float]:
    """The bare loop: same model, same batches, plain AdamW, `cfg.steps` steps.

    Returns:
        `{"seconds"` (the loop), `"call_seconds"` (model construction included), `"final_loss"}`.
    """
    import torch
    import torch.nn.functional as F

    from climb_assets.lib.proxy import MixtureBatches, build_model

    call_start = time.perf_counter()
    batches = MixtureBatches.for_config(cfg, arrays, weights)
    model = build_model(cfg, VOCAB)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    loss = torch.zeros(())
    start = time.perf_counter()
    for step in range(cfg.steps):
        window = torch.from_numpy(batches.batch(step))
        inputs, targets = window[:, :-1], window[:, 1:]
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "call_seconds": end - call_start,
        "final_loss": float(loss.detach()),
    }


def train_ours(cfg: Any, arrays: Sequence[np.ndarray], weights: np.ndarray) -> dict[str, float]:
    """`train_proxy` on the CPU; `seconds` is its own loop timing, `call_seconds` the whole call."""
    from climb_assets.lib.proxy import train_proxy

    call_start = time.perf_counter()
    result = train_proxy(cfg, arrays, weights, VOCAB)
    call_seconds = time.perf_counter() - call_start
    return {
        "seconds": result.seconds,
        "call_seconds": call_seconds,
        "final_loss": result.final_loss,
    }


def run(
    tokens: int = 65_536,
    rounds: int = 3,
    threads: Sequence[int] = (1, 2),
    warmup_tokens: int = 4096,
) -> dict[str, Any]:
    """Runs the comparison for every thread count and returns the result record (not written).

    Args:
        tokens: Training tokens per run (`train_tokens` of the preset; rounded up to steps).
        rounds: Timed runs of each loop per thread count (alternating ours, bare).
        threads: `torch.set_num_threads` values to measure.
        warmup_tokens: Token budget of the untimed warm-up run of each loop.
    """
    import torch

    from climb_assets.lib.proxy import count_parameters, proxy_preset

    machine = machine_info()
    cfg = proxy_preset(PRESET, train_tokens=tokens)
    warm_cfg = proxy_preset(PRESET, train_tokens=warmup_tokens)
    arrays = synthetic_clusters()
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    previous = torch.get_num_threads()
    per_threads: dict[str, Any] = {}
    summary: list[dict[str, str]] = []
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            train_ours(warm_cfg, arrays, weights)
            train_bare(warm_cfg, arrays, weights)
            runs: dict[str, list[dict[str, float]]] = {"ours": [], "bare": []}
            others: list[float | None] = []
            for r in range(rounds):
                for name, fn in (("ours", train_ours), ("bare", train_bare)):
                    monitor = CpuMonitor()
                    stats = fn(cfg, arrays, weights)
                    stats["other_cores"] = monitor.stop()["other_cores"]
                    stats["tokens_per_s"] = cfg.steps * cfg.tokens_per_step / stats["seconds"]
                    runs[name].append(stats)
                    others.append(stats["other_cores"])
                print(
                    f"threads {n_threads} round {r + 1}/{rounds}: ours "
                    f"{runs['ours'][-1]['tokens_per_s']:,.0f} tokens/s, bare "
                    f"{runs['bare'][-1]['tokens_per_s']:,.0f} tokens/s (other processes: "
                    f"{runs['ours'][-1]['other_cores']} and {runs['bare'][-1]['other_cores']} "
                    "cores)",
                    flush=True,
                )
            quiet = [
                r
                for r in range(rounds)
                if all(v is not None and v <= CONTENDED_CORES for v in others[2 * r : 2 * r + 2])
            ]
            used = quiet or list(range(rounds))
            ours_tps = median([runs["ours"][r]["tokens_per_s"] for r in used])
            bare_tps = median([runs["bare"][r]["tokens_per_s"] for r in used])
            tokens_run = cfg.steps * cfg.tokens_per_step
            ours_call = median([tokens_run / runs["ours"][r]["call_seconds"] for r in used])
            bare_call = median([tokens_run / runs["bare"][r]["call_seconds"] for r in used])
            paired = [
                runs["bare"][r]["tokens_per_s"] / runs["ours"][r]["tokens_per_s"] for r in used
            ]
            per_threads[str(n_threads)] = {
                "runs": runs,
                "quiet_rounds": quiet,
                "rounds_used": used,
                "tokens_per_s": {"ours_median": ours_tps, "bare_median": bare_tps},
                "tokens_per_s_whole_call": {"ours_median": ours_call, "bare_median": bare_call},
                "overhead_ratio_bare_over_ours": bare_tps / ours_tps,
                "overhead_ratio_paired_median": median(paired),
                "overhead_ratio_whole_call": bare_call / ours_call,
            }
            summary.append(
                {
                    "what": (
                        f"proxy training tokens/s, tiny preset (2 x 128, seq 128, batch 16, vocab "
                        f"4,096), {cfg.steps} steps, CPU, {n_threads} thread(s); train_proxy vs "
                        "bare AdamW loop (ratio bare/ours, 1 = no overhead)"
                    ),
                    "ours": f"{ours_tps:,.0f} tokens/s",
                    "baseline": f"{bare_tps:,.0f} tokens/s (bare loop)",
                    "ratio": f"{bare_tps / ours_tps:.3f}",
                }
            )
    finally:
        torch.set_num_threads(previous)
    return {
        "description": (
            "tokens/s of climb train_proxy vs a bare PyTorch loop (same model from build_model, "
            "same MixtureBatches, AdamW, same steps, no scheduler/clipping/logging), tiny "
            "preset on the CPU, alternating timed runs after one warm-up each, per thread count"
        ),
        "params": {
            "preset": PRESET,
            "proxy_config": cfg.to_dict(),
            "steps": cfg.steps,
            "tokens_per_run": cfg.steps * cfg.tokens_per_step,
            "parameters": count_parameters(cfg, VOCAB),
            "vocab_size": VOCAB,
            "clusters": N_CLUSTERS,
            "cluster_tokens": CLUSTER_TOKENS,
            "weights": weights.tolist(),
            "rounds": rounds,
            "threads": list(threads),
            "warmup_tokens": warm_cfg.steps * warm_cfg.tokens_per_step,
            "device": "cpu",
            "data": "synthetic uniform random token ids (content does not change the step cost)",
        },
        "by_threads": per_threads,
        "summary": summary,
        "machine": machine,
    }


def run_gpu(
    steps: int = 40, presets: Sequence[str] = GPU_PRESETS, device: str = "cuda"
) -> dict[str, Any]:
    """`train_proxy` on the GPU for each preset: tokens/s and model FLOP utilization (MFU).

    Vocabulary 32,000 (the paper profile's); one 2-step warm-up run, then `steps` timed steps.
    MFU = 6 x parameters x tokens/s / the GPU's 16-bit dense peak (None for an unknown GPU).
    """
    from climb_assets.lib.proxy import count_parameters, proxy_preset, train_proxy

    name = gpu_name() or device
    peak = gpu_peaks(name)[0]
    arrays = synthetic_clusters(vocab=GPU_VOCAB)
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    runs, summary = [], []
    for preset in presets:
        step = proxy_preset(preset).tokens_per_step
        warm = proxy_preset(preset, train_tokens=2 * step)
        train_proxy(warm, arrays, weights, GPU_VOCAB, device=device)
        cfg = proxy_preset(preset, train_tokens=steps * step)
        result = train_proxy(cfg, arrays, weights, GPU_VOCAB, device=device)
        params = count_parameters(cfg, GPU_VOCAB)
        flops = 6.0 * params * result.tokens_per_second
        mfu = utilization(flops, peak)
        runs.append(
            {
                "preset": preset,
                "parameters": params,
                "vocab_size": GPU_VOCAB,
                "seq_len": cfg.seq_len,
                "batch_size": cfg.batch_size,
                "steps": result.steps,
                "tokens": result.tokens,
                "seconds": result.seconds,
                "tokens_per_s": result.tokens_per_second,
                "model_flops_per_s": flops,
                "mfu": mfu,
            }
        )
        summary.append(
            {
                "what": f"proxy training tokens/s on {name}, {preset} preset ({params:,} params, "
                f"vocab {GPU_VOCAB:,}), {result.steps} steps; ratio = MFU",
                "ours": f"{result.tokens_per_second:,.0f} tokens/s",
                "baseline": "",
                "ratio": "" if mfu is None else f"{mfu:.3f}",
            }
        )
    return {"device": name, "runs": runs, "summary": summary}


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/proxy_overhead.json`.

    Where torch sees a GPU, it also adds GPU figures to `bench/results/gpu-<name>.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run (used by `bench.run_all --quick`); the result
            goes to `bench/results/quick/` so the full figures are kept.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokens", type=int, help="training tokens per run (default 65536; 8192 with --quick)"
    )
    parser.add_argument("--rounds", type=int, help="timed runs of each (default 3; 2 with --quick)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    tokens = args.tokens or (8192 if quick else 65_536)
    rounds = args.rounds or (2 if quick else 3)
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    load = load_average()
    monitor = CpuMonitor()
    result = run(tokens, rounds, args.threads)
    result["cpu"] = monitor.stop()
    result["load_average_start"] = load
    result["load_average_end"] = load_average()
    result["high_load_at_start"] = bool(load and load[0] > HIGH_LOAD)
    result["contended"] = result["high_load_at_start"] or any(
        not t["quiet_rounds"] for t in result["by_threads"].values()
    )
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    if gpu_name():
        gpu = run_gpu(steps=10 if quick else 40)
        write_gpu_result("proxy", gpu, QUICK_DIR if quick else RESULTS_DIR)
    for n_threads, t in result["by_threads"].items():
        print(
            f"threads {n_threads}: ours {t['tokens_per_s']['ours_median']:,.0f} tokens/s, bare "
            f"{t['tokens_per_s']['bare_median']:,.0f} tokens/s, overhead ratio bare/ours "
            f"{t['overhead_ratio_bare_over_ours']:.3f}"
        )
    return result


if __name__ == "__main__":
    main()

"""Parallel Megatron export: `MegatronExport` at 1 worker (in-process) against 2 and N workers.

The same manifest (real demo-corpus text in 4 super-clusters of equal weight, `--repeat` passes,
a byte-level BPE of 32,000 ids, built by `bench.megatron_export.prepare`) is exported with
`ExportContext.export_workers` =

- `1`: in this process, as before this change, with `TOKENIZERS_PARALLELISM=false` as the
  Makefile, the tests and the benchmarks set it: `Tokenizer.encode_batch` on one thread;
- `1+threads`: in this process with `TOKENIZERS_PARALLELISM=true`: `encode_batch` on the Rust
  library's own threads (one per CPU), the library's default where nothing sets the variable;
- `2` and the usable CPU count: spawned processes, one tokenizer thread each, each owning whole
  super-clusters;

alternating over `--rounds`, the order rotated each round. Reported: median tokens/s of each,
the ratios to `1` and to `1+threads`, whether every output (`.bin`, `.idx`, blend files) is
byte-identical to the first one, the load average at the start and the end and the CPU other
processes used meanwhile.

Where the time goes (`breakdown`, on the first manifest part, in this process): reading the
Parquet batches and splitting them by super-cluster, `encode_batch` on one thread and on the
library's threads (their ratio is what the Rust tokenizer already parallelises), and turning the
encodings into the `.bin`/`.idx` bytes.

Run: `.venv/bin/python -m bench.export_parallel [--repeat 80] [--rounds 2] [--workers 1 2]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
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
    median,
    wait_for_quiet,
    write_result,
)
from bench.megatron_export import prepare

NAME = "export_parallel"
GOAL = 1.8


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every export file (the `_export.json` record is not written by `write`)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def breakdown(store: Any, rel: str, tokenizer: str) -> dict[str, Any]:
    """Seconds of each step of the export on one part, in this process, one after the other."""
    from climb_assets.lib import tokens
    from climb_assets.lib.exports.megatron import BATCH_ROWS, IndexedDatasetWriter

    tok = tokens.load_tokenizer(tokenizer)
    eod = tokens.eos_id(tok)
    start = time.perf_counter()
    jobs = []
    for batch in store.iter_parquet(rel, ["super_cluster_id", "text"], BATCH_ROWS):
        groups = batch.column("super_cluster_id").to_numpy()
        for sc in np.unique(groups).tolist():
            jobs.append((sc, batch.column("text").take(np.flatnonzero(groups == sc)).to_pylist()))
    read_s = time.perf_counter() - start
    timed: dict[str, float] = {}
    encoded: list[Any] = []
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        for mode in ("true", "false"):
            os.environ["TOKENIZERS_PARALLELISM"] = mode
            encoded = []  # the last mode's encodings freed first: only one set in memory
            start = time.perf_counter()
            encoded = [(sc, tok.encode_batch(texts)) for sc, texts in jobs]
            timed[mode] = time.perf_counter() - start
    finally:
        _restore("TOKENIZERS_PARALLELISM", saved)
    with tempfile.TemporaryDirectory(prefix="climb-breakdown-") as tmp:
        start = time.perf_counter()
        writers: dict[int, IndexedDatasetWriter] = {}
        for sc, encodings in encoded:
            if sc not in writers:
                writers[sc] = IndexedDatasetWriter(Path(tmp) / f"sc_{sc:03d}", "uint16")
            writers[sc].add_documents([e.ids for e in encodings], eod)
        for writer in writers.values():
            writer.finalize()
        n_tokens = sum(w.tokens for w in writers.values())
        write_s = time.perf_counter() - start
    serial = read_s + timed["false"] + write_s
    return {
        "part": rel,
        "tokens": n_tokens,
        "read_and_split_s": round(read_s, 3),
        "encode_batch_1_thread_s": round(timed["false"], 3),
        "encode_batch_library_threads_s": round(timed["true"], 3),
        "ids_to_bin_and_idx_s": round(write_s, 3),
        "tokenize_share_of_one_thread": round(timed["false"] / serial, 3),
        "rust_threads_speedup_of_encode_batch": round(timed["false"] / timed["true"], 2),
        "one_thread_tokens_per_second": round(n_tokens / serial),
    }


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents-per-source", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=80, help="passes over the documents")
    parser.add_argument("--workers", type=int, nargs="+", help="default: 1, 2 and the CPUs")
    parser.add_argument("--no-threads-run", action="store_true", help="skip `1+threads`")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    from climb_assets.lib.exports import ExportContext
    from climb_assets.lib.exports.megatron import MegatronExport, index_dtype
    from climb_assets.lib.machine import usable_cpus

    cpus = usable_cpus()
    counts = list(dict.fromkeys(args.workers or [1, 2, cpus]))
    workers: list[str] = [str(w) for w in counts]
    if 1 in counts and not args.no_threads_run:
        workers.insert(1, "1+threads")
    per_source = 100 if quick else args.documents_per_source
    repeat = 4 if quick else args.repeat
    rounds = 1 if quick else args.rounds
    load_start = load_average()
    monitor = CpuMonitor()
    seconds: dict[str, list[float]] = {w: [] for w in workers}
    found = os.environ.get("TOKENIZERS_PARALLELISM")
    runs: list[dict[str, Any]] = []
    reference: dict[str, str] | None = None
    identical, tokens_written = True, 0
    with tempfile.TemporaryDirectory(prefix="climb-export-parallel-") as tmp:
        root = Path(tmp)
        store, parts, weights = prepare(root, per_source, repeat)
        tokenizer = str(store.local_path("tokenizer/tokenizer.json"))  # type: ignore[attr-defined]
        index_dtype(32_000)  # megatron-core's import (torch) once, before any timed run
        for r in range(rounds):
            for w in workers[r % len(workers) :] + workers[: r % len(workers)]:
                ctx = ExportContext(
                    store=store, manifest_digest="bench", weights=weights, parts=parts,
                    granted_tokens=[1, 1, 1, 1], tokenizer=tokenizer, seed=0,
                    export_workers=int(w.split("+")[0]),
                )  # fmt: skip
                os.environ["TOKENIZERS_PARALLELISM"] = "true" if "threads" in w else "false"
                out = root / f"w{w}-r{r}"
                out.mkdir()
                run_monitor = CpuMonitor()
                start = time.perf_counter()
                summary = MegatronExport().write(ctx, out, lambda _: None)
                elapsed = time.perf_counter() - start
                cpu = run_monitor.stop()
                _restore("TOKENIZERS_PARALLELISM", found)
                seconds[w].append(elapsed)
                tokens_written = summary["tokens"]
                files = digests(out)
                reference = reference or files
                identical &= files == reference
                shutil.rmtree(out)
                runs.append({"round": r, "workers": w, "seconds": round(elapsed, 2),
                             "tokens_per_second": round(tokens_written / elapsed),
                             "identical_to_first": files == reference,
                             "own_cores": cpu["own_cores"],
                             "other_cores": cpu["other_cores"]})  # fmt: skip
                print(runs[-1], flush=True)
        where = breakdown(store, parts[0], tokenizer)
    cpu_all = monitor.stop()
    load_end = load_average()
    tps = {w: tokens_written / median(s) for w, s in seconds.items()}
    ratios = {w: round(tps[w] / tps["1"], 3) for w in workers} if "1" in tps else {}
    threaded = (
        {w: round(tps[w] / tps["1+threads"], 3) for w in workers} if "1+threads" in tps else {}
    )
    contended = bool(
        (load_start and load_start[0] > HIGH_LOAD)
        or (cpu_all["other_cores"] or 0) > CONTENDED_CORES
    )
    two = ratios.get("2")
    result = {
        "description": __doc__.splitlines()[0],
        "documents_per_source": per_source,
        "repeat": repeat,
        "tokens": tokens_written,
        "vocab_size": 32_000,
        "usable_cpus": cpus,
        "workers": workers,
        "tokenizers_parallelism_found": found,
        "seconds": {w: [round(x, 2) for x in s] for w, s in seconds.items()},
        "tokens_per_second": {w: round(v) for w, v in tps.items()},
        "ratio_to_1_worker": ratios,
        "ratio_to_1_worker_with_rust_threads": threaded,
        "goal": f">= {GOAL}x the 1-worker tokens/s with 2 workers on 2 cores",
        "goal_met": bool(two is not None and two >= GOAL),
        "goal_met_against_rust_threads": bool(threaded.get("2", 0) >= GOAL),
        "outputs_identical": identical,
        "runs": runs,
        "breakdown": where,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "cpu": cpu_all,
        "contended": contended,
        "load_note": (
            "the load was high or other processes used the CPUs during the run: figures suspect"
            if contended
            else "quiet machine (load and other processes' CPU below the thresholds)"
        ),
        "summary": [
            {
                "what": "megatron export tokens/s, 2 worker processes (ratio to 1 in-process)",
                "ours": f"{tps.get('2', 0):,.0f} tokens/s",
                "baseline": f"1 worker, TOKENIZERS_PARALLELISM=false: {tps.get('1', 0):,.0f} "
                "tokens/s",
                "ratio": two,
            },
            {
                "what": "megatron export tokens/s, 2 worker processes (ratio to 1 in-process "
                "on the Rust tokenizer's threads)",
                "ours": f"{tps.get('2', 0):,.0f} tokens/s",
                "baseline": f"1 worker, encode_batch threads: {tps.get('1+threads', 0):,.0f} "
                "tokens/s",
                "ratio": threaded.get("2"),
            },
        ],
    }
    print(result["summary"], "identical:", identical, "breakdown:", where, flush=True)
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)

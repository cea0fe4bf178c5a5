"""k-means: FAISS (`fit_kmeans`) against scikit-learn, and the memory of chunked assignment.

Part 1, fit. The same float32 data (default N=200,000 rows, d=384) is clustered into K=1,000
clusters with the same number of Lloyd iterations (default 10) by

- `climb_assets.lib.kmeans.fit_kmeans(..., spherical=False, device="cpu",
  init="greedy_kmeans++")` (the default: greedy k-means++ seeding on a subsample of 32 rows per
  centroid, then Lloyd on all rows),
- `fit_kmeans(..., init="kmeans++")` (plain k-means++ on all rows),
- `sklearn.cluster.KMeans(n_clusters=K, init="k-means++", n_init=1, max_iter=ITER,
  algorithm="lloyd", tol=0, random_state=seed)`,
- `fit_kmeans(..., init="random")`,

run one after the other in this order in the same process (`--repeats` runs the triple again and
takes medians). `spherical=False` makes FAISS minimise the same objective as scikit-learn. The
inertia of every result is computed the same way: the sum of squared Euclidean distances of the
rows to their nearest centroid, found with `assign`. Timed is the whole call (FAISS:
`fit_kmeans`, including its k-means++ seeding and final assignment; scikit-learn: `KMeans.fit`,
including its k-means++ seeding and final labelling), as wall time and as this process's CPU
time (less sensitive to other processes on a shared machine). Both use every core (OpenMP/BLAS
threads). Given the same starting centroids the two run the same Lloyd iterations and reach the
same inertia, so an inertia gap comes from the seeding: scikit-learn's k-means++ is the greedy
variant (2 + ln K candidates per step) on all rows, `init="kmeans++"` the plain one and
`init="greedy_kmeans++"` the greedy one on a subsample.

Data: synthetic but clustered, like sentence embeddings. `--centres` (default 2,000) centres are
drawn from a standard normal in d dimensions and scaled to unit length; cluster sizes follow a
log-normal weight (a few large clusters, many small ones); each row is its centre plus Gaussian
noise of expected norm `--noise` (default 0.7), then scaled to unit length. Everything is seeded.

Part 2, memory. A shard of 1,000,000 x 384 float32 rows (1.5 GB, same generator) is written as
`.npy` to a temporary folder. A fresh subprocess runs `assign(np.load(path, mmap_mode="r"),
centroids, chunk_size=65536)` with the K centroids of the FAISS k-means++ fit, and another loads
the whole array into memory and assigns it in one chunk. Each reports its peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), the peak of its anonymous (non file-backed)
resident memory sampled from `/proc/self/status`, and its seconds. Note that pages of a memory map
that have been read count towards RSS until the kernel reclaims them, so the chunked run's
ru_maxrss can grow towards the file size even though only one chunk is held in private memory;
the anonymous peak is what the process really needs. The file is in the page cache for both runs
(it was just written). The temporary folder is deleted afterwards.

Run: `.venv/bin/python -m bench.kmeans [--n 200000] [--k 1000] [--iters 10] [--shard-rows 1000000]`.
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
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CONTENDED_CORES,
    HIGH_LOAD,
    QUICK_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    CpuMonitor,
    add_run_options,
    gpu_name,
    gpu_peaks,
    load_average,
    machine_info,
    median,
    process_cpu_seconds,
    time_it,
    utilization,
    wait_for_quiet,
    write_gpu_result,
    write_result,
)

NAME = "kmeans"
MB = 1024.0 * 1024.0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def make_centres(n_centres: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length Gaussian centres and their log-normal mixing weights (summing to 1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = np.exp(rng.standard_normal(n_centres))
    return centres, weights / weights.sum()


def fill_points(
    out: np.ndarray,
    centres: np.ndarray,
    weights: np.ndarray,
    seed: int,
    noise: float = 0.7,
    chunk: int = 100_000,
) -> np.ndarray:
    """Fills `out` (n x d float32, may be a memory map) with unit-length rows around `centres`.

    Each row is a centre drawn with probability `weights` plus Gaussian noise of expected norm
    `noise`, scaled to unit length. Written in chunks so memory stays small.
    """
    rng = np.random.default_rng(seed)
    n, d = out.shape
    sigma = np.float32(noise / np.sqrt(d))
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.choice(len(centres), size=m, p=weights)
        x = centres[labels] + sigma * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


# --------------------------------------------------------------------------------------------
# Part 1: fit
# --------------------------------------------------------------------------------------------


def inertia_of(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of the rows of `x` to their nearest centroid (via `assign`)."""
    from climb_assets.lib.kmeans import assign

    _, dist = assign(x, np.ascontiguousarray(centroids, dtype=np.float32))
    return float(np.square(dist, dtype=np.float64).sum())


def fit_faiss(x: np.ndarray, k: int, iters: int, seed: int, init: str) -> dict[str, Any]:
    """Times `fit_kmeans` (Euclidean, CPU) and measures the inertia of its centroids."""
    from climb_assets.lib.kmeans import fit_kmeans

    fit, seconds = time_it(
        fit_kmeans, x, k, niter=iters, seed=seed, spherical=False, device="cpu", init=init
    )
    return {
        "seconds": seconds,
        "seconds_fit_only": fit.seconds,
        "inertia": inertia_of(x, fit.centroids),
        "inertia_reported": fit.inertia,
        "iterations": len(fit.objective),
        "objective_per_iteration": fit.objective,
        "centroids": fit.centroids,
    }


def fit_sklearn(x: np.ndarray, k: int, iters: int, seed: int) -> dict[str, Any]:
    """Times scikit-learn's Lloyd `KMeans.fit` and measures the inertia of its centroids."""
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=k,
        init="k-means++",
        n_init=1,
        max_iter=iters,
        algorithm="lloyd",
        tol=0,
        random_state=seed,
    )
    _, seconds = time_it(km.fit, x)
    return {
        "seconds": seconds,
        "inertia": inertia_of(x, km.cluster_centers_),
        "inertia_reported": float(km.inertia_),
        "iterations": int(km.n_iter_),
        "centroids": np.asarray(km.cluster_centers_, dtype=np.float32),
    }


def _thread_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info

        return [
            {k: v for k, v in pool.items() if k in ("user_api", "internal_api", "num_threads")}
            for pool in threadpool_info()
        ]
    except ImportError:  # pragma: no cover
        return []


def run_fit(
    n: int, d: int, k: int, iters: int, seed: int, n_centres: int, noise: float, repeats: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Part 1. Returns the record and the centroids of the (last) FAISS k-means++ fit."""
    import faiss
    import sklearn.cluster  # noqa: F401  (loads its OpenMP runtime so threadpoolctl sees it)

    centres, weights = make_centres(n_centres, d, seed)
    x, gen_s = time_it(
        fill_points, np.empty((n, d), dtype=np.float32), centres, weights, seed + 1, noise
    )
    print(f"data: {n} x {d} float32 in {gen_s:.1f} s", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {
        "faiss_greedy_kmeans++": [],
        "faiss_kmeans++": [],
        "sklearn": [],
        "faiss_random": [],
    }
    centroids = np.zeros((k, d), dtype=np.float32)
    for r in range(repeats):
        for label in runs:
            monitor = CpuMonitor()
            cpu = process_cpu_seconds()
            if label == "sklearn":
                out = fit_sklearn(x, k, iters, seed)
            else:
                out = fit_faiss(x, k, iters, seed, init=label.split("_", 1)[1])
            out["cpu_seconds"] = process_cpu_seconds() - cpu
            out["other_cores"] = monitor.stop()["other_cores"]
            if label == "faiss_kmeans++":
                centroids = out["centroids"]
            del out["centroids"]
            runs[label].append(out)
            print(
                f"[{r + 1}/{repeats}] {label}: {out['seconds']:.1f} s "
                f"({out['cpu_seconds']:.1f} CPU s), "
                f"inertia {out['inertia']:.1f} (other processes: {out['other_cores']} cores)",
                flush=True,
            )

    def med(label: str, key: str) -> float:
        return median([run[key] for run in runs[label]])

    sk_s, sk_i = med("sklearn", "seconds"), med("sklearn", "inertia")
    sk_cpu = med("sklearn", "cpu_seconds")
    record: dict[str, Any] = {
        "params": {
            "n": n,
            "d": d,
            "k": k,
            "iters": iters,
            "seed": seed,
            "data_centres": n_centres,
            "data_noise_norm": noise,
            "repeats": repeats,
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "thread_pools": _thread_info(),
            "data_seconds": gen_s,
        },
        "runs": runs,
        "sklearn": {"seconds": sk_s, "cpu_seconds": sk_cpu, "inertia": sk_i},
    }
    for init in ("greedy_kmeans++", "kmeans++", "random"):
        label = f"faiss_{init}"
        f_s, f_i = med(label, "seconds"), med(label, "inertia")
        f_cpu = med(label, "cpu_seconds")
        record[label] = {
            "seconds": f_s,
            "cpu_seconds": f_cpu,
            "inertia": f_i,
            "time_ratio_sklearn_over_faiss": sk_s / f_s,
            "cpu_time_ratio_sklearn_over_faiss": sk_cpu / f_cpu,
            "inertia_ratio_faiss_over_sklearn": f_i / sk_i,
        }
    return record, centroids


# --------------------------------------------------------------------------------------------
# Part 2: memory of chunked assignment
# --------------------------------------------------------------------------------------------


def _status_kb(fields: Sequence[str]) -> dict[str, int]:
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in fields:
                values[name] = int(rest.split()[0])
    return values


def _assign_child(argv: Sequence[str]) -> None:
    """Body of the memory subprocess: `MODE PATH CENTROIDS CHUNK`; prints one JSON line.

    MODE `mmap` memory-maps the shard and assigns it in chunks of CHUNK rows; MODE `full` loads
    the whole shard into memory and assigns it in one chunk.
    """
    mode, path, centroids_path, chunk = argv[0], argv[1], argv[2], int(argv[3])
    from climb_assets.lib.kmeans import assign

    centroids = np.load(centroids_path)
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    can_sample = os.path.exists("/proc/self/status")
    peaks = dict.fromkeys(fields, 0)
    stop = threading.Event()

    def sample() -> None:
        while True:
            for key, value in _status_kb(fields).items():
                peaks[key] = max(peaks[key], value)
            if stop.wait(0.005):
                return

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = threading.Thread(target=sample, daemon=True)
    if can_sample:
        sampler.start()
    start = time.perf_counter()
    x = np.load(path, mmap_mode="r") if mode == "mmap" else np.load(path)
    loaded = time.perf_counter()
    ids, dist = assign(x, centroids, chunk_size=chunk if mode == "mmap" else max(1, x.shape[0]))
    done = time.perf_counter()
    stop.set()
    if can_sample:
        sampler.join()
        for key, value in _status_kb(fields).items():
            peaks[key] = max(peaks[key], value)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "mode": mode,
                "rows": int(x.shape[0]),
                "chunk_size": chunk if mode == "mmap" else int(x.shape[0]),
                "rss_before_mb": before / 1024.0,
                "peak_rss_mb": peak / 1024.0,
                "vm_hwm_mb": peaks["VmHWM"] / 1024.0 if can_sample else None,
                "peak_rss_anon_mb": peaks["RssAnon"] / 1024.0 if can_sample else None,
                "peak_rss_file_mb": peaks["RssFile"] / 1024.0 if can_sample else None,
                "seconds_load": loaded - start,
                "seconds_assign": done - loaded,
                "seconds": done - start,
                "ids_checksum": int(ids.astype(np.int64).sum()),
                "mean_distance": float(dist.mean(dtype=np.float64)),
            }
        )
    )


# The subprocess forks once more and does the work in the grandchild. Linux carries the peak RSS
# of the spawning process's memory over an exec (ru_maxrss of a fresh child starts at the RSS of
# the parent that forked it, hundreds of MB here), but a fork of the small fresh interpreter starts
# its own count, so the grandchild's ru_maxrss is its own peak.
_LAUNCHER = """
import os, sys, traceback
pid = os.fork()
if pid == 0:
    try:
        from bench.kmeans import _assign_child
        _assign_child(sys.argv[1:])
        sys.stdout.flush()
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_child(mode: str, path: Path, centroids_path: Path, chunk: int) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, mode, str(path), str(centroids_path), str(chunk)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"assign subprocess ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory(
    centroids: np.ndarray, rows: int, chunk: int, seed: int, n_centres: int, noise: float
) -> dict[str, Any]:
    """Part 2: chunked memory-mapped assignment against a one-chunk in-memory assignment."""
    d = centroids.shape[1]
    centres, weights = make_centres(n_centres, d, seed)
    tmp = Path(tempfile.mkdtemp(prefix="climb-bench-kmeans-"))
    try:
        path = tmp / "shard.npy"
        centroids_path = tmp / "centroids.npy"
        np.save(centroids_path, np.ascontiguousarray(centroids, dtype=np.float32))
        start = time.perf_counter()
        shard = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
        fill_points(shard, centres, weights, seed + 2, noise)
        shard.flush()
        del shard
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / MB
        print(f"shard: {rows} x {d} float32, {size_mb:.0f} MB in {write_s:.1f} s", flush=True)
        monitor = CpuMonitor()
        chunked = _run_child("mmap", path, centroids_path, chunk)
        chunked["other_cores"] = monitor.stop()["other_cores"]
        print(f"chunked mmap: {json.dumps(chunked)}", flush=True)
        monitor = CpuMonitor()
        full = _run_child("full", path, centroids_path, chunk)
        full["other_cores"] = monitor.stop()["other_cores"]
        print(f"full in memory: {json.dumps(full)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "params": {
            "rows": rows,
            "d": d,
            "k": int(centroids.shape[0]),
            "chunk_size": chunk,
            "file_mb": size_mb,
            "write_seconds": write_s,
        },
        "chunked_mmap": chunked,
        "full_in_memory": full,
        "same_assignments": chunked["ids_checksum"] == full["ids_checksum"]
        and abs(chunked["mean_distance"] - full["mean_distance"]) < 1e-5,
        "peak_rss_ratio_chunked_over_full": chunked["peak_rss_mb"] / full["peak_rss_mb"],
        "peak_anon_ratio_chunked_over_full": (
            chunked["peak_rss_anon_mb"] / full["peak_rss_anon_mb"]
            if chunked["peak_rss_anon_mb"] and full["peak_rss_anon_mb"]
            else None
        ),
    }


def run_gpu_fit(
    n: int, d: int, k: int, iters: int, seed: int, n_centres: int, noise: float
) -> dict[str, Any] | None:
    """FAISS k-means on the GPU (init random: Lloyd iterations only) on the part 1 data.

    `seconds` times FAISS's training alone (`KMeansFit.seconds`, no final assignment), after one
    warm-up fit. Returns None when FAISS has no GPU support (faiss-cpu).
    """
    from climb_assets.lib.kmeans import fit_kmeans, gpu_count

    if gpu_count() == 0:
        print("torch sees a GPU but FAISS does not (faiss-cpu): no GPU k-means figures", flush=True)
        return None
    centres, weights = make_centres(n_centres, d, seed)
    x = fill_points(np.empty((n, d), dtype=np.float32), centres, weights, seed + 1, noise)
    fit_kmeans(x, k, niter=1, seed=seed, spherical=False, device="cuda", init="random")
    fit = fit_kmeans(x, k, niter=iters, seed=seed, spherical=False, device="cuda", init="random")
    name = gpu_name() or "cuda"
    flops = 2.0 * n * k * d * iters / fit.seconds
    util = utilization(flops, gpu_peaks(name)[1])
    size = f"N={n:,} d={d} K={k:,}, {iters} iters"
    return {
        "device": name,
        "n": n,
        "d": d,
        "k": k,
        "iters": iters,
        "init": "random",
        "seconds": fit.seconds,
        "flops_per_s": flops,
        "utilization_fp32": util,
        "inertia": fit.inertia,
        "summary": [
            {
                "what": f"k-means fit seconds on {name}, {size}; FAISS GPU init=random; ratio = "
                "share of the FP32 peak",
                "ours": f"{fit.seconds:.2f} s",
                "baseline": "",
                "ratio": "" if util is None else f"{util:.3f}",
            }
        ],
    }


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _summary(fit: dict[str, Any], memory: dict[str, Any] | None) -> list[dict[str, str]]:
    p = fit["params"]
    size = f"N={p['n']:,} d={p['d']} K={p['k']:,}, {p['iters']} iters"
    sk = fit["sklearn"]
    rows = []
    for init in ("greedy_kmeans++", "kmeans++", "random"):
        f = fit[f"faiss_{init}"]
        rows.append(
            {
                "what": f"k-means fit seconds, {size}; FAISS init={init} vs sklearn k-means++ "
                "(ratio sklearn/FAISS)",
                "ours": f"{f['seconds']:.1f} s ({f['cpu_seconds']:.0f} CPU s)",
                "baseline": f"{sk['seconds']:.1f} s ({sk['cpu_seconds']:.0f} CPU s, sklearn)",
                "ratio": f"{f['time_ratio_sklearn_over_faiss']:.2f} "
                f"(CPU {f['cpu_time_ratio_sklearn_over_faiss']:.2f})",
            }
        )
        rows.append(
            {
                "what": f"k-means inertia, {size}; FAISS init={init} vs sklearn "
                "(ratio FAISS/sklearn)",
                "ours": f"{f['inertia']:,.1f}",
                "baseline": f"{sk['inertia']:,.1f} (sklearn)",
                "ratio": f"{f['inertia_ratio_faiss_over_sklearn']:.4f}",
            }
        )
    if memory is not None:
        mp, c, full = memory["params"], memory["chunked_mmap"], memory["full_in_memory"]
        anon = (
            f", anon {c['peak_rss_anon_mb']:,.0f} MB" if c["peak_rss_anon_mb"] is not None else ""
        )
        rows.append(
            {
                "what": f"peak RSS of assign, {mp['rows']:,} x {mp['d']} shard "
                f"({mp['file_mb']:,.0f} MB), K={mp['k']:,}: mmap + chunks of "
                f"{mp['chunk_size']:,} vs full load, one chunk (ratio chunked/full)",
                "ours": f"{c['peak_rss_mb']:,.0f} MB{anon}, {c['seconds']:.1f} s",
                "baseline": f"{full['peak_rss_mb']:,.0f} MB, {full['seconds']:.1f} s",
                "ratio": f"{memory['peak_rss_ratio_chunked_over_full']:.2f}",
            }
        )
    return rows


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/kmeans.json`.

    Where torch sees a GPU, it also adds GPU figures to `bench/results/gpu-<name>.json`.

    Args:
        argv: Command-line arguments (defaults to `sys.argv[1:]`).
        quick: Shrink the sizes for a smoke run (used by `bench.run_all --quick`); the result
            goes to `bench/results/quick/` so the full figures are kept.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="rows to cluster (default 200,000)")
    parser.add_argument("--d", type=int, default=384, help="dimensions")
    parser.add_argument("--k", type=int, help="clusters (default 1,000)")
    parser.add_argument("--iters", type=int, help="Lloyd iterations (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--centres", type=int, default=2000, help="true centres of the data")
    parser.add_argument("--noise", type=float, default=0.7, help="noise norm around a centre")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each fit (medians)")
    parser.add_argument("--shard-rows", type=int, help="rows of the memory test shard (1,000,000)")
    parser.add_argument("--chunk-size", type=int, default=65536)
    parser.add_argument("--skip-memory", action="store_true", help="leave out part 2")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    n = args.n or (20_000 if quick else 200_000)
    k = args.k or (100 if quick else 1000)
    iters = args.iters or (5 if quick else 10)
    shard_rows = args.shard_rows or (100_000 if quick else 1_000_000)

    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine = machine_info()
    load = load_average()
    monitor = CpuMonitor()
    start = time.perf_counter()
    fit, centroids = run_fit(
        n, args.d, k, iters, args.seed, args.centres, args.noise, max(1, args.repeats)
    )
    memory = None
    if not args.skip_memory:
        memory = run_memory(
            centroids, shard_rows, args.chunk_size, args.seed, args.centres, args.noise
        )
    result = {
        "description": (
            "FAISS fit_kmeans (Euclidean, init greedy_kmeans++, kmeans++ and random) vs "
            "scikit-learn Lloyd KMeans "
            "(k-means++, n_init=1, tol=0) on the same clustered synthetic data and iterations; "
            "inertia recomputed with assign for all; peak memory of chunked mmap assignment vs "
            "a full in-memory load, each in a fresh subprocess"
        ),
        "fit": fit,
        "memory": memory,
        "summary": _summary(fit, memory),
        "total_seconds": time.perf_counter() - start,
        "cpu": monitor.stop(),
        "load_average_start": load,
        "load_average_end": load_average(),
        "high_load_at_start": bool(load and load[0] > HIGH_LOAD),
        "machine": machine,
    }
    per_run = [run["other_cores"] for runs in fit["runs"].values() for run in runs]
    if memory is not None:
        per_run += [memory["chunked_mmap"]["other_cores"], memory["full_in_memory"]["other_cores"]]
    result["contended"] = result["high_load_at_start"] or any(
        (v or 0.0) > CONTENDED_CORES for v in [result["cpu"]["other_cores"], *per_run]
    )
    write_result(NAME, result, QUICK_DIR if quick else RESULTS_DIR)
    if gpu_name():
        gpu = run_gpu_fit(n, args.d, k, iters, args.seed, args.centres, args.noise)
        if gpu is not None:
            write_gpu_result("kmeans", gpu, QUICK_DIR if quick else RESULTS_DIR)
    for row in result["summary"]:
        print(f"{row['what']}: {row['ours']} vs {row['baseline']} -> {row['ratio']}")
    return result


if __name__ == "__main__":
    main()

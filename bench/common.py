"""Shared helpers of the benchmarks: timing, machine info, result files and the README table.

Every benchmark writes one JSON file, `bench/results/<name>.json`, holding its parameters, the raw
measurements, a `summary` (rows for the README table) and a `machine` block (CPU count, load
average, library versions, git commit). `update_readme` renders all result files into a markdown
table and puts it between the `<!-- bench:start -->` and `<!-- bench:end -->` markers of the
repository's README.md. Where torch sees a GPU, the benchmarks also add their GPU figures to
`bench/results/gpu-<name>.json` (`write_gpu_result`), which `climb plan` prefers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Smoke runs (`--quick`) write here, so they never replace the full figures in RESULTS_DIR.
QUICK_DIR = RESULTS_DIR / "quick"
README = REPO_ROOT / "README.md"
START_MARKER = "<!-- bench:start -->"
END_MARKER = "<!-- bench:end -->"
# A 1-minute load average above this when a benchmark starts means something else was running.
HIGH_LOAD = 1.5

T = TypeVar("T")


def time_it(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """Calls `fn(*args, **kwargs)` once.

    Returns:
        The call's result and its wall-clock duration in seconds (`time.perf_counter`).
    """
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence of numbers."""
    return float(statistics.median(values))


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (empty where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return []


def _machine_busy_seconds() -> tuple[float, float] | None:
    """Busy and stolen CPU seconds of the whole machine since boot, from `/proc/stat`."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = float(os.sysconf("SC_CLK_TCK"))
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]  # user nice system irq softirq
    steal = ticks[7] if len(ticks) > 7 else 0
    return busy / hz, steal / hz


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def process_cpu_seconds() -> float:
    """CPU seconds (user + system, all threads) this process has used so far.

    Less sensitive to other processes than wall time: time spent waiting for a core does not
    count (OpenMP threads that spin while waiting do).
    """
    t = os.times()
    return t.user + t.system


class CpuMonitor:
    """How much CPU other processes used while a benchmark ran (a contention check).

    The machine's busy CPU time (from `/proc/stat`) minus this process's own CPU time and that of
    its finished subprocesses, divided by the wall time: the average number of cores that
    something else kept busy. Near 0 on a quiet machine; on 2 cores, 0.5 or more means the
    figures are suspect.
    """

    def __init__(self) -> None:
        self.start_wall = time.perf_counter()
        self.start_machine = _machine_busy_seconds()
        self.start_own = _own_cpu_seconds()

    def stop(self) -> dict[str, float | None]:
        """Averages since construction, in cores (CPU seconds per wall second)."""
        wall = max(time.perf_counter() - self.start_wall, 1e-9)
        own = (_own_cpu_seconds() - self.start_own) / wall
        end = _machine_busy_seconds()
        if end is None or self.start_machine is None:
            return {"wall_s": wall, "own_cores": own, "other_cores": None, "steal_cores": None}
        busy = (end[0] - self.start_machine[0]) / wall
        return {
            "wall_s": round(wall, 2),
            "own_cores": round(own, 3),
            "machine_busy_cores": round(busy, 3),
            "other_cores": round(max(busy - own, 0.0), 3),
            "steal_cores": round((end[1] - self.start_machine[1]) / wall, 3),
        }


# Average cores kept busy by other processes above which a run counts as contended.
CONTENDED_CORES = 0.3


def wait_for_quiet(
    max_load: float = HIGH_LOAD,
    timeout_s: float = 0.0,
    poll_s: float = 15.0,
    max_other_cores: float = CONTENDED_CORES,
) -> float:
    """Waits, for at most `timeout_s`, until the machine looks quiet.

    Quiet means a 1-minute load average of at most `max_load` and, over the last `poll_s`
    seconds, at most `max_other_cores` cores kept busy by other processes (the load average
    lags by a minute; the CPU counters do not).

    Returns:
        The 1-minute load average when the wait ended (it may still be high after a timeout).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        monitor = CpuMonitor()
        time.sleep(poll_s)
        other = monitor.stop()["other_cores"] or 0.0
        load = (load_average()[:1] or [0.0])[0]
        if (load <= max_load and other <= max_other_cores) or time.monotonic() >= deadline:
            return load
        print(
            f"load average {load:.2f} (max {max_load}), other processes {other:.2f} cores "
            f"(max {max_other_cores}); waiting for a quieter machine",
            flush=True,
        )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The commit checked out in `repo`, read from `.git` directly (no git process), or None."""
    git = repo / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (repo / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
        for base in dict.fromkeys((git, common)):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    """CPU count, load average, platform, library versions, timestamp and git commit."""
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": load_average(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
        "numpy": _version("numpy"),
        "scikit_learn": _version("scikit-learn"),
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "git_commit": git_commit(),
    }


def write_result(name: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Writes `payload` plus a `machine` block to `<results_dir>/<name>.json` atomically.

    The file is written to a temporary name in the same folder and renamed over the target, so a
    reader never sees half a file.

    Returns:
        The path of the result file.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, **payload}
    record.setdefault("machine", machine_info())
    path = results_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=results_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}", flush=True)
    return path


def finish_result(
    name: str,
    result: dict[str, Any],
    monitor: CpuMonitor,
    load: list[float],
    machine: dict[str, Any],
    quick: bool,
) -> dict[str, Any]:
    """Adds the run's CPU use, load and machine to `result`, writes it (the quick folder when
    `quick`) and prints its summary rows; returns it."""
    result.update(
        cpu=monitor.stop(),
        load_average_start=load,
        load_average_end=load_average(),
        high_load_at_start=bool(load and load[0] > HIGH_LOAD),
        machine=machine,
    )
    write_result(name, result, QUICK_DIR if quick else RESULTS_DIR)
    for row in result.get("summary", []):
        print(f"{row['what']}: {row['ours']} vs {row['baseline']} -> {row['ratio']}")
    return result


def gpu_name() -> str | None:
    """The name of CUDA device 0 when torch sees a GPU, else None."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_peaks(name: str) -> tuple[float | None, float | None]:
    """Dense peak FLOP/s (16-bit tensor, FP32) of a GPU by name; (None, None) when unknown."""
    from climb_assets.lib.planner import peak_flops

    peaks = peak_flops(name)
    return (peaks[1], peaks[2]) if peaks else (None, None)


def utilization(flops_per_s: float, peak: float | None) -> float | None:
    """Achieved over peak FLOP/s (model FLOP utilization), None when the peak is unknown."""
    return round(flops_per_s / peak, 4) if peak else None


def write_gpu_result(
    section: str, payload: dict[str, Any], results_dir: Path = RESULTS_DIR
) -> Path:
    """Adds `payload` as `section` (embedding, kmeans, proxy) to `gpu-<name>.json`.

    One file per GPU model, shared by the benchmarks: the other sections are kept, the `gpu` and
    `machine` blocks refreshed and `summary` rebuilt from every section's own `summary` rows.
    """
    name = gpu_name() or "unknown"
    slug = "gpu-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    path = results_dir / f"{slug}.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    bf16, fp32 = gpu_peaks(name)
    record["gpu"] = {"name": name, "peak_bf16_flops": bf16, "peak_fp32_flops": fp32}
    record[section] = payload
    record["summary"] = [
        row
        for key in ("embedding", "kmeans", "proxy")
        for row in record.get(key, {}).get("summary", [])
    ]
    record["machine"] = machine_info()
    return write_result(slug, record, results_dir)


def load_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """All result files under `results_dir`, sorted by name (unreadable files are skipped)."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
    return results


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def render_table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one row per `summary` row of every result.

    Each summary row has `what` (the comparison), `ours` and `baseline` (the two figures, with
    units) and `ratio` (how the two compare, spelled out in `what`).
    """
    lines = [
        "| Benchmark | Comparison | Ours | Baseline | Ratio | Machine |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        machine = result.get("machine", {})
        load = (result.get("load_average_start") or machine.get("load_average") or ["?"])[0]
        other = (result.get("cpu") or {}).get("other_cores")
        where = (
            f"{machine.get('cpu_count', '?')} CPU, load {_cell(load)}"
            + (f", others {other:.2f} cores" if other is not None else "")
            + f", {str(machine.get('timestamp', ''))[:10]}"
        )
        for row in result.get("summary", []):
            lines.append(
                "| "
                + " | ".join(
                    _cell(v)
                    for v in (
                        result.get("benchmark"),
                        row.get("what"),
                        row.get("ours"),
                        row.get("baseline"),
                        row.get("ratio"),
                        where,
                    )
                )
                + " |"
            )
    return "\n".join(lines)


def update_readme(readme: Path = README, results_dir: Path = RESULTS_DIR) -> str:
    """Renders all results and replaces the block between the bench markers of `readme`.

    When `readme` lacks either marker it is left alone and the table is printed instead.

    Returns:
        The rendered table.
    """
    table = render_table(load_results(results_dir))
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start == -1 or end == -1 or end < start:
        print(f"{readme} has no {START_MARKER} ... {END_MARKER} block; the table:\n")
        print(table)
        return table
    head = text[: start + len(START_MARKER)]
    new = f"{head}\n{table}\n{text[end:]}"
    if new != text:
        fd, tmp = tempfile.mkstemp(prefix=".README.", suffix=".tmp", dir=readme.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        shutil.copymode(readme, tmp)
        os.replace(tmp, readme)
        print(f"updated the benchmark table in {readme}")
    return table


if __name__ == "__main__":
    update_readme()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: --quick and --wait-quiet."""
    parser.add_argument("--quick", action="store_true", help="small sizes, result to results/quick")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"wait up to this long for the 1-min load average to drop to {HIGH_LOAD} first",
    )

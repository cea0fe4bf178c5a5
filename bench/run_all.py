"""Runs every benchmark, then refreshes the benchmark table of the repository's README.md.

Run: `.venv/bin/python -m bench.run_all [--quick] [--only embedding kmeans] [--wait-quiet S]`.
`--quick` shrinks every size for a smoke run; its results go to `bench/results/quick/` and the
README is left alone (the quick table is printed instead).
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence

from bench.common import HIGH_LOAD, QUICK_DIR, render_table, update_readme, wait_for_quiet
from bench.common import load_results as _load_results

BENCHMARKS: tuple[str, ...] = (
    "embedding",
    "kmeans",
    "proxy_overhead",
    "ingestion",
    "megatron_export",
    "export_parallel",
    "static_encoder",
    "scale",
    "search_quality",
    "reference_mixtures",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected benchmarks' `main()` one after the other and renders the table.

    Returns:
        The process exit status (0).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"before each benchmark, wait up to this long for the load to drop to {HIGH_LOAD}",
    )
    args = parser.parse_args(argv)
    for name in args.only or BENCHMARKS:
        if args.wait_quiet:
            wait_for_quiet(timeout_s=args.wait_quiet)
        print(f"== bench.{name}{' (quick)' if args.quick else ''}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        start = time.perf_counter()
        module.main([], quick=args.quick)
        print(f"== bench.{name} done in {time.perf_counter() - start:.0f} s\n", flush=True)
    if args.quick:
        print(render_table(_load_results(QUICK_DIR)))
    else:
        update_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

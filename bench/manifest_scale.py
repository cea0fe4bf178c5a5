"""The manifest and its exports at growing selections of one corpus: seconds and peak RSS.

`bench.scale` measures every step at growing corpora, but the demo's search asks its manifest
for 300k tokens, so the selection stays a few thousand rows at any corpus size. Here the corpus
is fixed (a store `bench.scale --workdir DIR` left: `DIR/n1000000`, with its profile) and
`manifest.total_tokens` grows (`--tokens`, the demo's repetition cap): the selection grows from
thousands of rows to a million and more. Each run is `climb run --only climbmix_manifest`
(then `--only climbmix_exports`) in a process of its own, with this checkout's code and, back
to back on the same store, with the code of `--compare` (a commit, checked out in a temporary
worktree), so the two are measured side by side in one run.

Goal (issue 20): memory bounded by a batch, never by the selection: the manifest's peak flat
(within 20%) from the smallest selection to the largest. Run:
`.venv/bin/python -m bench.manifest_scale --store DIR/n1000000 [--tokens 1e6 1e7 1e8]
[--compare c5d3636] [--no-exports]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from bench.common import (
    CpuMonitor,
    add_run_options,
    finish_result,
    load_average,
    machine_info,
    wait_for_quiet,
)
from bench.scale import FLAT_SHARE, run_stage

NAME = "manifest_scale"
REPO = Path(__file__).resolve().parents[1]


def _profile_with_tokens(store: Path, tokens: int) -> Path:
    """The store's profile with `manifest.total_tokens` set."""
    profile = yaml.safe_load((store / "profile.yaml").read_text())
    profile.setdefault("manifest", {})["total_tokens"] = int(tokens)
    path = store / f"profile-tokens-{int(tokens)}.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


def _manifest_figures(store: Path) -> dict[str, Any]:
    doc = json.loads((store / "out" / "manifest" / "climbmix.json").read_text())
    return {
        "selected_rows": doc["documents"],
        "validation_documents": doc["validation"]["documents"],
        "granted_tokens": doc["total_tokens"]["granted"],
        "shortfall": doc["total_tokens"]["shortfall"],
        "manifest_digest": doc["manifest_digest"],
    }


def measure(
    store: Path, tokens: list[int], codes: dict[str, Path | None], exports: bool
) -> list[dict[str, Any]]:
    """Every (tokens, code) pair: the manifest's and (ours only) the exports' cost."""
    log = store / "manifest_scale.log"
    rows = []
    for n in tokens:
        profile = _profile_with_tokens(store, n)
        for name, code in codes.items():
            row: dict[str, Any] = {"total_tokens": n, "code": name}
            row["manifest"] = run_stage(profile, store / ".dagster", "climbmix_manifest", log, code)
            row.update(_manifest_figures(store))
            if exports and code is None:
                shutil.rmtree(store / "out" / "exports", ignore_errors=True)
                row["exports"] = run_stage(profile, store / ".dagster", "climbmix_exports", log)
            rows.append(row)
            print(
                f"  tokens {n:,} {name}: {row['selected_rows']:,} rows, manifest "
                f"{row['manifest']['seconds']:.1f} s {row['manifest']['peak_rss_mb']:.0f} MB"
                + (
                    f"; exports {row['exports']['seconds']:.1f} s "
                    f"{row['exports']['peak_rss_mb']:.0f} MB"
                    if "exports" in row
                    else ""
                ),
                flush=True,
            )
    shutil.rmtree(store / "out" / "exports", ignore_errors=True)
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Flatness of each code's manifest peak (and ours' exports) over the selections."""
    met: dict[str, Any] = {}
    for code in dict.fromkeys(r["code"] for r in rows):
        mine = sorted((r for r in rows if r["code"] == code), key=lambda r: r["selected_rows"])
        for step in ("manifest", "exports"):
            have = [r for r in mine if step in r]
            if len(have) < 2:
                continue
            lo, hi = have[0][step]["peak_rss_mb"], have[-1][step]["peak_rss_mb"]
            met[f"{code}_{step}_peak_growth"] = round(hi / lo, 3)
            met[f"{code}_{step}_peak_flat_within_20pct"] = hi <= lo * (1 + FLAT_SHARE)
            rows_added = have[-1]["selected_rows"] - have[0]["selected_rows"]
            met[f"{code}_{step}_mb_per_million_rows"] = (
                round((hi - lo) / rows_added * 1e6, 1) if rows_added else None
            )
    return met


def summary_rows(
    rows: list[dict[str, Any]], met: dict[str, Any], documents: int
) -> list[dict[str, str]]:
    """README rows: the largest selection's manifest peak, ours against the compared code."""
    ours = max((r for r in rows if r["code"] == "ours"), key=lambda r: r["selected_rows"])
    old = next(
        (r for r in rows if r["code"] != "ours" and r["total_tokens"] == ours["total_tokens"]),
        None,
    )
    smallest = min(r["selected_rows"] for r in rows if r["code"] == "ours")

    def peak(row: dict[str, Any]) -> str:
        growth = met.get(f"{row['code']}_manifest_peak_growth", "n/a")
        return f"{row['manifest']['peak_rss_mb']:,.0f} MB ({growth}x)"

    return [
        {
            "what": f"climbmix_manifest selecting {ours['selected_rows']:,} rows of a "
            f"{documents:,}-document corpus: peak RSS (its growth from {smallest:,} rows)",
            "ours": peak(ours),
            "baseline": f"{peak(old)}, {old['code']}" if old else "n/a",
            "ratio": (
                f"{old['manifest']['peak_rss_mb'] / ours['manifest']['peak_rss_mb']:.2f}x"
                if old
                else ""
            ),
        }
    ]


def main(argv: Sequence[str] | None = None, quick: bool = False) -> dict[str, Any]:
    """Command-line entry point; writes `bench/results/manifest_scale.json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a bench.scale run folder (n<size>)")
    parser.add_argument("--tokens", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--compare", help="also run this commit's code, side by side")
    parser.add_argument("--no-exports", action="store_true", help="time the manifest only")
    add_run_options(parser)
    args = parser.parse_args(argv)
    quick = quick or args.quick
    store = Path(args.store).resolve()
    if not (store / "profile.yaml").exists():
        parser.error(f"{store} has no profile.yaml: pass a folder `bench.scale --workdir` made")
    if args.wait_quiet:
        wait_for_quiet(timeout_s=args.wait_quiet)
    machine, load, monitor = machine_info(), load_average(), CpuMonitor()
    tokens = [int(t) for t in args.tokens]
    with tempfile.TemporaryDirectory(prefix="climb-bench-manifest-") as tmp:
        codes: dict[str, Path | None] = {"ours": None}
        if args.compare:
            worktree = Path(tmp) / "compare"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(worktree),
                 args.compare], check=True,
            )  # fmt: skip
            codes[args.compare] = worktree
        try:
            rows = measure(store, tokens, codes, exports=not args.no_exports)
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(worktree)], check=False)  # fmt: skip
        # Leave the store's manifest as its own profile builds it (ours).
        run_stage(store / "profile.yaml", store / ".dagster", "climbmix_manifest",
                  store / "manifest_scale.log")  # fmt: skip
    met = goals(rows)
    documents = sum(pq.read_metadata(p).num_rows for p in (store / "corpus").glob("*.parquet"))
    result = {
        "description": (
            "climb run --only climbmix_manifest (and climbmix_exports) on one corpus at growing "
            "manifest.total_tokens, each in its own process, this checkout's code and the "
            "compared commit's back to back: seconds and peak RSS against selected rows"
        ),
        "params": {
            "store": str(store),
            "corpus_documents": documents,
            "tokens": tokens,
            "compare": args.compare,
            "rss_source": "wait4 ru_maxrss of the step's process and its waited workers",
        },
        "runs": rows,
        "goals": met,
        "summary": summary_rows(rows, met, documents),
    }
    return finish_result(NAME, result, monitor, load, machine, quick)


if __name__ == "__main__":
    main()

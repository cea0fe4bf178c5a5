"""`climb`: run the pipeline from a shell (demo, run, register-shards, profile)."""

import argparse
import json
import os
import sys
import time

import dagster as dg
import yaml

from climb_assets.config import ProfileError, load_profile, resolve_location
from climb_assets.defs.catalog import CATALOG_FILE
from climb_assets.defs.resources import ClimbResource, default_profile_ref

EXAMPLE_QUERY = (
    "SELECT super_cluster_id, documents, round(token_share, 3) AS share, top_terms[1:5] AS terms "
    "FROM super_clusters ORDER BY super_cluster_id;"
)


def _summary(climb: ClimbResource) -> None:
    store = climb.store()
    catalog = store.uri(CATALOG_FILE)
    print(f"\noutputs: {store.uri()}")
    print(f"catalog: {catalog}")
    print("query it (read-only, safe while a run goes on):")
    print(f'  .venv/bin/python -c "import duckdb; duckdb.connect(\'{catalog}\', read_only=True)'
          f'.sql(\\"{EXAMPLE_QUERY}\\").show()"')  # fmt: skip
    print(f'  or: duckdb -readonly {catalog} "{EXAMPLE_QUERY}"')


def _print_manifest(climb: ClimbResource) -> None:
    import duckdb

    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    terms: dict[int, str] = {}
    sources: dict[int, str] = {}
    catalog = store.uri(CATALOG_FILE)
    con = duckdb.connect(catalog, read_only=True)
    try:
        for sc, top in con.execute(
            "SELECT super_cluster_id, top_terms FROM super_clusters"
        ).fetchall():
            terms[sc] = " ".join(top[:4])
        if "source" in climb.settings().corpus.extra_columns:
            rows = con.execute(
                "SELECT super_cluster_id, source, count(*) AS n FROM documents "
                "WHERE super_cluster_id IS NOT NULL GROUP BY ALL ORDER BY super_cluster_id, n DESC"
            ).fetchall()
            totals: dict[int, int] = {}
            for sc, _, n in rows:
                totals[sc] = totals.get(sc, 0) + n
            for sc, source, n in rows:
                sources.setdefault(sc, f"{source} {n / totals[sc]:.0%}")
    finally:
        con.close()
    print("\nClimbMix weights (final) against natural token proportions:")
    print(f"  {'super-cluster':>13} {'natural':>8} {'climbmix':>9}  dominant source   top terms")
    for row in doc["super_clusters"]:
        sc = row["super_cluster_id"]
        print(
            f"  {sc:>13} {row['natural']:>8.3f} {row['weight']:>9.3f}  "
            f"{sources.get(sc, '-'):<16} {terms.get(sc, '')}"
        )
    final = doc["final"]
    print(f"predicted objective {final['predicted_objective']:.4f} ({final['method']}); rounds:")
    for r in doc["rounds"]:
        cv = "n/a" if r["cv_spearman"] is None else f"{r['cv_spearman']:.2f}"
        print(f"  {r['round']}: {r['points']} proxies so far, best observed "
              f"{r['best_observed']:.4f}, cv Spearman {cv}")  # fmt: skip
    print(f"manifest: {store.uri('manifest/climbmix.json')}")


def _run(args: argparse.Namespace) -> int:
    from climb_assets.runner import local_instance, run_all, run_data_side

    climb = ClimbResource(profile=args.profile)
    profile = climb.settings()
    if args.command == "demo":
        from climb_assets.lib.demo_corpus import build_demo_corpus

        corpus_root = resolve_location(profile.corpus.path)
        if not corpus_root.endswith("/corpus"):
            print(f"profile {profile.name}: corpus.path must end in /corpus for the demo builder")
            return 2
        start = time.perf_counter()
        info = build_demo_corpus(os.path.dirname(corpus_root), docs_per_source=args.docs_per_source)
        print(
            f"demo corpus: {info.n_documents} documents from {len(info.per_source)} sources "
            f"in {len(info.shards)} shards ({time.perf_counter() - start:.1f}s) at {info.root}"
        )
    start = time.perf_counter()
    instance = local_instance()
    if args.data_only or not profile.targets:
        timings = run_data_side(climb, instance, force=args.force)
    else:
        timings = run_all(climb, instance, force=args.force)
        _print_manifest(climb)
    print(f"\ndone in {time.perf_counter() - start:.0f}s; step seconds: "
          f"{json.dumps({k: round(v, 1) for k, v in timings.items()})}")  # fmt: skip
    _summary(climb)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="climb", description=__doc__)
    parser.add_argument(
        "--profile",
        default=default_profile_ref(),
        help="shipped profile name or YAML path (default: CLIMB_CONFIG, CLIMB_PROFILE or demo)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the demo corpus, then run every asset on it")
    demo.add_argument("--docs-per-source", type=int, default=1000)
    run = sub.add_parser("run", help="run every asset on the profile's corpus")
    for p in (demo, run):
        p.add_argument("--force", action="store_true", help="recompute finished steps too")
        p.add_argument("--data-only", action="store_true", help="stop after the data side")
    sub.add_parser("register-shards", help="add a partition for each new shard file")
    sub.add_parser("profile", help="print the resolved profile")
    args = parser.parse_args(argv)
    try:
        if args.command == "profile":
            profile = load_profile(args.profile)
            print(f"# {profile.name} (digest {profile.digest})")
            print(yaml.safe_dump(profile.to_dict(), sort_keys=False))
            return 0
        if args.command == "register-shards":
            from climb_assets.runner import local_instance, register_shards

            added = register_shards(local_instance(), ClimbResource(profile=args.profile))
            print(f"registered {len(added)} new shard(s): {added}")
            return 0
        return _run(args)
    except (ProfileError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"climb: error: {exc}", file=sys.stderr)
        return 2
    except dg.DagsterError as exc:
        cause = exc.__cause__ or exc
        print(f"climb: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

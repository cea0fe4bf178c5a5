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


def _run(args: argparse.Namespace) -> int:
    from climb_assets.runner import local_instance, run_data_side

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
    timings = run_data_side(climb, local_instance(), force=args.force)
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

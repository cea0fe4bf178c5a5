"""`climb`: run the pipeline from a shell (demo, run, register-shards, profile, plan, catalog,
distill-static)."""

import argparse
import contextlib
import io
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

import dagster as dg
import yaml

from climb_assets.config import Profile, ProfileError, load_profile, resolve_location
from climb_assets.defs.resources import ClimbResource, climb_resource, default_profile_ref
from climb_assets.lib.corpus_size import CorpusCount
from climb_assets.lib.os_errors import describe_os_failure
from climb_assets.lib.planner import DEFAULT_TOKENS_PER_DOC, CorpusSize, PlanOptions, plan

EXAMPLE_QUERY = (
    "SELECT super_cluster_id, documents, round(token_share, 3) AS share, top_terms[1:5] AS terms "
    "FROM super_clusters ORDER BY super_cluster_id;"
)


def _catalog(args: argparse.Namespace) -> int:
    """Runs SQL on the catalog (local or remote), or lists its views."""
    import duckdb

    from climb_assets.defs.catalog import open_catalog

    climb = climb_resource(args.profile)
    con = open_catalog(climb)
    _warn_if_stale(climb)
    try:
        if args.sql:
            try:
                con.sql(args.sql).show(max_rows=args.max_rows)
            except duckdb.Error as exc:
                raise ValueError(f"{type(exc).__name__}: {exc}") from None
        else:
            views = con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
            ).fetchall()
            print("views: " + ", ".join(v[0] for v in views))
            print(f'example: climb catalog "{EXAMPLE_QUERY}"')
    finally:
        con.close()
    return 0


def _warn_if_stale(climb: ClimbResource) -> None:
    """One line on stderr when the manifest was built from a corpus that has changed since."""
    from climb_assets.defs.common import manifest_staleness

    line = manifest_staleness(climb.store())
    if line:
        print(f"climb: warning: {line}", file=sys.stderr)


def _summary(climb: ClimbResource) -> None:
    from climb_assets.defs.catalog import CATALOG_FILE

    store = climb.store()
    catalog = store.uri(CATALOG_FILE)
    print(f"\noutputs: {store.uri()}")
    print(f"catalog: {catalog}")
    if not store.is_local:
        print(f'query it: climb catalog "{EXAMPLE_QUERY}"')
        return
    print("query it (read-only, safe while a run goes on):")
    print(f'  {sys.executable} -c "import duckdb; duckdb.connect(\'{catalog}\', read_only=True)'
          f'.sql(\\"{EXAMPLE_QUERY}\\").show()"')  # fmt: skip
    print(f'  or: duckdb -readonly {catalog} "{EXAMPLE_QUERY}"')


def _print_manifest(climb: ClimbResource) -> None:
    from climb_assets.defs.catalog import dominant_sources, open_catalog

    store = climb.store()
    doc = store.read_json("manifest/climbmix.json")
    terms: dict[int, str] = {}
    sources: dict[int, str] = {}
    con = open_catalog(climb)
    try:
        for sc, top in con.execute(
            "SELECT super_cluster_id, top_terms FROM super_clusters"
        ).fetchall():
            terms[sc] = " ".join(top[:4])
    finally:
        con.close()
    if "source" in climb.settings().corpus.extra_columns:
        sources = dominant_sources(store)
    label = "DoReMi" if doc["final"].get("method") == "doremi" else "ClimbMix"
    print(f"\n{label} weights (final) against natural token proportions:")
    print(f"  {'super-cluster':>13} {'natural':>8} {label.lower():>9}  dominant source   top terms")
    for row in doc["super_clusters"]:
        sc = row["super_cluster_id"]
        print(
            f"  {sc:>13} {row['natural']:>8.3f} {row['weight']:>9.3f}  "
            f"{sources.get(sc, '-'):<16} {terms.get(sc, '')}"
        )
    final = doc["final"]
    band = final.get("predicted_objective_band")
    plus = f" ± {band:.4f}" if band is not None else ""
    if final.get("predicted_objective") is None:  # DoReMi or a training-free reference
        print(f"final: {final.get('how', final['method'])}; no CLIMB predictor, no prediction")
    elif final.get("method") == "confirmed":
        print(
            f"final: {final['how']}; measured objective {final['measured_objective']:.4f}, "
            f"predicted {final['predicted_objective']:.4f}{plus} by {final['predictor_used']}"
        )
    elif "observed_objective" in final:
        print(f"final: proxy {final['mixture_id']}, observed objective "
              f"{final['observed_objective']:.4f} (best_observed); predicted "
              f"{final['predicted_objective']:.4f}{plus} by {final['predictor_used']}")  # fmt: skip
    else:
        print(f"final: predicted objective {final['predicted_objective']:.4f}{plus} "
              f"({final['method']} of {final['predictor_used']})")  # fmt: skip
    if doc["rounds"]:
        print("predictors, cross-validated Spearman by kind (* = used):")
    for r in doc["rounds"]:
        kinds = ", ".join(
            f"{kind}{'*' if kind == r['used'] or f'{kind}=' in r['used'] else ''} "
            + ("n/a" if rho is None else f"{rho:.2f}")
            for kind, rho in r["cv_by_kind"].items()
        )
        best = f"best observed {r['best_observed']:.4f}"
        print(f"  {r['round']}: {r['points']} proxies, {best}; {kinds}")
    print(f"manifest: {store.uri('manifest/climbmix.json')}")
    if store.exists("exports/exports.json"):
        for name, e in store.read_json("exports/exports.json")["exports"].items():
            kept = ", kept from an earlier run" if e.get("skipped") else ""
            print(f"export {name}: {e['files']} files, {e['bytes'] / 1e6:.2f} MB at "
                  f"{e['folder']}{kept}")  # fmt: skip
    if store.exists("exports/megatron/megatron_args.txt"):
        print(
            f"train with Megatron-LM: cd {store.uri('exports/megatron')} && torchrun "
            "--nproc-per-node <GPUs> <Megatron-LM>/pretrain_gpt.py $(cat megatron_args.txt) "
            "<model and optimizer flags> (README: From `climb run` to the first training step)"
        )


DAGSTER_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - ")


class ErrorRecordFilter(io.TextIOBase):
    """A stderr that leaves out Dagster's ERROR records and the stack traces under them.

    Every error that stops `climb` is printed once as `climb: error: ...` (or one line for an
    interrupt); the console logger's copy with the framework's stack trace (dozens of lines)
    would bury it. `climb --verbose` keeps them.
    """

    def __init__(self, target: TextIO) -> None:
        self.target, self.skipping, self.pending = target, False, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if DAGSTER_RECORD.match(line):
                self.skipping = " - ERROR - " in line
            if not self.skipping:
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def _interrupts_routed() -> Iterator[None]:
    """Ctrl-C and SIGTERM end a run with one line, and no helper process prints a traceback.

    SIGTERM (a scheduler stopping the job, `kill`) is handled as Ctrl-C: Dagster marks the run
    interrupted and frees its slots. Ctrl-C reaches every process of the terminal's foreground
    group, and the log-mirroring helpers Dagster starts for each step would die printing a
    traceback each. Children inherit the signal mask, so SIGINT is blocked in the main thread
    (where Dagster starts them) and taken by an idle thread instead; CPython still raises
    KeyboardInterrupt in the main thread. Both are restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    stop = threading.Event()

    def take_signals() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        stop.wait()

    taker = threading.Thread(target=take_signals, name="climb-signals", daemon=True)
    taker.start()
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        stop.set()
        signal.signal(signal.SIGTERM, previous_term)


def _only_steps(profile_ref: str, names: str) -> set[str]:
    """The steps `--only` names, checked against the code location's assets."""
    from climb_assets.definitions import build_definitions

    graph = build_definitions(profile_ref).resolve_asset_graph()
    known = {k.path[-1] for k in graph.get_all_asset_keys()} | {"search_round"}
    steps = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(steps - known)
    if unknown or not steps:
        raise ProfileError(
            f"--only {names!r}: unknown step(s) {', '.join(unknown) or '(none given)'}; "
            f"name some of {', '.join(sorted(known))}"
        )
    return steps


def _run(args: argparse.Namespace) -> int:
    from climb_assets.runner import exclusive_instance, run_all, run_data_side

    climb = climb_resource(args.profile)
    profile = climb.settings()
    only = _only_steps(args.profile, args.only) if args.only else None
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
    from climb_assets.preflight import check_profile, free_space_warning

    searches = bool(profile.targets) and not args.data_only
    report = check_profile(climb, search=searches)
    if report.corpus is not None:
        warning = free_space_warning(climb, report.corpus)
        if warning:
            print(f"climb: warning: {warning}", file=sys.stderr)
        _confirm_cost(profile, report.corpus, searches, args.yes)
    quiet = contextlib.redirect_stderr(ErrorRecordFilter(sys.stderr))
    if args.verbose:
        quiet = contextlib.nullcontext()
    with exclusive_instance(climb, wait=args.wait) as instance, quiet:
        if args.data_only or not profile.targets:
            timings = run_data_side(climb, instance, force=args.force, only=only)
        else:
            timings = run_all(climb, instance, force=args.force, only=only)
            if only is None or "climbmix_manifest" in only:
                _print_manifest(climb)
    print(f"\ndone in {time.perf_counter() - start:.0f}s; step seconds: "
          f"{json.dumps({k: round(v, 1) for k, v in timings.items()})}")  # fmt: skip
    _summary(climb)
    _warn_if_stale(climb)  # after --data-only or --only, the search may not have caught up
    return 0


SEARCH_STAGES = ("tokens + targets", "search", "confirmation")
"""Plan rows of the search side (left out of a `--data-only` estimate)."""


def _confirm_cost(profile: Profile, count: CorpusCount, searches: bool, yes: bool) -> None:
    """Prints the planner's estimate for this corpus on this machine; above
    deployment.confirm_above_hours, refuses without `--yes`, naming what would fit."""
    from climb_assets.lib.machine import usable_cpus
    from climb_assets.lib.planner import PlanError, format_hours

    try:
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
        cores = usable_cpus()
        estimate = plan(profile, CorpusSize.of(documents=max(count.documents, 1)),
                        PlanOptions(device=device, cpu_cores=cores))  # fmt: skip
    except (PlanError, OSError, KeyError, ValueError) as exc:  # no benchmark figures here
        print(f"plan: not estimated ({exc})")
        return
    stages = [
        s for s in estimate.stages
        if s.in_total and (searches or not s.name.startswith(SEARCH_STAGES))
    ]  # fmt: skip
    hours = sum(s.wall_hours for s in stages)
    print(f"plan: about {format_hours(hours)} of wall-clock on this machine ({device}, {cores} "
          f"cores) for {count.describe()}; `climb plan --documents {count.documents}` itemises "
          "it")  # fmt: skip
    limit = profile.deployment.confirm_above_hours
    if limit is None or hours <= limit or yes:
        return
    worst = max(stages, key=lambda s: s.wall_hours)
    fix = f"its largest part is {worst.name} ({format_hours(worst.wall_hours)})"
    if worst.name.startswith("search"):
        proxies = sum(profile.search.rounds)
        room = limit - (hours - worst.wall_hours)
        fits = int(proxies * room / worst.wall_hours) if room > 0 else 0
        fix += (
            f": search.rounds totalling at most {fits:,} proxies (now {proxies:,}) fit in it"
            if fits
            else ": not even one proxy fits in it with the rest of the run"
        )
    elif worst.name.startswith("embed") and profile.encoder.kind != "static":
        fix += ": encoder.kind: static embeds about 50x faster on a CPU"
    raise ProfileError(
        f"the plan estimates {format_hours(hours)} of wall-clock, above "
        f"deployment.confirm_above_hours = {limit:g} h; {fix}; pass --yes to run it anyway"
    )


def _add_plan_parser(sub: argparse._SubParsersAction) -> None:
    d = PlanOptions()
    p = sub.add_parser(
        "plan",
        help="estimate the GPU-hours and wall-clock of the whole search from measured throughput",
    )
    p.add_argument(
        "--profile",
        default=argparse.SUPPRESS,
        help="shipped profile name or YAML path (same as the top-level --profile)",
    )
    p.add_argument("--tokens", type=float, help="corpus tokens, e.g. 1.2e12")
    p.add_argument("--documents", type=float, help="corpus documents")
    p.add_argument(
        "--tokens-per-doc",
        type=float,
        default=DEFAULT_TOKENS_PER_DOC,
        help="average tokens per document when only one of --tokens/--documents is given "
        f"(default {DEFAULT_TOKENS_PER_DOC:g}, an assumption)",
    )
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument(
        "--gpus", type=int, help="GPUs for wall-clock (default: 1 locally, else max_concurrent)"
    )
    p.add_argument("--cpu-cores", type=int, default=d.cpu_cores, help="cores for CPU stages")
    p.add_argument("--gpu-type", help="GPU by name, e.g. A100 (default: measured, else H100)")
    p.add_argument("--peak-tflops", type=float, help="16-bit dense peak of the GPU")
    p.add_argument("--peak-fp32-tflops", type=float, help="FP32 peak of the GPU (k-means)")
    p.add_argument("--encoder-util", type=float, default=d.encoder_util, help="share of peak")
    p.add_argument("--kmeans-util", type=float, default=d.kmeans_util, help="share of FP32 peak")
    p.add_argument("--proxy-mfu", type=float, default=d.proxy_mfu, help="proxy MFU")
    p.add_argument("--encoder-params", type=float, help="encoder parameters that multiply")
    p.add_argument("--eval-tokens", type=float, help="tokens scored per proxy evaluation")
    p.add_argument("--vocab-size", type=int, help="proxy vocabulary (default: the profile's)")
    p.add_argument("--results", help="results folder (default: CLIMB_BENCH_RESULTS, bench/results)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _add_distill_parser(sub: argparse._SubParsersAction) -> None:
    from climb_assets.lib.static_encoder import (
        DEFAULT_DIM,
        DEFAULT_MODEL,
        DEFAULT_SIF,
        DEFAULT_TUNE_DOCUMENTS,
        TUNE_MODES,
        TuneSettings,
    )

    p = sub.add_parser(
        "distill-static",
        help="build a static encoder (model2vec's format) from a transformers encoder, for "
        "encoder.kind: static",
    )
    p.add_argument("--out", required=True, help="folder to write (one that exists: --overwrite)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"encoder (default {DEFAULT_MODEL})")
    p.add_argument(
        "--dim", type=int, default=DEFAULT_DIM, help=f"PCA dimensions (default {DEFAULT_DIM})"
    )
    p.add_argument(
        "--sif",
        type=float,
        default=DEFAULT_SIF,
        metavar="A",
        help="scale each row by the SIF weight A / (A + p), p the token's Zipf frequency from its "
        "id (model2vec uses 1e-4; default: no weighting)",
    )
    p.add_argument("--batch-size", type=int, default=1024, help="tokens per forward pass")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tune = TuneSettings()
    p.add_argument(
        "--tune-corpus",
        metavar="FOLDER",
        help="adapt the table to this corpus (a folder of Parquet/JSONL shards): per-token "
        "weights and a linear map fitted so each sampled document's static vector points where "
        "--model's vector of it points (default: no tuning)",
    )
    p.add_argument(
        "--tune-documents",
        type=int,
        default=DEFAULT_TUNE_DOCUMENTS,
        metavar="N",
        help=f"documents sampled from --tune-corpus (default {DEFAULT_TUNE_DOCUMENTS:,}; the "
        "encoder embeds each once, 30-70 docs/s for MiniLM on 2 CPU cores; a few hundred overfit)",
    )
    p.add_argument("--tune-seed", type=int, default=tune.seed, help="sample and fit seed")
    p.add_argument("--tune-text-column", default="text", help="text column of the shards")
    p.add_argument("--tune-epochs", type=int, default=tune.epochs, help=f"default {tune.epochs}")
    p.add_argument(
        "--tune-mode",
        choices=TUNE_MODES,
        default=tune.mode,
        help=f"weights: per-token weights and a map; table: the rows too (default {tune.mode})",
    )


def _distill_static(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from climb_assets.lib.static_encoder import (
        MIN_TUNE_DOCUMENTS,
        TuneSettings,
        distill_static,
        sample_corpus,
    )

    step = {"next": 0.0}

    def progress(done: int, total: int) -> None:
        if done / total >= step["next"] or done == total:
            print(f"  {done:,}/{total:,} tokens", flush=True)
            step["next"] = done / total + 0.1

    docs_step = {"next": 0.0}

    def tune_progress(done: int, total: int) -> None:
        if done / total >= docs_step["next"] or done == total:
            print(f"  {done:,}/{total:,} tuning documents embedded", flush=True)
            docs_step["next"] = done / total + 0.1

    sample = None
    settings = None
    if args.tune_corpus is not None:
        sample = sample_corpus(
            args.tune_corpus, args.tune_documents, args.tune_seed, args.tune_text_column
        )
        settings = replace(
            TuneSettings(),
            seed=args.tune_seed,
            epochs=args.tune_epochs,
            mode=args.tune_mode,
            threads=args.threads or TuneSettings().threads,
        )
        settings.check()
        if len(sample.texts) < MIN_TUNE_DOCUMENTS:
            print(
                f"warning: {len(sample.texts):,} tuning documents; with fewer than "
                f"{MIN_TUNE_DOCUMENTS:,} the weights overfit and cluster worse than no tuning "
                "(see bench/static_encoder.py)",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"tuning on {len(sample.texts):,} documents of {sample.documents_read:,} in "
            f"{sample.shards} shard(s) of {sample.corpus} (seed {sample.seed})",
            flush=True,
        )
    print(f"distilling {args.model}: every token of its vocabulary through the encoder", flush=True)
    result = distill_static(
        args.out,
        model=args.model,
        dim=args.dim,
        sif_coefficient=args.sif,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        overwrite=args.overwrite,
        progress=progress,
        tune_texts=None if sample is None else sample.texts,
        tune_settings=settings,
        tune_source=None
        if sample is None
        else {
            "corpus": sample.corpus,
            "text_column": args.tune_text_column,
            "documents_requested": args.tune_documents,
            "documents_read": sample.documents_read,
            "shards": sample.shards,
            "seed": sample.seed,
            "corpus_digest": sample.corpus_digest,
            "sample_digest": sample.sample_digest,
        },
        tune_progress=tune_progress,
    )
    tuned = ""
    if result.tuning is not None:
        tuned = (
            f", tuned on {result.tuning['documents']:,} documents (loss "
            f"{result.tuning['loss_start']:.4f} -> {result.tuning['loss_end']:.4f})"
        )
    print(
        f"wrote {result.folder}: {result.vocab_size:,} tokens x {result.dim} dims "
        f"({result.explained_variance:.1%} of the variance) from {args.model} "
        f"({result.source_revision}){tuned} in {result.seconds:.0f}s\n"
        f"use it with  encoder: {{kind: static, model: {result.folder}}}"
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    corpus = CorpusSize.of(args.tokens, args.documents, args.tokens_per_doc)
    options = PlanOptions(
        device=args.device,
        gpus=args.gpus,
        cpu_cores=args.cpu_cores,
        gpu_type=args.gpu_type,
        peak_tflops=args.peak_tflops,
        peak_fp32_tflops=args.peak_fp32_tflops,
        encoder_util=args.encoder_util,
        kmeans_util=args.kmeans_util,
        proxy_mfu=args.proxy_mfu,
        encoder_params=args.encoder_params,
        eval_tokens=args.eval_tokens,
        vocab_size=args.vocab_size,
    )
    result = plan(load_profile(args.profile), corpus, options, args.results)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.render())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="climb", description=__doc__)
    parser.add_argument(
        "--profile",
        default=default_profile_ref(),
        help="shipped profile name or YAML path (default: CLIMB_CONFIG, CLIMB_PROFILE or demo)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Dagster's error records with their stack traces",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build the demo corpus, then run every asset on it")
    demo.add_argument("--docs-per-source", type=int, default=1000)
    run = sub.add_parser("run", help="run every asset on the profile's corpus")
    register = sub.add_parser(
        "register-shards",
        help="add a partition for each new shard file, remove those whose file is gone",
    )
    for p in (demo, run):
        p.add_argument("--force", action="store_true", help="recompute finished steps too")
        p.add_argument(
            "--yes",
            action="store_true",
            help="run even when the plan's estimate is above deployment.confirm_above_hours",
        )
        p.add_argument("--data-only", action="store_true", help="stop after the data side")
        p.add_argument(
            "--only",
            metavar="STEP[,STEP]",
            help="run just these steps (asset names, or search_round), taking every other "
            "step's output as it is",
        )
    for p in (demo, run, register):
        p.add_argument(
            "--wait",
            action="store_true",
            help="wait for another climb process on this instance or storage root to finish "
            "(default: stop at once, naming it)",
        )
    sub.add_parser("profile", help="print the resolved profile")
    _add_plan_parser(sub)
    _add_distill_parser(sub)
    cat = sub.add_parser("catalog", help="query the DuckDB catalog (local or on S3), read-only")
    cat.add_argument("sql", nargs="?", help="a query; without one, the views are listed")
    cat.add_argument("--max-rows", type=int, default=40)
    args = parser.parse_args(argv)
    with _interrupts_routed():
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Runs one command; every expected failure becomes one line on stderr and an exit code."""
    try:
        if args.command == "distill-static":
            return _distill_static(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "catalog":
            return _catalog(args)
        if args.command == "profile":
            profile = load_profile(args.profile)
            print(f"# {profile.name} (digest {profile.digest})")
            print(yaml.safe_dump(profile.to_dict(), sort_keys=False))
            return 0
        if args.command == "register-shards":
            from climb_assets.runner import exclusive_instance, register_shards

            climb = climb_resource(args.profile)
            with exclusive_instance(climb, wait=args.wait) as instance:
                changes = register_shards(instance, climb)
            print(f"registered {len(changes.added)} new shard(s): {changes.added}")
            if changes.replaced:
                print(f"replaced since last read (the next `climb run` reads them again): "
                      f"{sorted(changes.replaced)}")  # fmt: skip
            return 0
        return _run(args)
    except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError):
        print("climb: interrupted; finished work is kept; run again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # every expected failure: one line, no stack
        if args.command in ("run", "demo"):
            with contextlib.suppress(Exception):  # the warning must not hide the error
                _warn_if_stale(climb_resource(args.profile))
        line = describe_os_failure(exc, _storage_root(args))
        if line is not None:
            print(f"climb: error: {line}", file=sys.stderr)
            return 1
        if isinstance(exc, ProfileError | ValueError | FileNotFoundError | RuntimeError):
            print(f"climb: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, dg.DagsterError):
            cause = exc.__cause__ or exc
            print(f"climb: error: {type(cause).__name__}: {cause}", file=sys.stderr)
            return 1
        raise


def _storage_root(args: argparse.Namespace) -> str | None:
    """The profile's storage root, for a full-disk message (None when it cannot be read)."""
    try:
        return resolve_location(load_profile(args.profile).storage.root)
    except Exception:  # the message then goes without it
        return None


if __name__ == "__main__":
    sys.exit(main())

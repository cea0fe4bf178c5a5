"""Runs the data side in dependency order inside one Dagster instance, skipping finished work.

This is what `climb run` and `climb demo` call. Each step is a real Dagster run (visible in the
UI under the same DAGSTER_HOME); a step whose completion marker matches the current settings is
skipped, and anything downstream of a step that ran is recomputed.
"""

import os
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg

from climb_assets.defs.catalog import cluster_catalog
from climb_assets.defs.checks import (
    assignment_covers_shard,
    every_document_assigned_once,
    no_empty_kept_cluster,
)
from climb_assets.defs.cli_jobs import CLI_JOB_DESCRIPTION, cli_job_name
from climb_assets.defs.common import (
    CORPUS_STATE_FILE,
    adopt_unsourced_markers,
    is_done,
    write_marker,
)
from climb_assets.defs.data_side import (
    cluster_assignments,
    cluster_quality,
    corpus_documents,
    embeddings,
    kmeans_centroids,
    pruned_clusters,
    super_clusters,
)
from climb_assets.defs.partitions import GPU_POOL, shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.sensors import (
    ShardChanges,
    shard_changes,
    unknown_files_warning,
    unregister_shards,
)
from climb_assets.lib.locks import WAIT_REPORT_S, FileLock
from climb_assets.run_health import ATTEMPT_TAG, cli_run_tags, reap_dead_runs, watch_pool_waits


class CheckFailed(RuntimeError):
    """An asset check that guards an invariant did not pass."""


INSTANCE_YAML = """\
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    granularity: op
    default_limit: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 30
telemetry:
  enabled: false
"""
"""The instance settings `climb` writes into a DAGSTER_HOME that has none: the repository's
`dagster.yaml` (GPU steps one at a time across runs, run monitoring, no telemetry)."""


def instance_home() -> Path:
    """DAGSTER_HOME (created), `./.dagster` when it is not set."""
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(
            Path(os.environ.get("CLIMB_HOME", os.getcwd())) / ".dagster"
        )
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextmanager
def exclusive_instance(
    climb: ClimbResource,
    wait: bool = False,
    log: Callable[[str], None] = print,
    wait_report_s: float = WAIT_REPORT_S,
) -> Iterator[dg.DagsterInstance]:
    """The local instance, held by this process alone, with runs of killed processes cleaned up.

    One `climb` process at a time per instance (DAGSTER_HOME) and per local storage root: a
    second one fails at once naming the holder's pid (or waits, with `wait`, saying whom it
    waits for every `wait_report_s` seconds, so that the wait does not look like a hang). The
    lock is taken before the instance is opened, so two first runs cannot both create its tables.
    """
    home = instance_home()
    locks = [FileLock(home / ".climb-run.lock", wait, log, wait_report_s)]
    store = climb.store()
    if store.is_local:
        locks.append(FileLock(Path(store.path(".climb-run.lock")), wait, log, wait_report_s))
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(INSTANCE_YAML)
        instance = dg.DagsterInstance.get()
        note = reap_dead_runs(instance)
        if note:
            log(note)
        yield instance


class Materializer:
    """Runs assets as Dagster runs in one instance, timing each step and enforcing checks."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        resources: dict,
        log: Callable[[str], None],
        log_level: str,
        only: Collection[str] | None = None,
    ) -> None:
        self.instance, self.resources, self.log, self.log_level = (
            instance,
            resources,
            log,
            log_level,
        )
        self.only = None if only is None else set(only)
        self.timings: dict[str, float] = {}

    def __call__(
        self, assets: list, name: str, partition: str | None = None, checks: tuple = ()
    ) -> bool:
        """Materializes `assets` (those in `only`, when set); False when none was asked for."""
        if self.only is not None and name not in self.only:
            assets = [a for a in assets if {k.path[-1] for k in a.keys} & self.only]
            if not assets:
                return False
            name = "+".join(k.path[-1] for a in assets for k in a.keys)
        start = time.perf_counter()
        self.log(f"  materializing {name}{f' [{partition}]' if partition else ''}")
        tags = cli_run_tags()
        job = cli_job_name(name)
        defs = dg.Definitions(
            assets=[*assets, *checks],
            resources=self.resources,
            jobs=[dg.define_asset_job(job, description=CLI_JOB_DESCRIPTION)],
        )
        with watch_pool_waits(self.instance, tags[ATTEMPT_TAG], (GPU_POOL,), self.log):
            result = defs.resolve_job_def(job).execute_in_process(
                partition_key=partition,
                instance=self.instance,
                tags=tags,
                run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
            )
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
        if failed:
            names = ", ".join(e.check_name for e in failed)
            raise CheckFailed(
                f"asset check(s) failed after {name}: {names}; see the run in the UI, or run "
                "again with `climb --verbose`"
            )
        return True


def register_shards(
    instance: dg.DagsterInstance, climb: ClimbResource, log: Callable[[str], None] = print
) -> ShardChanges:
    """Registers new shard files and unregisters those whose file is gone (with their outputs).

    Replaced shards keep their partition; `run_data_side` reads them again.
    """
    changes = shard_changes(instance, climb)
    if changes.added:
        instance.add_dynamic_partitions(shard_partitions.name, changes.added)
    if changes.removed:
        unregister_shards(instance, climb, changes.removed)
        log(f"unregistered {len(changes.removed)} shard(s) whose file is gone: {changes.removed}")
    warning = unknown_files_warning(changes, climb.settings().corpus.formats)
    if warning:
        log(f"warning: {warning}")
    return changes


def run_data_side(
    climb: ClimbResource,
    instance: dg.DagsterInstance,
    force: bool = False,
    log: Callable[[str], None] = print,
    log_level: str = "WARNING",
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """Materializes every data-side asset in order; returns seconds spent per step.

    `only` (asset names) runs just those steps, taking every other step's output as it is
    (`climb run --only`; the scale benchmark times each step in its own process this way).
    """
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    profile, store, corpus = climb.settings(), climb.store(), climb.corpus_store()
    start = time.perf_counter()
    changes = register_shards(instance, climb, log)
    shards = sorted(instance.get_dynamic_partitions(shard_partitions.name))
    log(f"{len(shards)} shard(s) registered ({changes.describe()}) under {corpus.uri()}")
    materialize = Materializer(instance, {"climb": climb}, log, log_level, only)
    timings = materialize.timings
    if changes.removed:  # the global steps and the search must forget those documents
        timings["unregister_shards"] = time.perf_counter() - start
    for shard in shards:
        adopt_unsourced_markers(store, corpus, shard)
    sources = changes.identities

    def todo(asset: str, partition: str | None) -> bool:
        source = sources.get(partition) if partition else None
        return force or not is_done(store, profile, asset, partition, source)

    changed_embeddings = False
    for shard in shards:
        fresh_docs = todo("corpus_documents", shard)
        steps = [corpus_documents] if fresh_docs else []
        if fresh_docs or todo("embeddings", shard):
            steps.append(embeddings)
            changed_embeddings = True
        if fresh_docs or todo("cluster_quality", shard):
            steps.append(cluster_quality)
        if steps:
            materialize(steps, "+".join(s.key.path[-1] for s in steps), shard)
        else:
            log(f"  {shard}: documents, embeddings and quality already done")
    refit = todo("kmeans_centroids", None)
    if refit:
        materialize([kmeans_centroids], "kmeans_centroids")
    else:
        log("  kmeans_centroids already fitted with these settings (corpus refreshes reuse them)")
    for shard in shards:
        if refit or changed_embeddings or todo("cluster_assignments", shard):
            materialize(
                [cluster_assignments], "cluster_assignments", shard, [assignment_covers_shard]
            )
    materialize([pruned_clusters], "pruned_clusters", checks=(no_empty_kept_cluster,))
    materialize([super_clusters], "super_clusters", checks=(every_document_assigned_once,))
    materialize([cluster_catalog], "cluster_catalog")
    return timings


def run_search(
    climb: ClimbResource,
    instance: dg.DagsterInstance,
    force: bool = False,
    log: Callable[[str], None] = print,
    log_level: str = "WARNING",
    data_changed: bool = False,
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """Materializes the search side: tokenizer, cluster tokens, targets, every round, manifest.

    `data_changed` (the data side recomputed something) redoes everything after it. Rounds run
    in order; a round whose predictor exists with the same settings is skipped, and
    inside a round every proxy whose checkpoint is complete is reused rather than retrained.
    `only` runs just the named steps (see `run_data_side`).
    """
    from climb_assets.config import search_trade_offs
    from climb_assets.defs.confirmation import confirmation_proxy
    from climb_assets.defs.doremi import doremi_mixture
    from climb_assets.defs.exports import climbmix_exports
    from climb_assets.defs.io import JsonIOManager
    from climb_assets.defs.manifest import climbmix_manifest
    from climb_assets.defs.references import reference_mixtures
    from climb_assets.defs.search import (
        IO,
        cluster_tokens,
        proxy_tokenizer,
        round_keys,
        search_targets,
        target_alignment,
    )
    from climb_assets.defs.search_round import build_search_round

    profile, store = climb.settings(), climb.store()
    search_round = build_search_round(len(profile.search.rounds))
    resources = {"climb": climb, IO: JsonIOManager(climb=climb)}
    materialize = Materializer(instance, resources, log, log_level, only)
    timings = materialize.timings

    for line in search_trade_offs(profile):
        log(f"  note: {line}")
    upstream_changed = force or data_changed
    # The corpus the data side last read: a step built from another one (say, before a
    # `--data-only` run that dropped a shard) is redone, and everything after it.
    corpus = (
        store.read_json(CORPUS_STATE_FILE)["corpus_digest"]
        if store.exists(CORPUS_STATE_FILE)
        else None
    )
    for asset, name in ((proxy_tokenizer, "proxy_tokenizer"), (cluster_tokens, "cluster_tokens"),
                        (search_targets, "search_targets"),
                        (target_alignment, "target_alignment")):  # fmt: skip
        if (upstream_changed or not is_done(store, profile, name, None, corpus)) and materialize(
            [asset], name
        ):
            write_marker(store, profile, name, None, corpus)
            upstream_changed = True
    materialize([reference_mixtures], "reference_mixtures")  # seconds; reads the manifest budget
    if not profile.search.trains_proxies:
        log(f"  search.final is the reference mixture {profile.search.final!r}: no proxy trained")
    if profile.search.runs_doremi:  # both proxies are content-addressed: a rerun reuses them
        materialize([doremi_mixture], "doremi_mixture")
    for key in round_keys(profile) if profile.search.runs_rounds else ():
        if not upstream_changed and is_done(store, profile, "search_round", key):
            log(f"  round {key} already finished with these settings")
            continue
        if materialize([search_round], "search_round", key):
            write_marker(store, profile, "search_round", key)
            upstream_changed = True
    if profile.search.runs_rounds and profile.search.final == "confirmed":
        # Content-addressed: a finished confirmation of the same pick is reused in seconds.
        materialize([confirmation_proxy], "confirmation_proxy")
    materialize([climbmix_manifest], "climbmix_manifest")
    materialize([climbmix_exports], "climbmix_exports")  # each skipped when already complete
    materialize([cluster_catalog], "cluster_catalog")
    return timings


ALWAYS_RECOMPUTED = {"pruned_clusters", "super_clusters", "cluster_catalog"}


def run_all(
    climb: ClimbResource,
    instance: dg.DagsterInstance,
    force: bool = False,
    log: Callable[[str], None] = print,
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """The data side, then (when the profile has targets) the search and the manifest."""
    timings = run_data_side(climb, instance, force=force, log=log, only=only)
    if climb.settings().targets:
        changed = only is None and bool(set(timings) - ALWAYS_RECOMPUTED)
        timings.update(
            run_search(climb, instance, force=force, log=log, data_changed=changed, only=only)
        )
    return timings

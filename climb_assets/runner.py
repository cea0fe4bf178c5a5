"""Runs the data side in dependency order inside one Dagster instance, skipping finished work.

This is what `climb run` and `climb demo` call. Each step is a real Dagster run (visible in the
UI under the same DAGSTER_HOME); a step whose completion marker matches the current settings is
skipped, and anything downstream of a step that ran is recomputed.
"""

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from climb_assets.defs.catalog import cluster_catalog
from climb_assets.defs.checks import (
    assignment_covers_shard,
    every_document_assigned_once,
    no_empty_kept_cluster,
)
from climb_assets.defs.common import is_done, write_marker
from climb_assets.defs.data_side import (
    cluster_assignments,
    cluster_quality,
    corpus_documents,
    embeddings,
    kmeans_centroids,
    pruned_clusters,
    super_clusters,
)
from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.sensors import new_shards


class CheckFailed(RuntimeError):
    """An asset check that guards an invariant did not pass."""


MINIMAL_INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def local_instance() -> dg.DagsterInstance:
    """The instance under DAGSTER_HOME, or `./.dagster` (created) when it is not set."""
    if not os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ.get("CLIMB_HOME", os.getcwd())) / ".dagster"
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text(MINIMAL_INSTANCE_YAML)
        os.environ["DAGSTER_HOME"] = str(home)
    return dg.DagsterInstance.get()


class Materializer:
    """Runs assets as Dagster runs in one instance, timing each step and enforcing checks."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        resources: dict,
        log: Callable[[str], None],
        log_level: str,
    ) -> None:
        self.instance, self.resources, self.log, self.log_level = (
            instance,
            resources,
            log,
            log_level,
        )
        self.timings: dict[str, float] = {}

    def __call__(
        self, assets: list, name: str, partition: str | None = None, checks: tuple = ()
    ) -> None:
        start = time.perf_counter()
        self.log(f"  materializing {name}{f' [{partition}]' if partition else ''}")
        result = dg.materialize(
            [*assets, *checks],
            partition_key=partition,
            instance=self.instance,
            resources=self.resources,
            tags={"climb/runner": "cli"},
            run_config={"loggers": {"console": {"config": {"log_level": self.log_level}}}},
        )
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
        if failed:
            names = ", ".join(e.check_name for e in failed)
            raise CheckFailed(f"asset check(s) failed after {name}: {names}; see the run's logs")


def register_shards(instance: dg.DagsterInstance, climb: ClimbResource) -> list[str]:
    """Adds a dynamic partition for every shard file not yet registered; returns the new ones."""
    added = new_shards(instance, climb)
    if added:
        instance.add_dynamic_partitions(shard_partitions.name, added)
    return added


def run_data_side(
    climb: ClimbResource,
    instance: dg.DagsterInstance,
    force: bool = False,
    log: Callable[[str], None] = print,
    log_level: str = "WARNING",
) -> dict[str, float]:
    """Materializes every data-side asset in order; returns seconds spent per step."""
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    profile, store = climb.settings(), climb.store()
    added = register_shards(instance, climb)
    shards = sorted(instance.get_dynamic_partitions(shard_partitions.name))
    log(f"{len(shards)} shard(s) registered ({len(added)} new) under {climb.corpus_store().uri()}")
    materialize = Materializer(instance, {"climb": climb}, log, log_level)
    timings = materialize.timings

    def todo(asset: str, partition: str | None) -> bool:
        return force or not is_done(store, profile, asset, partition)

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
) -> dict[str, float]:
    """Materializes the search side: tokenizer, cluster tokens, targets, every round, manifest.

    `data_changed` (the data side recomputed something) redoes everything after it. Rounds run
    in order; a round whose predictor exists with the same settings is skipped, and
    inside a round every proxy whose checkpoint is complete is reused rather than retrained.
    """
    from climb_assets.defs.io import JsonIOManager
    from climb_assets.defs.manifest import climbmix_manifest
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
    materialize = Materializer(instance, resources, log, log_level)
    timings = materialize.timings

    upstream_changed = force or data_changed
    for asset, name in ((proxy_tokenizer, "proxy_tokenizer"), (cluster_tokens, "cluster_tokens"),
                        (search_targets, "search_targets"),
                        (target_alignment, "target_alignment")):  # fmt: skip
        if upstream_changed or not is_done(store, profile, name, None):
            materialize([asset], name)
            write_marker(store, profile, name, None)
            upstream_changed = True
    for key in round_keys(profile):
        if not upstream_changed and is_done(store, profile, "search_round", key):
            log(f"  round {key} already finished with these settings")
            continue
        materialize([search_round], "search_round", key)
        write_marker(store, profile, "search_round", key)
        upstream_changed = True
    materialize([climbmix_manifest], "climbmix_manifest")
    materialize([cluster_catalog], "cluster_catalog")
    return timings


ALWAYS_RECOMPUTED = {"pruned_clusters", "super_clusters", "cluster_catalog"}


def run_all(
    climb: ClimbResource,
    instance: dg.DagsterInstance,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """The data side, then (when the profile has targets) the search and the manifest."""
    timings = run_data_side(climb, instance, force=force, log=log)
    if climb.settings().targets:
        changed = bool(set(timings) - ALWAYS_RECOMPUTED)
        timings.update(run_search(climb, instance, force=force, log=log, data_changed=changed))
    return timings

"""The `cluster_catalog` asset: a DuckDB file of views that analysts query read-only."""

from collections.abc import Sequence

import dagster as dg
import duckdb
import polars as pl

from climb_assets.defs.common import (
    CORPUS_STATE_FILE,
    MANIFEST_SOURCE_FILE,
    corpus_state,
    manifest_staleness,
)
from climb_assets.defs.data_side import pruned_clusters, super_clusters
from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.catalog import build_catalog, connect, parquet_source
from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.storage import Store

CATALOG_FILE = "catalog.duckdb"


def catalog_views(
    store: Store, scorer_names: list[str], shards: Sequence[str] = ()
) -> dict[str, str]:
    """The catalog's views over whichever Parquet outputs exist under `store`.

    `shards` (the registered shard keys) name each file's shard in the `shard` column: files
    are named by `shard_stem`, which drops the key's folders and extension.
    """

    docs = _glob_source(store, "corpus_documents/*.parquet", filename=True)
    views: dict[str, str] = {}
    if docs is None:
        return views
    stem_of_file = "regexp_extract({}filename, '([^/]+)\\.parquet$', 1)"
    shard_of_file = f"coalesce(s.shard, {stem_of_file})"
    shard_join = ""
    if shards:
        rows = ", ".join(f"({_sql_text(shard_stem(k))}, {_sql_text(k)})" for k in sorted(shards))
        views["shards"] = f"SELECT * FROM (VALUES {rows}) AS s(file_stem, shard)"
        shard_join = " LEFT JOIN shards AS s ON s.file_stem = " + stem_of_file
    else:
        shard_of_file = stem_of_file
    assigned = _glob_source(store, "cluster_assignments/*.parquet")
    quality = _glob_source(store, "cluster_quality/*.parquet")
    members = _glob_source(store, "super_clusters/members/*.parquet")
    clusters = _glob_source(store, "clusters/clusters.parquet")
    cluster_map = _glob_source(store, "super_clusters/cluster_map.parquet")
    cols = ["d.* EXCLUDE (filename)", shard_of_file.format("d.") + " AS shard"]
    joins = [f"FROM {docs} AS d" + shard_join.format("d.")]
    if assigned:
        cols += ["a.cluster_id", "a.distance AS centroid_distance", "a.n_tokens"]
        joins.append(f"LEFT JOIN {assigned} AS a USING (doc_id)")
    if quality:
        cols += [f'q."{n}" AS "quality_{n}"' for n in scorer_names]
        joins.append(f"LEFT JOIN {quality} AS q USING (doc_id)")
    if members:
        cols.append("m.super_cluster_id")
        joins.append(f"LEFT JOIN {members} AS m USING (doc_id)")
    if clusters and assigned:
        cols.append("c.kept AS cluster_kept")
        joins.append(f"LEFT JOIN {clusters} AS c ON c.cluster_id = a.cluster_id")
    views["documents"] = f"SELECT {', '.join(cols)} " + " ".join(joins)
    rejects = _glob_source(store, "corpus_rejects/*.parquet", filename=True)
    if rejects:
        views["rejected_rows"] = (
            f"SELECT {shard_of_file.format('r.')} AS shard, r.* EXCLUDE (filename) "
            f"FROM {rejects} AS r" + shard_join.format("r.")
        )
    if clusters:
        if cluster_map:
            views["clusters"] = (
                f"SELECT c.*, m.super_cluster_id FROM {clusters} AS c "
                f"LEFT JOIN {cluster_map} AS m USING (cluster_id)"
            )
        else:
            views["clusters"] = f"SELECT * FROM {clusters}"
    summary = _glob_source(store, "super_clusters/super_clusters.parquet")
    if summary:
        views["super_clusters"] = f"SELECT * FROM {summary}"
    drift = _glob_source(store, "drift/*.parquet")
    if drift:
        views["shard_drift"] = f"SELECT * FROM {drift}"
    distances = _glob_source(store, "kmeans/centroid_distances.parquet")
    if distances:
        views["centroid_distances"] = f"SELECT * FROM {distances}"
    search_views = {
        "rounds": "search/*/round.parquet",
        "mixtures": "search/*/mixtures.parquet",
        "proxy_runs": "search/*/proxy_runs.parquet",
        "evaluations": "search/*/evaluations.parquet",
        "predictions": "search/*/predictions.parquet",
        "proxy_curves": "search/*/curves.parquet",
        "predictor_cv": "search/*/cv.parquet",
        "confirmation": "search/confirmation.parquet",
        "target_alignment": "targets/alignment.parquet",
        "reference_mixtures": "references/mixtures.parquet",
        "doremi_weights": "doremi/weights.parquet",
        "doremi_trajectory": "doremi/trajectory.parquet",
        "manifest_weights": "manifest/weights.parquet",
        "manifest_documents": "manifest/shards/*.parquet",
        "manifest_validation": "manifest/validation/*.parquet",
        "exports": "exports/files.parquet",
    }
    for name, pattern in search_views.items():
        source = _glob_source(store, pattern)
        if source:
            views[name] = f"SELECT * FROM {source}"
    status = _manifest_status(store)
    if status:
        # Every row of a manifest view carries whether the corpus changed since it was built.
        views["manifest_status"] = status
        for name in ("manifest_weights", "manifest_documents", "manifest_validation"):
            if name in views:
                views[name] = (
                    f"SELECT v.*, st.stale AS manifest_stale FROM ({views[name]}) AS v "
                    f"CROSS JOIN ({status}) AS st"
                )
    return views


def _manifest_status(store: Store) -> str | None:
    """One row read at query time: the corpus the manifest was built from, the corpus the data
    side last read, and whether they differ."""
    if not (store.exists(MANIFEST_SOURCE_FILE) and store.exists(CORPUS_STATE_FILE)):
        return None
    built = _sql_text(store.uri(MANIFEST_SOURCE_FILE))
    now = _sql_text(store.uri(CORPUS_STATE_FILE))
    return (
        "SELECT b.manifest_digest, b.corpus_digest AS built_from_corpus, b.shards AS "
        "built_from_shards, c.corpus_digest AS current_corpus, c.shards AS current_shards, "
        "b.corpus_digest IS DISTINCT FROM c.corpus_digest AS stale "
        f"FROM read_json({built}) AS b CROSS JOIN read_json({now}) AS c"
    )


def open_catalog(climb: ClimbResource) -> duckdb.DuckDBPyConnection:
    """The profile's catalog opened read-only, ready to query wherever the outputs live.

    On a remote root the catalog file is fetched into the cache (again only when it changed) and
    the store's fsspec filesystem is registered, so its views read the remote Parquet files.
    """
    store = climb.store()
    if not store.exists(CATALOG_FILE):
        raise FileNotFoundError(
            f"no catalog at {store.uri(CATALOG_FILE)} yet; materialize cluster_catalog "
            "(climb run --data-only)"
        )
    if store.is_local:
        return connect(store.local_path(CATALOG_FILE))
    return connect(store.local_copy(CATALOG_FILE), filesystem=store.fs)


def dominant_sources(store: Store) -> dict[int, str]:
    """Each super-cluster's most frequent `source` and its share of the kept documents, counted
    one shard at a time (the catalog's `documents` view joins the whole corpus at once)."""
    counts: pl.DataFrame | None = None
    for rel in store.list("super_clusters/members"):
        members = pl.from_arrow(store.read_parquet(rel, ["doc_id", "super_cluster_id"]))
        texts = rel.replace("super_clusters/members", "corpus_documents", 1)
        if not store.exists(texts) or "source" not in store.parquet_schema(texts).names:
            continue
        source = pl.from_arrow(store.read_parquet(texts, ["doc_id", "source"]))
        shard = (
            members.drop_nulls("super_cluster_id")
            .join(source, on="doc_id")
            .group_by("super_cluster_id", "source")
            .len()
        )
        counts = shard if counts is None else pl.concat([counts, shard])
        counts = counts.group_by("super_cluster_id", "source").agg(pl.col("len").sum())
    if counts is None or counts.is_empty():
        return {}
    totals = counts.group_by("super_cluster_id").agg(pl.col("len").sum().alias("total"))
    ranked = counts.join(totals, on="super_cluster_id").sort(
        ["super_cluster_id", "len", "source"], descending=[False, True, False], nulls_last=True
    )
    out: dict[int, str] = {}
    for sc, source, n, total in ranked.iter_rows():
        out.setdefault(int(sc), f"{source} {n / total:.0%}")
    return out


def _sql_text(value: str) -> str:
    """`value` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _glob_source(store: Store, pattern: str, filename: bool = False) -> str | None:
    """`read_parquet` over `pattern` (at most one `*`) if any file matches, else None."""
    head, star, tail = pattern.partition("*")
    if "*" in tail:
        raise ValueError(f"one wildcard per pattern: {pattern}")
    if not star:
        found = store.exists(pattern)
    else:
        found = any(p.endswith(tail.lstrip("/")) for p in store.list(head.rstrip("/")))
    if not found:
        return None
    call = parquet_source(store.uri(pattern))
    return call[:-1] + ", filename = true)" if filename else call


@dg.asset(
    group_name="catalog",
    deps=[pruned_clusters, super_clusters, "climbmix_manifest", "climbmix_exports"],
    kinds={"duckdb"},
)
def cluster_catalog(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """A DuckDB file of views over every Parquet output: documents, clusters, search, manifest.

    Views exist for whatever has been computed, so it can be refreshed after the data side
    alone and again after the search.
    """
    profile, store = climb.settings(), climb.store()
    shards = context.instance.get_dynamic_partitions(shard_partitions.name)
    store.write_json(CORPUS_STATE_FILE, corpus_state(store, list(shards)))
    stale = manifest_staleness(store)
    if stale:
        context.log.warning(stale)
    views = catalog_views(store, [s.name for s in profile.quality.scorers], shards)
    if not views:
        raise FileNotFoundError("no corpus_documents yet; materialize the data side first")
    path = store.local_path(CATALOG_FILE)
    if path is not None:
        build_catalog(path, views)
        opener = f"duckdb -readonly {path}\n```\nor `duckdb.connect('{path}', read_only=True)`"
    else:
        local = store.cache_path(CATALOG_FILE)
        build_catalog(local, views, filesystem=store.fs)
        store.write_bytes(CATALOG_FILE, local.read_bytes())
        opener = (
            "import duckdb, s3fs\n"
            f"# download {store.uri(CATALOG_FILE)} to catalog.duckdb, then:\n"
            "con = duckdb.connect('catalog.duckdb', read_only=True)\n"
            "con.register_filesystem(s3fs.S3FileSystem())  # credentials from the environment\n"
            "```\nor `climb catalog` (downloads it and registers the filesystem)"
        )
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(store.uri(CATALOG_FILE)),
            "views": sorted(views),
            "open_with": dg.MetadataValue.md(f"```\n{opener}"),
        }
    )

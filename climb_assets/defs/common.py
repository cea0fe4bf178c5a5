"""Shared helpers of the data-side assets: which shards exist, and completion markers."""

import hashlib
import json
import time
from typing import Any

import dagster as dg

from climb_assets.config import Profile
from climb_assets.defs.partitions import shard_partitions
from climb_assets.lib import plots
from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.layout import PER_SHARD_ASSETS, SHARD_OUTPUTS
from climb_assets.lib.storage import Store

# Which profile sections each asset's output depends on (directly or through its inputs).
ASSET_SECTIONS = {
    "corpus_documents": ("corpus",),
    "embeddings": ("corpus", "encoder"),
    "cluster_quality": ("corpus", "quality"),
    "kmeans_centroids": ("corpus", "encoder", "kmeans"),
    "cluster_assignments": ("corpus", "encoder", "kmeans"),
    "proxy_tokenizer": ("corpus", "encoder", "kmeans", "quality", "merge", "tokenizer"),
    "cluster_tokens": ("corpus", "encoder", "kmeans", "quality", "merge", "tokenizer"),
    "search_targets": ("corpus", "targets"),
    "target_alignment": ("corpus", "encoder", "kmeans", "quality", "merge", "targets"),
    "search_round": (
        "corpus",
        "encoder",
        "kmeans",
        "quality",
        "merge",
        "tokenizer",
        "proxy",
        "targets",
        "search",
        "predictor",
        "manifest",  # the repetition caps bound every candidate
    ),
}


# Settings that change how fast a step runs, never what it writes: left out of fingerprints, so
# changing them redoes nothing.
EXECUTION_ONLY = {"quality": ("workers", "read_batch_rows"), "manifest": ("export_workers",)}

# Bumped when an asset's output format changes, so finished work from older code is redone.
ASSET_VERSIONS = {
    "corpus_documents": 2, "embeddings": 2, "search_round": 2,
    # 2: documents lists name each document's shard and row; parts in part-order-key order.
    "cluster_tokens": 2, "climbmix_manifest": 2,
}  # fmt: skip


def fingerprint(profile: Profile, asset: str) -> str:
    """Hash of the profile sections (and code version) that determine `asset`'s output."""
    data = profile.to_dict()
    sections = ASSET_SECTIONS.get(asset, tuple(sorted(data)))
    picked = {s: data[s] for s in sections if s != "name"}
    for section, keys in EXECUTION_ONLY.items():
        if section in picked:
            picked[section] = {k: v for k, v in picked[section].items() if k not in keys}
    picked["_version"] = ASSET_VERSIONS.get(asset, 1)
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def marker_path(asset: str, partition: str | None) -> str:
    return f"_done/{asset}/{shard_stem(partition) if partition else 'all'}.json"


def write_marker(
    store: Store,
    profile: Profile,
    asset: str,
    partition: str | None,
    source: str | None = None,
) -> None:
    """Records that `asset` (partition) finished with the current settings.

    `source` is the identity (`Store.identity`) of the shard file the output was computed
    from, so that a shard replaced in place is read again.
    """
    record: dict[str, Any] = {
        "fingerprint": fingerprint(profile, asset),
        "finished_at": time.time(),
    }
    if source is not None:
        record["source"] = source
    store.write_json(marker_path(asset, partition), record)


CORPUS_STATE_FILE = "_done/corpus.json"
"""The corpus the data side last read: its digest and shard count (see `corpus_state`)."""
MANIFEST_SOURCE_FILE = "manifest/built_from.json"
"""The corpus the manifest was built from, beside the manifest (same keys as above)."""


def corpus_state(store: Store, shards: list[str]) -> dict[str, Any]:
    """The registered shards and the identity each was read from, as one digest.

    Two outputs built from the same shard files have the same digest; a shard added, deleted
    or replaced in place changes it.
    """
    rows = sorted((key, marker_source(store, "corpus_documents", key) or "") for key in shards)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return {"corpus_digest": digest, "shards": len(rows)}


def manifest_staleness(store: Store) -> str | None:
    """A line saying the manifest and exports were built from a corpus that has changed since
    (a shard deleted, added or replaced, and the search not yet run again), or None."""
    if not (store.exists(MANIFEST_SOURCE_FILE) and store.exists(CORPUS_STATE_FILE)):
        return None
    built, now = store.read_json(MANIFEST_SOURCE_FILE), store.read_json(CORPUS_STATE_FILE)
    if built.get("corpus_digest") == now.get("corpus_digest"):
        return None
    return (
        f"the manifest and exports under {store.uri('manifest')} are STALE: built from corpus "
        f"{built.get('corpus_digest')} ({built.get('shards')} shards), the corpus is now "
        f"{now.get('corpus_digest')} ({now.get('shards')} shards); `climb run` rebuilds them"
    )


def adopt_unsourced_markers(store: Store, corpus: Store, shard: str) -> bool:
    """Gives markers written before shard identities were recorded the shard's current one.

    Only when the shard file is older than the marker of its documents (it cannot have been
    replaced since it was read); otherwise the markers stay without one and the shard is read
    again. Saves re-embedding a whole corpus after an upgrade. Returns whether it adopted.
    """
    rel = marker_path("corpus_documents", shard)
    if not store.exists(rel) or not corpus.exists(shard):
        return False
    record = store.read_json(rel)
    if "source" in record:
        return False
    modified = corpus.fs.modified(corpus.path(shard)).timestamp()
    if modified >= float(record.get("finished_at", 0)):
        return False
    source = corpus.identity(shard)
    for asset in PER_SHARD_ASSETS:
        marker = marker_path(asset, shard)
        if store.exists(marker):
            store.write_json(marker, {**store.read_json(marker), "source": source})
    return True


def marker_source(store: Store, asset: str, partition: str) -> str | None:
    """The shard identity recorded in `asset`'s marker for `partition` (None when absent)."""
    rel = marker_path(asset, partition)
    return store.read_json(rel).get("source") if store.exists(rel) else None


def is_done(
    store: Store,
    profile: Profile,
    asset: str,
    partition: str | None,
    source: str | None = None,
) -> bool:
    """True when `asset` (partition) finished before with the same relevant settings.

    With `source`, the output must also have been computed from that identity of its shard.
    """
    rel = marker_path(asset, partition)
    if not store.exists(rel):
        return False
    record = store.read_json(rel)
    if source is not None and record.get("source") != source:
        return False
    return record.get("fingerprint") == fingerprint(profile, asset)


def remove_shard_outputs(store: Store, key: str) -> None:
    """Deletes everything computed from one shard, completion markers first."""
    for asset in PER_SHARD_ASSETS:
        store.remove(marker_path(asset, key))
    for folder, suffix in SHARD_OUTPUTS:
        store.remove(f"{folder}/{shard_stem(key)}{suffix}")


def registered_shards(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext,
) -> list[str]:
    """The shard partitions registered in the instance, sorted."""
    keys = sorted(context.instance.get_dynamic_partitions(shard_partitions.name))
    if not keys:
        raise ValueError(
            "no corpus shards are registered as partitions; run `climb register-shards` or turn "
            "on the corpus_shards_sensor"
        )
    return keys


def require_files(store: Store, rels: dict[str, str], asset: str) -> None:
    """Raises naming the partitions whose upstream files are missing."""
    missing = [key for key, rel in rels.items() if not store.exists(rel)]
    if missing:
        raise FileNotFoundError(
            f"{asset} is missing for shard partition(s) {missing[:5]}"
            f"{' and more' if len(missing) > 5 else ''}; materialize {asset} for them first"
        )


def chart(store: Store, rel: str, png: bytes, title: str) -> dict[str, dg.MetadataValue]:
    """A chart's two metadata entries, after writing its PNG to ``rel`` beside the outputs.

    ``chart_<name>`` holds the picture (Dagster shows markdown behind one "Show Markdown"
    click; the key says a chart is behind it) and ``chart_<name>_png`` the file's location,
    for a browser, a notebook or a report.
    """
    store.write_bytes(rel, png)
    name = rel.rsplit("/", 1)[-1].removesuffix(".png")
    return {
        f"chart_{name}": dg.MetadataValue.md(f"**{title}**\n\n{plots.markdown_image(png, title)}"),
        f"chart_{name}_png": dg.MetadataValue.path(store.uri(rel)),
    }


def _cell(value: Any) -> str | int | float | bool | None:
    """A table cell: scalars as they are, numpy scalars unwrapped, anything else as text."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    return str(value)


def metadata_table(
    rows: list[dict[str, Any]], description: dict[str, str] | None = None, limit: int = 50
) -> dg.MetadataValue:
    """Rows as Dagster's native table metadata (typed columns, shown as a table in the UI)."""
    rows = [{k: _cell(v) for k, v in row.items()} for row in rows[:limit]]
    if not rows:
        return dg.MetadataValue.md("_none_")
    types = {bool: "bool", int: "int", float: "float"}
    columns = [
        dg.TableColumn(
            name,
            types.get(type(value), "string"),
            description=(description or {}).get(name),
        )
        for name, value in rows[0].items()
    ]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in rows], schema=dg.TableSchema(columns=columns)
    )

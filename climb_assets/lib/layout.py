"""Where per-shard outputs live in the output store, and the upgrade of older layouts.

Every output computed from one shard is named by `shard_stem`, under one folder per output;
completion markers live under `_done/<asset>/`. Code that changes these names bumps
`LAYOUT_VERSION` and teaches `upgrade_layout` the rename, so a store written by older code is
carried forward instead of recomputed.
"""

from __future__ import annotations

import contextlib

from climb_assets.lib.corpus import shard_stem
from climb_assets.lib.storage import Store

SHARD_OUTPUTS = (
    ("corpus_documents", ".parquet"),
    ("corpus_rejects", ".parquet"),
    ("corpus_ids", ".npy"),
    ("embeddings", ".npy"),
    ("embeddings", ".tokens.parquet"),
    ("cluster_quality", ".parquet"),
    ("cluster_assignments", ".parquet"),
    ("drift", ".parquet"),
    ("super_clusters/members", ".parquet"),
)
"""Every file written per shard partition (folder, suffix)."""
PER_SHARD_ASSETS = ("corpus_documents", "embeddings", "cluster_quality", "cluster_assignments")


LAYOUT_FILE = "_done/layout.json"
LAYOUT_VERSION = 2
"""2: per-shard files are named by `shard_stem` (`shard-000.parquet`); 1 kept the shard's own
extension in front of the output's (`shard-000.jsonl.parquet`)."""


def upgrade_layout(store: Store) -> int:
    """Renames per-shard outputs and markers written by older code to today's names, once.

    Done before anything reads them, so an upgrade redoes no finished work. Safe to run from
    several processes at once (a file another process moved is skipped). Returns files moved.
    """
    if not store.exists(""):  # a new store: today's layout from its first file on
        # no bucket or no access: left to the assets' own check, which names the fix
        with contextlib.suppress(OSError):
            store.write_json(LAYOUT_FILE, {"version": LAYOUT_VERSION, "moved": 0})
        return 0
    if store.exists(LAYOUT_FILE) and store.read_json(LAYOUT_FILE).get("version") == LAYOUT_VERSION:
        return 0
    named = [*SHARD_OUTPUTS, *((f"_done/{asset}", ".json") for asset in PER_SHARD_ASSETS)]
    moved = 0
    for folder, suffix in named:
        for rel in store.list(folder, (suffix,)):
            old_stem = rel.rsplit("/", 1)[-1][: -len(suffix)]
            if "/" in rel[len(folder) + 1 :] or old_stem == "all":
                continue
            target = f"{folder}/{shard_stem(old_stem)}{suffix}"
            if target != rel and not store.exists(target):
                moved += store.move(rel, target)
    store.write_json(LAYOUT_FILE, {"version": LAYOUT_VERSION, "moved": moved})
    return moved

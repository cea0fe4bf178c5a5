"""The `climbmix_exports` asset: the manifest in the formats training stacks load.

Its own asset, downstream of `climbmix_manifest`, so a failed or re-run export never redoes the
selection. Each export (`climb_assets.lib.exports`) is built in a staging folder, published whole,
and skipped when it is already complete for the same manifest digest.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.config import resolve_location
from climb_assets.defs.common import metadata_table, registered_shards
from climb_assets.defs.manifest import climbmix_manifest
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import GROUP
from climb_assets.lib import tokens
from climb_assets.lib.exports import EXPORTERS, ExportContext, exports_to_build, run_export

MANIFEST_FILE = "manifest/climbmix.json"
FILES_TABLE = "exports/files.parquet"
"""One row per exported file (export, path, bytes, sha256): the catalog's `exports` view."""


def training_tokenizer(climb: ClimbResource, log: dg.DagsterLogManager) -> tuple[str, str]:
    """Local path (or hub id) of the training tokenizer and a note on where it comes from."""
    configured = climb.settings().manifest.tokenizer
    if configured:
        return training_tokenizer_location(climb, configured), configured
    proxy = str(climb.store().local_copy("tokenizer/tokenizer.json"))
    vocab = tokens.load_tokenizer(proxy).get_vocab_size()
    log.warning(
        f"manifest.tokenizer is not set: the megatron export is tokenized with the proxy "
        f"tokenizer ({vocab} ids); a production run names its own training tokenizer"
    )
    return proxy, f"proxy tokenizer (tokenizer/tokenizer.json, {vocab} ids)"


def training_tokenizer_location(climb: ClimbResource, configured: str) -> str:
    """A URL fetched into the cache, an existing local path made absolute, else a hub id."""
    if "://" in configured:
        return climb.fetch(configured)
    local = resolve_location(configured)
    return local if Path(local).exists() else configured


@dg.asset(
    group_name=GROUP,
    deps=[
        climbmix_manifest,
        # Read directly, as the manifest reads them (Dagster marks only direct children stale):
        # the ClimbLab export is the kept corpus itself, and the proxy tokenizer is the default
        # training tokenizer. A corpus refresh then marks the exports stale with the manifest.
        "super_clusters",
        "corpus_documents",
        "cluster_quality",
        "pruned_clusters",
        "proxy_tokenizer",
    ],
    kinds={"parquet", "pytorch"},
)
def climbmix_exports(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    """The manifest as the training tokenizer, Megatron indexed datasets (train and validation)
    with blends and `pretrain_gpt.py` arguments, HF train/validation splits + card, ClimbLab."""
    profile, store = climb.settings(), climb.store()
    names = exports_to_build(profile.manifest.exports)
    if not names:
        return dg.MaterializeResult(metadata={"exports": "none (manifest.exports is empty)"})
    if not store.exists(MANIFEST_FILE):
        raise FileNotFoundError("no manifest yet; materialize climbmix_manifest first")
    doc = store.read_json(MANIFEST_FILE)
    if "manifest_digest" not in doc:
        raise ValueError(
            "the manifest was written by an older climb without a digest; materialize "
            "climbmix_manifest again (or `climb run`), then the exports"
        )
    granted = [int(r["tokens"]) for r in doc["super_clusters"]]
    tokenizer, note = (None, "")
    if "tokenizer" in names:
        tokenizer, note = training_tokenizer(climb, context.log)
    m = profile.manifest
    ctx = ExportContext(
        store=store,
        manifest_digest=doc["manifest_digest"],
        weights=np.asarray([r["weight"] for r in doc["super_clusters"]], dtype=np.float64),
        parts=store.list("manifest/shards", (".parquet",)),
        validation_parts=store.list("manifest/validation", (".parquet",)),
        granted_tokens=granted,
        shards=registered_shards(context),
        scorers=[s.name for s in profile.quality.scorers],
        tokenizer=tokenizer,
        tokenizer_note=note,
        seed=m.seed,
        license=m.license,
        seq_length=m.seq_length,
        global_batch_size=m.global_batch_size,
        export_workers=m.export_workers,
    )
    records = {name: run_export(EXPORTERS[name](), ctx, context.log.info) for name in names}
    rows = [
        {"export": name, **f, "manifest_digest": r["manifest_digest"]}
        for name, r in records.items()
        for f in r["files"]
    ]
    store.write_parquet(FILES_TABLE, pa.Table.from_pylist(rows))
    summary = {
        name: {k: v for k, v in r.items() if k != "files"} | {"files": len(r["files"])}
        for name, r in records.items()
    }
    store.write_json("exports/exports.json", {"manifest_digest": ctx.manifest_digest,
                                              "exports": summary})  # fmt: skip
    # The manifest is the one document a training team reads: it lists the exports built from
    # it (with their file lists), as long as its digest is still the one they were built from.
    latest = store.read_json(MANIFEST_FILE)
    if latest.get("manifest_digest") == ctx.manifest_digest:
        latest["exports"] = {
            name: {k: r[k] for k in ("folder", "bytes", "files", "manifest_digest", "written_at")}
            for name, r in records.items()
        }
        store.write_json(MANIFEST_FILE, latest)
    rows_by_export = [
        {"export": n, "files": s["files"], "MB": round(s["bytes"] / 1e6, 2),
         "skipped": s["skipped"], "folder": s["folder"]}
        for n, s in summary.items()
    ]  # fmt: skip
    metadata: dict[str, dg.RawMetadataValue] = {
        "manifest_digest": ctx.manifest_digest,
        "exports": metadata_table(rows_by_export),
    }
    if "megatron" in records:
        megatron = records["megatron"]
        metadata["megatron_blend"] = dg.MetadataValue.json(
            {k: megatron[k] for k in ("train_data_path", "valid_data_path")}
        )
        metadata["megatron_training_tokens"] = megatron["training_tokens"]
        metadata["train_samples"] = megatron["train_samples"]
        metadata["pretrain_gpt_args"] = dg.MetadataValue.path(
            store.uri("exports/megatron/megatron_args.absolute.txt")
        )
    if "tokenizer" in records:
        metadata["training_tokenizer"] = records["tokenizer"]["tokenizer"]
    return dg.MaterializeResult(metadata=metadata)

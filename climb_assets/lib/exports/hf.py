"""Hugging Face datasets: the manifest's pre-mixed `train` and `validation` splits and a card.

`train/` holds the manifest's parts as they are: already in one seeded shuffled order, each
document once per pass the token budget asked for (so never more than `manifest.max_epochs`
times), so reading it in order trains on the mixture. `validation/` holds the held-out
documents, none of them in `train/`. The card's YAML names both splits, so
`datasets.load_dataset(<folder>)` returns them; it states the licence, the tokenizer the data
is meant for (the `tokenizer` export beside this one) and what `n_tokens` counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from climb_assets.lib.exports.base import ExportContext, Exporter
from climb_assets.lib.exports.megatron import prefix_name

COLUMNS = ["text", "doc_id", "cluster_id", "super_cluster_id", "n_tokens", "pass"]
SPLITS = ("train", "validation")
SUPER_CLUSTER_HEADER = (
    "| super-cluster | ClimbMix weight | share of train tokens | rows | unique documents | "
    "tokens | validation documents |\n|---|---|---|---|---|---|---|"
)


def _license_yaml(license_: str) -> str:
    """The card's `license:` field: an identifier as it is, anything else as `other` + name."""
    if license_ and all(c.isalnum() or c in "-._+" for c in license_):
        return f"license: {license_.lower()}"
    return f"license: other\nlicense_name: {json.dumps(license_)}"


def dataset_card(summary: dict[str, Any], folder: str) -> str:
    """The README.md of the export: YAML header (splits, licence), counts, provenance, loading."""
    splits = [s for s in SPLITS if summary["splits"].get(s, {}).get("documents")]
    data_files = "\n".join(f"  - split: {s}\n    path: {s}/*.parquet" for s in splits)
    rows = "\n".join(
        f"| {name} | {s['weight']:.4f} | {s['token_share']:.4f} | {s['documents']:,} | "
        f"{s['unique_documents']:,} | {s['tokens']:,} | {s['validation_documents']:,} |"
        for name, s in summary["super_clusters"].items()
    )
    counts = "\n".join(
        f"| {s} | {c['documents']:,} | {c['unique_documents']:,} | {c['tokens']:,} |"
        for s, c in summary["splits"].items()
    )
    return f"""---
{_license_yaml(summary["license"])}
configs:
- config_name: default
  data_files:
{data_files}
---
# ClimbMix export

The mixture a CLIMB search chose (manifest digest `{summary["manifest_digest"]}`, seed
{summary["seed"]}), pre-mixed: `train/` is the manifest's selection in one seeded shuffled
order, each document repeated once per pass the token budget asked for (at most
{summary["max_repeats"]} times here), so reading it in order trains on the mixture.
`validation/` holds documents held out of every super-cluster before selection; none of them
is in `train/`.

- **Licence:** {summary["license"]}
- **Tokenizer:** the `tokenizer` export beside this folder (`../tokenizer`,
  `transformers.AutoTokenizer.from_pretrained` loads it), {summary["tokenizer"]}.
- **`n_tokens`:** {summary["n_tokens_note"]}.
- Columns: `text`, `doc_id`, `cluster_id`, `super_cluster_id`, `n_tokens`, `pass` (0 for a
  document's first appearance in `train/`, 1 for its second...).

| split | rows | unique documents | tokens |
|---|---|---|---|
{counts}

{SUPER_CLUSTER_HEADER}
{rows}

```python
import datasets

mix = datasets.load_dataset({json.dumps(folder)})
train, validation = mix["train"], mix.get("validation")
```
"""


class HFExport(Exporter):
    """The manifest's train and validation splits as Parquet, with a dataset card."""

    name = "hf"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        n_super = len(ctx.weights)
        splits: dict[str, dict[str, int]] = {}
        per_sc = {k: np.zeros(n_super, np.int64) for k in ("rows", "first", "tokens", "valid")}
        max_repeats = 0
        for split, parts in (("train", ctx.parts), ("validation", ctx.validation_parts)):
            if not parts:
                continue
            (out / split).mkdir()
            totals = splits.setdefault(split, {"documents": 0, "unique_documents": 0, "tokens": 0})
            for i, rel in enumerate(parts):
                # A row group at a time: the copy keeps the part's row groups (so its bytes
                # match a whole-table write of a one-group part) and memory holds one.
                writer = None
                for table in ctx.store.iter_row_groups(rel, COLUMNS):
                    if writer is None:
                        path = out / split / f"part-{i:05d}.parquet"
                        writer = pq.ParquetWriter(path, table.schema, compression="zstd")
                    writer.write_table(table)
                    groups = table.column("super_cluster_id").to_numpy()
                    passes = table.column("pass").to_numpy()
                    n_tokens = table.column("n_tokens").to_numpy()
                    totals["documents"] += table.num_rows
                    totals["unique_documents"] += int((passes == 0).sum())
                    totals["tokens"] += int(n_tokens.sum())
                    if split == "train":
                        per_sc["rows"] += np.bincount(groups, minlength=n_super)
                        per_sc["first"] += np.bincount(groups[passes == 0], minlength=n_super)
                        per_sc["tokens"] += np.bincount(groups, n_tokens, minlength=n_super).astype(
                            np.int64
                        )
                        max_repeats = max(max_repeats, int(passes.max(initial=-1)) + 1)
                    else:
                        per_sc["valid"] += np.bincount(groups, minlength=n_super)
                if writer is not None:
                    writer.close()
        train_tokens = max(1, int(per_sc["tokens"].sum()))
        super_clusters = {
            prefix_name(sc): {
                "weight": float(ctx.weights[sc]),
                "token_share": float(per_sc["tokens"][sc]) / train_tokens,
                "documents": int(per_sc["rows"][sc]),
                "unique_documents": int(per_sc["first"][sc]),
                "tokens": int(per_sc["tokens"][sc]),
                "validation_documents": int(per_sc["valid"][sc]),
            }
            for sc in range(n_super)
            if per_sc["rows"][sc] or per_sc["valid"][sc]
        }
        summary = {
            "manifest_digest": ctx.manifest_digest,
            "seed": ctx.seed,
            "license": ctx.license,
            "tokenizer": ctx.tokenizer_note or "the proxy tokenizer",
            "n_tokens_note": (
                "the document's length in the search's proxy tokenizer (`tokenizer/tokenizer."
                "json` of the storage root), end-of-document included; the training tokenizer's "
                "counts are in the megatron export's `_export.json`"
            ),
            "max_repeats": max_repeats,
            "splits": splits,
            "super_clusters": super_clusters,
        }
        (out / "README.md").write_text(dataset_card(summary, ctx.store.uri("exports/hf")))
        rows = ", ".join(f"{split} {c['documents']:,} rows" for split, c in splits.items())
        log(f"export hf: {rows} and a dataset card")
        return {k: v for k, v in summary.items() if k != "manifest_digest"}

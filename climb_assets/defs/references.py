"""The `reference_mixtures` asset: training-free mixtures to read ClimbMix against, or to ship.

natural, uniform, UniMax, BiMix's four entropy mixtures and the target-aligned mixture
(`climb_assets.lib.baselines`), computed in seconds from `cluster_tokens` (and
`target_alignment` when the targets are texts). Any of them can be the final mixture
(`search.final: unimax`, ...): then no search round runs. The manifest records each one's weights
and, when proxies were trained, the last predictor's estimate of its objective.
"""

import json
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.defs.common import metadata_table
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    GROUP,
    cluster_summary,
    cluster_tokens,
    target_alignment,
    trainable_tokens,
)
from climb_assets.defs.search_round import current_alignment
from climb_assets.lib.baselines import BaselineError, BaselineInputs, compute_references
from climb_assets.lib.storage import Store

REFERENCES_FILE = "references/mixtures.parquet"
SKIPPED_FILE = "references/skipped.json"


def load_references(store: Store) -> dict[str, np.ndarray]:
    """Weights of every reference mixture computed so far, by name (empty when none)."""
    if not store.exists(REFERENCES_FILE):
        return {}
    rows = store.read_parquet(REFERENCES_FILE, ["name", "weights"]).to_pylist()
    return {r["name"]: np.asarray(r["weights"], dtype=np.float64) for r in rows}


def reference_weights(store: Store, name: str) -> np.ndarray:
    """The named reference mixture's weights; a clear error when it is missing or was skipped."""
    found = load_references(store)
    if name in found:
        return found[name]
    skipped = store.read_json(SKIPPED_FILE) if store.exists(SKIPPED_FILE) else {}
    if name in skipped:
        raise ValueError(f"search.final is {name!r}, which could not be computed: {skipped[name]}")
    raise ValueError(
        f"search.final is {name!r} but reference_mixtures has not been materialized with it; "
        "materialize reference_mixtures first (climb run does)"
    )


@dg.asset(
    group_name=GROUP,
    deps=[cluster_tokens, target_alignment],
    kinds={"parquet", "numpy"},
    description=(
        "Training-free reference mixtures: natural, uniform, UniMax (even spread under the "
        "repetition cap), BiMix's entropy mixtures (Shannon and conditional entropy of each "
        "super-cluster's tokens; proportional and softmax) and the target-aligned mixture. "
        "Seconds, no proxy; any one can be search.final, and the manifest compares them."
    ),
)
def reference_mixtures(
    context: dg.AssetExecutionContext, climb: ClimbResource
) -> dg.MaterializeResult:
    profile, store = climb.settings(), climb.store()
    available = np.asarray(cluster_summary(store)["tokens"], dtype=np.int64)
    k = available.size
    inputs = BaselineInputs(
        available_tokens=available,
        trainable_tokens=trainable_tokens(store, profile),  # validation documents held out
        total_tokens=profile.manifest.total_tokens,
        max_epochs=profile.manifest.max_epochs,
        token_ids=lambda i: store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy"),
        alignment=current_alignment(store, k),
    )
    mixtures, skipped = compute_references(inputs)
    for name, why in skipped.items():
        context.log.warning(f"reference mixture {name} skipped: {why}")
    if not profile.search.runs_rounds and profile.search.final in skipped:
        raise BaselineError(
            f"search.final is {profile.search.final!r}, which cannot be computed: "
            f"{skipped[profile.search.final]}"
        )
    store.write_parquet(
        REFERENCES_FILE,
        pa.table(
            {
                "name": [m.name for m in mixtures],
                "description": [m.description for m in mixtures],
                "weights": pa.array([m.weights.tolist() for m in mixtures], pa.list_(pa.float64())),
                "details": [json.dumps(m.details) for m in mixtures],
            }
        ),
    )
    store.write_json(SKIPPED_FILE, skipped)
    rows: list[dict[str, Any]] = [
        {"name": m.name, "weights": " ".join(f"{w:.3f}" for w in m.weights[:16]),
         "max_weight": round(float(m.weights.max()), 4), "how": m.description}
        for m in mixtures
    ]  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            "mixtures": metadata_table(rows),
            "skipped": skipped or "none",
            "super_clusters": k,
            "path": dg.MetadataValue.path(store.uri(REFERENCES_FILE)),
        }
    )

"""The `confirmation_proxy` asset: the last predictor's pick, trained once more and measured.

With `search.final: confirmed` (the default) the manifest never ships an unmeasured prediction.
After the last round, the last predictor's argmax over fresh candidates (the mixture
`final: argmax` would ship) is trained as one more proxy, with the trainer, budget and seed of
every search proxy, content-addressed (a pick that some round already trained is reused, a killed
run resumes) and GPU-tagged, then scored on the targets. The manifest ships the best measured of
that pick, the best proxy of the rounds and the anchors (`climb_assets.lib.rounds.best_measured`).
"""

import hashlib
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.config import Profile
from climb_assets.defs.proxies import evaluate_proxy, train_proxy
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import GROUP, IO, round_keys
from climb_assets.defs.search_round import SearchSpace, load_round_predictor, search_space
from climb_assets.lib import mixture, proposals, rounds
from climb_assets.lib.storage import Store

CONFIRMATION_FILE = "search/confirmation.json"
CONFIRMATION_TABLE = "search/confirmation.parquet"
"""The same record for the catalog's `confirmation` view."""
CONFIRMATION_ID = "confirmation"


def last_predictor_digest(store: Store, profile: Profile) -> str:
    """Identity of the last round's predictor: a confirmation made for another is stale."""
    rel = f"search/{round_keys(profile)[-1]}/predictor.json"
    return hashlib.sha256(store.read_bytes(rel)).hexdigest()[:16]


def load_confirmation(store: Store, profile: Profile) -> dict[str, Any] | None:
    """The confirmation proxy's record, when it was made for the current last predictor."""
    if not store.exists(CONFIRMATION_FILE):
        return None
    record = store.read_json(CONFIRMATION_FILE)
    return record if record.get("predictor") == last_predictor_digest(store, profile) else None


def predictor_pick(
    profile: Profile, space: SearchSpace, model: Any, rule: str = "argmax"
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """The predictor's final pick over a fresh pool (seeded by `manifest.seed`): argmax (the
    mean of the tied set when a tree ties) or topk_mean; weights, how, and details."""
    s = profile.search
    pool = space.pool(profile, profile.manifest.seed)
    scores = model.predict(pool)
    ties = proposals.top_ties(scores, 1 if rule == "argmax" else s.final_top_k)
    how = (
        f"predictor argmax of {len(pool)} fresh candidates"
        if rule == "argmax"
        else f"mean of the predictor's top {s.final_top_k} of {len(pool)} fresh candidates"
    )
    weights = mixture.final_mixture(pool, scores, rule, s.final_top_k)
    return weights, how, {"tied_at_best": ties.tied, "candidates": len(pool)}


@dg.op(ins={"predictor_models": dg.In(dg.Nothing)}, out=dg.Out(io_manager_key=IO))
def confirmation_pick(context: dg.OpExecutionContext, climb: ClimbResource) -> dict:
    """The mixture to confirm: the last predictor's argmax, fitted under the repetition caps."""
    profile, store = climb.settings(), climb.store()
    keys = round_keys(profile)
    if not store.exists(f"search/{keys[-1]}/predictor.json"):
        raise ValueError(
            f"the confirmation proxy needs the last round's predictor ({keys[-1]}); materialize "
            "every search round first"
        )
    model = load_round_predictor(store, keys[-1])
    space = search_space(profile, store)
    weights, how, details = predictor_pick(profile, space, model)
    if details["tied_at_best"] > 1:
        context.log.warning(
            f"{details['tied_at_best']} candidates tie at the best predicted value; confirming "
            "their mean (the centre of the predicted-best region)"
        )
    # The mean of a tied set is off the grid; the caps keep it a mixture the manifest can ship.
    weights = rounds.fit_to_caps(weights, space.caps)
    predicted = float(model.predict(weights[None, :])[0])
    context.log.info(f"confirming the {how}: predicted objective {predicted:.4f}")
    return {"mixture_id": CONFIRMATION_ID, "key": mixture.mixture_key(weights),
            "weights": weights.tolist(), "design": "confirmation", "predicted": predicted,
            "how": how, "predictor": last_predictor_digest(store, profile)}  # fmt: skip


@dg.op(out=dg.Out(io_manager_key=IO))
def record_confirmation(
    context: dg.OpExecutionContext, climb: ClimbResource, pick: dict, evaluation: dict
) -> dict:
    """The confirmed pick beside its prediction: what the manifest compares."""
    store = climb.store()
    record = {
        "mixture_id": CONFIRMATION_ID, "key": pick["key"], "weights": pick["weights"],
        "how": pick["how"], "predicted": pick["predicted"], "objective": evaluation["objective"],
        "scores": evaluation["scores"], "run_id": evaluation["run_id"],
        "predictor": pick["predictor"],
    }  # fmt: skip
    store.write_json(CONFIRMATION_FILE, record)
    store.write_parquet(
        CONFIRMATION_TABLE,
        pa.table({"mixture_id": [CONFIRMATION_ID], "key": [record["key"]],
                  "weights": pa.array([record["weights"]], pa.list_(pa.float64())),
                  "predicted_objective": [record["predicted"]],
                  "objective": [record["objective"]], "run_id": [record["run_id"]]}),
    )  # fmt: skip
    context.add_output_metadata(
        {"measured_objective": round(record["objective"], 5),
         "predicted_objective": round(record["predicted"], 5),
         "prediction_error": round(record["predicted"] - record["objective"], 5),
         "max_weight": round(float(np.max(record["weights"])), 4),
         "proxy_run": record["run_id"],
         "path": dg.MetadataValue.path(store.uri(CONFIRMATION_FILE))}
    )  # fmt: skip
    return record


@dg.graph_asset(
    name="confirmation_proxy",
    group_name=GROUP,
    ins={
        "predictor_models": dg.AssetIn(
            "predictor_models",
            partition_mapping=dg.LastPartitionMapping(),
            dagster_type=dg.Nothing,
        )
    },
    kinds={"pytorch", "json"},
    description=(
        "search.final: confirmed. The last predictor's argmax trained once more as a proxy "
        "(content-addressed, GPU-tagged) and scored on the targets, so the manifest ships the "
        "best MEASURED of that pick, the best proxy and the anchors, never a bare prediction."
    ),
)
def confirmation_proxy(predictor_models):
    pick = confirmation_pick(predictor_models=predictor_models)
    return record_confirmation(pick, evaluate_proxy(train_proxy(pick)))

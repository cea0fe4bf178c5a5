"""The `doremi_mixture` asset: DoReMi (Xie et al. 2023) as a search method.

`search.method: doremi` ships DoReMi's mixture instead of CLIMB's: a reference proxy trained on
the natural weights (the proxy trainer of the search rounds, content-addressed, so a finished one
is reused), then a group-DRO proxy of the same size that reweights the super-clusters by its
excess loss over the reference (`climb_assets.lib.doremi`). Each is its own GPU-tagged step with
a checkpoint; a killed run retrains only the proxy that had not finished. DoReMi needs no
target: it makes the proxy good on every super-cluster at once.
"""

import json
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from climb_assets.config import Profile
from climb_assets.defs.common import chart, metadata_table
from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL
from climb_assets.defs.proxies import (
    checkpoint_id,
    scratch_folder,
    stored_checkpoint_complete,
    train_proxy,
)
from climb_assets.defs.resources import ClimbResource
from climb_assets.defs.search import (
    GROUP,
    IO,
    cluster_summary,
    proxy_config,
    proxy_device,
)
from climb_assets.lib import doremi, mixture, plots, proxy, tokens
from climb_assets.lib.storage import Store

RESULT_FILE = "doremi/result.json"
WEIGHTS_FILE = "doremi/weights.parquet"
TRAJECTORY_FILE = "doremi/trajectory.parquet"
HISTORY_ROWS = 200
"""At most this many steps of the weights' trajectory are kept (evenly spaced, last included)."""


def doremi_settings(profile: Profile) -> doremi.DoReMiSettings:
    s = profile.search
    return doremi.DoReMiSettings(step_size=s.doremi_step_size, smoothing=s.doremi_smoothing)


def load_doremi(store: Store) -> dict[str, Any] | None:
    """DoReMi's result (`doremi_mixture`), or None when it has not run."""
    return store.read_json(RESULT_FILE) if store.exists(RESULT_FILE) else None


@dg.op(
    ins={"cluster_tokens": dg.In(dg.Nothing), "search_targets": dg.In(dg.Nothing)},
    out=dg.Out(io_manager_key=IO),
)
def doremi_reference_mixture(context: dg.OpExecutionContext, climb: ClimbResource) -> dict:
    """Checks that DoReMi can run before any training; the reference proxy's mixture: natural."""
    profile, store = climb.settings(), climb.store()
    available = cluster_summary(store)["tokens"]
    doremi.check_inputs(len(available), proxy_config(profile).batch_size)
    natural = mixture.natural_prior(available)
    context.log.info(f"DoReMi over {len(available)} super-clusters; reference on natural weights")
    return {"mixture_id": "doremi-reference", "key": mixture.mixture_key(natural),
            "weights": natural.tolist()}  # fmt: skip


def _thinned(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = max(1, -(-len(history) // HISTORY_ROWS))
    return [h for i, h in enumerate(history) if (i + 1) % every == 0 or i + 1 == len(history)]


@dg.op(out=dg.Out(io_manager_key=IO), tags=GPU_OP_TAGS, pool=GPU_POOL)
def train_dro_proxy(context: dg.OpExecutionContext, climb: ClimbResource, reference: dict) -> dict:
    """Trains DoReMi's group-DRO proxy against the reference, or reuses its finished checkpoint."""
    profile, store = climb.settings(), climb.store()
    cfg, settings = proxy_config(profile), doremi_settings(profile)
    summary = cluster_summary(store)
    tag = json.dumps(["doremi", reference["run_id"], settings.step_size, settings.smoothing])
    run_id = "doremi-" + checkpoint_id(tag, cfg, summary["digest"])
    rel = f"proxies/{run_id}"
    info = {"run_id": run_id, "checkpoint": store.uri(rel), "reference_run_id": reference["run_id"]}
    if stored_checkpoint_complete(store, rel):
        context.log.info(f"reusing finished DoReMi proxy {run_id}")
        return {**info, "reused": True, **store.read_json(f"{rel}/proxy.json")["extra"]["doremi"]}
    k = len(summary["tokens"])
    arrays = [store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(k)]
    tok = tokens.load_tokenizer(str(store.local_copy("tokenizer/tokenizer.json")))
    reference_model, _, _ = proxy.load_checkpoint(
        store.local_copy(f"proxies/{reference['run_id']}")
    )
    device = proxy_device(profile)
    run = doremi.train_doremi(
        cfg, arrays, reference_model, tok.get_vocab_size(), settings, device=device,
        log=context.log.info, threads=profile.proxy.threads,
    )  # fmt: skip
    result = {
        "average": run.average.tolist(), "final": run.final.tolist(),
        "sampling": run.sampling.tolist(), "steps": run.training.steps,
        "tokens": run.training.tokens, "seconds": round(run.training.seconds, 3),
        "final_loss": round(run.training.final_loss, 5), "device": device,
        "step_size": settings.step_size, "smoothing": settings.smoothing,
        "history": _thinned(run.history),
    }  # fmt: skip
    folder = scratch_folder(store, rel)
    proxy.save_checkpoint(
        run.training.model, cfg, folder,
        {"doremi": result, "reference_run_id": reference["run_id"], "data": summary["digest"],
         "tokenizer_hash": summary["tokenizer_hash"]},
    )  # fmt: skip
    store.put_folder(folder, rel, last=proxy.CHECKPOINT_MARKER)
    return {**info, "reused": False, **result}


@dg.op(out=dg.Out(io_manager_key=IO))
def gather_doremi(
    context: dg.OpExecutionContext, climb: ClimbResource, reference: dict, dro: dict
) -> dict:
    """DoReMi's mixture beside the natural one, and the weights' trajectory, for the catalog."""
    store = climb.store()
    summary = cluster_summary(store)
    natural = np.asarray(reference["weights"])
    average = np.asarray(dro["average"])
    k = average.size
    store.write_parquet(
        WEIGHTS_FILE,
        pa.table({"super_cluster_id": pa.array(range(k), pa.int32()), "natural_share": natural,
                  "doremi_weight": average, "last_step_weight": np.asarray(dro["final"]),
                  "batch_share": np.asarray(dro["sampling"]),
                  "tokens": pa.array(summary["tokens"], pa.int64())}),
    )  # fmt: skip
    history = dro["history"]
    store.write_parquet(
        TRAJECTORY_FILE,
        pa.table({"step": pa.array([h["step"] for h in history for _ in range(k)], pa.int32()),
                  "super_cluster_id": pa.array([i for _ in history for i in range(k)], pa.int32()),
                  "weight": [w for h in history for w in h["weights"]],
                  "excess_loss": [x for h in history for x in h["excess"]]}),
    )  # fmt: skip
    result = {
        "weights": average.tolist(), "natural": natural.tolist(), "steps": dro["steps"],
        "reference_run_id": reference["run_id"], "proxy_run_id": dro["run_id"],
        "step_size": dro["step_size"], "smoothing": dro["smoothing"],
        "proxies": 2, "reused": [bool(reference["reused"]), bool(dro["reused"])],
        "data": summary["digest"],
    }  # fmt: skip
    store.write_json(RESULT_FILE, result)
    rows = [{"super_cluster_id": i, "natural_share": round(float(natural[i]), 4),
             "doremi_weight": round(float(average[i]), 4),
             "last_step_weight": round(float(dro["final"][i]), 4)} for i in range(k)]  # fmt: skip
    steps = [h["step"] for h in history]
    charts = {
        **chart(store, "doremi/doremi_weights.png",
                plots.weights_png(average, natural, label="DoReMi"),
                "DoReMi's weights (averaged over steps) against the natural shares"),
        **chart(store, "doremi/doremi_trajectory.png",
                plots.trajectory_png(steps, np.array([h["weights"] for h in history])),
                "Each super-cluster's weight during the DRO proxy's training"),
    }  # fmt: skip
    context.add_output_metadata(
        {**charts, "weights": metadata_table(rows), "steps": dro["steps"],
         "max_weight": round(float(average.max()), 4),
         "reference_proxy": reference["run_id"], "dro_proxy": dro["run_id"],
         "proxies_reused": sum(result["reused"]), "seed": proxy_config(climb.settings()).seed,
         "path": dg.MetadataValue.path(store.uri(RESULT_FILE))}
    )  # fmt: skip
    return result


@dg.graph_asset(
    name="doremi_mixture",
    group_name=GROUP,
    ins={
        "cluster_tokens": dg.AssetIn("cluster_tokens", dagster_type=dg.Nothing),
        "search_targets": dg.AssetIn("search_targets", dagster_type=dg.Nothing),
    },
    kinds={"pytorch", "parquet"},
    description=(
        "DoReMi's mixture (search.method: doremi): a reference proxy on the natural weights, "
        "then a same-size group-DRO proxy whose super-cluster weights follow its excess loss "
        "over the reference; the weights averaged over its steps. Two GPU-tagged proxy steps."
    ),
)
def doremi_mixture(cluster_tokens, search_targets):
    spec = doremi_reference_mixture(cluster_tokens=cluster_tokens, search_targets=search_targets)
    reference = train_proxy(spec)
    return gather_doremi(reference, train_dro_proxy(reference))

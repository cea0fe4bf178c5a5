import dagster as dg

from climb_assets.definitions import LOCAL_EXECUTOR_CONFIG, defs
from climb_assets.defs.partitions import GPU_OP_TAGS, GPU_POOL

DATA_SIDE_ASSETS = {
    "corpus_documents",
    "embeddings",
    "kmeans_centroids",
    "cluster_assignments",
    "cluster_quality",
    "pruned_clusters",
    "super_clusters",
    "cluster_catalog",
}


SEARCH_ASSETS = {
    "proxy_tokenizer",
    "cluster_tokens",
    "search_targets",
    "target_alignment",
    "reference_mixtures",
    "doremi_mixture",
    "mixture_batches",
    "proxy_checkpoints",
    "proxy_evaluations",
    "predictor_models",
    "confirmation_proxy",
    "climbmix_manifest",
    "climbmix_exports",
}
PER_ROUND = {"mixture_batches", "proxy_checkpoints", "proxy_evaluations", "predictor_models"}


def test_definitions_load_and_validate():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == DATA_SIDE_ASSETS | SEARCH_ASSETS


def test_search_assets_are_partitioned_by_iteration():
    graph = defs.resolve_asset_graph()
    for name in PER_ROUND:
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert partitions.get_partition_keys() == ["iter_001", "iter_002", "iter_003"], name
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("mixture_batches")).parent_keys}
    assert "predictor_models" in parents  # each round hangs off the previous round's predictor


def test_gpu_steps_carry_routing_tags_and_pool():
    graph = defs.resolve_asset_graph()
    for name in ("embeddings", "kmeans_centroids", "target_alignment"):
        node = graph.get(dg.AssetKey(name))
        assets_def = node.assets_def
        assert dict(assets_def.op.tags).items() >= GPU_OP_TAGS.items(), name
        assert assets_def.op.pool == GPU_POOL
    assert "climb/gpu" not in graph.get(dg.AssetKey("corpus_documents")).assets_def.op.tags
    doremi = graph.get(dg.AssetKey("doremi_mixture")).assets_def.node_def
    for op_name in ("train_proxy", "train_dro_proxy"):  # DoReMi's two proxies
        op = doremi.node_named(op_name).definition
        assert dict(op.tags).items() >= GPU_OP_TAGS.items() and op.pool == GPU_POOL, op_name
    assert "climb/gpu" not in doremi.node_named("gather_doremi").definition.tags
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("doremi_mixture")).parent_keys}
    assert parents == {"cluster_tokens", "search_targets"}
    # the confirmation proxy trains and scores on the GPU; choosing and recording it do not
    confirm = graph.get(dg.AssetKey("confirmation_proxy"))
    for op_name in ("train_proxy", "evaluate_proxy"):
        op = confirm.assets_def.node_def.node_named(op_name).definition
        assert dict(op.tags).items() >= GPU_OP_TAGS.items() and op.pool == GPU_POOL, op_name
    for op_name in ("confirmation_pick", "record_confirmation"):
        tags = confirm.assets_def.node_def.node_named(op_name).definition.tags
        assert "climb/gpu" not in tags, op_name
    assert {k.to_user_string() for k in confirm.parent_keys} == {"predictor_models"}
    manifest_parents = graph.get(dg.AssetKey("climbmix_manifest")).parent_keys
    assert dg.AssetKey("confirmation_proxy") in manifest_parents


def test_per_shard_assets_are_partitioned_and_global_ones_are_not():
    graph = defs.resolve_asset_graph()
    for name in DATA_SIDE_ASSETS:
        if name == "cluster_catalog":
            continue
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        per_shard = name in {
            "corpus_documents",
            "embeddings",
            "cluster_assignments",
            "cluster_quality",
        }
        assert (partitions is not None) == per_shard, name


def test_lineage():
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}

    assert parents("embeddings") == {"corpus_documents"}
    assert parents("cluster_assignments") == {"embeddings", "kmeans_centroids"}
    assert "cluster_quality" in parents("pruned_clusters")
    assert parents("super_clusters") >= {"pruned_clusters", "kmeans_centroids"}


def test_executor_limits_gpu_steps():
    assert defs.executor.name == "climb_local"
    limits = LOCAL_EXECUTOR_CONFIG["tag_concurrency_limits"]
    assert {"key": "climb/gpu", "value": "true", "limit": 1} in limits


def test_every_asset_has_kinds_and_a_description_and_rounds_say_what_they_read():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.kinds, f"{key.to_user_string()} has no kinds"
        assert len((node.description or "").strip()) >= 60, key.to_user_string()
    batches = graph.get(dg.AssetKey("mixture_batches")).description
    assert "PREVIOUS round's predictor" in batches
    assert "NEXT round" in graph.get(dg.AssetKey("predictor_models")).description


def test_the_catalog_refresh_runs_its_light_steps_in_one_process():
    assert defs.resolve_job_def("refresh_catalog").executor_def.name == "in_process"
    # the ingest job holds GPU steps: the deployment's executor routes them
    assert defs.resolve_job_def("ingest_shards").executor_def.name.startswith("climb_")

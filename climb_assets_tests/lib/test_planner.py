"""The cost planner: estimates follow the work, measured GPU figures win, errors name the fix."""

import dataclasses
import json
from pathlib import Path

import pytest

import climb_assets
from climb_assets.cli import main
from climb_assets.config import Profile, load_profile
from climb_assets.lib.planner import (
    CorpusSize,
    PlanError,
    PlanOptions,
    encoder_size,
    load_figures,
    peak_flops,
    plan,
    proxy_parameters,
)
from climb_assets.lib.proxy import proxy_preset

REPO_RESULTS = Path(climb_assets.__file__).resolve().parents[1] / "bench" / "results"
TOKENS = 1.2e12


def write_cpu_results(folder: Path) -> Path:
    """Small CPU result files with round numbers, in the layout the benchmarks write."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "embedding.json": {
            "params": {"model": "all-MiniLM-L6-v2", "n_documents": 1000, "threads": 2},
            "padding": {"ours_sorted_by_tokens": {"padded_tokens": 100_000, "efficiency": 0.9}},
            "docs_per_s": {"ours_median": 50.0},
        },
        "kmeans.json": {
            "fit": {
                "params": {"n": 200_000, "d": 384, "k": 1000, "iters": 10, "faiss_omp_threads": 2},
                "faiss_random": {"seconds": 10.0},
                "faiss_kmeans++": {"seconds": 30.0},
            },
            "memory": {
                "params": {"rows": 1_000_000, "d": 384, "k": 1000},
                "chunked_mmap": {"seconds_assign": 5.0},
            },
            "machine": {"cpu_count": 2},
        },
        "proxy_overhead.json": {
            "params": {"parameters": 937_472, "preset": "tiny"},
            "by_threads": {
                "1": {"tokens_per_s": {"ours_median": 5000.0}},
                "2": {"tokens_per_s": {"ours_median": 6000.0}},
            },
        },
    }
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data))
    return folder


GPU_RESULT = {
    "gpu": {"name": "NVIDIA H100 80GB HBM3"},
    "embedding": {
        "model": "all-MiniLM-L6-v2",
        "encoder_params": 10_000_000,
        "tokens_per_s": 2.0e6,
        "docs_per_s": 20_000.0,
    },
    "kmeans": {"n": 1_000_000, "d": 100, "k": 1000, "iters": 10, "seconds": 0.5},
    "proxy": {"runs": [{"parameters": 60_524_800, "tokens_per_s": 1.0e6}]},
}


@pytest.fixture
def results(tmp_path) -> Path:
    return write_cpu_results(tmp_path / "results")


@pytest.fixture(scope="module")
def paper() -> Profile:
    return load_profile("paper")


def with_rounds(profile: Profile, rounds: tuple[int, ...]) -> Profile:
    return dataclasses.replace(profile, search=dataclasses.replace(profile.search, rounds=rounds))


def test_corpus_size_derives_the_missing_count_and_needs_one():
    assert CorpusSize.of(tokens=2e9).documents == 2e6
    assert CorpusSize.of(documents=10, tokens_per_doc=50).tokens == 500
    both = CorpusSize.of(tokens=1e6, documents=2e3)
    assert both.tokens_per_doc == 500 and both.derived == "tokens per document"
    with pytest.raises(PlanError, match="--tokens"):
        CorpusSize.of()


def test_embedding_and_assignment_scale_linearly_in_corpus_tokens(paper, results):
    one = plan(paper, CorpusSize.of(tokens=TOKENS), results=results)
    two = plan(paper, CorpusSize.of(tokens=2 * TOKENS), results=results)
    for name in ("embedding", "k-means assign"):
        assert two.stage(name).device_hours == pytest.approx(2 * one.stage(name).device_hours)
        assert two.stage(name).wall_hours == pytest.approx(2 * one.stage(name).wall_hours)
    # The fit sees at most k * max_points_per_centroid documents; the search ignores the corpus.
    assert two.stage("k-means fit").device_hours == one.stage("k-means fit").device_hours
    assert two.stage("search (112 proxies)").flops == one.stage("search (112 proxies)").flops
    assert two.gpu_hours > one.gpu_hours


def test_search_scales_linearly_in_the_number_of_proxies(paper, results):
    corpus = CorpusSize.of(tokens=TOKENS)
    base = plan(paper, corpus, PlanOptions(gpus=5), results=results)
    double = plan(with_rounds(paper, (128, 64, 32)), corpus, PlanOptions(gpus=5), results=results)
    each = (
        base.stage("proxy train (each)").device_hours + base.stage("proxy eval (each)").device_hours
    )
    search, search2 = base.stage("search (112 proxies)"), double.stage("search (224 proxies)")
    assert search.device_hours == pytest.approx(112 * each)
    assert search2.device_hours == pytest.approx(2 * search.device_hours)
    # 5 GPUs: rounds of 64, 32 and 16 proxies take 13 + 7 + 4 proxy times (whole waves).
    assert search.wall_hours == pytest.approx(24 * each)
    assert double.gpu_hours - base.gpu_hours == pytest.approx(search.device_hours)


def test_proxy_parameters_match_the_models_and_62m_costs_more_per_token(paper, results):
    assert proxy_parameters(proxy_preset("tiny"), 4096) == 937_472  # proxy_overhead.json
    assert proxy_parameters(proxy_preset("62M"), 32_000) == 60_524_800  # count_parameters
    assert proxy_parameters(proxy_preset("62M", arch="llama"), 32_000) == 60_140_160
    cost = {}
    for preset in ("tiny", "62M"):
        proxy = dataclasses.replace(paper.proxy, preset=preset, train_tokens=2**20)
        p = plan(
            dataclasses.replace(paper, proxy=proxy), CorpusSize.of(tokens=1e9), results=results
        )
        cost[preset] = p.stage("proxy train (each)").device_hours
    assert cost["62M"] > 10 * cost["tiny"]


def test_a_measured_gpu_result_takes_precedence_over_scaled_figures(paper, results):
    corpus = CorpusSize.of(tokens=TOKENS)
    scaled = plan(paper, corpus, results=results)
    assert "scaled" in scaled.device and scaled.stage("proxy train (each)").rate == "assumption"
    (results / "gpu-nvidia-h100-80gb-hbm3.json").write_text(json.dumps(GPU_RESULT))
    measured = plan(paper, corpus, results=results)
    assert "measured" in measured.device
    train = measured.stage("proxy train (each)")
    assert train.rate == "gpu-nvidia-h100-80gb-hbm3.json"
    # Same parameter count as the measured run: hours = training tokens / measured tokens/s.
    assert train.device_hours == pytest.approx(36_622 * 32_768 / 1.0e6 / 3600)
    emb = measured.stage("embedding")
    assert emb.device_hours == pytest.approx(emb.flops / (2 * 10_000_000 * 2.0e6) / 3600)
    # Fit: 300 Lloyd passes + the final one at the measured GPU rate, then greedy k-means++
    # seeding (the default: 32,000 rows x K x d x 8 candidates per step) at the CPU rate of
    # kmeans.json, which here records no greedy run, so the plain rate (kmeans++ 30 s - random
    # 10 s for 200,000 x 1,000 x 384) is used.
    fit = measured.stage("k-means fit")
    one_pass = 2 * 1_024_000 * 1000 * 1024
    gpu_rate = 2 * 1_000_000 * 1000 * 100 * 10 / 0.5
    seeding_rate = 2 * 200_000 * 1000 * 384 / 20.0
    seeding = 2 * 32_000 * 1000 * 1024 * 8
    expected = (301 * one_pass / gpu_rate + seeding / seeding_rate) / 3600
    assert fit.rate == "gpu-nvidia-h100-80gb-hbm3.json"
    assert fit.device_hours == pytest.approx(expected)
    assert emb.device_hours != scaled.stage("embedding").device_hours
    assert "gpu-nvidia-h100-80gb-hbm3.json" in " ".join(a.source for a in measured.assumptions)
    # A GPU type the file does not match falls back to the scaled figures of that GPU.
    a100 = plan(paper, corpus, PlanOptions(gpu_type="A100"), results=results)
    assert "A100" in a100.device and a100.stage("proxy train (each)").rate == "assumption"
    assert a100.gpu_hours > scaled.gpu_hours  # 312 vs 989 TFLOP/s peak


def test_cpu_device_uses_the_measured_cpu_rates(paper, results):
    figures = load_figures(results)
    assert figures.proxy_per_core.flops_per_s == pytest.approx(6 * 937_472 * 5000.0)
    p = plan(paper, CorpusSize.of(documents=1e6), PlanOptions(device="cpu", cpu_cores=8), results)
    train = p.stage("proxy train (each)")
    tokens = 36_622 * 32_768
    assert train.device_hours == pytest.approx(
        6 * 60_524_800 * tokens / (6 * 937_472 * 5000) / 3600
    )
    assert p.gpu_hours == 0 and p.cpu_core_hours > 0


def test_encoder_size_from_a_local_folder_or_the_table():
    local = encoder_size("sentence-transformers/all-MiniLM-L6-v2")
    assert (local.params, local.total_params, local.dim) == (10_795_392, 22_713_216, 384)
    assert encoder_size("NovaSearch/stella_en_400M_v5").dim == 1024
    with pytest.raises(PlanError, match="--encoder-params"):
        encoder_size("someone/unknown-encoder")
    assert encoder_size("someone/unknown-encoder", params=1e8).params == 100_000_000


def test_gpu_peak_table_matches_names():
    assert peak_flops("NVIDIA H100 80GB HBM3")[1] == 989e12
    assert peak_flops("NVIDIA H100 PCIe")[1] == 756e12
    assert peak_flops("NVIDIA H200")[1] == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB")[1] == 312e12
    assert peak_flops("NVIDIA L4")[1] == 121e12
    assert peak_flops("NVIDIA L40S")[1] == 362e12
    assert peak_flops("Tesla T4") is None


def test_cli_plans_the_paper_profile_and_prints_assumptions(capsys, monkeypatch):
    monkeypatch.delenv("CLIMB_BENCH_RESULTS", raising=False)
    assert (REPO_RESULTS / "proxy_overhead.json").is_file()
    assert main(["plan", "--profile", "paper", "--tokens", "1.2e12"]) == 0
    out = capsys.readouterr().out
    assert "Assumptions:" in out and "GPU-h" in out and "search (112 proxies)" in out
    assert "embedding.json]" in out and "proxy_overhead.json]" in out
    assert main(["--profile", "paper", "plan", "--documents", "1e6", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["corpus"]["tokens"] == 1e9 and data["gpu_hours"] > 0


def test_missing_results_name_make_bench_and_the_variable(paper, tmp_path, capsys, monkeypatch):
    with pytest.raises(PlanError, match=r"make bench.*CLIMB_BENCH_RESULTS"):
        plan(paper, CorpusSize.of(tokens=TOKENS), results=tmp_path / "nowhere")
    monkeypatch.setenv("CLIMB_BENCH_RESULTS", str(tmp_path))
    assert main(["plan", "--profile", "paper", "--tokens", "1e9"]) == 2
    err = capsys.readouterr().err
    assert "lacks embedding.json" in err and "make bench" in err and "CLIMB_BENCH_RESULTS" in err


def write_scale_result(folder: Path) -> None:
    """A scale benchmark result: 2 sizes, CPU seconds per stage and the process baseline."""

    def size(n: int, scale: float) -> dict:
        stages = [
            {"stage": "corpus_documents", "cpu_seconds": 10 + 20 * scale},
            {"stage": "embeddings", "cpu_seconds": 10 + 40 * scale},
            {"stage": "cluster_quality", "cpu_seconds": 10 + 80 * scale},
            {"stage": "pruned_clusters", "cpu_seconds": 10 + 5 * scale},
            {"stage": "cluster_tokens", "cpu_seconds": 10 + 3 * scale},
        ]
        return {"documents": n, "baseline": {"cpu_seconds": 10.0}, "stages": stages}

    (folder / "scale.json").write_text(
        json.dumps({"sizes": [size(100_000, 0.1), size(1_000_000, 1.0)]})
    )


def test_measured_scale_figures_cost_the_cpu_steps_per_document(paper, results):
    corpus = CorpusSize.of(documents=1e9)
    without = plan(paper, corpus, results=results)
    assert not any(s.name == "quality scoring" for s in without.stages)
    write_scale_result(results)
    measured = plan(paper, corpus, PlanOptions(cpu_cores=4), results=results)
    quality = measured.stage("quality scoring")
    # 80 CPU s (beyond the 10 s baseline) per 1e6 documents, at the largest size: 8e4 s per 1e9.
    assert quality.runs_on == "CPU"
    assert quality.device_hours == pytest.approx(80e3 / 3600)
    assert quality.wall_hours == pytest.approx(80e3 / 3600 / 4)
    assert measured.stage("ingestion").device_hours == pytest.approx(20e3 / 3600)
    assert "quality scoring" not in measured.not_estimated
    both = measured.stage("pruning + catalog")
    assert both.device_hours == pytest.approx(5e3 / 3600)  # the steps it found, summed
    # A transformer encoder is still costed in FLOPs; the static one from the measured seconds.
    assert measured.stage("embedding").runs_on == "GPU"
    static = dataclasses.replace(
        paper, encoder=dataclasses.replace(paper.encoder, kind="static", model="/nowhere")
    )
    row = plan(static, corpus, PlanOptions(cpu_cores=4), results=results).stage("embedding")
    assert row.runs_on == "CPU" and row.device_hours == pytest.approx(40e3 / 3600)


def test_a_static_encoder_without_scale_figures_names_the_benchmark(paper, results):
    static = dataclasses.replace(
        paper, encoder=dataclasses.replace(paper.encoder, kind="static", model="/nowhere")
    )
    with pytest.raises(PlanError, match="bench.scale"):
        plan(static, CorpusSize.of(documents=1e6), results=results)

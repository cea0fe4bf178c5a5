import re

import pytest

from climb_assets.config import ProfileError, load_profile, profile_from_dict
from climb_assets_tests.conftest import write_profile


def test_shipped_profiles_load_with_paper_values():
    demo = load_profile("demo")
    paper = load_profile("paper")
    assert demo.name == "demo" and paper.name == "paper"
    assert paper.kmeans.k == 1000
    assert paper.merge.distance_threshold == 1.5
    assert paper.encoder.max_tokens == 512
    assert all(s.threshold == 3.0 for s in paper.quality.scorers)
    assert demo.digest != paper.digest


def test_environment_selects_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIMB_PROFILE", "paper")
    assert load_profile().name == "paper"
    path = write_profile(tmp_path, kmeans={"k": 7})
    monkeypatch.setenv("CLIMB_CONFIG", str(path))
    profile = load_profile()
    assert profile.kmeans.k == 7
    assert profile.encoder.max_tokens == 128  # inherited from demo


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kmeans": {"kk": 3}}, "unknown key 'kmeans.kk'"),
        ({"kmeans": {"k": "ten"}}, "kmeans.k: expected an integer, got str 'ten'"),
        ({"kmeans": {"k": True}}, "kmeans.k: expected an integer"),
        ({"encoder": {"device": "tpu"}}, "encoder.device: 'tpu' is not allowed"),
        ({"colour": 1}, "unknown key 'colour'"),
        ({"corpus": {"formats": "parquet"}}, "corpus.formats: expected a list"),
        ({"corpus": {"formats": ["csv"]}}, "allowed: parquet, jsonl"),
        ({"kmeans": {"k": 0}}, "kmeans.k must be >= 1"),
        ({"merge": {"distance_threshold": 1.5, "target_count": 4}}, "exactly one of"),
        ({"quality": {"scorers": [{"name": "x", "kind": "fasttext"}]}}, "path"),
        ({"quality": {"scorers": [{"kind": "heuristic"}]}}, "missing required key 'name'"),
        ({"search": {"rounds": [8, 0, 4]}}, "search.rounds[1] is 0; every round needs at least"),
        ({"search": {"rounds": []}}, "search.rounds must list the proxies per round"),
        ({"search": {"rounds": [2, 2]}}, "predictor needs at least 4 trained proxies"),
        ({"manifest": {"total_tokens": 0}}, "manifest.total_tokens must be > 0"),
        ({"tokenizer": {"kind": "pretrained"}}, "tokenizer.path is required"),
        ({"targets": [{"name": "t", "path": "x", "weight": 0}]}, "targets[t].weight must be > 0"),
        ({"targets": [{"name": "t", "path": "x", "kind": "mcq"}]}, "'mcq' is not allowed"),
        ({"predictor": {"kind": "xgboost"}}, "'xgboost' is not allowed"),
        ({"proxy": {"eval_fractions": []}}, "proxy.eval_fractions must list at least [1.0]"),
        ({"proxy": {"eval_fractions": [0.5, 0.25, 1.0]}}, "in increasing order"),
        ({"proxy": {"eval_fractions": [0.0, 1.0]}}, "every fraction must be in (0, 1]"),
        ({"proxy": {"eval_fractions": [0.5, 1.5]}}, "every fraction must be in (0, 1]"),
        ({"proxy": {"eval_fractions": [0.25, 0.5]}}, "it must end with 1.0"),
        (
            {"predictor": {"kind": "bimix"}, "proxy": {"eval_fractions": [1.0]}},
            "bimix, which fits learning curves: set proxy.eval_fractions",
        ),
        (
            {
                "predictor": {"kind": "bimix"},
                "targets": [{"name": "q", "path": "x", "kind": "choice"}],
            },
            "choice targets (accuracy) need log_linear, gp, lightgbm or auto",
        ),
        ({"search": {"target_prior_weight": 1.0}}, "search.target_prior_weight must be in [0, 1)"),
        ({"search": {"acquisition": "pi"}}, "'pi' is not allowed"),
        ({"search": {"exploit_picks": -1}}, "search.exploit_picks must be >= 0"),
        ({"search": {"anchors": ["unimax"]}}, "'unimax' is not allowed"),
        ({"search": {"anchors": ["natural", "natural"]}}, "search.anchors has duplicates"),
        ({"search": {"noise_replicates": -1}}, "search.noise_replicates is -1; use 0..8"),
        ({"search": {"fallback_radius": 0}}, "search.fallback_radius must be in (0, 1]"),
        ({"predictor": {"trust_floor": 2}}, "predictor.trust_floor must be a Spearman"),
        ({"predictor": {"trust_range_margin": -1}}, "trust_range_margin must be >= 0"),
    ],
)
def test_bad_profiles_name_the_key(data, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        profile_from_dict(data)


def test_min_points_matches_the_predictor():
    from climb_assets.config import MIN_PREDICTOR_POINTS
    from climb_assets.lib.predictors.tree import MIN_POINTS

    assert MIN_PREDICTOR_POINTS == MIN_POINTS


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="shipped profiles: demo, paper"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_file_errors_name_the_file(tmp_path):
    path = write_profile(tmp_path, encoder={"batch_size": "big"})
    with pytest.raises(ProfileError, match=r"profile\.yaml: encoder\.batch_size"):
        load_profile(str(path))


def test_deployment_kind_from_environment(monkeypatch):
    from climb_assets.config import deployment_kind

    profile = load_profile("demo")
    assert deployment_kind(profile) == "local"
    monkeypatch.setenv("CLIMB_DEPLOYMENT", "k8s")
    assert deployment_kind(profile) == "k8s"
    monkeypatch.setenv("CLIMB_DEPLOYMENT", "slurm")
    with pytest.raises(ProfileError, match="use local, k8s or ecs"):
        deployment_kind(profile)


def test_duplicate_key_names_the_key_and_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "extends: demo\ncorpus:\n  min_chars: 5\nkmeans:\n  k: 4\ncorpus:\n  min_chars: 7\n"
    )
    with pytest.raises(ProfileError, match=r"duplicate key 'corpus' on line 6 \(first on line 2\)"):
        load_profile(str(path))
    nested = tmp_path / "nested.yaml"
    nested.write_text("extends: demo\nkmeans:\n  k: 4\n  k: 5\n")
    with pytest.raises(ProfileError, match=r"duplicate key 'k' on line 4"):
        load_profile(str(nested))


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nested aliases under a free mapping: 9**9 values once expanded, 1 kB of text."""
    anchors = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    anchors += [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)
    ]
    options = "\n".join(" " * 8 + line for line in anchors)
    return (
        f"extends: demo\nquality:\n  scorers:\n    - name: heuristic\n      options:\n{options}\n"
    )


def test_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    """It used to run at 100% CPU up to 1.58 GB for minutes; in a child process with a memory
    cap and a deadline, so a regression fails here instead of hanging the suite."""
    import subprocess
    import sys

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from climb_assets.config import ProfileError, load_profile\n"
        "try:\n    load_profile(sys.argv[1])\nexcept ProfileError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"bomb\.yaml line \d+ is not valid YAML: aliases expand to more than "
                     r"100,000 values", out.stdout), out.stdout  # fmt: skip
    assert len(out.stdout.strip().splitlines()) == 1


def test_recursive_alias_is_refused_instead_of_looping(tmp_path):
    """`&a [*a]` is a list holding itself; sizing it used to loop for ever."""
    import subprocess
    import sys

    path = tmp_path / "loop.yaml"
    path.write_text("extends: demo\nx-loop: &a [*a]\n")
    code = (
        "import sys\nfrom climb_assets.config import ProfileError, load_profile\n"
        "try:\n    load_profile(sys.argv[1])\nexcept ProfileError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert "loop.yaml line 2 is not valid YAML: an alias refers to a node that contains it" in (
        out.stdout
    ), (out.stdout, out.stderr[-2000:])


def test_aliases_within_the_budget_and_merge_keys_work(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "extends: demo\nx-small: &small {k: 8, niter: 7}\n"
        "kmeans:\n  <<: *small\n  k: 16\nmerge: {<<: {target_count: 3, distance_threshold: null}}\n"
    )
    profile = load_profile(str(path))
    # an own key overrides a merged one, as YAML says; `x-` keys only hold anchors
    assert (profile.kmeans.k, profile.kmeans.niter, profile.merge.target_count) == (16, 7, 3)
    path.write_text("extends: demo\nkmeans: {<<: {k: 8}, k: 16, k: 4}\n")
    with pytest.raises(ProfileError, match=r"duplicate key 'k'"):
        load_profile(str(path))


def test_oversized_or_binary_profile_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("extends: demo\n" + "# padding\n" * 200_000)
    with pytest.raises(ProfileError, match=r"huge\.yaml is 2,000,014 bytes, above the 1,048,576"):
        load_profile(str(path))
    path = tmp_path / "latin1.yaml"
    path.write_bytes("extends: demo\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ProfileError, match=r"latin1\.yaml is not UTF-8 text"):
        load_profile(str(path))


def test_max_chars_has_a_floor():
    with pytest.raises(ProfileError, match="corpus.max_chars must be >= 1000 or null"):
        profile_from_dict({"name": "x", "corpus": {"max_chars": 10}})


def test_manifest_exports_are_checked_against_the_exporters():
    from climb_assets.lib.exports import EXPORTERS

    assert set(profile_from_dict({"name": "x"}).manifest.exports) == set(EXPORTERS)
    with pytest.raises(ProfileError, match="manifest.exports has 'nemo'; allowed"):
        profile_from_dict({"name": "x", "manifest": {"exports": ["megatron", "nemo"]}})


def test_every_training_free_mixture_can_be_the_final_one():
    from typing import get_args, get_type_hints

    from climb_assets.config import SEARCH_FINALS, SearchSettings
    from climb_assets.lib.baselines import BY_NAME

    finals = set(get_args(get_type_hints(SearchSettings)["final"]))
    assert finals == set(SEARCH_FINALS) | set(BY_NAME) | {"doremi"}
    assert not SearchSettings(final="unimax").runs_rounds and SearchSettings().runs_rounds


def test_doremi_method_and_finals_that_need_other_proxies():
    from climb_assets.config import SearchSettings

    doremi = SearchSettings(method="doremi")
    assert doremi.runs_doremi and not doremi.runs_rounds and doremi.trains_proxies
    reference = SearchSettings(method="doremi", final="uniform")  # no proxy at all
    assert not reference.trains_proxies
    with pytest.raises(ProfileError, match="final is doremi, which needs DoReMi's two proxies; "
                                           "set search.method: doremi"):  # fmt: skip
        profile_from_dict({"name": "x", "search": {"final": "doremi"}})
    with pytest.raises(ProfileError, match="best_observed, which picks among CLIMB's trained"):
        profile_from_dict({"name": "x", "search": {"method": "doremi", "final": "best_observed"}})
    with pytest.raises(ProfileError, match="doremi_step_size must be > 0"):
        profile_from_dict({"name": "x", "search": {"method": "doremi", "doremi_step_size": 0}})
    with pytest.raises(ProfileError, match="search.method"):
        profile_from_dict({"name": "x", "search": {"method": "regmix"}})


def test_a_profile_that_turns_a_safeguard_off_is_told_what_it_gives_up():
    from climb_assets.config import search_trade_offs

    assert search_trade_offs(load_profile("demo")) == []  # every safeguard on
    off = profile_from_dict(
        {"name": "x", "search": {"anchors": [], "noise_replicates": 0, "final": "argmax"},
         "predictor": {"trust_floor": None}}
    )  # fmt: skip
    lines = search_trade_offs(off)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    joined = " ".join(lines)
    for needle in ("search.anchors is empty", "noise_replicates is 0", "no confirmation proxy",
                   "trust_floor is null"):  # fmt: skip
        assert needle in joined
    # a training-free final runs no round: nothing to give up
    assert search_trade_offs(profile_from_dict({"name": "x", "search": {"final": "unimax"}})) == []

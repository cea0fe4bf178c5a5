"""The corpora of the search-quality benchmark, each run through the data side once.

- `planted` (`climb_assets.lib.planted`): 4 artificial languages, the target is held-out text
  of the smallest one, so the best mixture is known.
- `demo` (`climb_assets.lib.demo_corpus`, seed 0): real documentation of six sources, the target
  is held-out AWS API text (as in the demo profile): one source, mostly one super-cluster.
- `blend` (the same builder with another sampling seed, 1, so its documents are another draw
  of the six sources): the target concatenates held-out text of three sources (numpy,
  sqlalchemy, torch; the first `BLEND_PER_SOURCE` held-out chunks of each, in file order), so
  the best mixture is a blend of super-clusters, not one. Chosen before any search ran on it
  and not changed afterwards.
- `libraries` (`bench.heldout_sources`, build seed 0): docstrings of eight installed libraries
  that are none of the demo's sources (dagster, huggingface_hub, matplotlib, networkx, pandas,
  scipy, sklearn, sympy). The one target, `libraries_blend`, concatenates the first
  `LIBRARIES_PER_SOURCE` held-out chunks of the 2nd and 5th source in alphabetical order
  (huggingface_hub, pandas).
- `two_target` (the same builder, build seed 1): two weighted targets, the first
  `LIBRARIES_PER_SOURCE` held-out chunks of the 3rd source in alphabetical order (matplotlib,
  weight 0.6) and of the 7th (sklearn, weight 0.4).

`libraries` and `two_target` are held out: their sources and targets were fixed by the rules
above before any search or mixture strategy ran on them, and the search's defaults were chosen
on `planted`, `demo` and `blend` only.

For each, the data side runs through the runner (`climb_assets.runner.run_data_side`, in a
throw-away Dagster instance), then `proxy_tokenizer`, `cluster_tokens`, `search_targets` and
`target_alignment` (the targets' distribution over super-clusters) are materialized; the
benchmark works at the library level on what they wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BLEND_SOURCES = ("numpy", "sqlalchemy", "torch")
BLEND_PER_SOURCE = 25
BLEND_BUILD_SEED = 1

# Held-out corpora (bench.heldout_sources). Fixed rule, written down before anything ran on
# them: of the eight library sources in alphabetical order (dagster, huggingface_hub,
# matplotlib, networkx, pandas, scipy, sklearn, sympy), `libraries_blend` takes the 2nd and the
# 5th; `two_target` takes the 3rd (weight 0.6) and the 7th (weight 0.4).
LIBRARIES_BLEND_SOURCES = ("huggingface_hub", "pandas")
LIBRARIES_BUILD_SEED = 0
TWO_TARGET_SOURCES = (("matplotlib", 0.6), ("sklearn", 0.4))
TWO_TARGET_BUILD_SEED = 1
LIBRARIES_PER_SOURCE = 30
LIBRARIES_HELDOUT = 50


@dataclass
class Prepared:
    """A corpus after the data side: what the strategies need.

    Attributes:
        name: `planted`, `demo`, `blend`, `libraries` or `two_target`.
        arrays: One token array per super-cluster.
        prior: Natural prior (token share per super-cluster).
        tok: The proxies' tokenizer.
        texts: Target texts (all targets together).
        oracle: A known-good mixture (weight on the target-dominated super-clusters).
        alignment: The targets' distribution over super-clusters (`targets/alignment.json`).
        details: JSON-ready description (composition, sizes, timings).
        target_sets: Each target apart, as (name, weight, texts), from `targets/targets.json`.
    """

    name: str
    arrays: list[np.ndarray]
    prior: np.ndarray
    tok: Any
    texts: list[str]
    oracle: np.ndarray
    alignment: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)
    target_sets: list[tuple[str, float, list[str]]] = field(default_factory=list)


def _write_profile(folder: Path, sections: dict[str, Any]) -> Path:
    """A profile extending `demo` with `sections` merged in (as the tests' `write_profile`)."""
    import yaml

    data: dict[str, Any] = {"extends": "demo"}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _materialize_search_inputs(climb: Any, instance: Any) -> dict[str, float]:
    """Data side through the runner, then tokenizer, cluster tokens, targets and alignment."""
    import dagster as dg

    from climb_assets.defs.search import (
        cluster_tokens,
        proxy_tokenizer,
        search_targets,
        target_alignment,
    )
    from climb_assets.runner import run_data_side

    timings = dict(run_data_side(climb, instance, log=lambda _: None))
    for asset in (proxy_tokenizer, cluster_tokens, search_targets, target_alignment):
        start = time.perf_counter()
        dg.materialize(
            [asset],
            instance=instance,
            resources={"climb": climb},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        timings[asset.key.path[-1]] = time.perf_counter() - start
    return timings


def _load_prepared(
    name: str,
    climb: Any,
    domain_column: str,
    target_domains: tuple[str, ...],
    timings: dict[str, float],
) -> Prepared:
    """Reads the token arrays, prior, tokenizer, targets, alignment and domain composition."""
    import duckdb

    from climb_assets.lib import tokens
    from climb_assets.lib.mixture import natural_prior

    store = climb.store()
    summary = store.read_json("cluster_tokens/summary.json")
    counts = [int(c) for c in summary["tokens"]]
    arrays = [store.read_npy(f"cluster_tokens/sc_{i:03d}.tokens.npy") for i in range(len(counts))]
    tok = tokens.load_tokenizer(store.uri("tokenizer/tokenizer.json"))
    targets = store.read_json("targets/targets.json")
    texts = [t for target in targets for t in target["texts"] if t.strip()]
    target_sets = [
        (str(t["name"]), float(t["weight"]), [x for x in t["texts"] if x.strip()]) for t in targets
    ]
    alignment = np.asarray(store.read_json("targets/alignment.json")["combined"], dtype=float)
    con = duckdb.connect(store.uri("catalog.duckdb"), read_only=True)
    rows = con.execute(
        f'SELECT super_cluster_id, "{domain_column}", count(*) FROM documents '
        "WHERE super_cluster_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    con.close()
    composition: list[dict[str, Any]] = [
        {"super_cluster": i, "tokens": counts[i], "documents": {}} for i in range(len(counts))
    ]
    for sc, domain, n in rows:
        composition[int(sc)]["documents"][str(domain)] = int(n)
    for entry in composition:
        docs = entry["documents"]
        hits = sum(docs.get(d, 0) for d in target_domains)
        entry["target_share"] = hits / max(1, sum(docs.values()))
    good = np.array([c["target_share"] > 0.5 for c in composition])
    if not good.any():  # no majority cluster: the one with the largest share
        good[int(np.argmax([c["target_share"] for c in composition]))] = True
    oracle = np.where(good, np.asarray(counts, dtype=np.float64), 0.0)
    prior = natural_prior(counts)
    return Prepared(
        name=name,
        arrays=arrays,
        prior=prior,
        tok=tok,
        texts=texts,
        oracle=oracle / oracle.sum(),
        alignment=alignment,
        details={
            "super_clusters": len(counts),
            "tokens": counts,
            "natural_prior": prior.round(4).tolist(),
            "target_alignment": alignment.round(4).tolist(),
            "composition": composition,
            "target_domains": list(target_domains),
            "target_texts": len(texts),
            "target_bytes": sum(len(t.encode("utf-8")) for t in texts),
            "vocab_size": tok.get_vocab_size(),
            "tokenizer_hash": summary["tokenizer_hash"],
            "data_side_seconds": {k: round(v, 2) for k, v in timings.items()},
        },
        target_sets=target_sets,
    )


def prepare_planted(workdir: Path) -> Prepared:
    """Builds the planted corpus and runs the data side on it (the search test's settings)."""
    import dagster as dg

    from climb_assets.defs.resources import ClimbResource
    from climb_assets.lib.planted import build_planted_corpus

    corpus = build_planted_corpus(workdir / "data")
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(corpus.corpus), "extra_columns": ["domain"]},
        "kmeans": {"k": 8, "niter": 10},
        "quality": {"scorers": [{"name": "heuristic", "threshold": 1.0}]},
        "merge": {"distance_threshold": None, "target_count": 4},
        "tokenizer": {"vocab_size": 300},
        "targets": [{"name": "planted", "kind": "text", "path": str(corpus.target)}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = _materialize_search_inputs(climb, instance)
    prepared = _load_prepared("planted", climb, "domain", (str(corpus.target_domain),), timings)
    prepared.details["docs_per_domain"] = corpus.docs_per_domain
    prepared.details["oracle"] = "all weight on the target-language super-cluster(s) (known)"
    return prepared


def prepare_demo(workdir: Path, docs_per_source: int) -> Prepared:
    """The demo corpus (real documentation, build seed 0), target held-out AWS API text."""
    import dagster as dg

    from climb_assets.defs.resources import ClimbResource
    from climb_assets.lib.demo_corpus import build_demo_corpus

    info = build_demo_corpus(
        workdir / "data", docs_per_source=docs_per_source, heldout_per_source=50
    )
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(info.root / "corpus")},
        "targets": [{"name": "aws_api", "kind": "text", "path": str(info.targets["aws_api"])}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = _materialize_search_inputs(climb, instance)
    prepared = _load_prepared("demo", climb, "source", ("aws_api",), timings)
    prepared.details["docs_per_source"] = info.per_source
    prepared.details["oracle"] = "super-clusters whose documents are mostly aws_api (a guess)"
    return prepared


def prepare_blend(workdir: Path, docs_per_source: int) -> Prepared:
    """Another draw of the six demo sources (build seed 1); the target blends three sources.

    The target file concatenates the first `BLEND_PER_SOURCE` held-out chunks of each of
    `BLEND_SOURCES` (held-out chunks never appear in the corpus).
    """
    import dagster as dg

    from climb_assets.defs.resources import ClimbResource
    from climb_assets.lib.demo_corpus import build_demo_corpus

    info = build_demo_corpus(
        workdir / "data",
        docs_per_source=docs_per_source,
        heldout_per_source=50,
        seed=BLEND_BUILD_SEED,
    )
    lines = []
    for source in BLEND_SOURCES:
        jsonl = info.root / "targets" / f"{source}.jsonl"
        rows = [json.loads(x) for x in jsonl.read_text("utf-8").splitlines() if x.strip()]
        lines += [json.dumps({"text": r["text"], "source": source}) for r in rows][
            :BLEND_PER_SOURCE
        ]
    target = workdir / "blend_target.jsonl"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(info.root / "corpus")},
        "targets": [{"name": "blend", "kind": "text", "path": str(target)}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = _materialize_search_inputs(climb, instance)
    prepared = _load_prepared("blend", climb, "source", BLEND_SOURCES, timings)
    prepared.details["docs_per_source"] = info.per_source
    prepared.details["build_seed"] = BLEND_BUILD_SEED
    prepared.details["target"] = {
        "sources": list(BLEND_SOURCES),
        "held_out_chunks_per_source": BLEND_PER_SOURCE,
    }
    prepared.details["oracle"] = (
        "super-clusters whose documents are mostly numpy/sqlalchemy/torch, in token proportion "
        "(a guess, not the known best)"
    )
    return prepared


def _heldout_lines(target_jsonl: Path, source: str, n: int) -> list[str]:
    """The first `n` held-out chunks of one source, in file order, as target JSONL lines."""
    rows = [json.loads(x) for x in target_jsonl.read_text("utf-8").splitlines() if x.strip()]
    return [json.dumps({"text": r["text"], "source": source}) for r in rows][:n]


def prepare_libraries(workdir: Path, docs_per_source: int) -> Prepared:
    """The held-out library corpus (build seed 0); the target blends two of its sources.

    The target file concatenates the first `LIBRARIES_PER_SOURCE` held-out chunks of each of
    `LIBRARIES_BLEND_SOURCES` (the 2nd and 5th source alphabetically; never in the corpus).
    """
    import dagster as dg

    from bench.heldout_sources import build_library_corpus
    from climb_assets.defs.resources import ClimbResource

    started = time.perf_counter()
    info = build_library_corpus(
        workdir / "data",
        docs_per_source=docs_per_source,
        heldout_per_source=LIBRARIES_HELDOUT,
        seed=LIBRARIES_BUILD_SEED,
    )
    build_seconds = time.perf_counter() - started
    lines: list[str] = []
    for source in LIBRARIES_BLEND_SOURCES:
        lines += _heldout_lines(info.targets[source], source, LIBRARIES_PER_SOURCE)
    target = workdir / "libraries_target.jsonl"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(info.root / "corpus")},
        "targets": [{"name": "libraries_blend", "kind": "text", "path": str(target)}],
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = {"build_corpus": build_seconds, **_materialize_search_inputs(climb, instance)}
    prepared = _load_prepared("libraries", climb, "source", LIBRARIES_BLEND_SOURCES, timings)
    prepared.details["docs_per_source"] = info.per_source
    prepared.details["build_seed"] = LIBRARIES_BUILD_SEED
    prepared.details["held_out"] = True
    prepared.details["target"] = {
        "sources": list(LIBRARIES_BLEND_SOURCES),
        "held_out_chunks_per_source": LIBRARIES_PER_SOURCE,
        "rule": "2nd and 5th library source in alphabetical order",
    }
    prepared.details["oracle"] = (
        "super-clusters whose documents are mostly huggingface_hub/pandas, in token proportion "
        "(a guess, not the known best)"
    )
    return prepared


def prepare_two_target(workdir: Path, docs_per_source: int) -> Prepared:
    """The held-out library corpus drawn with build seed 1; two weighted text targets.

    Target `<source>` holds the first `LIBRARIES_PER_SOURCE` held-out chunks of that source,
    for each (source, weight) of `TWO_TARGET_SOURCES` (the 3rd source alphabetically with weight
    0.6, the 7th with weight 0.4).
    """
    import dagster as dg

    from bench.heldout_sources import build_library_corpus
    from climb_assets.defs.resources import ClimbResource

    started = time.perf_counter()
    info = build_library_corpus(
        workdir / "data",
        docs_per_source=docs_per_source,
        heldout_per_source=LIBRARIES_HELDOUT,
        seed=TWO_TARGET_BUILD_SEED,
    )
    build_seconds = time.perf_counter() - started
    targets = []
    for source, weight in TWO_TARGET_SOURCES:
        path = workdir / f"two_target_{source}.jsonl"
        lines = _heldout_lines(info.targets[source], source, LIBRARIES_PER_SOURCE)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        targets.append({"name": source, "kind": "text", "path": str(path), "weight": weight})
    sections = {
        "storage": {"root": str(workdir / "out")},
        "corpus": {"path": str(info.root / "corpus")},
        "targets": targets,
    }
    climb = ClimbResource(profile=str(_write_profile(workdir, sections)))
    with dg.instance_for_test() as instance:
        timings = {"build_corpus": build_seconds, **_materialize_search_inputs(climb, instance)}
    domains = tuple(source for source, _ in TWO_TARGET_SOURCES)
    prepared = _load_prepared("two_target", climb, "source", domains, timings)
    prepared.details["docs_per_source"] = info.per_source
    prepared.details["build_seed"] = TWO_TARGET_BUILD_SEED
    prepared.details["held_out"] = True
    prepared.details["target"] = {
        "targets": [{"source": s, "weight": w} for s, w in TWO_TARGET_SOURCES],
        "held_out_chunks_per_source": LIBRARIES_PER_SOURCE,
        "rule": "3rd (weight 0.6) and 7th (weight 0.4) library source in alphabetical order",
    }
    prepared.details["oracle"] = (
        "super-clusters whose documents are mostly matplotlib/sklearn, in token proportion "
        "(a guess that ignores the target weights, not the known best)"
    )
    return prepared

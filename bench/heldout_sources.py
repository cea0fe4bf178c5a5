"""A held-out benchmark corpus of real text: docstrings of installed third-party libraries.

None of its sources is one of the demo corpus's six (`climb_assets.lib.demo_corpus`): the
corpora built here (`bench.corpora.prepare_libraries`, `prepare_two_target`) were made after
the search's defaults were chosen, and are held out for checking them.

The text is collected as the demo corpus collects numpy's, torch's and SQLAlchemy's: the
docstrings of a fixed list of public modules of each library, their public functions, classes
and the classes' members (only objects defined inside the library, each once, names sorted),
cut into chunks of `MIN_CHARS`..`MAX_CHARS` characters at paragraph boundaries by the demo's
own `_chunk_units`. Each library is collected in a fresh interpreter (fixed hash seed), so what
else this process imported cannot change the text.

Layout under the output folder (as the demo corpus)::

    corpus/shard-000.parquet   doc_id, text, source (even shards are Parquet)
    corpus/shard-001.jsonl     the same keys, one JSON object per line (odd shards)
    targets/<source>.jsonl     held-out chunks of one source, {"text": ...} per line
    targets/<source>.txt       the same chunks joined by blank lines
    manifest.json              parameters, versions, counts, files and checksums

Selection is seeded (by `seed` and the source name) and files are written atomically; a second
build into the same folder with the same parameters and package versions reuses the first.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from climb_assets.lib import demo_corpus
from climb_assets.lib.demo_corpus import (
    MAX_CHARS,
    MIN_CHARS,
    TARGET_CHARS,
    _is_complete,
    _read_manifest,
    split_sources,
    write_manifest,
    write_shards_and_targets,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# source name -> (distribution, package root, public modules whose docstrings are taken).
# Eight libraries with clearly different subjects, none of them a demo source, each giving
# well over 400 chunks.
LIBRARY_SOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dagster": ("dagster", "dagster", ("dagster",)),
    "huggingface_hub": (
        "huggingface_hub",
        "huggingface_hub",
        ("huggingface_hub", "huggingface_hub.errors", "huggingface_hub.utils"),
    ),
    "matplotlib": (
        "matplotlib",
        "matplotlib",
        (
            "matplotlib",
            "matplotlib.animation",
            "matplotlib.artist",
            "matplotlib.axes",
            "matplotlib.cm",
            "matplotlib.collections",
            "matplotlib.colorbar",
            "matplotlib.colors",
            "matplotlib.dates",
            "matplotlib.figure",
            "matplotlib.gridspec",
            "matplotlib.image",
            "matplotlib.legend",
            "matplotlib.lines",
            "matplotlib.patches",
            "matplotlib.path",
            "matplotlib.pyplot",
            "matplotlib.scale",
            "matplotlib.text",
            "matplotlib.ticker",
            "matplotlib.transforms",
            "matplotlib.widgets",
        ),
    ),
    "networkx": (
        "networkx",
        "networkx",
        (
            "networkx",
            "networkx.algorithms.approximation",
            "networkx.algorithms.bipartite",
            "networkx.algorithms.community",
            "networkx.drawing",
            "networkx.generators",
            "networkx.linalg",
        ),
    ),
    "pandas": (
        "pandas",
        "pandas",
        (
            "pandas",
            "pandas.api.extensions",
            "pandas.api.indexers",
            "pandas.api.types",
            "pandas.errors",
            "pandas.io.formats.style",
            "pandas.plotting",
            "pandas.testing",
            "pandas.tseries.offsets",
        ),
    ),
    "scipy": (
        "scipy",
        "scipy",
        (
            "scipy.cluster.hierarchy",
            "scipy.cluster.vq",
            "scipy.fft",
            "scipy.integrate",
            "scipy.interpolate",
            "scipy.io",
            "scipy.linalg",
            "scipy.ndimage",
            "scipy.optimize",
            "scipy.signal",
            "scipy.sparse",
            "scipy.sparse.csgraph",
            "scipy.sparse.linalg",
            "scipy.spatial",
            "scipy.spatial.distance",
            "scipy.special",
            "scipy.stats",
        ),
    ),
    "sklearn": (
        "scikit-learn",
        "sklearn",
        (
            "sklearn",
            "sklearn.calibration",
            "sklearn.cluster",
            "sklearn.compose",
            "sklearn.covariance",
            "sklearn.cross_decomposition",
            "sklearn.decomposition",
            "sklearn.discriminant_analysis",
            "sklearn.dummy",
            "sklearn.ensemble",
            "sklearn.feature_extraction",
            "sklearn.feature_selection",
            "sklearn.gaussian_process",
            "sklearn.impute",
            "sklearn.inspection",
            "sklearn.isotonic",
            "sklearn.kernel_approximation",
            "sklearn.kernel_ridge",
            "sklearn.linear_model",
            "sklearn.manifold",
            "sklearn.metrics",
            "sklearn.mixture",
            "sklearn.model_selection",
            "sklearn.multiclass",
            "sklearn.multioutput",
            "sklearn.naive_bayes",
            "sklearn.neighbors",
            "sklearn.neural_network",
            "sklearn.pipeline",
            "sklearn.preprocessing",
            "sklearn.random_projection",
            "sklearn.semi_supervised",
            "sklearn.svm",
            "sklearn.tree",
            "sklearn.utils",
        ),
    ),
    "sympy": (
        "sympy",
        "sympy",
        (
            "sympy",
            "sympy.combinatorics",
            "sympy.geometry",
            "sympy.logic",
            "sympy.ntheory",
            "sympy.polys",
            "sympy.sets",
            "sympy.stats",
            "sympy.tensor",
        ),
    ),
}
LIBRARY_SOURCE_NAMES: tuple[str, ...] = tuple(sorted(LIBRARY_SOURCES))
_WRITER_PACKAGES = ("numpy", "pyarrow")
_COLLECT_WORKERS = 2  # collecting subprocesses at a time (each imports one library)
_CHILD_TIMEOUT_S = 900
_cache: dict[str, tuple[str, ...]] = {}  # chunks per source, collected once per process
_cache_lock = threading.Lock()

# The child loads demo_corpus.py by path (not through `climb_assets`), collects the docstring
# groups of one library with the demo's own helpers, and writes the chunks to a file (a library
# that prints while importing cannot spoil the result).
_CHILD_CODE = """
import importlib.util, json, sys, warnings
spec = importlib.util.spec_from_file_location("_climb_demo_corpus", sys.argv[1])
demo = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = demo
spec.loader.exec_module(demo)
root, modules, out = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
seen, chunks = set(), []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for units in demo._docstring_groups(modules, root):
        for chunk in demo._chunk_units(units):
            if chunk not in seen:
                seen.add(chunk)
                chunks.append(chunk)
with open(out, "w", encoding="ascii") as handle:
    json.dump(chunks, handle, ensure_ascii=True)
"""


@dataclass(frozen=True)
class LibraryCorpusInfo:
    """Where a built library corpus lies and what it holds."""

    root: Path  # output folder
    shards: list[Path]  # corpus shard files, in shard order
    targets: dict[str, Path]  # held-out chunks per source (the .jsonl file)
    n_documents: int  # documents in the corpus (held-out chunks not counted)
    per_source: dict[str, int]  # corpus documents per source


def collect_library_chunks(source: str) -> list[str]:
    """All candidate chunks of one library source, in a stable order, in a fresh interpreter.

    Cached per process (the text depends only on the installed versions).

    Raises:
        ValueError: `source` is not one of `LIBRARY_SOURCES`.
        RuntimeError: the collecting subprocess failed.
    """
    if source not in LIBRARY_SOURCES:
        raise ValueError(f"unknown library source {source!r}; choose from {LIBRARY_SOURCE_NAMES}")
    with _cache_lock:
        cached = _cache.get(source)
    if cached is None:
        cached = tuple(_collect_isolated(source))
        with _cache_lock:
            cached = _cache.setdefault(source, cached)
    return list(cached)


def _collect_isolated(source: str) -> list[str]:
    """Run the collecting child for one source and read back its chunks."""
    _dist, root, modules = LIBRARY_SOURCES[source]
    env = dict(os.environ)
    env.update(
        PYTHONHASHSEED="0",
        MPLBACKEND="Agg",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    with tempfile.TemporaryDirectory(prefix="climb-heldout-") as tmp:
        out = Path(tmp) / "chunks.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _CHILD_CODE,
                str(Path(demo_corpus.__file__).resolve()),
                root,
                json.dumps(list(modules)),
                str(out),
            ],
            env=env,
            cwd=tmp,
            capture_output=True,
            timeout=_CHILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0 or not out.is_file():
            detail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise RuntimeError(f"collecting library source {source!r} failed:\n{detail}")
        return list(json.loads(out.read_text(encoding="ascii")))


def _versions(sources: Sequence[str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    packages = {LIBRARY_SOURCES[s][0] for s in sources} | set(_WRITER_PACKAGES)
    for package in sorted(packages):
        versions[package] = importlib.metadata.version(package)
    return versions


def _canonical_sources(sources: Sequence[str] | None) -> list[str]:
    if sources is None:
        return list(LIBRARY_SOURCE_NAMES)
    if isinstance(sources, str):
        sources = [sources]
    unknown = [s for s in sources if s not in LIBRARY_SOURCES]
    if unknown:
        raise ValueError(f"unknown library source(s) {unknown}; choose from {LIBRARY_SOURCE_NAMES}")
    chosen = [s for s in LIBRARY_SOURCE_NAMES if s in set(sources)]
    if not chosen:
        raise ValueError("sources is empty; pass None for all library sources")
    return chosen


def _info_from_manifest(root: Path, manifest: dict[str, Any]) -> LibraryCorpusInfo:
    return LibraryCorpusInfo(
        root=root,
        shards=[root / s["path"] for s in manifest["shards"]],
        targets={s: root / t["jsonl"] for s, t in manifest["targets"].items()},
        n_documents=int(manifest["n_documents"]),
        per_source={s: int(c["corpus"]) for s, c in manifest["per_source"].items()},
    )


_SHARD_NAME = re.compile(r"shard-\d{3,}\.(?:parquet|jsonl)")
_TARGET_NAME = re.compile(r"[A-Za-z0-9_]+\.(?:jsonl|txt)")


def _remove_stale(root: Path, keep: set[str]) -> None:
    """Remove shard and target files of an earlier build that this build does not write."""
    for folder, pattern in (("corpus", _SHARD_NAME), ("targets", _TARGET_NAME)):
        path = root / folder
        if path.is_dir():
            for file in path.iterdir():
                if pattern.fullmatch(file.name) and f"{folder}/{file.name}" not in keep:
                    file.unlink(missing_ok=True)


def build_library_corpus(
    out_dir: str | Path,
    sources: Sequence[str] | None = None,
    docs_per_source: int = 300,
    heldout_per_source: int = 50,
    seed: int = 0,
    n_shards: int = 4,
) -> LibraryCorpusInfo:
    """Build (or reuse) the library corpus under `out_dir`.

    From each source (`None`: all of `LIBRARY_SOURCES`), `docs_per_source` chunks go to the
    corpus and `heldout_per_source` other chunks to `targets/<source>.jsonl|.txt`, drawn without
    replacement with a generator seeded by `seed` and the source name; a chunk already taken
    by an earlier source (in alphabetical order) is not a candidate of a later one. The corpus
    is shuffled across sources and split into `n_shards` files (even shards Parquet, odd shards
    JSONL, each with `doc_id`, `text` and `source`). A source with fewer chunks than requested
    gives what it has (both parts shrunk in proportion), as long as that is at least half.

    A complete build in `out_dir` with the same parameters and package versions is returned as
    it is; any other build there is replaced.

    Raises:
        ValueError: bad parameters, or a source with too few chunks.
        RuntimeError: collecting a source failed.
    """
    for name, value, low in (
        ("docs_per_source", docs_per_source, 1),
        ("heldout_per_source", heldout_per_source, 1),
        ("seed", seed, 0),
        ("n_shards", n_shards, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    chosen = _canonical_sources(sources)
    root = Path(out_dir).expanduser().resolve()
    params = {
        "format_version": FORMAT_VERSION,
        "docs_per_source": int(docs_per_source),
        "heldout_per_source": int(heldout_per_source),
        "n_shards": int(n_shards),
        "seed": int(seed),
        "sources": chosen,
        "modules": {s: list(LIBRARY_SOURCES[s][2]) for s in chosen},
        "min_chars": MIN_CHARS,
        "max_chars": MAX_CHARS,
        "target_chars": TARGET_CHARS,
    }
    versions = _versions(chosen)
    existing = _read_manifest(root)
    if existing is not None:
        same = existing.get("params") == params and existing.get("versions") == versions
        if same and _is_complete(root, existing):
            logger.info("library corpus at %s is up to date; reusing it", root)
            return _info_from_manifest(root, existing)
        (root / "manifest.json").unlink(missing_ok=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(_COLLECT_WORKERS, len(chosen))) as pool:
        collected = dict(zip(chosen, pool.map(collect_library_chunks, chosen), strict=True))
    collect_seconds = time.perf_counter() - started

    split = split_sources(collected, chosen, docs_per_source, heldout_per_source, seed, "library")
    written = write_shards_and_targets(root, split, n_shards, seed)
    _remove_stale(root, set(written["files"]))
    manifest = {
        "description": (
            "CLIMB held-out library corpus: chunks of docstrings of installed third-party "
            "libraries (none of the demo corpus's sources), one library per `source` value. "
            "targets/ holds held-out chunks of each source that are not in the corpus."
        ),
        "params": params,
        "versions": versions,
        "n_documents": len(split.rows),
        "per_source": split.per_source,
        **written,
        "build_seconds": {
            "collect": round(collect_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    }
    write_manifest(root, manifest)
    logger.info(
        "built library corpus at %s: %d documents from %d sources in %.1f s",
        root,
        len(split.rows),
        len(chosen),
        time.perf_counter() - started,
    )
    return _info_from_manifest(root, manifest)

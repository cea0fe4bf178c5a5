"""Checks every location and model a profile names, in seconds, before any heavy step runs.

A wrong path found after an hour of embeddings costs the hour; found here it costs nothing. Each
check says what is wrong and which profile key or environment variable fixes it, and all problems
are reported together.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from climb_assets.config import Profile, TargetSettings, resolve_location
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import list_shards
from climb_assets.lib.corpus_size import CorpusCount, count_documents


class PreflightError(RuntimeError):
    """One or more of the profile's locations or models cannot be used."""


def _local_kind(location: str, want: str, key: str, create: bool = False) -> str | None:
    """A problem with a local path that must be a `want` ("file" or "folder"), or None."""
    path = Path(resolve_location(location))
    if path.exists():
        if want == "folder" and not path.is_dir():
            return f"{key} {path} is a file, not a folder; point it at a folder"
        if want == "file" and path.is_dir():
            return f"{key} {path} is a folder, not a file; point it at the file itself"
        return None
    if create:
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"{key} {path} cannot be created: {parent} is a file"
        if parent is not None and not os.access(parent, os.W_OK):
            return f"{key} {path} cannot be created: {parent} is not writable"
        return None
    return f"{key} {path} does not exist; fix {key} in the profile"


@dataclass
class PreflightReport:
    checked: list[str]
    """What was checked and passed."""
    corpus: CorpusCount | None
    """The documents as counted cheaply (None when the corpus could not be listed)."""


def check_profile(
    climb: ClimbResource, search: bool = True, log: Callable[[str], None] = print
) -> PreflightReport:
    """Runs every check, or raises `PreflightError` with every problem.

    Args:
        climb: The resource of the profile to check.
        search: Check what the search side needs too (targets, proxy tokenizer).
        log: Where progress goes.
    """
    profile: Profile = climb.settings()
    problems: list[str] = []
    checked: list[str] = []
    count: list[CorpusCount] = []

    def attempt(what: str, check: Callable[[], str | None]) -> None:
        try:
            problem = check()
        except Exception as exc:  # every failure becomes one line of the report
            problem = f"{what}: {exc}"
        if problem:
            problems.append(problem)
        else:
            checked.append(what)

    locations = [("storage.root", profile.storage.root, "folder", True)]
    locations.append(("corpus.path", profile.corpus.path, "folder", False))
    if search:
        locations += [(f"targets[{t.name}].path", t.path, "file", False) for t in profile.targets]
    buckets_checked: set[str] = set()
    for key, location, want, create in locations:
        if str(location).startswith("s3://"):
            bucket = str(location)[len("s3://") :].split("/", 1)[0]
            if bucket not in buckets_checked:
                buckets_checked.add(bucket)
                attempt(f"bucket {bucket}", lambda loc=location: climb.check_bucket(loc))
        elif "://" not in str(location):
            attempt(key, lambda k=key, loc=location, w=want, c=create: _local_kind(loc, w, k, c))
    if not problems:
        formats = profile.corpus.formats

        def corpus_shards() -> str | None:
            corpus = climb.corpus_store()
            count.append(count_documents(corpus, list_shards(corpus, formats)))
            return None

        attempt("corpus shards", corpus_shards)
    if count:
        attempt("kmeans.k", lambda: _check_k(profile.kmeans.k, count[0]))
    if search:
        for t in profile.targets:
            attempt(f"targets[{t.name}]", lambda t=t: _check_target(climb, t))
    attempt("encoder.model", lambda: _check_encoder(profile))
    for scorer in profile.quality.scorers:
        if scorer.path and _is_local(scorer.path):
            key = f"quality.scorers[{scorer.name}].path"
            want = "file" if scorer.kind == "fasttext" else "folder"
            attempt(key, lambda k=key, p=scorer.path, w=want: _local_kind(p, w, k))
    if search and profile.targets and profile.tokenizer.kind == "pretrained":
        attempt("tokenizer.path", lambda: _check_tokenizer(climb, str(profile.tokenizer.path)))
    if search and profile.search.trains_proxies:
        attempt("search.token_pool", lambda: _check_token_pool(profile))
    training = profile.manifest.tokenizer
    if search and profile.targets and "megatron" in profile.manifest.exports and training:
        attempt("manifest.tokenizer", lambda: _check_training_tokenizer(climb, training))
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(
            f"profile {profile.name}: {len(problems)} problem(s) found before any work started:\n"
            f"{lines}"
        )
    log(f"preflight: {len(checked)} checks passed ({', '.join(checked)})")
    if count:
        log(f"corpus: {count[0].describe()}")
    return PreflightReport(checked, count[0] if count else None)


def _check_k(k: int, count: CorpusCount) -> str | None:
    # An estimate is refused only at twice its count, and unreadable shards are left to
    # ingestion (which names them); the k-means step checks the exact count again.
    if count.unreadable or k <= count.documents * (1 if count.exact else 2):
        return None
    return (
        f"kmeans.k = {k:,} is more than the corpus's {count.describe()}; set kmeans.k to at "
        f"most {max(count.documents, 1):,} (CLIMB uses 1,000 for 1.2T tokens)"
    )


def _check_target(climb: ClimbResource, t: TargetSettings) -> str | None:
    """The target file loads as the search will load it: not empty, UTF-8, its format."""
    from climb_assets.lib.targets import load_target

    if "://" not in str(t.path) and not Path(resolve_location(t.path)).is_file():
        return None  # said once already, by the path check
    load_target(t.name, t.kind, climb.fetch(resolve_location(t.path)), t.weight, t.text_column,
                t.max_documents)  # fmt: skip
    return None


def free_space_warning(climb: ClimbResource, count: CorpusCount) -> str | None:
    """A line when a local storage root has less free space than the run may write."""
    from climb_assets.lib.planner import output_bytes

    profile = climb.settings()
    root = profile.storage.root
    if "://" in root:
        return None  # object stores do not fill up
    path = Path(resolve_location(root))
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    parts = output_bytes(profile, count.documents, count.bytes)
    need = sum(parts.values())
    free = shutil.disk_usage(existing).free
    if free >= need:
        return None
    largest = max(parts, key=parts.__getitem__)
    return (
        f"storage.root {path} has {free / 1e9:.2f} GB free; this run may write up to "
        f"{need / 1e9:.2f} GB (most in {largest}: {parts[largest] / 1e9:.2f} GB): free space "
        "or point storage.root at a larger disk (finished work is kept if it fills)"
    )


def _is_local(location: str) -> bool:
    return "://" not in location and (
        location.startswith(("/", "./", "../", "~")) or Path(location).suffix != ""
    )


def _check_encoder(profile: Profile) -> str | None:
    """The encoder's folder (or bundled copy) exists and its tokenizer loads; for a static
    encoder, the folder is in model2vec's format (its files and the table's header)."""
    if profile.encoder.kind == "static":
        from climb_assets.lib.static_encoder import check_static_folder

        check_static_folder(resolve_location(profile.encoder.model))
        return None
    from transformers import AutoTokenizer

    from climb_assets.lib.embed import resolve_model_source

    source = resolve_model_source(profile.encoder.model)
    local = os.path.isdir(source)
    AutoTokenizer.from_pretrained(
        source,
        revision=None if local else profile.encoder.revision,
        local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1",
        trust_remote_code=profile.encoder.trust_remote_code,
    )
    return None


def _check_token_pool(profile: Profile) -> str | None:
    from climb_assets.defs.search import token_pool_size

    token_pool_size(profile)
    return None


def _check_training_tokenizer(climb: ClimbResource, configured: str) -> str | None:
    from climb_assets.defs.exports import training_tokenizer_location
    from climb_assets.lib.exports.megatron import index_dtype
    from climb_assets.lib.tokens import eos_id, load_tokenizer

    tok = load_tokenizer(training_tokenizer_location(climb, configured))
    eos_id(tok)
    index_dtype(tok.get_vocab_size())
    return None


def _check_tokenizer(climb: ClimbResource, path: str) -> str | None:
    from climb_assets.lib.tokens import load_tokenizer

    load_tokenizer(climb.fetch(path))
    return None

"""Checks every location and model a profile names, in seconds, before any heavy step runs.

A wrong path found after an hour of embeddings costs the hour; found here it costs nothing. Each
check says what is wrong and which profile key or environment variable fixes it, and all problems
are reported together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from climb_assets.config import Profile, resolve_location
from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.corpus import list_shards


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


def check_profile(
    climb: ClimbResource, search: bool = True, log: Callable[[str], None] = print
) -> list[str]:
    """Runs every check; returns what was checked, or raises `PreflightError` with every problem.

    Args:
        climb: The resource of the profile to check.
        search: Check what the search side needs too (targets, proxy tokenizer).
        log: Where progress goes.
    """
    profile: Profile = climb.settings()
    problems: list[str] = []
    checked: list[str] = []

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
        attempt("corpus shards", lambda: list_shards(climb.corpus_store(), formats) and None)
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
    return checked


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

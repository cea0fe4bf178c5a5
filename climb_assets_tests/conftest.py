"""Shared fixtures: offline settings, a small real corpus, profiles written to temporary folders."""

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_profile(folder: Path, **sections) -> Path:
    """Writes a profile extending `demo` with the given section overrides; returns its path."""
    data = {"extends": "demo", "storage": {"root": str(folder / "out")}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def small_demo_corpus(tmp_path_factory) -> Path:
    """The real demo corpus at 30 documents per source (6 sources, 4 shards)."""
    from climb_assets.lib.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    build_demo_corpus(root, docs_per_source=30, heldout_per_source=5)
    return root / "corpus"

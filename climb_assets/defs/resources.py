"""The `climb` resource: the active profile and the stores it points at."""

import os

import dagster as dg

from climb_assets.config import Profile, load_profile, resolve_location
from climb_assets.lib.corpus import CorpusOptions
from climb_assets.lib.storage import Store


def default_profile_ref() -> str:
    """The profile named by CLIMB_CONFIG (a path) or CLIMB_PROFILE (a name), else `demo`."""
    return os.environ.get("CLIMB_CONFIG") or os.environ.get("CLIMB_PROFILE") or "demo"


class ClimbResource(dg.ConfigurableResource):
    """Loads the profile and opens its storage root and corpus as stores."""

    profile: str = "demo"
    """A shipped profile name or a path to a YAML profile."""

    def settings(self) -> Profile:
        return load_profile(self.profile)

    def store(self) -> Store:
        return Store(resolve_location(self.settings().storage.root))

    def corpus_store(self) -> Store:
        return Store(resolve_location(self.settings().corpus.path))

    def corpus_options(self) -> CorpusOptions:
        c = self.settings().corpus
        return CorpusOptions(
            text_column=c.text_column,
            id_column=c.id_column,
            extra_columns=c.extra_columns,
            min_chars=c.min_chars,
            on_duplicate_id=c.on_duplicate_id,
        )

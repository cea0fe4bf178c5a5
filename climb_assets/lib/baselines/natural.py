"""Natural proportions: each super-cluster weighted by its share of the corpus's tokens."""

from __future__ import annotations

from climb_assets.lib.baselines.base import BaselineError, BaselineInputs, ReferenceMixture
from climb_assets.lib.mixture import MixtureError, natural_prior


class Natural:
    name = "natural"
    description = "each super-cluster's share of the kept corpus's tokens"

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        try:
            weights = natural_prior(inputs.available_tokens)  # the search's own token prior
        except MixtureError as exc:
            raise BaselineError(str(exc)) from exc
        return ReferenceMixture(self.name, weights, self.description)

"""Natural proportions: each super-cluster weighted by its share of the corpus's tokens."""

from __future__ import annotations

from climb_assets.lib.baselines.base import BaselineInputs, ReferenceMixture, normalised


class Natural:
    name = "natural"
    description = "each super-cluster's share of the kept corpus's tokens"

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        weights = normalised(inputs.available_tokens, "super-cluster token counts")
        return ReferenceMixture(self.name, weights, self.description)

"""Target-aligned: the target documents' own distribution over super-clusters.

Each target text is embedded with the corpus encoder and placed at its nearest kept centroid
(`target_alignment`); the share of the target in each super-cluster is the mixture. Domain2Vec's
distribution-alignment idea, without training anything.
"""

from __future__ import annotations

from climb_assets.lib.baselines.base import (
    BaselineError,
    BaselineInputs,
    ReferenceMixture,
    normalised,
)


class TargetAligned:
    name = "target_aligned"
    description = "the target documents' distribution over super-clusters (target_alignment)"

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        if inputs.alignment is None:
            raise BaselineError(
                "target_aligned needs the targets' distribution over super-clusters; "
                "materialize target_alignment (text targets) first"
            )
        weights = normalised(inputs.alignment, "the target's distribution over super-clusters")
        return ReferenceMixture(self.name, weights, self.description)

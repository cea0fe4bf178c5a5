"""Uniform: every super-cluster the same weight, whatever its size."""

from __future__ import annotations

import numpy as np

from climb_assets.lib.baselines.base import BaselineError, BaselineInputs, ReferenceMixture


class Uniform:
    name = "uniform"
    description = "the same weight for every super-cluster"

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        if inputs.k == 0:
            raise BaselineError("no super-clusters to weight")
        return ReferenceMixture(self.name, np.full(inputs.k, 1.0 / inputs.k), self.description)

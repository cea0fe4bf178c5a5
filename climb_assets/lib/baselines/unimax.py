"""UniMax (Chung et al. 2023): the budget spread as evenly as the repetition cap allows.

Each super-cluster may give at most ``max_epochs`` passes over its tokens. Going from the smallest
super-cluster up, each takes the smaller of its cap and an equal share of what is left of the
budget, so small ones are used up (at the cap) and the rest share the remainder evenly
(water-filling). The UtiliMax paper (2025) finds such token-count baselines hard to beat.
"""

from __future__ import annotations

import numpy as np

from climb_assets.lib.baselines.base import BaselineError, BaselineInputs, ReferenceMixture


def water_fill(caps: np.ndarray, budget: float) -> np.ndarray:
    """Allocation of ``budget`` over bins with ``caps``, as even as the caps allow."""
    caps = np.asarray(caps, dtype=np.float64)
    alloc = np.zeros_like(caps)
    left, remaining = float(budget), caps.size
    for i in np.argsort(caps, kind="stable"):
        alloc[i] = min(caps[i], left / remaining)
        left -= alloc[i]
        remaining -= 1
    return alloc


class UniMax:
    name = "unimax"
    description = "the budget spread evenly over super-clusters, at most max_epochs passes each"

    def compute(self, inputs: BaselineInputs) -> ReferenceMixture:
        if inputs.total_tokens is None or inputs.max_epochs is None:
            raise BaselineError("unimax needs manifest.total_tokens and manifest.max_epochs")
        if inputs.total_tokens <= 0 or inputs.max_epochs <= 0:
            raise BaselineError("unimax needs a positive manifest.total_tokens and max_epochs")
        caps = inputs.cap_tokens * inputs.max_epochs
        if caps.sum() < inputs.total_tokens:
            missing = inputs.total_tokens - caps.sum()
            raise BaselineError(
                f"unimax cannot fill manifest.total_tokens = {inputs.total_tokens:,}: "
                f"{int(np.ceil(missing)):,} tokens missing at {inputs.max_epochs:g} epochs per "
                "super-cluster; raise manifest.max_epochs or lower manifest.total_tokens"
            )
        alloc = water_fill(caps, inputs.total_tokens)
        capped = [int(i) for i in np.flatnonzero(alloc >= caps - 1e-9)]
        return ReferenceMixture(
            self.name, alloc / alloc.sum(), self.description,
            {"capped_super_clusters": capped, "epochs": (alloc / np.maximum(
                inputs.cap_tokens, 1)).round(4).tolist()},
        )  # fmt: skip

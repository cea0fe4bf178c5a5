"""Training-free reference mixtures, one module per member behind `ReferenceBaseline`.

natural, uniform, UniMax (water-filling under the repetition cap), BiMix's entropy mixtures
(Shannon and conditional entropy; proportional and softmax) and the target-aligned mixture.
None trains a proxy: they cost seconds and give a user with no proxy budget a mixture, and a user
with one the yardsticks that CLIMB's result is read against.
"""

from __future__ import annotations

from climb_assets.lib.baselines.aligned import TargetAligned
from climb_assets.lib.baselines.base import (
    BaselineError,
    BaselineInputs,
    ReferenceBaseline,
    ReferenceMixture,
)
from climb_assets.lib.baselines.entropy import EntropyMixture
from climb_assets.lib.baselines.natural import Natural
from climb_assets.lib.baselines.uniform import Uniform
from climb_assets.lib.baselines.unimax import UniMax

TRAINING_FREE: tuple[ReferenceBaseline, ...] = (
    Natural(),
    Uniform(),
    UniMax(),
    EntropyMixture("shannon", "proportional"),
    EntropyMixture("conditional", "proportional"),
    EntropyMixture("shannon", "softmax"),
    EntropyMixture("conditional", "softmax"),
    TargetAligned(),
)
BY_NAME = {b.name: b for b in TRAINING_FREE}


def compute_references(
    inputs: BaselineInputs, names: tuple[str, ...] | None = None
) -> tuple[list[ReferenceMixture], dict[str, str]]:
    """Every (or the named) training-free mixture; those that cannot be computed, with why."""
    unknown = sorted(set(names or ()) - set(BY_NAME))
    if unknown:
        raise BaselineError(f"unknown reference mixture(s) {unknown}; known: {sorted(BY_NAME)}")
    done, skipped = [], {}
    for baseline in TRAINING_FREE:
        if names is not None and baseline.name not in names:
            continue
        try:
            done.append(baseline.compute(inputs))
        except BaselineError as exc:
            skipped[baseline.name] = str(exc)
    return done, skipped


__all__ = [
    "BY_NAME",
    "TRAINING_FREE",
    "BaselineError",
    "BaselineInputs",
    "EntropyMixture",
    "ReferenceBaseline",
    "ReferenceMixture",
    "compute_references",
]

"""Same seed, same picks on any CPU: no result may depend on the order a sort gives equal keys.

numpy 2.x's default ``np.argsort`` dispatches to SIMD kernels whose order among equal keys
differs between instruction sets. The fixture below plays "another CPU": every argsort that does
not ask for a stable order returns ties in reverse index order. The proposal, round-1 and
final-choice paths must pick the same rows under it as without it. Rounded candidate weights
(4 decimals) tie often, so a default-kind argsort anywhere on these paths would show here.
"""

from __future__ import annotations

import numpy as np
import pytest

from climb_assets.lib import mixture, proposals
from climb_assets.lib.baselines.unimax import water_fill
from climb_assets.lib.mixture import candidate_pool, mixture_key, natural_prior

PRIOR = natural_prior([40_000, 25_000, 12_000, 9_000, 6_000, 4_000, 2_500, 1_000])
_ARGSORT = np.argsort


def _argsort_reversing_ties(a, axis=-1, kind=None, order=None, **kwargs):
    """``np.argsort`` as another CPU may give it: stable kinds stay stable, others reverse ties."""
    if kind in ("stable", "mergesort") or kwargs.get("stable"):
        return _ARGSORT(a, axis=axis, kind=kind, order=order, **kwargs)
    arr = np.asarray(a)
    if axis is None:
        arr, axis = arr.reshape(-1), -1
    n = arr.shape[axis]
    flipped = _ARGSORT(np.flip(arr, axis=axis), axis=axis, kind="stable", order=order)
    return n - 1 - flipped


@pytest.fixture
def reversed_ties(monkeypatch):
    monkeypatch.setattr(np, "argsort", _argsort_reversing_ties)


def test_the_fixture_really_reverses_ties_and_nothing_else(reversed_ties):
    keys = np.array([2.0, 1.0, 1.0, 0.0, 1.0])
    assert np.argsort(keys).tolist() == [3, 4, 2, 1, 0]
    assert np.argsort(keys, kind="stable").tolist() == [3, 1, 2, 4, 0]
    grid = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    assert np.argsort(grid, axis=1).tolist() == [[2, 1, 0], [2, 0, 1]]


class _FirstWeight:
    """Predicts the first weight; rounded weights make many candidates tie."""

    def __init__(self, with_std: bool = False):
        self.with_std = with_std

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(x)[:, 0], 2)

    def predict_std(self, x: np.ndarray) -> np.ndarray | None:
        return np.asarray(x)[:, 1] if self.with_std else None


def _picks() -> dict[str, list]:
    """Every pick of the proposal and final-choice paths on a pool full of ties."""
    pool = candidate_pool(PRIOR, 2_000, 0)
    assert len({float(v) for v in np.round(pool[:, 0], 2)}) < len(pool) // 10  # ties abound
    trained = pool[:3]
    keys = {mixture_key(w) for w in trained}
    out: dict[str, list] = {}
    for design in ("maximin", "random"):
        for exploit in (0, 1):
            for with_std in (False, True):
                picks = proposals.pick_next_round(
                    pool, _FirstWeight(with_std), 4, 7, keys, trained, 0.0, top=64,
                    design=design, exploit=exploit,
                )  # fmt: skip
                out[f"next/{design}/{exploit}/{with_std}"] = picks.rows.tolist()
    for design in ("cover", "maximin", "random"):
        out[f"round1/{design}"] = mixture.sample_mixtures(PRIOR, 8, 3, design=design).tolist()
    scores = _FirstWeight().predict(pool)
    for method in ("argmax", "topk_mean"):
        out[f"final/{method}"] = mixture.final_mixture(pool, scores, method, k=16).tolist()
    out["ties"] = [proposals.top_ties(scores, 16).tied]
    out["water_fill"] = water_fill(np.array([0.2, 0.2, 0.5, 0.5, 0.2]), 1.0).tolist()
    return out


def test_proposals_and_final_choice_do_not_depend_on_the_order_of_ties(reversed_ties):
    with pytest.MonkeyPatch.context() as undo:
        undo.setattr(np, "argsort", _ARGSORT)
        here = _picks()
    assert _picks() == here

"""Reporting of the search-quality benchmark: CV tables, the issue's goals, README rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

RANKED = ("climb", "regmix", "best_of_random", "natural", "uniform")
BASELINES = ("regmix", "best_of_random", "natural", "uniform")
REFERENCE = (
    "oracle",
    "climb_best_observed",
    "climb_topk_mean",
    "climb_ensemble_ucb",
    "climb_spread",
    "climb_paper",
    "climb_28",
    "regmix_112",
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def cv_table(per_seed: Sequence[dict[str, Any]], strategy: str) -> dict[str, Any]:
    """Per round: mean (over seeds) CV Spearman of every kind and of the kind used."""
    runs = [run["strategies"][strategy] for run in per_seed if strategy in run["strategies"]]
    if not runs:
        return {}
    table: dict[str, Any] = {}
    for index in range(len(runs[0]["rounds"])):
        fits = [run["rounds"][index]["fit"] for run in runs]
        kinds = sorted({k for f in fits for k in f["by_kind"]})
        row: dict[str, Any] = {"points": fits[0]["points"]}
        for kind in kinds:
            values = [f["by_kind"][kind]["spearman"] for f in fits if kind in f["by_kind"]]
            ok = [v for v in values if v is not None]
            row[kind] = rounded(float(np.mean(ok))) if ok else None
        used = [f["cv_spearman"] for f in fits if f["cv_spearman"] is not None]
        row["used"] = rounded(float(np.mean(used))) if used else None
        row["used_min"] = rounded(float(np.min(used))) if used else None
        row["used_kinds"] = [f["used"] for f in fits]
        row["fit_seconds_mean"] = rounded(float(np.mean([f["seconds"] for f in fits])), 2)
        table[f"after_round_{index + 1}"] = row
    return table


def best_per_round(per_seed: Sequence[dict[str, Any]], strategy: str) -> list[float | None]:
    """Mean over seeds of the best proxy BPB after each round."""
    runs = [r["strategies"][strategy] for r in per_seed if strategy in r["strategies"]]
    if not runs:
        return []
    per_round = np.array([run["best_bpb_per_round"] for run in runs], dtype=np.float64)
    return [rounded(float(v)) for v in per_round.mean(axis=0)]


def paired(per_seed: Sequence[dict[str, Any]], a: str, b: str) -> list[float]:
    """Per seed final BPB of `a` minus that of `b` (negative: `a` better), where both ran."""
    return [
        run["strategies"][a]["final_bpb"] - run["strategies"][b]["final_bpb"]
        for run in per_seed
        if a in run["strategies"] and b in run["strategies"]
    ]


def goals(record: dict[str, Any]) -> dict[str, Any]:
    """The issue's five goals on one corpus: the figure and pass/fail."""
    per_seed = record["per_seed"]
    table = record["strategies"]
    noise = record["noise_floor"]["bpb_std"]
    out: dict[str, Any] = {"noise_floor": rounded(noise)}

    last = list(record["cv_tables"]["climb"].values())[-1]
    out["1_predictor_cv_spearman"] = {
        "criterion": "mean over seeds of the used predictor's CV Spearman after the last round "
        ">= 0.9",
        "figure": last["used"],
        "min_over_seeds": last["used_min"],
        "used_kinds": last["used_kinds"],
        "pass": last["used"] is not None and last["used"] >= 0.9,
    }

    diffs = {b: paired(per_seed, "climb", b) for b in BASELINES}
    mean_diff = {b: rounded(float(np.mean(d))) for b, d in diffs.items()}
    never_worse = all(float(np.mean(d)) <= noise for d in diffs.values())
    best_base = min(BASELINES, key=lambda b: table[b]["bpb_mean"])
    found = [n for n in table if n != "oracle"]
    best_any = min(found, key=lambda n: table[n]["bpb_mean"])
    headroom = table[best_base]["bpb_mean"] - table[best_any]["bpb_mean"]
    margin = -float(np.mean(diffs[best_base]))
    must_beat = headroom > 2 * noise
    beats = margin > 2 * noise
    out["2_climb_vs_baselines"] = {
        "criterion": "mean paired difference climb - baseline <= noise floor for every baseline;"
        " and climb beats the best baseline by > 2x noise floor where that baseline is > 2x "
        "noise floor from the best mixture any strategy found",
        "mean_paired_diff_climb_minus": mean_diff,
        "worst_seed_diff_climb_minus": {b: rounded(float(np.max(d))) for b, d in diffs.items()},
        "never_worse": never_worse,
        "best_baseline": best_base,
        "best_strategy": best_any,
        "best_baseline_gap_to_best_strategy": rounded(headroom),
        "must_beat_best_baseline": must_beat,
        "margin_over_best_baseline": rounded(margin),
        "beats_best_baseline_by_2x_noise": beats,
        "pass": never_worse and (beats or not must_beat),
    }

    improved = []
    for run in per_seed:
        rounds = run["strategies"]["climb"]["rounds"]
        first = rounds[0]["best_bpb_in_round"]
        later = min(r["best_bpb_in_round"] for r in rounds[1:]) if len(rounds) > 1 else math.inf
        improved.append(later < first)
    need = math.ceil(0.8 * len(per_seed))
    out["3_later_rounds_improve"] = {
        "criterion": "best proxy of round 2 or 3 beats round 1's best in >= 4 of 5 seeds (80%)",
        "seeds_improved": int(sum(improved)),
        "seeds": len(per_seed),
        "per_seed": improved,
        "mean_best_bpb_per_round": record["best_bpb_per_round"]["climb"],
        "pass": sum(improved) >= need,
    }

    eff = paired(per_seed, "climb_28", "regmix_112")
    if eff:
        out["4_efficiency"] = {
            "criterion": "climb_28 - regmix_112 (paired, mean) <= noise floor",
            "seeds": len(eff),
            "climb_28": rounded(table["climb_28"]["bpb_mean"]),
            "regmix_112": rounded(table["regmix_112"]["bpb_mean"]),
            "mean_paired_diff": rounded(float(np.mean(eff))),
            "per_seed": [rounded(d) for d in eff],
            "pass": float(np.mean(eff)) <= noise,
        }
    pick = paired(per_seed, "climb", "climb_best_observed")
    winner = "argmax" if np.mean(pick) < 0 else "best_observed"
    out["5_argmax_vs_best_observed"] = {
        "criterion": "climb (argmax) - climb_best_observed, paired mean; negative: argmax wins",
        "mean_paired_diff": rounded(float(np.mean(pick))),
        "per_seed": [rounded(d) for d in pick],
        "winner": winner,
        "beyond_noise": bool(abs(float(np.mean(pick))) > noise),
    }
    return out


def summary_rows(name: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """One README-table row per strategy: mean ± std BPB (mean rank); baseline natural."""
    table = record["strategies"]
    natural = table["natural"]
    noise = record["noise_floor"]["bpb_std"]
    rows = []
    for key in (*RANKED, *REFERENCE):
        if key not in table:
            continue
        row = table[key]
        ranked = "rank_mean" in row
        rank = f", rank {row['rank_mean']:.2f}" if ranked else ""
        how = f"mean ± std, mean rank of {len(RANKED)}" if ranked else "mean ± std, unranked"
        if key == "natural":
            baseline = f"noise floor: seed std {noise:.4f}"
            ratio = "1"
        else:
            baseline = f"{natural['bpb_mean']:.4f} ± {natural['bpb_std']:.4f} (natural)"
            ratio = f"{row['bpb_mean'] / natural['bpb_mean']:.3f}"
        proxies = f"{row['proxies']} proxies" if row["proxies"] else "no proxies"
        rows.append(
            {
                "what": (
                    f"{name} corpus, target BPB of a final model ({record['final_train_tokens']:,}"
                    f" tokens) on the mixture of {row['label']}, {proxies}, {len(row['seeds'])} "
                    f"seeds; {how}; ratio to natural, lower is better"
                ),
                "ours": f"{row['bpb_mean']:.4f} ± {row['bpb_std']:.4f}{rank}",
                "baseline": baseline,
                "ratio": ratio,
            }
        )
    return rows


def goal_line(g: dict[str, Any]) -> str:
    parts = [
        f"1 cv {g['1_predictor_cv_spearman']['figure']} "
        f"{'pass' if g['1_predictor_cv_spearman']['pass'] else 'FAIL'}",
        f"2 margin {g['2_climb_vs_baselines']['margin_over_best_baseline']} vs "
        f"{g['2_climb_vs_baselines']['best_baseline']} "
        f"{'pass' if g['2_climb_vs_baselines']['pass'] else 'FAIL'}",
        f"3 {g['3_later_rounds_improve']['seeds_improved']}/{g['3_later_rounds_improve']['seeds']}"
        f" {'pass' if g['3_later_rounds_improve']['pass'] else 'FAIL'}",
    ]
    if "4_efficiency" in g:
        e = g["4_efficiency"]
        parts.append(f"4 diff {e['mean_paired_diff']} {'pass' if e['pass'] else 'FAIL'}")
    parts.append(f"5 {g['5_argmax_vs_best_observed']['winner']}")
    return "; ".join(parts)

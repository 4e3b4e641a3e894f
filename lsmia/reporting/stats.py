"""Statistics over seeds: means with t-intervals, and the paper's effect paired by seed against alpha = 0.

Each seed's smoothed target shares its data, initialisation seed and attack randomness with the
hard-label target of the same seed, so per-seed differences remove that shared variance; the mean
difference carries a 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from scipy import stats as scipy_stats

from lsmia.reporting.formatting import is_number

Stat = dict[str, Any]  # {"mean", "ci95", "n"}


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


Seed = TypeVar("Seed", bound=_Ordered)  # a seed, or a seed with what else must match for two results to pair


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the two-sided t-interval (NaN for fewer than two values) and count of finite values."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(finite[0]), math.nan, 1
    mean = float(finite.mean())
    if np.allclose(finite, mean, rtol=1e-12, atol=0.0):
        return mean, 0.0, n  # identical seeds: an exact 0, not floating-point noise like 3e-16
    sem = finite.std(ddof=1) / math.sqrt(n)
    return mean, float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * sem), n


def stat(values: Iterable[float]) -> Stat:
    """:func:`mean_ci` of ``values`` as ``{"mean", "ci95", "n"}``."""
    mean, ci95, n = mean_ci(list(values))
    return {"mean": mean, "ci95": ci95, "n": n}


def per_alpha(
    rows: Sequence[dict[str, Any]], keys: Iterable[str], descending: bool = False, keep_missing: bool = False
) -> list[dict[str, Any]]:
    """Per alpha: ``{"alpha", "seeds", "metrics": {key: stat}}`` over the seeds' numeric values of each key (a
    key missing from a row, or NaN, is left out, not counted as 0); a key without any value only with
    ``keep_missing`` (as a NaN mean with ``n`` 0)."""
    summaries = []
    for alpha in sorted({row["alpha"] for row in rows}, reverse=descending):
        group = [row for row in rows if row["alpha"] == alpha]
        metrics = {key: stat(float(row[key]) for row in group if is_number(row.get(key))) for key in keys}
        kept = {key: found for key, found in metrics.items() if keep_missing or found["n"]}
        summaries.append({"alpha": alpha, "seeds": sorted(row["seed"] for row in group), "metrics": kept})
    return summaries


def _by_seed(rows: list[dict[str, Any]], alpha: float, key: str) -> dict[int, float]:
    return {row["seed"]: float(row[key]) for row in rows if row["alpha"] == alpha and key in row}


def paired(rows: list[dict[str, Any]], alpha: float, key: str, how: Callable[[float, float], float]) -> dict[str, Any]:
    """``how(value at alpha, value at 0)`` per seed present at both; mean ± 95 % t half-width."""
    at_alpha, at_zero = _by_seed(rows, alpha, key), _by_seed(rows, 0.0, key)
    values = [how(at_alpha[s], at_zero[s]) for s in sorted(at_alpha.keys() & at_zero.keys())]
    return {**stat(values), "values": values}


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def effects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per non-zero alpha: attack acc@1 change and ratio vs alpha = 0, and the test-accuracy cost.

    ``raises`` (alpha > 0): the gain's interval lies above 0. ``halves`` (alpha < 0): :func:`halves`.
    """
    out = []
    for alpha in sorted({row["alpha"] for row in rows} - {0.0}):
        gain = paired(rows, alpha, "final_acc1", lambda a, z: a - z)
        ratio = paired(rows, alpha, "final_acc1", _ratio)
        cost = paired(rows, alpha, "test_acc", lambda a, z: z - a)
        effect = {
            "alpha": alpha,
            "acc1_gain": gain,
            "acc1_ratio": ratio,
            "test_acc_cost": cost,
            "delta_eval_gain": paired(rows, alpha, "delta_eval", lambda a, z: a - z),
        }
        if alpha > 0:
            effect["raises"] = bool(gain["n"] > 1 and gain["mean"] - gain["ci95"] > 0)
        else:
            effect["halves"] = halves(ratio, cost)
        out.append(effect)
    return out


MIN_SEEDS_FOR_A_CLAIM = 3
MAX_COST = 0.05


def halves(ratio: dict[str, Any], cost: dict[str, Any]) -> bool:
    """The paper's claim, judged with intervals: at least 3 paired seeds, a mean acc@1 ratio of at most 0.5 whose
    95 % interval lies below 1, at a mean test-accuracy cost of at most 5 points. A mean of 0.45 ± 1.39 over two
    seeds does not hold."""
    n, mean, ci95 = ratio["n"], ratio["mean"], ratio["ci95"]
    if n < MIN_SEEDS_FOR_A_CLAIM or not (math.isfinite(mean) and math.isfinite(ci95)):
        return False
    return bool(mean <= 0.5 and mean + ci95 < 1.0 and cost["mean"] <= MAX_COST)


def lowers(ratio: dict[str, Any]) -> bool:
    """Whether the acc@1 ratio's 95 % interval lies wholly below 1 (at least 3 paired seeds)."""
    n, mean, ci95 = ratio["n"], ratio["mean"], ratio["ci95"]
    return bool(n >= MIN_SEEDS_FOR_A_CLAIM and math.isfinite(ci95) and mean + ci95 < 1.0)


def strongest_per_seed(attacks: dict[str, dict[Seed, float]]) -> dict[Seed, tuple[str, float]]:
    """The one worst-case definition of lsmia: per seed, the attack with the highest value (acc@1) and that
    value, over every attack measured on that seed (ties: the first attack by name)."""
    best: dict[Seed, tuple[str, float]] = {}
    for name in sorted(attacks):
        for seed, value in attacks[name].items():
            if math.isfinite(value) and (seed not in best or value > best[seed][1]):
                best[seed] = (name, value)
    return best


def paired_attacks(
    at_alpha: dict[str, dict[Seed, float]], at_zero: dict[str, dict[Seed, float]]
) -> tuple[dict[str, dict[Seed, float]], dict[str, dict[Seed, float]]]:
    """Each attack only on the seeds where it was measured at alpha and at alpha = 0: an attack run at one end
    only (e.g. a stronger loss measured on alpha = 0 but not yet on the defended target) would bias the ratio."""
    names = at_alpha.keys() & at_zero.keys()
    alpha = {n: {s: v for s, v in at_alpha[n].items() if s in at_zero[n]} for n in names}
    zero = {n: {s: v for s, v in at_zero[n].items() if s in at_alpha[n]} for n in names}
    return alpha, zero


def worst_case_ratio(at_alpha: dict[str, dict[Seed, float]], at_zero: dict[str, dict[Seed, float]]) -> dict[str, Any]:
    """Per seed, the strongest attack at alpha over the strongest at alpha = 0, over the attacks measured at both
    (:func:`paired_attacks`); mean ± 95 % t over seeds."""
    strong_alpha, strong_zero = (strongest_per_seed(side) for side in paired_attacks(at_alpha, at_zero))
    seeds = sorted(strong_alpha.keys() & strong_zero.keys())
    values = [_ratio(strong_alpha[s][1], strong_zero[s][1]) for s in seeds]
    return {**stat(values), "values": values, "attacks": [strong_alpha[s][0] for s in seeds]}


def verdict(effect: dict[str, Any]) -> str:
    """The paper's claim for one alpha of ``effects``, in words."""
    if "raises" in effect:
        return "raises acc@1 (interval above 0)" if effect["raises"] else "no significant rise"
    return (
        "halves acc@1 at ≤ 5 points cost (≥ 3 seeds, interval below 1)" if effect["halves"] else "does not halve acc@1"
    )

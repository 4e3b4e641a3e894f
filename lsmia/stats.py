"""Statistics over seeds: means with t-intervals, and the paper's effect paired by seed against alpha = 0.

Each seed's smoothed target shares its data, initialisation seed and attack randomness with the
hard-label target of the same seed, so per-seed differences remove that shared variance; the mean
difference carries a 95 % Student-t interval over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


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


def _by_seed(rows: list[dict[str, Any]], alpha: float, key: str) -> dict[int, float]:
    return {row["seed"]: float(row[key]) for row in rows if row["alpha"] == alpha and key in row}


def paired(rows: list[dict[str, Any]], alpha: float, key: str, how: Callable[[float, float], float]) -> dict[str, Any]:
    """``how(value at alpha, value at 0)`` per seed present at both; mean ± 95 % t half-width."""
    at_alpha, at_zero = _by_seed(rows, alpha, key), _by_seed(rows, 0.0, key)
    values = [how(at_alpha[s], at_zero[s]) for s in sorted(at_alpha.keys() & at_zero.keys())]
    mean, ci95, n = mean_ci(values)
    return {"mean": mean, "ci95": ci95, "n": n, "values": values}


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def effects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per non-zero alpha: attack acc@1 change and ratio vs alpha = 0, and the test-accuracy cost.

    ``raises`` (alpha > 0): the gain's interval lies above 0. ``halves`` (alpha < 0): the mean
    acc@1 ratio is at most 0.5 at a mean accuracy cost of at most 5 points (the paper's claim).
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
            effect["halves"] = bool(ratio["mean"] <= 0.5 and cost["mean"] <= 0.05)
        out.append(effect)
    return out


def verdict(effect: dict[str, Any]) -> str:
    """The paper's claim for one alpha of ``effects``, in words."""
    if "raises" in effect:
        return "raises acc@1 (interval above 0)" if effect["raises"] else "no significant rise"
    return "halves acc@1 at ≤ 5 points cost" if effect["halves"] else "does not halve acc@1"

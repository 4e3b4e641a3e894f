"""The tables of an ablation's results as rows of cells, from ``results.json``'s ``variants``.

``lsmia ablate`` writes them as markdown (``results.md``), the report as HTML tables: one definition for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lsmia.reporting import metric_registry
from lsmia.reporting.formatting import number, stat_text
from lsmia.reporting.stats import halves, verdict

Variants = dict[str, dict[str, Any]]  # results.json "variants": name -> {"summary", "effects", ...}
Rows = list[list[str]]

EFFECT_COLUMNS = ("variant", "α", "acc@1 at α", "acc@1 at 0", "acc@1 / acc@1(α=0)", "accuracy cost", "paper's claim")
PAIRED_COLUMNS = ("acc@1 − acc@1(α=0)", "acc@1 / acc@1(α=0)", "accuracy cost")
PAIRED_AFTER = "final_acc1"  # the summary table's paired columns follow the metric they compare


def summary_columns() -> tuple[str, ...]:
    """The summary table's header: variant, alpha, then each metric column of the registry (the paired ones after
    acc@1)."""
    columns = ["variant", "α"]
    for metric in metric_registry.table_columns():
        columns += [metric.column, *(PAIRED_COLUMNS if metric.name == PAIRED_AFTER else ())]
    return tuple(columns)


def effect_rows(variants: Variants) -> Rows:
    """One row per (variant, non-zero alpha): the paired effect against alpha = 0 and the paper's claim."""
    rows = []
    for name, variant in variants.items():
        acc1 = {s["alpha"]: s["metrics"].get("final_acc1") for s in variant["summary"]}
        for effect in sorted(variant["effects"], key=lambda e: -e["alpha"]):
            alpha = effect["alpha"]
            rows.append(
                [
                    name,
                    f"{alpha:+g}",
                    stat_text(acc1.get(alpha)),
                    stat_text(acc1.get(0.0)),
                    stat_text(effect["acc1_ratio"], 2),
                    stat_text(effect["test_acc_cost"]),
                    verdict(effect),
                ]
            )
    return rows


def summary_rows(variants: Variants) -> Rows:
    """One row per (variant, alpha) with the summary metrics; the paired columns stay empty at alpha = 0."""
    rows = []
    for name, variant in variants.items():
        by_alpha = {e["alpha"]: e for e in variant["effects"]}
        for summary in variant["summary"]:
            alpha, m = summary["alpha"], summary["metrics"]
            effect = by_alpha.get(alpha)
            paired = (
                [stat_text(effect["acc1_gain"]), stat_text(effect["acc1_ratio"], 2), stat_text(effect["test_acc_cost"])]
                if effect
                else ["", "", ""]
            )
            row = [name, f"{alpha:+g}"]
            for metric in metric_registry.table_columns():
                row += [stat_text(m.get(metric.name), metric.digits), *(paired if metric.name == PAIRED_AFTER else ())]
            rows.append(row)
    return rows


def seeds_note(seeds: Sequence[int]) -> str:
    return (
        f"Seeds {sorted(seeds)}; mean ± half-width of the 95 % t-interval over seeds; differences and ratios "
        "are paired by seed against α = 0 of the same variant. acc@1 is on the final samples; "
        "'all samples' is before the final selection (AlignMI's protocol)."
    )


def missing_note(missing: Sequence[dict[str, Any]]) -> str:
    """The cells a ``--finished-only`` table leaves out; empty when none."""
    if not missing:
        return ""
    cells = ", ".join(f"{m['variant']} α={m['alpha']:+g} seed {m['seed']}" for m in missing)
    return f"Not finished yet ({len(missing)} cells, left out above): {cells}."


def markdown_table(columns: Sequence[str], rows: Rows) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


CLAIM_COLUMNS = ("the paper's claim", "cells measured", "where it holds", "closest to holding", "there")
Measured = list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]  # (where, effect, metrics at α, at 0)


def _measured(plans: dict[str, Variants], negative: bool) -> Measured:
    """Every (plan/variant, effect) with alpha of the given sign, and its summary metrics at alpha and at 0."""
    out = []
    for plan, variants in plans.items():
        for name, variant in variants.items():
            metrics = {s["alpha"]: s["metrics"] for s in variant["summary"]}
            for effect in variant["effects"]:
                if (effect["alpha"] < 0) == negative:
                    where = f"{plan}/{name} α = {effect['alpha']:+g}"
                    out.append((where, effect, metrics.get(effect["alpha"], {}), metrics.get(0.0, {})))
    return out


def _lower(stat: dict[str, Any]) -> float:
    lower = stat["mean"] - stat["ci95"]
    return lower if math.isfinite(lower) else -math.inf


def _cosine_drop(entry: tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]) -> float:
    at_alpha, at_zero = entry[2].get("grad_cosine_mean"), entry[3].get("grad_cosine_mean")
    return at_zero["mean"] - at_alpha["mean"] if at_alpha and at_zero else math.nan


def _cosine_shift(entry: tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]) -> str:
    """The mean gradient cosine at α = 0 and at the cell's α, e.g. ``cosine 0.41 → 0.12``."""
    at_alpha, at_zero = entry[2]["grad_cosine_mean"]["mean"], entry[3]["grad_cosine_mean"]["mean"]
    return f"cosine {number(at_zero, 2)} → {number(at_alpha, 2)}"


def _claim(text: str, measured: Measured, holds: Any, score: Any, show: Any) -> list[str]:
    """A row: how many cells hold the claim and the one closest to it (highest ``score``) with ``show``."""
    scored = [m for m in measured if not math.isnan(score(m))]
    if not scored:
        return [text, "0", "—", "—", "—"]
    held = [m[0] for m in scored if holds(m)]
    best = max(scored, key=score)
    return [text, str(len(scored)), ", ".join(held) or "none", best[0], show(best)]


def claim_rows(plans: dict[str, Variants]) -> Rows:
    """The paper's claims checked in every measured ablation cell (plan -> its results.json ``variants``):
    where each holds and which cell comes closest. Rises and δ_eval need the interval above 0; halving is judged
    with intervals (lsmia.reporting.stats.halves, re-applied to results written before that rule); the gradient similarity
    compares means (not paired)."""
    positive, negative = _measured(plans, negative=False), _measured(plans, negative=True)
    affordable = [m for m in negative if m[1]["test_acc_cost"]["mean"] <= 0.05]
    return [
        _claim(
            "α > 0 raises attack acc@1 (interval above 0)",
            positive,
            lambda m: m[1]["raises"],
            lambda m: _lower(m[1]["acc1_gain"]),
            lambda m: f"acc@1 − acc@1(α=0) = {stat_text(m[1]['acc1_gain'])}",
        ),
        _claim(
            "α < 0 keeps at most half of acc@1 at ≤ 5 points of test accuracy (≥ 3 seeds, interval below 1)",
            affordable,
            lambda m: halves(m[1]["acc1_ratio"], m[1]["test_acc_cost"]),
            lambda m: -m[1]["acc1_ratio"]["mean"],
            lambda m: f"ratio {stat_text(m[1]['acc1_ratio'], 2)}, cost {stat_text(m[1]['test_acc_cost'])}",
        ),
        _claim(
            "α < 0 moves the samples away from the private data (δ_eval up, interval above 0)",
            negative,
            lambda m: _lower(m[1]["delta_eval_gain"]) > 0,
            lambda m: _lower(m[1]["delta_eval_gain"]),
            lambda m: f"δ_eval − δ_eval(α=0) = {stat_text(m[1]['delta_eval_gain'], 1)}",
        ),
        _claim(
            "α < 0 makes consecutive attack gradients less similar (mean cosine below α = 0's)",
            negative,
            lambda m: _cosine_drop(m) > 0,
            _cosine_drop,
            _cosine_shift,
        ),
    ]


LOGIT_GEOMETRY_COLUMNS = (
    "variant",
    "α",
    "seed",
    "test acc",
    "‖f‖₂",
    "f_y",
    "mean f_c, c ≠ y",
    "spread of f_c",
    "margin f_y − max f_c",
    "margin / spread",
    "f_y / ‖f‖₁",
)


LOGIT_GEOMETRY_DECIMALS = {  # the measured columns of LOGIT_GEOMETRY_COLUMNS, in order, and their decimals
    "accuracy": 3,
    "logit_norm": 0,
    "target_logit": 1,
    "other_logit_mean": 1,
    "other_logit_spread": 1,
    "margin": 1,
    "relative_margin": 2,
    "target_l1_share": 4,
}


def logit_geometry_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The targets' logit geometry (lsmia.metrics.logits) as a markdown table and what its columns mean."""
    cells = [
        [
            row["variant"],
            f"{row['alpha']:+g}",
            str(row["seed"]),
            *(number(row[key], decimals) for key, decimals in LOGIT_GEOMETRY_DECIMALS.items()),
        ]
        for row in rows
    ]
    return [
        *markdown_table(LOGIT_GEOMETRY_COLUMNS, cells),
        "",
        "Means over the target's private test images. f_y: the true class's logit; f_c: the other classes' logits "
        "and their spread (standard deviation) per image; margin / spread: how far the true class stands out of "
        "the other classes in units of their spread; f_y / ‖f‖₁: the true logit's share of what PPA's Poincaré "
        "loss normalises by.",
    ]

"""The tables of an ablation's results as rows of cells, from ``results.json``'s ``variants``.

``lsmia ablate`` writes them as markdown (``results.md``), the report as HTML tables: one definition for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lsmia.stats import verdict

Variants = dict[str, dict[str, Any]]  # results.json "variants": name -> {"summary", "effects", ...}
Rows = list[list[str]]

EFFECT_COLUMNS = ("variant", "α", "acc@1 at α", "acc@1 at 0", "acc@1 / acc@1(α=0)", "accuracy cost", "paper's claim")
SUMMARY_COLUMNS = (
    "variant",
    "α",
    "test acc",
    "acc@1",
    "acc@1 − acc@1(α=0)",
    "acc@1 / acc@1(α=0)",
    "accuracy cost",
    "acc@1 all samples",
    "target's confidence",
    "gradient cosine",
    "δ_eval",
    "ξ",
)


def cell(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± ci95`` to ``digits`` decimals; ``—`` for a missing or non-finite mean."""
    if stat is None or not math.isfinite(stat["mean"]):
        return "—"
    if not math.isfinite(stat["ci95"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


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
                    cell(acc1.get(alpha)),
                    cell(acc1.get(0.0)),
                    cell(effect["acc1_ratio"], 2),
                    cell(effect["test_acc_cost"]),
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
                [cell(effect["acc1_gain"]), cell(effect["acc1_ratio"], 2), cell(effect["test_acc_cost"])]
                if effect
                else ["", "", ""]
            )
            rows.append(
                [
                    name,
                    f"{alpha:+g}",
                    cell(m.get("test_acc")),
                    cell(m.get("final_acc1")),
                    *paired,
                    cell(m.get("all_acc1")),
                    cell(m.get("final_target_confidence")),
                    cell(m.get("grad_cosine_mean")),
                    cell(m.get("delta_eval"), 1),
                    cell(m.get("xi")),
                ]
            )
    return rows


def seeds_note(seeds: Sequence[int]) -> str:
    return (
        f"Seeds {sorted(seeds)}; mean ± half-width of the 95 % t-interval over seeds; differences and ratios "
        "are paired by seed against α = 0 of the same variant. acc@1 is on the final samples; "
        "'all samples' is before the final selection (AlignMI's protocol)."
    )


def markdown_table(columns: Sequence[str], rows: Rows) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]

"""Hand-made defense comparisons: an ablation's results.json and a sweep's points.json (issue 14)."""

from __future__ import annotations

from typing import Any


def row(
    variant: str, seed: int, test_acc: float, acc1: float, delta: float = 100.0, xi: float = 0.5, alpha: float = 0.0
) -> dict:
    return {
        "variant": variant,
        "alpha": alpha,
        "seed": seed,
        "test_acc": test_acc,
        "final_acc1": acc1,
        "delta_eval": delta,
        "xi": xi,
    }


def hand_made_results() -> dict:
    """Two seeds. Undefended: test 0.9, acc@1 0.8 (poincare) / 0.7 (ce). MID beta 0.01: test 0.8, poincare
    [0.5, 0.7] / ce 0.4. MID beta 0.1: test 0.6, poincare 0.2 / ce [0.3, 0.5] (its strongest). MID beta 0.05:
    test 0.7, acc@1 0.7 (dominated by beta 0.01). LS alpha -0.05: test 0.7, poincare 0.3 / ce 0.2."""
    mid = {"kind": "mid"}
    variants = {
        "none@p": {"attack.loss": "poincare"},
        "none@ce": {"attack.loss": "ce"},
        "ls@p": {"study.alphas": [0.0, -0.05], "attack.loss": "poincare"},
        "ls@ce": {"study.alphas": [0.0, -0.05], "attack.loss": "ce"},
        "mid1@p": {"target.defense": {**mid, "mid_beta": 0.01}, "attack.loss": "poincare"},
        "mid1@ce": {"target.defense": {**mid, "mid_beta": 0.01}, "attack.loss": "ce"},
        "mid2@p": {"target.defense.kind": "mid", "target.defense.mid_beta": 0.1, "attack.loss": "poincare"},
        "mid2@ce": {"target.defense.kind": "mid", "target.defense.mid_beta": 0.1, "attack.loss": "ce"},
        "mid3@p": {"target.defense": {**mid, "mid_beta": 0.05}, "attack.loss": "poincare"},
    }
    rows = []
    for s in (0, 1):
        rows += [
            row("none@p", s, 0.9, 0.8, 500.0),
            row("none@ce", s, 0.9, 0.7),
            row("ls@p", s, 0.9, 0.8, 500.0),
            row("ls@ce", s, 0.9, 0.7),
            row("ls@p", s, 0.7, 0.3, 600.0, alpha=-0.05),
            row("ls@ce", s, 0.7, 0.2, alpha=-0.05),
            row("mid1@p", s, 0.8, [0.5, 0.7][s], [300.0, 400.0][s], [0.2, 0.4][s]),
            row("mid1@ce", s, 0.8, 0.4),
            row("mid2@p", s, 0.6, 0.2),
            row("mid2@ce", s, 0.6, [0.3, 0.5][s], [100.0, 200.0][s], 0.1),
            row("mid3@p", s, 0.7, 0.7),
        ]
    return {
        "plan": {"name": "t", "variants": variants},
        "rows": rows,
        "variants": {name: {"overrides": over} for name, over in variants.items()},
    }


def sweep_points_record(
    study: str, defense: str, strengths: list[tuple[dict[str, Any], float, float]], undefended: bool = False
) -> dict[str, Any]:
    """A sweep's points.json: one trial per (target.defense settings, test accuracy, acc@1) at seed 0; with
    ``undefended``, the study's alpha 0 target (test 0.9, acc@1 0.8) as the reference."""
    trials = [
        {
            "trial": number,
            "defense": settings,
            "alpha": 0.0 if settings or defense != "ls" else -0.1 * (number + 1),
            "seed": 0,
            "attack_loss": "poincare",
            "test_acc": test_acc,
            "final_acc1": acc1,
            "delta_eval": 100.0,
            "xi": 0.5,
        }
        for number, (settings, test_acc, acc1) in enumerate(strengths)
    ]
    reference = {"source": "out/metrics/alpha0.0_seed0.json", "seed": 0, "attack_loss": "poincare"}
    reference |= {"test_acc": 0.9, "final_acc1": 0.8, "delta_eval": 90.0, "xi": 0.6}
    return {
        "study": study,
        "defense": defense,
        "seed": 0,
        "attack_loss": "poincare",
        "trials": trials,
        "undefended": reference if undefended else None,
    }

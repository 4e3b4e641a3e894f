"""The sweep's tables, figure and summary files (lsmia sweep writes them into ``out/sweep/<study>/``): a trial as a
table row, ``trials.{csv,md}``, the Pareto front and its PNG, the recommendation (``recommendation.json``),
``points.json`` and ``fronts.png`` for lsmia.reporting.defense_comparison, and the summary's lines.

The rows come from Optuna's frozen trials, the rest from the config and the study's paths, all passed in by the
sweep (lsmia.experiments.sweep): nothing here imports the experiments."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from lsmia.config import Config, SweepConfig
from lsmia.defenses.registry import DEFENSES
from lsmia.paths import StudyPaths, SweepPaths
from lsmia.reporting import figures as style
from lsmia.reporting import formatting, metric_registry
from lsmia.reporting.formatting import cell

FAIL_REASON = "fail_reason"

# The parameters each sweep.defense searches (target.defense settings, from each defense's spec in
# lsmia.defenses.registry; ls: the smoothing, see suggest_smoothing).
DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {
    "ls": ("alpha",),
    **{kind: tuple(param.name for param in spec.search) for kind, spec in DEFENSES.items()},
    "none": (),
}


@dataclass
class SweepResult:
    study_name: str
    rows: list[dict[str, Any]]
    pareto: list[dict[str, Any]]
    recommended: dict[str, Any] | None
    files: dict[str, Path] = field(default_factory=dict)
    note: str = ""  # why nothing is recommended
    importance: dict[str, dict[str, float]] = field(default_factory=dict)  # objective -> parameter -> importance


def trial_row(trial: FrozenTrial, defense: str = "ls") -> dict[str, Any]:
    """A trial as a table row: its smoothing (``ls``) or its defense strength, the objectives and metrics."""
    attrs, params = trial.user_attrs, trial.params
    if defense == "ls":
        setting = {
            "alpha": params.get("alpha"),
            **{k: attrs.get(k) for k in ("schedule", "warmup_start", "warmup_end")},
        }
    else:
        strengths = {name: params.get(name, attrs.get(name)) for name in DEFENSE_PARAMS[defense]}
        setting = {"defense": defense, **strengths, "alpha": attrs.get("alpha")}
    return {
        "number": trial.number,
        "state": trial.state.name,
        **setting,
        **{key: attrs.get(key) for key in metric_registry.trial_columns()},
        "retry_of": trial.system_attrs.get("failed_trial"),
        FAIL_REASON: attrs.get(FAIL_REASON, ""),
        "mlflow_run_id": attrs.get("mlflow_run_id", ""),
    }


SYMBOLS = {"alpha": "α", **{param.name: param.symbol for spec in DEFENSES.values() for param in spec.search}}


def setting_text(row: dict[str, Any]) -> str:
    """The trial's searched setting in a few characters, e.g. ``α=-0.05`` or ``β=0.012``."""
    names = DEFENSE_PARAMS[row.get("defense", "ls")]
    return ", ".join(f"{SYMBOLS[name]}={cell(row.get(name))}" for name in names) or "undefended"


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials no other trial beats on both test accuracy (higher) and attack acc@1 (lower)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and finite(r["test_acc"]) and finite(r["final_acc1"])]

    def dominated(row: dict[str, Any]) -> bool:
        return any(
            o["test_acc"] >= row["test_acc"]
            and o["final_acc1"] <= row["final_acc1"]
            and (o["test_acc"] > row["test_acc"] or o["final_acc1"] < row["final_acc1"])
            for o in done
        )

    return sorted((r for r in done if not dominated(r)), key=lambda r: r["test_acc"])


def recommend(front: Sequence[dict[str, Any]], sweep: SweepConfig) -> dict[str, Any] | None:
    """The Pareto point with the lowest attack acc@1 at or above ``min_test_acc`` and within ``max_acc_drop`` of the
    best test accuracy, in every mode; ties go to the higher test accuracy. None when no point reaches the floor."""
    if not front:
        return None
    floor = max(max(r["test_acc"] for r in front) - sweep.max_acc_drop, sweep.min_test_acc)
    eligible = [r for r in front if r["test_acc"] >= floor - 1e-12]
    return min(eligible, key=lambda r: (r["final_acc1"], -r["test_acc"])) if eligible else None


def no_recommendation(front: Sequence[dict[str, Any]], sweep: SweepConfig) -> str:
    """Why :func:`recommend` found nothing, in words."""
    if not front:
        return "no completed trial"
    best = max(r["test_acc"] for r in front)
    return (
        f"no trial reaches the accuracy floor sweep.min_test_acc = {sweep.min_test_acc} (best test accuracy "
        f"{best:.3f}): lower the floor, train the targets longer or run more trials"
    )


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_tables(rows: Sequence[dict[str, Any]], paths: SweepPaths) -> None:
    columns = list(rows[0]) if rows else ["number", "state"]
    with open(paths.trials_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]).replace("|", "/") for c in columns) + " |" for r in rows]
    paths.trials_md.write_text("\n".join(lines) + "\n")


def plot_pareto_png(
    rows: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]], recommended: dict[str, Any] | None, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["state"] == "COMPLETE" and finite(r["test_acc"]) and finite(r["final_acc1"])]
    fig, ax = plt.subplots(figsize=style.PARETO_SIZE)
    ax.scatter([r["test_acc"] for r in done], [r["final_acc1"] for r in done], c=style.SWEEP_TRIALS, label="trials")
    ax.plot(
        [r["test_acc"] for r in front],
        [r["final_acc1"] for r in front],
        "o-",
        c=style.SWEEP_FRONT,
        label="Pareto front",
    )
    for r in done:
        ax.annotate(
            f"{r['number']}: {setting_text(r)}",
            (r["test_acc"], r["final_acc1"]),
            fontsize=style.SMALL_ANNOTATION_FONT,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if recommended:
        ax.scatter(
            [recommended["test_acc"]],
            [recommended["final_acc1"]],
            marker="*",
            s=250,
            c=style.SWEEP_RECOMMENDED,
            edgecolors=style.EDGE,
            zorder=3,
            label=f"recommended (trial {recommended['number']})",
        )
    ax.set_xlabel("target test accuracy (higher is better)")
    ax.set_ylabel("attack acc@1 (lower is more private)")
    ax.legend(fontsize=style.LEGEND_FONT)
    fig.tight_layout()
    fig.savefig(out, dpi=style.SWEEP_DPI)
    plt.close(fig)


def write_recommendation(
    out: Path,
    recommended: dict[str, Any] | None,
    note: str,
    front: Sequence[dict[str, Any]],
    sweep: SweepConfig,
    importance: dict[str, dict[str, float]],
) -> None:
    """``recommendation.json``: the recommended trial (or why none), the front, the floor and the importances."""
    out.write_text(
        json.dumps(
            {
                "recommended": recommended,
                "note": note,
                "pareto_front": front,
                "min_test_acc": sweep.min_test_acc,
                "max_acc_drop": sweep.max_acc_drop,
                "importance": importance,
            },
            indent=2,
            default=str,
        )
    )


def point_metrics() -> tuple[str, ...]:
    """A points.json model's metrics: its test accuracy and those the defense comparison reads."""
    return ("test_acc", *metric_registry.front())


def points_record(rows: Sequence[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """The completed trials as models for lsmia.reporting.defense_comparison (``points.json``): each one's defense settings
    (dotted target.defense keys; none for ``ls`` and ``none``), alpha, seed, attack loss and metrics; and the
    undefended reference: the study's alpha 0 target at ``run.seed``, when it was evaluated."""
    defense = cfg.sweep.defense
    base_alpha = 0.0 if defense == "none" else cfg.target.smoothing.alpha
    trials = []
    for row in rows:
        if row["state"] != "COMPLETE" or not (finite(row["test_acc"]) and finite(row["final_acc1"])):
            continue
        settings = {f"target.defense.{name}": row[name] for name in DEFENSE_PARAMS[defense]}
        trials.append(
            {
                "trial": row["number"],
                "defense": {} if defense in ("ls", "none") else {"target.defense.kind": defense, **settings},
                "alpha": row["alpha"] if finite(row.get("alpha")) else base_alpha,
                "seed": cfg.run.seed,
                "attack_loss": cfg.attack.loss,
                **{key: row.get(key) for key in point_metrics()},
            }
        )
    return {
        "study": cfg.sweep.study_name,
        "defense": defense,
        "seed": cfg.run.seed,
        "attack_loss": cfg.attack.loss,
        "trials": trials,
        "undefended": None if defense == "none" else study_reference(cfg),
    }


def study_reference(cfg: Config) -> dict[str, Any] | None:
    """The study's undefended target (alpha 0, ``run.seed``) from its metrics file; None when not evaluated."""
    from lsmia.utils import load_json

    path = StudyPaths(cfg.run.out_dir).metrics_file(0.0, cfg.run.seed)
    if not path.is_file():
        return None
    metrics = load_json(path, what="study metrics", keys=(), fix="delete it and re-run 'lsmia evaluate'")
    if not (finite(metrics.get("test_acc")) and finite(metrics.get("final_acc1"))):
        return None
    values = {key: metrics[key] for key in point_metrics() if finite(metrics.get(key))}
    return {"source": str(path), "seed": cfg.run.seed, "attack_loss": cfg.attack.loss, **values}


def write_points(rows: Sequence[dict[str, Any]], cfg: Config, paths: SweepPaths) -> None:
    """``points.json`` and ``fronts.png``: the sweep's front drawn as lsmia.reporting.defense_comparison draws every front."""
    from lsmia.reporting.defense_comparison import sweep_figure
    from lsmia.utils import save_json

    record = points_record(rows, cfg)
    save_json(record, paths.points_json)
    sweep_figure(record, paths.fronts_png)


def summary_lines(result: SweepResult) -> list[str]:
    states = [r["state"] for r in result.rows]
    lines = [
        f"study '{result.study_name}': {len(states)} trials ({states.count('COMPLETE')} complete, "
        f"{states.count('PRUNED')} pruned, {states.count('FAIL')} failed); "
        f"Pareto front: trials {[r['number'] for r in result.pareto]}"
    ]
    if result.recommended:
        r = result.recommended
        setting = (
            f"alpha={formatting.number(r['alpha'])} {smoothing_text(r)}"
            if "defense" not in r
            else f"{r['defense']} {setting_text(r)}"
        )
        lines.append(f"recommended: trial {r['number']} {setting} {scores_text(r['test_acc'], r['final_acc1'], 4)}")
    else:
        lines.append(f"recommended: none: {result.note}")
    for objective, values in result.importance.items():
        ranked = ", ".join(f"{param} {formatting.number(value, 2)}" for param, value in values.items())
        lines.append(f"importance for {objective} (fANOVA): {ranked}")
    lines.append(f"files: {result.files['trials_md'].parent}")
    return lines


def smoothing_text(row: dict[str, Any]) -> str:
    """The trial's schedule in words; the warm-up only where one applies (never for alpha >= 0 by default)."""
    if row.get("warmup_start") is None:
        return "constant smoothing (no warm-up)"
    if row.get("schedule") == "linear":
        return f"linear warm-up {cell(row['warmup_start'])}-{cell(row['warmup_end'])}"
    return f"{row.get('schedule')} warm-up"


def scores_text(test_acc: Any, attack_acc1: Any, decimals: int) -> str:
    """A trial's objectives as its log line and the sweep's summary write them: ``test_acc=… attack_acc1=…``."""
    return f"test_acc={formatting.number(test_acc, decimals)} attack_acc1={formatting.number(attack_acc1, decimals)}"

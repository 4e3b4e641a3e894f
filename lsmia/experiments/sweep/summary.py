"""The study's summary: its rows, Pareto front, recommendation and parameter importances, written by
lsmia.reporting.sweep_tables (tables, PNG, points.json, recommendation) and here (Optuna's interactive figures),
and logged to the parent MLflow run."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from lsmia.config import Config, SweepConfig
from lsmia.experiments.sweep.space import objective_names
from lsmia.paths import SweepPaths
from lsmia.reporting.sweep_tables import (
    DEFENSE_PARAMS,
    SweepResult,
    finite,
    no_recommendation,
    pareto_front,
    plot_pareto_png,
    recommend,
    trial_row,
    write_points,
    write_recommendation,
    write_tables,
)


def front_of(study: optuna.Study, rows: Sequence[dict[str, Any]], sweep: SweepConfig) -> list[dict[str, Any]]:
    """The Pareto front's rows by test accuracy: Optuna's ``study.best_trials`` in pareto mode; in constrained mode
    (one objective) the trials no other beats on both test accuracy and attack acc@1."""
    if sweep.mode != "pareto":
        return pareto_front(rows)
    best = {trial.number for trial in study.best_trials}
    return sorted((r for r in rows if r["number"] in best), key=lambda r: r["test_acc"])


IMPORTANCE_MIN_TRIALS = 5  # fANOVA on fewer completed trials says nothing


def param_importances(study: optuna.Study, sweep: SweepConfig) -> dict[str, dict[str, float]]:
    """Per objective, ``optuna.importance`` (fANOVA, seeded) of the parameters the most trials share; empty with
    fewer than IMPORTANCE_MIN_TRIALS such completed trials or fewer than two parameters, and without the objectives
    that did not vary over them (fANOVA has nothing to attribute)."""
    params, used = _importance_params(study)
    if len(params) < 2 or used < IMPORTANCE_MIN_TRIALS:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = {}
    for index, name in enumerate(objective_names(sweep)):
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=params, target=_objective(index)
            )
        except RuntimeError:  # "zero total variance": the objective was the same in every trial
            continue
        found[name] = {key: round(float(value), 6) for key, value in importances.items()}
    return found


def _objective(index: int) -> Callable[[FrozenTrial], float]:
    return lambda trial: float(trial.values[index])


def _importance_params(study: optuna.Study) -> tuple[list[str], int]:
    """The parameters common to every completed trial, or (a conditional space: the warm-up is searched for
    negative alpha only) all parameters over the trials that have them all; and how many trials that uses."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    common = sorted(set.intersection(*(set(t.params) for t in done))) if done else []
    if len(common) >= 2:
        return common, len(done)
    every = sorted(set().union(*(set(t.params) for t in done))) if done else []
    return every, sum(1 for t in done if set(every) <= set(t.params))


def write_pareto_html(study: optuna.Study, sweep: SweepConfig, out: Path) -> None:
    """Optuna's interactive Pareto front (``optuna.visualization.plot_pareto_front``, plotly embedded: works offline).

    Constrained mode has one objective: the figure shows test accuracy against attack acc@1 with the best feasible
    trial marked."""
    from optuna.visualization import plot_pareto_front

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if sweep.mode == "pareto":
            figure = plot_pareto_front(study)
        else:
            figure = plot_pareto_front(
                study,
                targets=lambda t: (t.user_attrs["test_acc"], t.user_attrs["final_acc1"]),
                target_names=["test_acc", "attack_acc1"],
            )
    figure.update_layout(
        title=f"lsmia sweep '{study.study_name}': test accuracy (higher is better) vs attack acc@1 "
        "(lower is more private)"
    )
    figure.write_html(out, include_plotlyjs=True)


def write_importance_html(
    study: optuna.Study, sweep: SweepConfig, importance: dict[str, dict[str, float]], out: Path
) -> None:
    """Optuna's parameter-importance figure (fANOVA, seeded): a bar group per objective that has importances."""
    from optuna.visualization import plot_param_importances

    params, _ = _importance_params(study)
    names = objective_names(sweep)
    options: dict[str, Any] = {}
    if set(importance) != set(names):  # one objective did not vary: plot the other alone
        index = names.index(next(iter(importance)))
        options = {"target": _objective(index), "target_name": names[index]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        figure = plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params, **options
        )
    figure.write_html(out, include_plotlyjs=True)


def summarize(study: optuna.Study, cfg: Config, paths: SweepPaths) -> SweepResult:
    """Trials table (CSV + markdown), Pareto front (PNG, and Optuna's interactive HTML), parameter importances
    (JSON, HTML) and the recommendation, written to files."""
    rows = [trial_row(t, cfg.sweep.defense) for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    front = front_of(study, rows, cfg.sweep)
    recommended = recommend(front, cfg.sweep)
    note = "" if recommended else no_recommendation(front, cfg.sweep)
    importance = param_importances(study, cfg.sweep)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_tables(rows, paths)
    plot_pareto_png(rows, front, recommended, paths.pareto_png)
    write_pareto_html(study, cfg.sweep, paths.pareto_html)
    write_points(rows, cfg, paths)
    files = {
        "trials_csv": paths.trials_csv,
        "trials_md": paths.trials_md,
        "pareto_png": paths.pareto_png,
        "pareto_html": paths.pareto_html,
        "points_json": paths.points_json,
        "fronts_png": paths.fronts_png,
        "recommendation": paths.recommendation,
    }
    if importance:
        write_importance_html(study, cfg.sweep, importance, paths.importance_html)
        files["importance_html"] = paths.importance_html
    write_recommendation(paths.recommendation, recommended, note, front, cfg.sweep, importance)
    return SweepResult(cfg.sweep.study_name, rows, front, recommended, files, note, importance)


def log_summary(tracker: Any, result: SweepResult) -> None:
    states = [r["state"] for r in result.rows]
    tracker.log_metrics({f"trials_{s.lower()}": float(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")})
    if result.recommended:
        searched = DEFENSE_PARAMS[result.recommended.get("defense", "ls")]
        keys = [key for key in (*searched, "test_acc", "final_acc1") if finite(result.recommended.get(key))]
        tracker.log_metrics({f"recommended_{k}": float(result.recommended[k]) for k in keys})
        tracker.set_tags({"recommended_trial": result.recommended["number"]})
    else:
        tracker.set_tags({"recommended_trial": "none", "recommendation_note": result.note})
    tracker.log_metrics(
        {
            f"importance.{objective}.{param}": value
            for objective, values in result.importance.items()
            for param, value in values.items()
        }
    )
    for path in result.files.values():
        tracker.log_artifact(path, "sweep")

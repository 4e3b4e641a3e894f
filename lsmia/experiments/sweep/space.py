"""The sweep's objectives and search space: what each trial samples (smoothing, or a defense's strength), the
accuracy floor, the samplers and the pruner."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from lsmia.config import DefenseConfig, SmoothingConfig, SweepConfig, defense_settings
from lsmia.defenses.registry import DEFENSES

CONSTRAINT = "test_acc_floor"


def directions(sweep: SweepConfig) -> list[Literal["minimize", "maximize"]]:
    return ["maximize", "minimize"] if sweep.mode == "pareto" else ["minimize"]


def objective_names(sweep: SweepConfig) -> list[str]:
    """The objectives' names, as optuna-dashboard and optuna.visualization label them."""
    return ["test_acc", "attack_acc1"] if sweep.mode == "pareto" else ["attack_acc1"]


def name_objectives(study: optuna.Study, sweep: SweepConfig) -> None:
    """Name the objectives (``study.set_metric_names``) and record each one's direction in the study's user attrs."""
    names = objective_names(sweep)
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(names)
    if "directions" not in study.user_attrs:
        study.set_user_attr("directions", dict(zip(names, directions(sweep), strict=True)))
        if sweep.mode == "constrained":
            study.set_user_attr("constraint", f"test_acc >= {sweep.min_test_acc} ({CONSTRAINT})")


def search_space(sweep: SweepConfig, base: SmoothingConfig) -> dict[str, str]:
    """The searched parameters, in words (logged as params of the parent run)."""
    if sweep.defense != "ls":
        return defense_space(sweep, base)
    if sweep.sampler == "grid":
        return {
            "alpha": f"grid of {sweep.n_trials} in [{sweep.alpha_low}, {sweep.alpha_high}]",
            "schedule": f"fixed {base.schedule} ({base.warmup_start}-{base.warmup_end})",
        }
    space = {"alpha": f"[{sweep.alpha_low}, {sweep.alpha_high}]", "schedule": ", ".join(sweep.schedules)}
    if "linear" in sweep.schedules:
        space["warmup_start"] = f"[{sweep.warmup_start_low}, {sweep.warmup_start_high}] (linear ramp only)"
        space["warmup_end"] = "warmup_start + warmup_fraction * (1 - warmup_start), warmup_fraction in [0, 1]"
    return space


def suggest_smoothing(trial: optuna.trial.BaseTrial, sweep: SweepConfig, base: SmoothingConfig) -> SmoothingConfig:
    """Sample the trial's smoothing; warm-up parameters only where the schedule uses them."""
    alpha = trial.suggest_float("alpha", sweep.alpha_low, sweep.alpha_high)
    if sweep.sampler == "grid":
        return SmoothingConfig.model_validate({**base.model_dump(), "alpha": alpha})
    schedule = (
        trial.suggest_categorical("schedule", sweep.schedules) if len(sweep.schedules) > 1 else sweep.schedules[0]
    )
    start, end = base.warmup_start, base.warmup_end
    if schedule == "linear" and (alpha < 0 or not base.negative_only):
        start = trial.suggest_float("warmup_start", sweep.warmup_start_low, sweep.warmup_start_high)
        fraction = trial.suggest_float("warmup_fraction", 0.0, 1.0)
        end = min(1.0, start + fraction * (1.0 - start))
    return SmoothingConfig.model_validate(
        {**base.model_dump(), "alpha": alpha, "schedule": schedule, "warmup_start": start, "warmup_end": end}
    )


def defense_space(sweep: SweepConfig, base: SmoothingConfig) -> dict[str, str]:
    """A defense sweep's searched parameters, in words."""
    smoothing = f"fixed: target.smoothing (alpha {base.alpha:g}, {base.schedule})"
    if sweep.defense == "none":
        return {"defense": "none: the undefended target, nothing searched", "alpha": "fixed: 0"}
    searched = DEFENSES[sweep.defense].search
    return {param.name: param.described(sweep.defense_ranges) for param in searched} | {"alpha": smoothing}


def suggest_defense(trial: optuna.trial.BaseTrial, sweep: SweepConfig, base: DefenseConfig) -> DefenseConfig:
    """Sample the trial's defense strength (``sweep.defense`` mid, bido or tl; the others of ``base`` kept when it is
    that defense); ``none``: no defense."""
    values: dict[str, Any] = base.model_dump() if base.kind == sweep.defense else {}
    values["kind"] = sweep.defense
    for param in DEFENSES[sweep.defense].search if sweep.defense in DEFENSES else ():
        values[param.name] = param.suggest(trial, sweep.defense_ranges)
    return defense_settings(values)


def warmup_applies(smoothing: SmoothingConfig) -> bool:
    """Whether the smoothing factor ramps up during training (lsmia.training.schedules.alpha_at): never for a constant
    schedule, nor for alpha >= 0 when only negative alpha is warmed up (the paper's setting)."""
    return smoothing.schedule != "constant" and (smoothing.alpha < 0 or not smoothing.negative_only)


def grid_alphas(sweep: SweepConfig) -> list[float]:
    return [float(a) for a in np.linspace(sweep.alpha_low, sweep.alpha_high, sweep.n_trials)]


def set_floor_constraint(trial: optuna.Trial, sweep: SweepConfig, test_acc: float) -> None:
    """Constrained mode: feasible (<= 0) when the test accuracy reaches the floor.

    Optuna 5 reads constraints from the trial (``Trial.set_constraint``); the samplers'
    ``constraints_func`` is deprecated since 5.0.
    """
    if sweep.mode == "constrained":
        trial.set_constraint(CONSTRAINT, sweep.min_test_acc - test_acc)


class FloorPruner(optuna.pruners.BasePruner):
    """Prune a trial whose test accuracy at some epoch is under the floor and below that of every trial
    that went on to reach the floor (at least ``min_feasible`` of them): by precedent it cannot reach it.

    MedianPruner does not fit: the reported value (test accuracy, higher is better) is not the
    objective (attack acc@1, minimised), and a trial is only bad when it misses the floor.
    """

    def __init__(self, floor: float, min_feasible: int = 2) -> None:
        self.floor, self.min_feasible = floor, min_feasible

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or trial.intermediate_values[step] >= self.floor:
            return False
        reached = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("test_acc", -1.0) >= self.floor and step in t.intermediate_values
        ]
        return len(reached) >= self.min_feasible and trial.intermediate_values[step] < min(reached)


def make_sampler(sweep: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """TPE with the constant liar, so parallel workers do not all sample where the model looks best."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if sweep.sampler == "tpe":
            return optuna.samplers.TPESampler(
                multivariate=True, group=True, constant_liar=True, n_startup_trials=sweep.startup_trials, seed=seed
            )
        if sweep.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=sweep.population_size, seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)  # grid: the points are queued trials


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.mode == "constrained" and sweep.prune:
        return FloorPruner(sweep.min_test_acc)
    return optuna.pruners.NopPruner()

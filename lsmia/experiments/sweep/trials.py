"""One trial: the study's shared models, the trial's config (its smoothing or defense), training, attack and
evaluation through the graph's stages with an observer for Optuna and MLflow, and telling Optuna the outcome."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lsmia.config import Config, DefenseConfig, SmoothingConfig, SweepConfig, build_config
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.experiments import graph
from lsmia.experiments.sweep.heartbeat import Heartbeat, enqueue_retry
from lsmia.experiments.sweep.space import set_floor_constraint, suggest_defense, suggest_smoothing, warmup_applies
from lsmia.experiments.sweep.storage import Log
from lsmia.paths import StudyPaths, SweepPaths
from lsmia.reporting import formatting
from lsmia.reporting.sweep_tables import DEFENSE_PARAMS, FAIL_REASON, scores_text

STAGE = "sweep"

_FETCHED: set[tuple[str, ...]] = set()  # shared-stage keys this process has fetched from the remote


@dataclass(frozen=True)
class SharedModels:
    """The study's models every trial reuses."""

    data_file: Path
    prior_file: Path | None
    eval_file: Path
    attribute_file: Path


def shared_models(cfg: Config, log: Log = print) -> SharedModels:
    """The data, prior, eval model and attribute predictor of the study, or an LsmiaError naming the missing one.

    With ``sweep.shared_remote`` they are first pulled from that DVC remote, or trained and pushed under a lock
    when it lacks them (lsmia.experiments.remote; once per process)."""
    if cfg.sweep.shared_remote is not None:
        from lsmia.experiments.remote import ensure_shared, shared_keys

        keys = tuple(shared_keys(cfg).values())
        if keys not in _FETCHED:
            remote = None if cfg.sweep.shared_remote == "default" else cfg.sweep.shared_remote
            ensure_shared(cfg, remote, Path.cwd(), log)
            _FETCHED.add(keys)
    paths = StudyPaths(cfg.run.out_dir)
    models = SharedModels(
        paths.data_file,
        paths.prior_dir / "prior.pt" if cfg.prior.kind == "dcgan" else None,
        paths.eval_dir / "model.pt",
        paths.attribute_dir / "predictor.pt",
    )
    # the attribute folder exists even for data without attributes (then it holds no predictor)
    required = [models.data_file, models.prior_file, models.eval_file, paths.attribute_dir]
    for path in (p for p in required if p is not None):
        if not path.exists():
            raise LsmiaError(
                f"the sweep reuses the study's data and models but {path} is missing: run "
                "`dvc repro data prior eval-model attributes` (or `lsmia study`) first"
            )
    return models


@dataclass
class TrialContext:
    cfg: Config
    models: SharedModels
    paths: SweepPaths
    device: torch.device
    parent_run_id: str | None
    log: Log


def trial_config(cfg: Config, smoothing: SmoothingConfig, defense: DefenseConfig | None = None) -> Config:
    overrides = {"target.smoothing": smoothing.model_dump(mode="json")}
    if defense is not None:
        overrides["target.defense"] = defense.model_dump(mode="json")
    return build_config(cfg.to_dict(), overrides)


def suggest_trial(trial: optuna.Trial, cfg: Config) -> Config:
    """The trial's config: its smoothing (``ls``) or its defense (mid, bido, tl; ``none``: undefended, alpha 0),
    with the effective settings recorded as user attrs."""
    sweep, base = cfg.sweep, cfg.target.smoothing
    trial.set_user_attr("defense", sweep.defense)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it (host:pid)
    if sweep.defense == "ls":
        smoothing = suggest_smoothing(trial, sweep, base)
        trial.set_user_attr("schedule", smoothing.schedule)
        for key in ("warmup_start", "warmup_end"):  # the effective values, searched or not; none without warm-up
            trial.set_user_attr(key, getattr(smoothing, key) if warmup_applies(smoothing) else None)
        return trial_config(cfg, smoothing)
    smoothing = base if sweep.defense != "none" else SmoothingConfig.model_validate({**base.model_dump(), "alpha": 0})
    defense = suggest_defense(trial, sweep, cfg.target.defense)
    for name in DEFENSE_PARAMS[sweep.defense]:
        trial.set_user_attr(name, getattr(defense, name))
    return trial_config(cfg, smoothing, defense)


def run_trial(ctx: TrialContext, trial: optuna.Trial) -> list[float] | float:
    """Train, attack and evaluate one target; the objective value(s), or TrialPruned / DivergenceError."""
    from lsmia.tracking.client import start_tracking
    from lsmia.tracking.stages import StageLog

    sweep = ctx.cfg.sweep
    cfg = suggest_trial(trial, ctx.cfg)
    tags = {
        "stage": STAGE,
        "role": "target",
        "study": sweep.study_name,
        "trial": str(trial.number),
        "alpha": str(cfg.target.smoothing.alpha),
        "defense": cfg.target.defense.kind,
        "seed": str(cfg.run.seed),
        "dataset": cfg.data.source,
    }
    pruned: optuna.TrialPruned | None = None
    with start_tracking(
        cfg.run.tracking,
        STAGE,
        f"{sweep.study_name} trial {trial.number}",
        cfg.to_dict(),
        tags,
        parent_run_id=ctx.parent_run_id,
    ) as tracker:
        if tracker.run_id:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.log_dict(dict(trial.params), "trial_params.json")
        stage_log = StageLog(tracker, cfg)
        stage_log.log_dataset("training")
        try:
            metrics = _train_attack_evaluate(ctx, cfg, trial, stage_log)
        except optuna.TrialPruned as err:
            tracker.set_tags({"optuna.state": "PRUNED"})
            pruned = err
    if pruned is not None:
        raise pruned
    values = [metrics["test_acc"], metrics["final_acc1"]]
    return values if sweep.mode == "pareto" else values[1]


@dataclass(frozen=True)
class TrialLayout:
    """The study's shared outputs (data, prior, eval model, attributes) and the trial's own target, attack
    and metrics under ``out/sweep/<study>/trial_<n>/``."""

    shared: graph.StudyLayout
    trial_dir: Path

    def output(self, stage: graph.Stage, cell: graph.Cell | None) -> Path:
        own = {
            "target": self.trial_dir / "target" / "model.pt",
            "attack": self.trial_dir / "attack" / "attack.pt",
            "evaluate": self.trial_dir / "metrics.json",
        }
        return own.get(stage.name) or self.shared.output(stage, cell)

    def side_outputs(self, stage: graph.Stage, cell: graph.Cell | None) -> dict[str, Path]:
        return {}  # no curves or plot data per cached or trial stage


class TrialObserver:
    """A trial's stage observer: MLflow through the trial's StageLog, test accuracy to Optuna (pruning and the
    accuracy floor), and every metric as a trial user attr."""

    def __init__(self, trial: optuna.Trial, sweep: SweepConfig, stage_log: Any) -> None:
        self.trial, self.sweep, self.stage_log = trial, sweep, stage_log
        self.trained: Any = None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.stage_log.log_metrics(metrics, step=step)
        if step is None:
            for key, value in metrics.items():
                if isinstance(value, (int, float, str)):
                    self.trial.set_user_attr(key, value)

    def epoch_logger(self) -> Callable[[int, dict[str, float]], None]:
        return _epoch_hook(self.trial, self.sweep, self.stage_log)

    def log_prior(self, result: Any) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...

    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None:
        self.log_metrics(metrics)

    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None:
        """After training: record test accuracy; in constrained mode a target below the floor is not attacked."""
        self.trained, test_acc = result, result.metrics["test_acc"]
        self.trial.set_user_attr("test_acc", test_acc)
        set_floor_constraint(self.trial, self.sweep, test_acc)
        self.stage_log.log_metrics(result.metrics)
        if self.sweep.mode == "constrained" and test_acc < self.sweep.min_test_acc:
            raise optuna.TrialPruned(
                f"test accuracy {test_acc:.3f} is below the floor {self.sweep.min_test_acc}: not attacked"
            )

    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None:
        self.stage_log.log_metrics({"num_final_samples": len(result.final_targets)})
        _log_trial_outputs(self.stage_log.tracker, self.trained, out_dir, self.sweep.log_models)


def _train_attack_evaluate(ctx: TrialContext, cfg: Config, trial: optuna.Trial, stage_log: Any) -> dict[str, Any]:
    """The graph's per-cell stages (target, attack, evaluate) for the trial's smoothing, on the shared models."""

    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed)
    layout = TrialLayout(graph.StudyLayout(StudyPaths(cfg.run.out_dir)), ctx.paths.trial_dir(trial.number))
    observer = TrialObserver(trial, cfg.sweep, stage_log)

    @contextlib.contextmanager
    def observe(*args: Any, **kwargs: Any) -> Iterator[TrialObserver]:
        yield observer

    metrics: dict[str, Any] = {}
    for stage in graph.stages_for(cfg, ("target", "attack", "evaluate")):
        metrics = graph.run_stage(stage, cfg, cell, layout, ctx.device, observe)
    return metrics


def _epoch_hook(trial: optuna.Trial, sweep: SweepConfig, stage_log: Any) -> Callable[[int, dict[str, float]], None]:
    """Per-epoch metrics to MLflow; in constrained mode also test accuracy to Optuna's pruner."""

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        stage_log.log_metrics(row, step=epoch)
        if sweep.mode == "constrained":  # multi-objective studies cannot report or prune
            trial.report(row["test_acc"], epoch)
            if trial.should_prune():
                set_floor_constraint(trial, sweep, row["test_acc"])
                raise optuna.TrialPruned(
                    f"test accuracy {row['test_acc']:.3f} at epoch {epoch} is below every trial that reached the floor"
                )

    return on_epoch


def _log_trial_outputs(tracker: Any, trained: Any, attack_dir: Path, log_model: bool) -> None:
    if log_model:
        model = trained.model.cpu().eval()
        tracker.log_model(model, "model", torch.rand(1, 3, model.image_size, model.image_size))
    grid = attack_dir / "reconstructions.png"
    if grid.exists():
        tracker.log_artifact(grid, "reconstructions")


def execute_trial(
    study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial, ctx: TrialContext
) -> TrialState:
    """Run one asked trial under a heartbeat and tell its outcome (Ctrl-C: failed, queued again, re-raised)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number
    )
    values, state, reason = None, TrialState.COMPLETE, ""
    error: BaseException | None = None
    with Heartbeat(storage, trial_id, ctx.cfg.sweep.heartbeat_interval):
        try:
            values = run_trial(ctx, trial)
        except optuna.TrialPruned as err:
            state, reason = TrialState.PRUNED, str(err)
        except DivergenceError as err:
            state, reason = TrialState.FAIL, str(err)
        except KeyboardInterrupt as err:
            state, reason, error = TrialState.FAIL, "interrupted (Ctrl-C): queued again", err
        except Exception as err:  # a bug: record it, then stop this worker
            state, reason, error = TrialState.FAIL, f"{type(err).__name__}: {err}", err
    return _tell(study, trial, values, state, reason, error, ctx)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    values: Any,
    state: TrialState,
    reason: str,
    error: BaseException | None,
    ctx: TrialContext,
) -> TrialState:
    try:
        if state == TrialState.FAIL:
            trial.set_user_attr(FAIL_REASON, reason)
        frozen = study.tell(
            trial,
            values if state == TrialState.COMPLETE else None,
            state=None if state == TrialState.COMPLETE else state,
        )
        state = frozen.state  # a NaN objective turns COMPLETE into FAIL
    except UpdateFinishedTrialError:
        ctx.log(f"trial {trial.number}: was failed as stale by another worker while it ran (heartbeat too slow?)")
        return TrialState.FAIL
    if isinstance(error, KeyboardInterrupt):
        enqueue_retry(study, study.trials[trial.number], max_retry=None)
    ctx.log(describe_trial(study.trials[trial.number]))
    if error is not None:
        raise error
    return state


def describe_trial(trial: FrozenTrial) -> str:
    params = ", ".join(f"{k}={formatting.number(v) if isinstance(v, float) else v}" for k, v in trial.params.items())
    attrs = trial.user_attrs
    scores = "" if "final_acc1" not in attrs else f" {scores_text(attrs['test_acc'], attrs['final_acc1'], 3)}"
    reason = f" ({attrs[FAIL_REASON]})" if trial.state == TrialState.FAIL and FAIL_REASON in attrs else ""
    return f"trial {trial.number} {trial.state.name}: {params}{scores}{reason}"

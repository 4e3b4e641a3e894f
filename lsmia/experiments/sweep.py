"""``lsmia sweep``: an Optuna search for the best accuracy-privacy trade-off of label smoothing.

Each trial trains one target with a sampled smoothing factor and warm-up, attacks it with PPA and
evaluates the leakage. The prior, the evaluation model and the attribute predictor are the study's
(DVC outputs under ``run.out_dir``), trained once and shared by every trial; a missing one is an error
telling the user to build it: the sweep never trains them itself, so parallel workers cannot race to
write them and DVC stays their only owner. Every trial uses ``run.seed`` (initialisation, data order,
attack), so trials differ only in their smoothing. Outputs: ``out/sweep/<study>/trial_<n>/{target,attack}``.

Modes (``sweep.mode``):

- ``pareto``: two objectives, maximise the target's test accuracy and minimise attack acc@1.
- ``constrained``: minimise attack acc@1 subject to test accuracy >= ``sweep.min_test_acc`` (a trial
  constraint, ``Trial.set_constraint``: Optuna 5 deprecates the samplers' ``constraints_func``). Test
  accuracy is reported per epoch, so a trial that cannot reach the floor is pruned (see
  :class:`FloorPruner`), and a target that ends below the floor is not attacked at all.

Sampler (``sweep.sampler``), default ``tpe``: multivariate TPE (``group=True`` for the conditional
warm-up parameters). The search is low-dimensional (alpha, a schedule, two warm-up numbers) and each
trial trains and attacks a model, so the budget is tens of trials: TPE models the objectives after
``sweep.startup_trials`` random trials, whereas NSGA-II spends whole generations of
``population_size`` trials (Optuna's default 50) before selection does anything. ``grid`` searches
alpha only (evenly spaced points, one per trial, queued when the study is created; the schedule stays
as configured in ``target.smoothing``), ``random`` is the baseline, ``nsga2`` suits large budgets.

Search space: alpha in [alpha_low, alpha_high]; the schedule among ``sweep.schedules``; for a linear
ramp that applies (alpha < 0, or ``negative_only`` off) ``warmup_start`` in [warmup_start_low,
warmup_start_high] and ``warmup_fraction`` in [0, 1], with warmup_end = start + fraction * (1 - start),
so end >= start by construction. A linear ramp with start = end = 0 is a constant schedule, so the
default ``schedules: [linear]`` already covers constant smoothing.

Defenses (``sweep.defense`` / ``--defense``): ``ls`` (default) searches the smoothing as above; ``mid`` searches
MID's beta, ``bido`` BiDO's lambda_x and lambda_y (each log-uniform; the ranges of each defense's spec in
lsmia.defenses.registry, or ``sweep.defense_ranges``), ``tl`` the
number of trained last blocks (an integer), each with ``target.smoothing`` as configured; ``none`` searches
nothing and trains the undefended target (alpha 0; one trial is enough). A study keeps the defense it was created
with. Besides the trials table, the summary writes ``points.json`` (every completed trial as a model, read by
``lsmia compare-defenses``) and ``fronts.png``, the front drawn by lsmia.reporting.defense_comparison with the undefended model
marked: the study's own alpha 0 target at ``run.seed`` (``out/metrics/alpha0.0_seed<s>.json``) when it exists.

Storage: by default a journal file ``out/sweep/<study>/journal.log`` (several processes on this
machine; ``optuna-dashboard`` reads it); ``sweep.storage`` / ``--storage`` takes an RDB URL
(postgresql://, mysql://) or redis:// for workers on many machines. Re-running the same study resumes
it and runs only what is left of ``sweep.n_trials``, a total over every worker and every run. The budget is
stored in the study (user attr ``n_trials``, set by each ``lsmia sweep`` run): ``--worker`` processes on other
machines follow it, whatever their own ``sweep.n_trials``.

Budget: trials are drawn with ask/tell in our own loop, so the budget check and ``ask`` happen under one
lock: an flock in ``out/sweep/<study>/`` for the processes of one machine, plus, for workers on several
machines, the shared storage's own lock (a PostgreSQL advisory lock, a MySQL named lock, a Redis lock), so
the budget is exact over every machine. A trial counts once it starts; a trial failed because its worker was
lost and queued again does not count (its retry does). Each trial records the worker that ran it (user attr
``worker``, ``host:pid``).

Faults: a diverging target (DivergenceError) is a FAILED trial with user attr ``fail_reason``; the
study goes on. A running trial records a heartbeat every ``heartbeat_interval`` s; before drawing a trial, a
worker fails every RUNNING trial silent for ``grace_period`` s and queues its parameters again (at most
``max_retry`` times; system attrs ``failed_trial`` / ``retry_history``). With an RDB (PostgreSQL) this is
Optuna's own heartbeat (``RDBStorage(heartbeat_interval, grace_period, heartbeat_stale_trial_callback=
RetryHeartbeatStaleTrialCallback(max_retry))``, timed by the database's clock); Optuna has none for journal
storages (file, Redis), so lsmia does the same there with a trial system attr and its own retry. Ctrl-C fails the running trial, queues it again and
leaves the study resumable.

MLflow (through lsmia.tracking.client only): one parent run per study, its id stored as study user attr so
workers and resumed runs attach to it; one nested run per trial (its id in trial user attr
``mlflow_run_id``) with the trial's config, both objectives, per-epoch training metrics, the model and
the reconstructions. The summary (trials table, Pareto front PNG + HTML, recommendation) is written to
``out/sweep/<study>/`` and, with tracking, logged to the parent run.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import multiprocessing
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import torch
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lsmia.config import Config, DefenseConfig, SmoothingConfig, SweepConfig, build_config, defense_settings
from lsmia.defenses.registry import DEFENSES
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.experiments import graph
from lsmia.paths import StudyPaths, SweepPaths
from lsmia.redaction import redact as redact_url
from lsmia.reporting import figures as style
from lsmia.reporting import formatting, metric_registry
from lsmia.reporting.formatting import cell

PARENT_RUN_ATTR = "mlflow_parent_run_id"
BUDGET_ATTR = "n_trials"  # the study's total trial budget, set by `lsmia sweep`, followed by every worker
HEARTBEAT_ATTR = "lsmia:heartbeat"
FAIL_REASON = "fail_reason"
CONSTRAINT = "test_acc_floor"
STAGE = "sweep"
# The parameters each sweep.defense searches (target.defense settings, from each defense's spec in
# lsmia.defenses.registry; ls: the smoothing, see suggest_smoothing).
DEFENSE_PARAMS: dict[str, tuple[str, ...]] = {
    "ls": ("alpha",),
    **{kind: tuple(param.name for param in spec.search) for kind, spec in DEFENSES.items()},
    "none": (),
}
Log = Callable[[str], None]


# ---------------------------------------------------------------- files


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


# ---------------------------------------------------------------- storage


def open_storage(url: str | None, journal: Path, sweep: SweepConfig | None = None) -> optuna.storages.BaseStorage:
    """A journal file (default), a Redis journal (redis://) or an RDB (sqlalchemy URL).

    With ``sweep`` (a worker's storage) an RDB gets Optuna's own heartbeat: ``heartbeat_interval``,
    ``grace_period`` and a stale trial queued again (``RetryHeartbeatStaleTrialCallback``, the name Optuna 5
    gives RetryFailedTrialCallback) up to ``max_retry`` times. Journal storages have no heartbeat in Optuna:
    :class:`Heartbeat` and :func:`fail_stale_trials` do it for them.
    """
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage

    if not url:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            if url.startswith(("redis://", "rediss://")):
                import redis  # noqa: F401  (optuna defers a missing client to a vague error)

                return JournalStorage(JournalRedisBackend(url))
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval: experimental since Optuna 2.9
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **_rdb_heartbeat(sweep))
    except ImportError:
        raise LsmiaError(f"storage {redact(url)} needs a package that is not installed: {_driver_fix(url)}") from None
    except Exception as err:
        raise LsmiaError(
            f"cannot open storage {redact(url)} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:150]}): check the URL and that the server is up"
        ) from None


def _driver_fix(url: str) -> str:
    """How to install the client a storage URL needs (SQLAlchemy 2.1 maps postgresql:// to psycopg 3)."""
    if url.startswith("redis"):
        return "pip install 'lsmia[redis]'"
    if url.startswith("postgresql"):
        return "pip install 'lsmia[postgres]'"
    return "pip install its database driver (pymysql for MySQL)"


def _rdb_heartbeat(sweep: SweepConfig | None) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments for a worker (none for a reader such as the summary or a test)."""
    if sweep is None:
        return {}
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=sweep.max_retry)
    return {
        "heartbeat_interval": sweep.heartbeat_interval,
        "grace_period": sweep.grace_period,
        "heartbeat_stale_trial_callback": retry,
    }


def optuna_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna keeps the heartbeat of this storage (an RDB opened for a worker)."""
    return isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None


def redact(url: str | None) -> str:
    """The storage URL without its password (lsmia.redaction)."""
    return redact_url(url) if url else "journal file"


@contextlib.contextmanager
def budget_lock(
    paths: SweepPaths, storage: optuna.storages.BaseStorage | None = None, url: str | None = None, study_name: str = ""
) -> Iterator[None]:
    """Serialises 'count the budget, then ask': between the processes of this machine (an flock), and between
    machines through the shared storage where it has locks: a PostgreSQL advisory lock, a MySQL named lock,
    a Redis lock. A journal file has no other machine to lock out."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _storage_lock(storage, url, f"lsmia-sweep:{study_name}"):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


STORAGE_LOCK_TIMEOUT_S = 120  # a lock held longer than this belongs to a lost worker (Redis expires it)


@contextlib.contextmanager
def _storage_lock(storage: optuna.storages.BaseStorage | None, url: str | None, name: str) -> Iterator[None]:
    """The storage's own cross-machine lock named ``name``; nothing for a journal file."""
    import hashlib

    if isinstance(storage, optuna.storages.RDBStorage) and storage.engine.name in ("postgresql", "mysql"):
        import sqlalchemy

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        postgres = storage.engine.name == "postgresql"
        with storage.engine.connect() as connection:  # a session lock: released when the connection closes
            if postgres:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            else:
                connection.execute(
                    sqlalchemy.text("SELECT GET_LOCK(:name, :wait)"), {"name": name, "wait": STORAGE_LOCK_TIMEOUT_S}
                )
            try:
                yield
            finally:
                unlock = "SELECT pg_advisory_unlock(:key)" if postgres else "SELECT RELEASE_LOCK(:name)"
                connection.execute(sqlalchemy.text(unlock), {"key": key, "name": name})
        return
    if url and url.startswith(("redis://", "rediss://")):
        import redis

        lock = redis.Redis.from_url(url).lock(
            name, timeout=STORAGE_LOCK_TIMEOUT_S, blocking_timeout=STORAGE_LOCK_TIMEOUT_S
        )
        if not lock.acquire():
            raise LsmiaError(
                f"the sweep lock {name} in {redact(url)} stayed taken for {STORAGE_LOCK_TIMEOUT_S} s: "
                "check that the Redis server is healthy"
            )
        try:
            yield
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()
        return
    yield


# ---------------------------------------------------------------- search space and samplers


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
    """Whether the smoothing factor ramps up during training (lsmia.schedules.alpha_at): never for a constant
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


# ---------------------------------------------------------------- study


def create_or_load_study(cfg: Config, storage: optuna.storages.BaseStorage, seed: int) -> optuna.Study:
    """The study (created on first use, grid points queued); an LsmiaError when its mode differs."""
    sweep = cfg.sweep
    study = optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        directions=directions(sweep),
        load_if_exists=True,
        sampler=make_sampler(sweep, seed),
        pruner=make_pruner(sweep),
    )
    wanted = [
        optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
        for d in directions(sweep)
    ]
    if list(study.directions) != wanted:
        raise LsmiaError(
            f"study '{sweep.study_name}' was created with directions "
            f"{[d.name.lower() for d in study.directions]}, not for mode '{sweep.mode}': "
            "pass another --study-name or the original sweep.mode"
        )
    name_objectives(study, sweep)
    searched = study.user_attrs.get("defense", "ls" if "mode" in study.user_attrs else sweep.defense)
    if searched != sweep.defense:
        raise LsmiaError(
            f"study '{sweep.study_name}' searches defense '{searched}', not '{sweep.defense}': "
            f"pass another --study-name (e.g. --study-name {sweep.defense}) or --defense {searched}"
        )
    if "defense" not in study.user_attrs:
        study.set_user_attr("defense", sweep.defense)
    if "mode" not in study.user_attrs:
        study.set_user_attr("mode", sweep.mode)
        study.set_user_attr("search_space", search_space(sweep, cfg.target.smoothing))
        if sweep.sampler == "grid" and not study.trials:
            for alpha in grid_alphas(sweep):
                study.enqueue_trial({"alpha": alpha})
        elif not study.trials:
            for alpha in both_signs(sweep, seed):
                study.enqueue_trial({"alpha": alpha})
    return study


def both_signs(sweep: SweepConfig, seed: int) -> list[float]:
    """The first two alphas of a new smoothing study: one negative, one positive (drawn with the study's seed),
    so a short sweep never misses one side of the question; none when the range has only one sign."""
    if sweep.defense != "ls" or sweep.n_trials < 2 or not sweep.alpha_low < 0.0 < sweep.alpha_high:
        return []
    rng = np.random.default_rng(seed)
    return [float(rng.uniform(sweep.alpha_low, 0.0)), float(rng.uniform(0.0, sweep.alpha_high))]


def load_study(cfg: Config, storage: optuna.storages.BaseStorage, seed: int) -> optuna.Study:
    try:
        return optuna.load_study(
            study_name=cfg.sweep.study_name,
            storage=storage,
            sampler=make_sampler(cfg.sweep, seed),
            pruner=make_pruner(cfg.sweep),
        )
    except KeyError:
        raise LsmiaError(
            f"no study '{cfg.sweep.study_name}' in {redact(cfg.sweep.storage)}: start it with "
            "`lsmia sweep` (without --worker) first"
        ) from None


def consumed_budget(trials: Sequence[FrozenTrial]) -> int:
    """Trials started so far, minus failed ones whose parameters were queued again (their retry counts)."""
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return sum(
        1 for t in trials if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and t.number in retried)
    )


def enqueue_retry(study: optuna.Study, trial: FrozenTrial, max_retry: int | None) -> bool:
    """Queue the trial's parameters again (Optuna's retry convention); False past ``max_retry``."""
    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    if max_retry is not None and len(history) > max_retry:
        return False
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={"failed_trial": history[0], "retry_history": history},
        )
    )
    return True


def fail_stale_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, sweep: SweepConfig, log: Log
) -> list[int]:
    """Fail the RUNNING trials silent for ``grace_period`` s (their worker is gone) and queue them again.

    An RDB worker's storage leaves this to Optuna (``optuna.storages.fail_stale_trials`` and its retry callback)."""
    if optuna_heartbeat(storage):
        return _optuna_fail_stale_trials(study, log)
    now, failed = time.time(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start is not None else now
        last = trial.system_attrs.get(HEARTBEAT_ATTR) or started
        if now - last <= sweep.grace_period:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(
                trial_id,
                FAIL_REASON,
                f"worker lost: no heartbeat for {now - last:.0f} s (grace period {sweep.grace_period} s)",
            )
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # it finished, or another worker failed it first
        retried = enqueue_retry(study, storage.get_trial(trial_id), sweep.max_retry)
        log(f"trial {trial.number}: worker lost, FAILED" + ("; queued again" if retried else "; retries used up"))
        failed.append(trial.number)
    return failed


def _optuna_fail_stale_trials(study: optuna.Study, log: Log) -> list[int]:
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    failed = [t.number for t in trials if t.number in running and t.state == TrialState.FAIL]
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    for number in failed:
        log(f"trial {number}: worker lost, FAILED" + ("; queued again" if number in retried else "; retries used up"))
    return failed


class Heartbeat:
    """Records the time as a trial system attr every ``interval`` s while the trial runs."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                if optuna_heartbeat(self.storage):  # Optuna's heartbeat table, read with the database's clock
                    self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
                else:
                    self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:
                return  # the trial was finished (e.g. failed as stale by another worker)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- one trial


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


def scores_text(test_acc: Any, attack_acc1: Any, decimals: int) -> str:
    """A trial's objectives as its log line and the sweep's summary write them: ``test_acc=… attack_acc1=…``."""
    return f"test_acc={formatting.number(test_acc, decimals)} attack_acc1={formatting.number(attack_acc1, decimals)}"


# ---------------------------------------------------------------- workers


def worker_seed(cfg: Config, worker_index: int, trials_so_far: int) -> int:
    """Distinct per study, worker and resumed run, so random draws never repeat an earlier run's and two studies
    of the same config do not draw the same first trials (the study name enters the seed)."""
    study = zlib.crc32(cfg.sweep.study_name.encode())
    return (cfg.run.seed * 1_000_003 + study * 7_919 + worker_index * 10_007 + trials_so_far) % (2**31)


def run_worker(cfg: Config, worker_index: int | None = None, log: Log = print) -> int:
    """Draw and run trials of an existing study until the total budget is spent; the number run here.

    Waits while other workers' trials are still running, so a lost worker's trial is failed and
    retried (after ``grace_period``) before the budget is declared spent. ``worker_index`` None (a
    ``--worker`` process, maybe on another machine) seeds the sampler from this host and process, so two
    machines starting together never draw the same random trials.
    """
    from lsmia.utils import resolve_device

    models, paths = shared_models(cfg, log), SweepPaths.of(cfg)
    storage = open_storage(cfg.sweep.storage, paths.journal, cfg.sweep)
    probe = load_study(cfg, storage, 0)
    if worker_index is None:
        worker_index = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000 + 1_000
    study = load_study(cfg, storage, worker_seed(cfg, worker_index, len(probe.trials)))
    ctx = TrialContext(cfg, models, paths, resolve_device(cfg.run.device), study.user_attrs.get(PARENT_RUN_ATTR), log)
    ran = 0
    while True:
        with budget_lock(paths, storage, cfg.sweep.storage, cfg.sweep.study_name):
            fail_stale_trials(study, storage, cfg.sweep, log)
            trials = study.get_trials(deepcopy=False)
            attrs = study.user_attrs  # read afresh: a worker may start before `lsmia sweep` opened the parent run
            ctx.parent_run_id = attrs.get(PARENT_RUN_ATTR, ctx.parent_run_id)
            spent = consumed_budget(trials) >= int(attrs.get(BUDGET_ATTR, cfg.sweep.n_trials))
            running = any(t.state == TrialState.RUNNING for t in trials)
            trial = None if spent else _ask(study)
        if trial is None:
            if not running:
                return ran
            time.sleep(min(cfg.sweep.heartbeat_interval, 5))
            continue
        execute_trial(study, storage, trial, ctx)
        ran += 1


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():  # ask/tell with a heartbeat: Optuna expects optimize, lsmia beats itself
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def _worker_process(config: dict[str, Any], worker_index: int) -> None:
    """Entry point of a spawned worker process."""
    from lsmia.infra.threads import set_threads

    cfg = build_config(config)
    set_threads(cfg.run.threads, share=cfg.sweep.n_workers)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        run_worker(cfg, worker_index, log=lambda line: print(f"[worker {worker_index}] {line}", flush=True))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def run_workers(cfg: Config, log: Log) -> None:
    """``sweep.n_workers`` worker processes (spawned), or this process alone for one worker."""
    if cfg.sweep.n_workers == 1:
        run_worker(cfg, 0, log)
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_process, args=(cfg.to_dict(), index), name=f"lsmia-sweep-{index}")
        for index in range(cfg.sweep.n_workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: give them time to record their trials
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        raise
    for process in processes:
        if process.exitcode != 0:
            log(f"worker {process.name} exited with code {process.exitcode}: see its output above")


# ---------------------------------------------------------------- summary


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
    done = [r for r in rows if r["state"] == "COMPLETE" and _finite(r["test_acc"]) and _finite(r["final_acc1"])]

    def dominated(row: dict[str, Any]) -> bool:
        return any(
            o["test_acc"] >= row["test_acc"]
            and o["final_acc1"] <= row["final_acc1"]
            and (o["test_acc"] > row["test_acc"] or o["final_acc1"] < row["final_acc1"])
            for o in done
        )

    return sorted((r for r in done if not dominated(r)), key=lambda r: r["test_acc"])


def front_of(study: optuna.Study, rows: Sequence[dict[str, Any]], sweep: SweepConfig) -> list[dict[str, Any]]:
    """The Pareto front's rows by test accuracy: Optuna's ``study.best_trials`` in pareto mode; in constrained mode
    (one objective) the trials no other beats on both test accuracy and attack acc@1."""
    if sweep.mode != "pareto":
        return pareto_front(rows)
    best = {trial.number for trial in study.best_trials}
    return sorted((r for r in rows if r["number"] in best), key=lambda r: r["test_acc"])


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


def _finite(value: Any) -> bool:
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

    done = [r for r in rows if r["state"] == "COMPLETE" and _finite(r["test_acc"]) and _finite(r["final_acc1"])]
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
    paths.recommendation.write_text(
        json.dumps(
            {
                "recommended": recommended,
                "note": note,
                "pareto_front": front,
                "min_test_acc": cfg.sweep.min_test_acc,
                "max_acc_drop": cfg.sweep.max_acc_drop,
                "importance": importance,
            },
            indent=2,
            default=str,
        )
    )
    return SweepResult(cfg.sweep.study_name, rows, front, recommended, files, note, importance)


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
        if row["state"] != "COMPLETE" or not (_finite(row["test_acc"]) and _finite(row["final_acc1"])):
            continue
        settings = {f"target.defense.{name}": row[name] for name in DEFENSE_PARAMS[defense]}
        trials.append(
            {
                "trial": row["number"],
                "defense": {} if defense in ("ls", "none") else {"target.defense.kind": defense, **settings},
                "alpha": row["alpha"] if _finite(row.get("alpha")) else base_alpha,
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
    if not (_finite(metrics.get("test_acc")) and _finite(metrics.get("final_acc1"))):
        return None
    values = {key: metrics[key] for key in point_metrics() if _finite(metrics.get(key))}
    return {"source": str(path), "seed": cfg.run.seed, "attack_loss": cfg.attack.loss, **values}


def write_points(rows: Sequence[dict[str, Any]], cfg: Config, paths: SweepPaths) -> None:
    """``points.json`` and ``fronts.png``: the sweep's front drawn as lsmia.reporting.defense_comparison draws every front."""
    from lsmia.reporting.defense_comparison import sweep_figure
    from lsmia.utils import save_json

    record = points_record(rows, cfg)
    save_json(record, paths.points_json)
    sweep_figure(record, paths.fronts_png)


def _log_summary(tracker: Any, result: SweepResult) -> None:
    states = [r["state"] for r in result.rows]
    tracker.log_metrics({f"trials_{s.lower()}": float(states.count(s)) for s in ("COMPLETE", "PRUNED", "FAIL")})
    if result.recommended:
        searched = DEFENSE_PARAMS[result.recommended.get("defense", "ls")]
        keys = [key for key in (*searched, "test_acc", "final_acc1") if _finite(result.recommended.get(key))]
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


# ---------------------------------------------------------------- entry points


def reuse_hint(study: optuna.Study, cfg: Config) -> str | None:
    """A line when the study was run before (its budget is set on the first run; a new study holds only the
    trials it queued itself), saying how to start a new one instead."""
    if BUDGET_ATTR not in study.user_attrs:
        return None
    return (
        f"study '{cfg.sweep.study_name}' exists in {redact(cfg.sweep.storage)} with {len(study.trials)} "
        "trials: continuing it (pass --study-name NAME for a new study)"
    )


def run_sweep(cfg: Config, log: Log = print) -> SweepResult:
    """Create or resume the study, run its remaining budget on ``sweep.n_workers`` workers, summarise it."""
    from lsmia.tracking.client import start_tracking

    shared_models(cfg, log)  # fail before creating anything (or fetch them: sweep.shared_remote)
    cfg = single_trial_without_search(cfg, log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paths = SweepPaths.of(cfg)
    storage = open_storage(cfg.sweep.storage, paths.journal)
    with budget_lock(paths, storage, cfg.sweep.storage, cfg.sweep.study_name):
        study = create_or_load_study(cfg, storage, worker_seed(cfg, 0, 0))
        hint = reuse_hint(study, cfg)
        if hint:
            log(hint)
        if study.user_attrs.get(BUDGET_ATTR) != cfg.sweep.n_trials:
            study.set_user_attr(BUDGET_ATTR, cfg.sweep.n_trials)
        parent_id = study.user_attrs.get(PARENT_RUN_ATTR)
        tracker = start_tracking(
            cfg.run.tracking,
            STAGE,
            f"sweep {cfg.sweep.study_name}",
            _parent_config(cfg),
            {"stage": STAGE, "role": "sweep", "study": cfg.sweep.study_name, "alpha": "n/a"},
            resume_run_id=parent_id,
        )
        if tracker.run_id and tracker.run_id != parent_id:
            study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
    with tracker:
        log(
            f"study '{cfg.sweep.study_name}' ({cfg.sweep.mode}, {cfg.sweep.sampler}) in {redact(cfg.sweep.storage)}"
            f": {consumed_budget(study.trials)} of {cfg.sweep.n_trials} trials done"
        )
        run_workers(cfg, log)
        result = summarize(study, cfg, paths)
        _log_summary(tracker, result)
    for line in summary_lines(result):
        log(line)
    return result


def single_trial_without_search(cfg: Config, log: Log = print) -> Config:
    """``sweep.defense: none`` searches nothing and every trial has the same seed, so more trials would train the
    same model again: its budget is one trial."""
    if cfg.sweep.defense != "none" or cfg.sweep.n_trials == 1:
        return cfg
    log(f"sweep.defense none searches nothing: 1 trial (the undefended model), not {cfg.sweep.n_trials}")
    return build_config(cfg.to_dict(), {"sweep.n_trials": 1}, source="sweep.defense none")


def _parent_config(cfg: Config) -> dict[str, Any]:
    """The config plus the study's identity and search space, logged as params of the parent run."""
    config = cfg.to_dict()
    config["sweep"]["storage"] = redact(cfg.sweep.storage)
    study = {
        "name": cfg.sweep.study_name,
        "storage": redact(cfg.sweep.storage),
        "search_space": search_space(cfg.sweep, cfg.target.smoothing),
    }
    return {**config, "sweep_study": study}

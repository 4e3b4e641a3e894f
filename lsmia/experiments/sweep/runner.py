"""The sweep's entry points: ``lsmia sweep`` (create or resume the study, run its budget on its workers, summarise
it) and ``lsmia sweep --worker`` (a worker joining an existing study, maybe from another machine)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import warnings
import zlib
from typing import Any

import optuna
from optuna.trial import TrialState

from lsmia.config import Config, build_config
from lsmia.experiments.sweep.heartbeat import consumed_budget, fail_stale_trials
from lsmia.experiments.sweep.space import search_space
from lsmia.experiments.sweep.storage import (
    BUDGET_ATTR,
    PARENT_RUN_ATTR,
    Log,
    budget_lock,
    create_or_load_study,
    load_study,
    open_storage,
    redact,
)
from lsmia.experiments.sweep.summary import log_summary, summarize
from lsmia.experiments.sweep.trials import STAGE, TrialContext, execute_trial, shared_models
from lsmia.paths import SweepPaths
from lsmia.reporting.sweep_tables import SweepResult, summary_lines


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
        log_summary(tracker, result)
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

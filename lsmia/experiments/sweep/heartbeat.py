"""Lost workers: a running trial's heartbeat, failing the trials whose worker went silent and queueing them again,
and the budget those retries leave."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lsmia.config import SweepConfig
from lsmia.experiments.sweep.storage import Log, optuna_heartbeat
from lsmia.reporting.sweep_tables import FAIL_REASON

HEARTBEAT_ATTR = "lsmia:heartbeat"


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

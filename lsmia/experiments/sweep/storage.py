"""The sweep's study storage: a journal file, a Redis journal or an RDB (with Optuna's heartbeat for a worker), the
storage URL without its password, the budget lock across processes and machines, and creating or loading the study."""

from __future__ import annotations

import contextlib
import fcntl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning

from lsmia.config import Config, SweepConfig
from lsmia.errors import LsmiaError
from lsmia.experiments.sweep.space import (
    directions,
    grid_alphas,
    make_pruner,
    make_sampler,
    name_objectives,
    search_space,
)
from lsmia.infra.redaction import redact as redact_url
from lsmia.paths import SweepPaths

PARENT_RUN_ATTR = "mlflow_parent_run_id"
BUDGET_ATTR = "n_trials"  # the study's total trial budget, set by `lsmia sweep`, followed by every worker
Log = Callable[[str], None]


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
    """The storage URL without its password (lsmia.infra.redaction)."""
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

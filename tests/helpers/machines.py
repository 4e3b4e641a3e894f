"""Several machines simulated on one: throwaway network services (PostgreSQL, an MLflow tracking server, Redis) on
127.0.0.1, and worker folders that share nothing but those services."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from lsmia.config import Config
from lsmia.errors import LsmiaError
from lsmia.infra import services
from lsmia.paths import StudyPaths
from lsmia.stages.attributes import stage_attribute_predictor
from lsmia.stages.data import stage_data
from lsmia.stages.prior import stage_prior
from lsmia.stages.train import stage_train
from tests.helpers.paths import TINY
from tests.helpers.poll import wait_until

STARTED: list[subprocess.Popen[bytes]] = []  # every lsmia process a test started, for kill_leftovers


@contextlib.contextmanager
def service_folder(prefix: str) -> Iterator[Path]:
    """A folder under /tmp every user can traverse: PostgreSQL runs as 'postgres' when the tests run as root, and
    pytest's own temporary folders are closed to other users."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[services.Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1 (a free port), stopped and deleted afterwards; a skip with the reason
    where PostgreSQL is not installed or cannot run here."""
    with service_folder("lsmia-pg-") as folder:
        try:
            server = services.start_postgres(folder, log=lambda line: None)
        except LsmiaError as err:
            pytest.skip(f"no throwaway PostgreSQL here: {err}")
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def tracking_server(backend_uri: str | None = None) -> Iterator[services.TrackingServer]:
    """``mlflow server --serve-artifacts`` on 127.0.0.1 (default backend: a sqlite file in its folder)."""
    with service_folder("lsmia-mlflow-") as folder:
        backend = backend_uri or f"sqlite:///{folder / 'mlflow.db'}"
        server = services.start_tracking_server(backend, folder, log=lambda line: None)
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1 without persistence; its redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    port = services.free_port()
    with service_folder("lsmia-redis-") as folder:
        process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

            def answers() -> bool:
                assert process.poll() is None, "redis-server did not start"
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    return bool(client.ping())
                return False

            wait_until(answers, 30, "redis-server to answer")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(30)


def build_shared_study(cfg: Config) -> None:
    """The study's shared stages (data, prior, eval model, attribute predictor) under ``cfg.run.out_dir``."""
    paths, device = StudyPaths(cfg.run.out_dir), torch.device("cpu")
    stage_data(cfg, paths.data_file)
    stage_prior(cfg, paths.data_file, paths.prior_dir, device)
    stage_train(cfg, "eval", paths.data_file, paths.eval_dir, device)
    stage_attribute_predictor(cfg, paths.data_file, paths.attribute_dir / "predictor.pt", device)


def machine(root: Path, name: str, shared_out: Path) -> Path:
    """A machine's own working folder with its own copy of the shared stages' outputs (``<folder>/out``)."""
    folder = root / name
    shutil.copytree(shared_out, folder / "out")
    return folder


def lsmia(
    folder: Path,
    args: Sequence[str],
    tracking_uri: str | None = None,
    log_name: str = "lsmia.log",
    storage: str | None = None,
) -> subprocess.Popen[bytes]:
    """``lsmia ARGS`` on the tiny config in ``folder`` (its out/ there), output to ``folder/log_name``; ``storage``
    is exported as LSMIA_STORAGE, as the README has users do (never on the command line)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LSMIA_STORAGE", None)
    if storage:
        env["LSMIA_STORAGE"] = storage
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    command = [sys.executable, "-m", "lsmia", *args, "--params", str(TINY), "-S", f"run.out_dir={folder / 'out'}"]
    with open(folder / log_name, "ab") as handle:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=handle, stderr=subprocess.STDOUT)
    STARTED.append(process)
    return process


def kill_leftovers() -> None:
    """SIGKILL the lsmia processes a failed test left running (each by its own pid)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()


def finish(process: subprocess.Popen[bytes], timeout: float, log: Path) -> str:
    """Wait for ``process``; its output. Killed (and the test failed) past ``timeout``."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        pytest.fail(f"{process.args!r} ran past {timeout} s: {log.read_text()[-3000:]}")
    return log.read_text()

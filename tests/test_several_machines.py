"""Several machines, each a process in its own folder sharing only network services: Optuna on PostgreSQL and on a
Redis journal, an MLflow tracking server with served artifacts (backend PostgreSQL), one that goes away mid-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lsmia.config import load_config
from lsmia.errors import LsmiaError
from lsmia.experiments import sweep
from lsmia.infra import services
from tests.helpers.machines import (
    build_shared_study,
    finish,
    kill_leftovers,
    lsmia,
    machine,
    postgres_cluster,
    redis_server,
    service_folder,
    tracking_server,
)
from tests.helpers.paths import TINY
from tests.helpers.poll import wait_until

SWEEP_FLAGS = ["-S", "sweep.heartbeat_interval=1", "-S", "sweep.grace_period=4", "-S", "sweep.min_test_acc=0"]


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory) -> Path:
    """The tiny study's shared stages, built once; each machine gets its own copy."""
    out = tmp_path_factory.mktemp("shared") / "out"
    build_shared_study(load_config(TINY, {"run.out_dir": str(out)}))
    return out


@pytest.fixture(scope="module")
def team():
    """What `lsmia server` starts: PostgreSQL with the optuna and mlflow databases, mlflow server on the latter."""
    with postgres_cluster() as postgres, tracking_server(postgres.url("mlflow")) as tracking:
        yield services.Services(postgres, tracking)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    yield
    kill_leftovers()


def trials_in(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def worker_pid(trial: optuna.trial.FrozenTrial) -> int:
    return int(str(trial.user_attrs.get("worker", "?:-1")).rsplit(":", 1)[1])


# ---------------------------------------------------------------- fast


def test_a_missing_driver_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(LsmiaError, match=r"needs a package that is not installed: pip install 'lsmia\[postgres\]'"):
        sweep.open_storage("postgresql://lsmia:secret@127.0.0.1:9/optuna", tmp_path / "journal.log")
    with pytest.raises(LsmiaError, match=r"pip install 'lsmia\[redis\]'") as caught:
        sweep.open_storage("redis://127.0.0.1:9/0", tmp_path / "journal.log")
    assert "secret" not in str(caught.value)


# ---------------------------------------------------------------- slow: real services, separate folders


@pytest.mark.slow  # a throwaway PostgreSQL cluster: 15 s
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_worker_s_postgres_storage_uses_optuna_s_heartbeat_and_retry(tmp_path):
    with postgres_cluster() as postgres:
        cfg = load_config(TINY, {"sweep.heartbeat_interval": 1, "sweep.grace_period": 2, "sweep.max_retry": 1})
        storage = sweep.open_storage(postgres.url(), tmp_path / "journal.log", cfg.sweep)
        assert sweep.optuna_heartbeat(storage) and isinstance(storage, optuna.storages.RDBStorage)
        assert storage.get_heartbeat_interval() == 1
        assert not sweep.optuna_heartbeat(sweep.open_storage(postgres.url(), tmp_path / "journal.log"))
        study = optuna.create_study(storage=storage, study_name="beat")
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        with sweep.Heartbeat(storage, trial._trial_id, 1):
            pass  # the thread beats once before it looks at the stop flag; __exit__ joins it
        assert sweep.HEARTBEAT_ATTR not in study.trials[0].system_attrs  # Optuna's table, not lsmia's attr
        lines: list[str] = []
        failed = wait_until(  # the grace period (2 s) passes by the database's clock: the trial is stale
            lambda: sweep.fail_stale_trials(study, storage, cfg.sweep, lines.append),
            timeout=60,
            what="the silent trial to be failed as stale",
        )
        assert failed == [0]
        states = [t.state for t in study.trials]
        assert states == [TrialState.FAIL, TrialState.WAITING] and study.trials[1].system_attrs["failed_trial"] == 0
        assert lines == ["trial 0: worker lost, FAILED; queued again"]
        with sweep.budget_lock(sweep.SweepPaths(tmp_path / "s"), storage, postgres.url(), "beat"):
            pass  # the advisory lock is taken and given back


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_over_machines_on_postgres_and_a_tracking_server_survives_a_killed_worker(team, shared_out, tmp_path):
    """Done when of issue 13: machines A and B share a study in PostgreSQL and log to `mlflow server` (backend
    PostgreSQL, served artifacts); B is SIGKILLed mid-trial; C starts late and joins."""
    import mlflow

    # a budget that outlasts a late machine's start (several seconds of imports) even on a loaded machine: with 6,
    # A alone could use it up before C asked for its first trial
    storage, uri, name, budget = team.postgres.url(), team.tracking.uri, "machines", 12
    flags = ["--study-name", name, "--track", "--device", "cpu", *SWEEP_FLAGS]  # the storage: LSMIA_STORAGE
    a, b, c = (machine(tmp_path, m, shared_out) for m in ("a", "b", "c"))
    first = lsmia(a, ["sweep", "--n-trials", str(budget), "--n-workers", "1", *flags], uri, storage=storage)
    wait_until(lambda: _study_exists(storage, name), 120, "machine a to create the study")
    doomed = lsmia(b, ["sweep", "--worker", *flags], uri, storage=storage)
    process_lists: list[str] = []

    def doomed_mid_trial() -> bool:  # its MLflow run is open on the server
        process_lists.append(_process_list())
        return any(
            t.state == TrialState.RUNNING and worker_pid(t) == doomed.pid and "mlflow_run_id" in t.user_attrs
            for t in trials_in(storage, name)
        )

    wait_until(doomed_mid_trial, 180, "machine b to start a trial")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    late = lsmia(c, ["sweep", "--worker", *flags], uri, storage=storage)
    out_a = finish(first, 600, a / "lsmia.log")
    out_c = finish(late, 300, c / "lsmia.log")
    assert first.returncode == 0 and late.returncode == 0, out_a[-2000:] + out_c[-2000:]

    trials = trials_in(storage, name)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(lost) == 1 and worker_pid(lost[0]) == doomed.pid  # B's trial, failed by Optuna's heartbeat ...
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost[0].number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost[0].params  # ... and retried elsewhere
    assert worker_pid(retry) != doomed.pid
    assert len(done) == budget == sweep.consumed_budget(trials) and len(trials) == budget + 1  # exact budget
    assert len({tuple(sorted(t.params.items())) for t in done}) == budget  # no duplicates
    assert late.pid in {worker_pid(t) for t in done}, out_c[-2000:]  # the late machine joined the same study
    assert f"worker done: {sum(worker_pid(t) == late.pid for t in trials)} trials run here" in out_c

    client = mlflow.MlflowClient(uri)
    parent_id = optuna.load_study(study_name=name, storage=storage).user_attrs[sweep.PARENT_RUN_ATTR]
    for trial in trials:  # no trial without its MLflow run, on the server
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["trial"] == str(trial.number) and run.data.tags["mlflow.parentRunId"] == parent_id
    for trial in done:  # every artifact comes back over HTTP (no worker can see the server's disk)
        files = _download_all(client, trial.user_attrs["mlflow_run_id"], tmp_path / "download" / str(trial.number))
        assert {"config.json", "trial_params.json"} <= {f.name for f in files}
        assert any(f.parent.name == "reconstructions" and f.suffix == ".png" for f in files)
    parent_files = _download_all(client, parent_id, tmp_path / "download" / "parent")
    assert {"pareto.png", "trials.csv", "recommendation.json"} <= {f.name for f in parent_files}
    assert not any((m / "mlflow.db").exists() or (m / "mlartifacts").exists() for m in (a, b, c))  # nothing local

    # the database password (in --storage) reaches no MLflow param, tag, artifact, log line or process list
    password = team.postgres.password
    assert password in storage and any("sweep --worker" in ps for ps in process_lists)
    for run_id in [parent_id, *(t.user_attrs["mlflow_run_id"] for t in trials)]:
        data = client.get_run(run_id).data
        assert password not in json.dumps([data.params, data.tags]), run_id
    downloaded = [f for f in (tmp_path / "download").rglob("*") if f.is_file()]
    assert downloaded and not [f for f in downloaded if password.encode() in f.read_bytes()]
    assert password not in out_a + out_c and not [ps for ps in process_lists if password in ps]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stage_runs_models_registry_and_images_reach_the_server_from_a_worker_folder(
    team, shared_out, tmp_path, monkeypatch
):
    import mlflow

    worker = machine(tmp_path, "w", shared_out)
    common = ["--alpha", "0.1", "--track", "--device", "cpu"]
    for args in (["train", "--role", "target", *common], ["attack", *common]):
        out = finish(lsmia(worker, args, team.tracking.uri), 300, worker / "lsmia.log")
        assert "Traceback" not in out and "MLflow tracking:" not in out, out[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team.tracking.uri)  # models:/ URIs resolve through the server's registry
    mlflow.set_registry_uri(team.tracking.uri)  # ... even where an earlier test set a process-wide tracking URI
    client = mlflow.MlflowClient(team.tracking.uri)
    (version,) = client.search_model_versions("name = 'lsmia-target'")
    model_dir = mlflow.artifacts.download_artifacts(
        f"models:/lsmia-target/{version.version}", tracking_uri=team.tracking.uri, dst_path=str(tmp_path / "model")
    )
    assert (Path(model_dir) / "MLmodel").is_file()  # the registered model, fetched over HTTP
    assert version.run_id is not None  # registered from a run
    experiment = client.get_run(version.run_id).info.experiment_id
    (run,) = client.search_runs([experiment], "tags.stage = 'attack'")
    files = _download_all(client, run.info.run_id, tmp_path / "attack")
    assert any(f.suffix == ".png" and f.stat().st_size > 0 for f in files)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tracking_server_that_goes_away_mid_run_loses_no_output(shared_out, tmp_path):
    import mlflow

    worker = machine(tmp_path, "w", shared_out)
    with tracking_server() as server:
        stage = lsmia(
            worker, ["train", "--role", "target", "--alpha", "0.1", "--track", "-S", "target.epochs=200"], server.uri
        )
        client = mlflow.MlflowClient(server.uri)

        def training_logged() -> bool:
            assert stage.poll() is None, (worker / "lsmia.log").read_text()[-3000:]
            experiment = client.get_experiment_by_name("lsmia")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return any(r.info.status == "RUNNING" and "lr" in r.data.metrics for r in runs)  # an epoch logged

        wait_until(training_logged, 240, "the first epoch to reach the server")
        experiment = client.get_experiment_by_name("lsmia")
        assert experiment is not None
        (run,) = client.search_runs([experiment.experiment_id])
        server.kill()
        out = finish(stage, 300, worker / "lsmia.log")
    assert stage.returncode == 0, out[-3000:]
    target = worker / "out" / "models" / "target_alpha0.1_seed0"
    assert (target / "model.pt").is_file() and (target / "metrics.json").is_file()
    lost = [line for line in out.splitlines() if "is incomplete on" in line]
    assert len(lost) == 1 and run.info.run_id in lost[0] and "outputs are on disk" in lost[0], out[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_on_a_redis_journal_over_two_machines(shared_out, tmp_path):
    with redis_server() as url:
        name, budget = "redis", 3
        flags = ["--storage", url, "--study-name", name, "--no-track", "--device", "cpu", *SWEEP_FLAGS]
        a, b = machine(tmp_path, "a", shared_out), machine(tmp_path, "b", shared_out)
        first = lsmia(a, ["sweep", "--n-trials", str(budget), *flags])
        storage = sweep.open_storage(url, tmp_path / "unused.log")
        wait_until(lambda: _study_exists(storage, name), 120, "machine a to create the study")
        second = lsmia(b, ["sweep", "--worker", *flags])
        out = finish(first, 400, a / "lsmia.log") + finish(second, 400, b / "lsmia.log")
        assert first.returncode == 0 and second.returncode == 0, out[-3000:]
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len(trials) == budget and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == budget
    assert f"{budget} trials ({budget} complete" in out


def _study_exists(storage, name: str) -> bool:
    try:
        optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    return True


def _process_list() -> str:
    """Every process's command line, as `ps` shows them to any user of the machine."""
    return subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout


def _download_all(client, run_id: str, into: Path) -> list[Path]:
    """Every artifact of a run, downloaded through the tracking server; the files."""
    into.mkdir(parents=True, exist_ok=True)
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(into), tracking_uri=client.tracking_uri)
    )
    files = [p for p in local.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_size > 0 for p in files), f"run {run_id}: nothing downloaded"
    return files


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_lsmia_server_starts_both_services_prints_the_exports_and_stops_on_ctrl_c(stop: int):
    import subprocess

    import mlflow

    with service_folder("lsmia-server-") as folder:
        pg_port, port = services.free_port(), services.free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lsmia",
                "server",
                "--dir",
                str(folder),
                "--pg-port",
                str(pg_port),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: list[str] = []
        try:
            assert server.stdout is not None
            for line in server.stdout:  # ends when the server exits: bounded by the test's timeout
                lines.append(line.strip())
                if "Ctrl-C" in line:
                    break
            exports = dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))
            assert exports["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{port}", lines
            storage = exports["LSMIA_STORAGE"]
            assert storage.startswith("postgresql://lsmia:") and storage.endswith(f"@127.0.0.1:{pg_port}/optuna")
            assert mlflow.MlflowClient(exports["MLFLOW_TRACKING_URI"]).search_experiments()  # the server answers
            optuna.create_study(storage=storage, study_name="reachable")  # and the database takes a study
            password = (folder / "postgres.password").read_text().strip()
            processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
            assert "mlflow" in processes and password not in processes  # no password in any process list
        finally:
            server.send_signal(stop)  # SIGTERM too: both services stop, nothing is left to block a restart
            rest, _ = server.communicate(timeout=120)
        assert server.returncode == 0, lines + rest.splitlines()
        assert "stopping the tracking server and PostgreSQL" in rest
        assert not (folder / "postgres" / "postmaster.pid").exists()  # PostgreSQL stopped cleanly
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lsmia_server_refuses_a_taken_port_and_leaves_nothing_running():
    """With the MLflow port taken, it once announced the other server as its own and exited 0."""
    import socket
    import subprocess

    with service_folder("lsmia-server-busy-") as folder, socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "lsmia", "server", "--dir", str(folder), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line == (
            f"error: the MLflow server's port {port} on 127.0.0.1 is in use (another server?): pass --port with a "
            "free port, or stop what listens there"
        )
        assert "export" not in done.stdout  # no worker is pointed at the other server
        assert not (folder / "postgres" / "postmaster.pid").exists()  # PostgreSQL stopped again

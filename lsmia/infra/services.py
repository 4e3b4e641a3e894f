"""The network services a study on several machines shares: PostgreSQL and an MLflow tracking server.

``lsmia server --dir FOLDER`` starts both in one step (:func:`serve`): a PostgreSQL 15 cluster whose data lives
in ``FOLDER/postgres`` (created on first use with a generated password in ``FOLDER/postgres.password``) holding
two databases, ``optuna`` (the sweep's storage, ``--storage postgresql://…/optuna``) and ``mlflow`` (the tracking
server's backend store), and ``mlflow server`` with served artifacts under ``FOLDER/artifacts``, so workers reach
runs, models and images over HTTP only. The tests start the same services in temporary folders.

PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres`` system user (the Debian
package's), which must be able to reach ``FOLDER``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lsmia.errors import LsmiaError

LOOPBACK = "127.0.0.1"
PG_USER = "lsmia"
DATABASES = ("optuna", "mlflow")
START_TIMEOUT_S = 120.0  # mlflow server creates its tables on first start: tens of seconds on a loaded machine
Log = Callable[[str], None]


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """A one-line error when something already listens on ``port``: the health probe would find that server and
    announce it as ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("" if host == "0.0.0.0" else host, port))
        except OSError:
            raise LsmiaError(
                f"{what} port {port} on {host} is in use (another server?): pass {flag} with a free port, or stop "
                "what listens there"
            ) from None


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def reachable_host(host: str) -> str:
    """The name workers use for a service listening on ``host`` (this machine's name for 0.0.0.0)."""
    return socket.getfqdn() if host in ("0.0.0.0", "") else host


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl), from PATH or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if versions:
        return str(versions[-1])
    raise LsmiaError(
        f"PostgreSQL's {name} is not installed: install the server (apt-get install postgresql, or your "
        "platform's PostgreSQL 15+ package)"
    )


def _as_owner() -> list[str]:
    """The prefix that runs a PostgreSQL program as a non-root user: nothing, or runuser to 'postgres' as root."""
    if os.geteuid() != 0:
        return []
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise LsmiaError(
            "PostgreSQL refuses to run as root and there is no 'postgres' user: run as another user or create it "
            "(useradd --system postgres)"
        ) from None
    runner = shutil.which("runuser") or shutil.which("su")
    if runner is None:
        raise LsmiaError("running PostgreSQL as root needs runuser or su to switch to 'postgres': install util-linux")
    return [runner, "-u", "postgres", "--"] if runner.endswith("runuser") else [runner, "postgres", "-c"]


def _run_as_owner(command: list[str], what: str, timeout: float = START_TIMEOUT_S) -> None:
    prefix = _as_owner()
    full = [*prefix, " ".join(_quote(c) for c in command)] if prefix[-1:] == ["-c"] else [*prefix, *command]
    try:
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LsmiaError(f"{what} did not finish within {timeout:.0f} s: check the machine's load and disk") from None
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LsmiaError(f"{what} failed ({reason[-1] if reason else f'exit {done.returncode}'}): see its log")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _give_to_owner(path: Path) -> None:
    """As root: hand ``path`` to the postgres user, who must also be able to reach it."""
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam("postgres")
    os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        _run_as_owner(["test", "-w", str(path)], f"checking that the postgres user can write {path}", 30)
    except LsmiaError:
        raise LsmiaError(
            f"the postgres user cannot reach {path}: its parent folders are closed to other users; use a folder "
            "they can traverse (e.g. under /srv or /tmp) or chmod o+x the parents"
        ) from None


@dataclass
class Postgres:
    """A PostgreSQL cluster lsmia started: data in ``data_dir``, listening on ``host``:``port``."""

    data_dir: Path
    host: str
    port: int
    password: str

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def url(self, database: str = "optuna") -> str:
        """The SQLAlchemy URL of one database (postgresql:// means psycopg 3 for SQLAlchemy 2.1)."""
        return f"postgresql://{PG_USER}:{self.password}@{reachable_host(self.host)}:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(LsmiaError):
                _run_as_owner(
                    [postgres_bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], "pg_ctl stop", 60
                )


def start_postgres(folder: Path, host: str = LOOPBACK, port: int | None = None, log: Log = print) -> Postgres:
    """Start (first creating) the cluster in ``folder/postgres`` with the databases ``optuna`` and ``mlflow``."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data_dir, secret = folder / "postgres", folder / "postgres.password"
    if port:
        check_port_free(host, port, "PostgreSQL's", "--pg-port")
    port = port or free_port(LOOPBACK if host == "0.0.0.0" else host)
    if not (data_dir / "PG_VERSION").exists():
        password = secrets.token_urlsafe(18)
        _write_private(secret, password)
        data_dir.mkdir(mode=0o700, exist_ok=True)
        _give_to_owner(data_dir)
        pwfile = folder / ".pwfile"
        _write_private(pwfile, password)
        _give_to_owner(pwfile)
        try:
            _run_as_owner(
                [
                    postgres_bin("initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    PG_USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if host not in (LOOPBACK, "localhost"):  # workers on other machines: password logins from anywhere
            with open(data_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    elif not secret.is_file():
        raise LsmiaError(f"{data_dir} exists but {secret} is missing: restore it or delete {data_dir} to start afresh")
    password = secret.read_text(encoding="utf-8").strip()
    log_file = folder / "postgres.log"
    log_file.touch()
    _give_to_owner(log_file)
    options = f"-p {port} -c listen_addresses={host} -c unix_socket_directories={data_dir}"
    _run_as_owner(
        [postgres_bin("pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-o", options, "-w", "-t", "60", "start"],
        f"starting PostgreSQL on {host}:{port} (log: {log_file})",
    )
    server = Postgres(data_dir, host, port, password)
    try:
        _create_databases(server)
    except BaseException:
        server.stop()
        raise
    log(f"PostgreSQL 15 on {host}:{port}, data in {data_dir}")
    return server


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def _create_databases(server: Postgres) -> None:
    try:
        import psycopg
    except ImportError:
        raise LsmiaError("PostgreSQL needs its driver: pip install 'lsmia[postgres]'") from None
    with psycopg.connect(server.url("postgres"), autocommit=True, connect_timeout=30) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')


@dataclass
class TrackingServer:
    """An ``mlflow server`` lsmia started (its own process group)."""

    process: subprocess.Popen[bytes]
    uri: str
    artifacts: Path
    log_file: Path

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM its process group (the server and its workers), SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (the tests' server that goes away)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


def start_tracking_server(
    backend_uri: str, folder: Path, host: str = LOOPBACK, port: int | None = None, log: Log = print
) -> TrackingServer:
    """``mlflow server`` on ``backend_uri`` with artifacts served from ``folder/artifacts``; returns once healthy."""
    folder = Path(folder).resolve()
    artifacts, log_file = folder / "artifacts", folder / "mlflow-server.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    if port:
        check_port_free(host, port, "the MLflow server's", "--port")
    port = port or free_port(LOOPBACK if host == "0.0.0.0" else host)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    if host not in (LOOPBACK, "localhost"):
        command += ["--allowed-hosts", "*"]  # workers on other machines call it by this machine's name
    with open(log_file, "ab") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=_server_env(backend_uri)
        )
    server = TrackingServer(process, f"http://{reachable_host(host)}:{port}", artifacts, log_file)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(f"http://{LOOPBACK if host == '0.0.0.0' else host}:{port}"):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise LsmiaError(
                f"mlflow server did not come up on {host}:{port} within {START_TIMEOUT_S:.0f} s: see {log_file}"
            )
        time.sleep(0.5)
    log(f"MLflow tracking server at {server.uri}, artifacts in {artifacts}")
    return server


def _server_env(backend_uri: str) -> dict[str, str]:
    """The server's environment: its backend store (with the database password) by variable, never on the
    command line, where any user's ``ps`` reads it."""
    env = dict(os.environ)
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(inherited, None)  # the server's own stores are its backend store (runs and registry)
    env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
    return env


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Services:
    postgres: Postgres
    tracking: TrackingServer

    def exports(self) -> list[str]:
        """What a worker needs, as shell lines."""
        return [
            f"export MLFLOW_TRACKING_URI={self.tracking.uri}",
            f"export LSMIA_STORAGE={self.postgres.url('optuna')}",
            'lsmia sweep --storage "$LSMIA_STORAGE" ...   # first machine; the others add --worker',
        ]

    def stop(self) -> None:
        self.tracking.stop()
        self.postgres.stop()


@contextlib.contextmanager
def running_services(
    folder: Path, host: str = LOOPBACK, pg_port: int | None = None, port: int | None = None, log: Log = print
) -> Iterator[Services]:
    """PostgreSQL and the tracking server for as long as the block runs; both stopped afterwards."""
    postgres = start_postgres(Path(folder), host, pg_port, log)
    try:
        tracking = start_tracking_server(postgres.url("mlflow"), Path(folder), host, port, log)
    except BaseException:
        postgres.stop()
        raise
    services = Services(postgres, tracking)
    try:
        yield services
    finally:
        services.stop()


def serve(
    folder: Path, host: str = LOOPBACK, pg_port: int | None = None, port: int | None = None, log: Log = print
) -> None:
    """``lsmia server``: start both services, print the lines to export, wait for Ctrl-C or SIGTERM (or the
    server's end); both services are stopped on every way out."""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the children like Ctrl-C
    try:
        _serve(folder, host, pg_port, port, log)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(folder: Path, host: str, pg_port: int | None, port: int | None, log: Log) -> None:
    with running_services(folder, host, pg_port, port, log) as services:
        log("on every worker machine:")
        for line in services.exports():
            log(f"  {line}")
        log("Ctrl-C stops both services (their data stays in the folder)")
        try:
            while services.tracking.process.poll() is None:
                time.sleep(1)
            log(
                f"mlflow server exited with code {services.tracking.process.returncode}: see {services.tracking.log_file}"
            )
        except KeyboardInterrupt:
            log("stopping the tracking server and PostgreSQL")

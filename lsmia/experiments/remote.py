"""The study's shared stages (data, prior, evaluation model, attribute predictor) through a DVC remote.

Machines that share nothing but a DVC remote (S3, GCS, SSH, or a path every machine mounts) get these outputs
without retraining them: :func:`ensure_shared` takes each shared stage in graph order and

1. looks for its manifest in the remote, ``lsmia-shared/<stage>-<key>.yaml``: the stage's ``dvc.lock`` entry
   (output hashes, deps, params), keyed like the ablation cache (lsmia.experiments.graph: the stage's params, its code and
   the keys of the stages it reads, plus ``run.out_dir``);
2. if found, writes that entry into the local ``dvc.lock`` and ``dvc pull``s the stage's outputs: ``dvc status``
   is then clean and ``dvc repro`` skips the stage;
3. if not, runs it (``dvc repro --single-item``; already up-to-date local outputs are not re-run), ``dvc push``es
   its outputs and uploads the manifest.

Steps 1-3 run under a lock per (stage, key) so that two workers never train the same stage: the second waits,
then finds the first one's manifest and pulls. The lock is an ``flock`` on a file in the remote, so it needs a
remote every machine reaches as a file system (a local path, NFS); on S3/GCS/SSH there is no lock: run
``lsmia pull-shared`` once on the first machine before starting the workers (later ones only pull).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from lsmia.config import Config
from lsmia.errors import LsmiaError
from lsmia.experiments import graph
from lsmia.experiments import keys as cache_keys
from lsmia.utils import atomic_path

SHARED_STAGES = ("data", "prior", "eval-model", "attributes")
MANIFESTS = "lsmia-shared"
Log = Callable[[str], None]


def shared_keys(cfg: Config) -> dict[str, str]:
    """A key per shared stage that applies to ``cfg``: its params, code, upstream keys and ``run.out_dir``."""
    return cache_keys.stage_keys(cfg, None, names=SHARED_STAGES, salt=(str(cfg.run.out_dir),))


def run_dvc(repo: Path, *args: str) -> str:
    """``dvc ARGS`` in ``repo`` (stage commands find ``lsmia`` beside this Python); its output, or a LsmiaError."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise LsmiaError(
            f"'dvc {' '.join(args)}' failed in {repo}: {lines[-1] if lines else f'exit {done.returncode}'}: "
            "fix what DVC says (remote configured? `dvc remote list`)"
        )
    return done.stdout + done.stderr


class Remote:
    """A DVC remote of ``repo`` (by name; None: the default remote), reached through DVC's own file systems."""

    def __init__(self, repo: Path, name: str | None) -> None:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        try:
            dvc_repo = Repo(str(repo))
        except DvcException as err:
            raise LsmiaError(
                f"{repo} is not a DVC repository ({err}): run lsmia there from a clone of the project"
            ) from None
        name = name or dvc_repo.config["core"].get("remote")
        if not name or name not in dvc_repo.config["remote"]:
            known = ", ".join(dvc_repo.config["remote"]) or "none"
            raise LsmiaError(
                f"no DVC remote {name or '(default)'} in {repo} (remotes: {known}): "
                "add one with `dvc remote add -d NAME URL` (s3://, gs://, ssh://, or a shared path)"
            )
        remote = dvc_repo.cloud.get_remote(name)
        self.name, self.fs, self.root = name, remote.fs, remote.path
        self.local = type(self.fs).__name__ == "LocalFileSystem"

    def path(self, name: str) -> str:
        return self.fs.join(self.root, MANIFESTS, name)

    def read(self, name: str) -> str | None:
        path = self.path(name)
        return self.fs.cat_file(path).decode("utf-8") if self.fs.exists(path) else None

    def write(self, name: str, text: str) -> None:
        path = self.path(name)
        self.fs.makedirs(self.fs.parent(path), exist_ok=True)
        if self.local:  # atomically: a reader never sees half a manifest
            with atomic_path(Path(path)) as tmp:
                tmp.write_text(text, encoding="utf-8")
        else:
            self.fs.pipe_file(path, text.encode("utf-8"))

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive across every machine that mounts a local-path remote (waits); a no-op for other remotes."""
        if not self.local:
            yield
            return
        from lsmia.infra.locks import wait_lock

        with wait_lock(Path(self.path(name))):
            yield


def lock_entry(repo: Path, stage: str) -> dict[str, Any] | None:
    path = repo / "dvc.lock"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage)


def set_lock_entry(repo: Path, stage: str, entry: dict[str, Any]) -> None:
    """Write one stage's entry into ``dvc.lock`` (atomically), keeping the others."""
    path = repo / "dvc.lock"
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    lock = lock or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {})[stage] = entry
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")


def uncached_files(repo: Path, cfg: Config, stage: str) -> dict[str, str]:
    """The stage's small outputs kept in git rather than DVC's cache (e.g. the data summary), by path."""
    found = {}
    for out in graph.stage(stage).uncached_outs:
        path = out.replace(graph.OUT, str(cfg.run.out_dir))
        if (repo / path).is_file():
            found[path] = (repo / path).read_text(encoding="utf-8")
    return found


def ensure_shared(cfg: Config, remote_name: str | None, repo: Path = Path("."), log: Log = print) -> dict[str, str]:
    """Pull the shared stages from the DVC remote, or train and push the ones it lacks (see the module docstring);
    returns what happened per stage: "pulled", "trained" or "up to date"."""
    repo = Path(repo).resolve()
    if not (repo / "dvc.yaml").is_file():
        raise LsmiaError(f"no dvc.yaml in {repo}: run the workers from a clone of the project")
    remote = Remote(repo, remote_name)
    done: dict[str, str] = {}
    for stage, key in shared_keys(cfg).items():
        manifest = f"{stage}-{key}.yaml"
        with remote.lock(f"{stage}-{key}.lock"):
            text = remote.read(manifest)
            if text is not None:
                entry = yaml.safe_load(text)["lock"]
                if lock_entry(repo, stage) != entry:
                    set_lock_entry(repo, stage, entry)
                run_dvc(repo, "pull", "-r", remote.name, stage)
                for name, content in yaml.safe_load(text).get("files", {}).items():  # git-tracked small outputs
                    with atomic_path(repo / name) as tmp:
                        tmp.write_text(content, encoding="utf-8")
                done[stage] = "pulled"
            else:
                output = run_dvc(repo, "repro", "--single-item", stage)
                done[stage] = "trained" if f"Running stage '{stage}'" in output else "up to date"
                run_dvc(repo, "push", "-r", remote.name, stage)
                entry = lock_entry(repo, stage)
                if entry is None:
                    raise LsmiaError(f"dvc repro {stage} left no dvc.lock entry in {repo}: run `dvc repro {stage}`")
                record = {
                    "stage": stage,
                    "key": key,
                    "by": f"{os.uname().nodename}:{repo}",
                    "lock": entry,
                    "files": uncached_files(repo, cfg, stage),
                }
                remote.write(manifest, yaml.safe_dump(record, sort_keys=False))
        log(f"shared stage {stage}: {done[stage]} (remote {remote.name}, key {key})")
    return done

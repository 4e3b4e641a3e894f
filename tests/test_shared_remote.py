"""Shared stages through a DVC remote: machines that share only the remote train each shared stage once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lsmia.config import load_config
from lsmia.errors import LsmiaError
from lsmia.experiments.remote import SHARED_STAGES, ensure_shared, shared_keys
from tests.helpers.paths import TINY
from tests.helpers.project import BIN, dvc, temp_dvc_repo

SHARED_FILES = ("data/dataset.pt", "data/summary.json", "prior/prior.pt", "models/eval/model.pt")


def test_keys_follow_params_and_upstream_but_not_unrelated_sections() -> None:
    base = shared_keys(load_config(TINY))
    assert list(base) == list(SHARED_STAGES)
    eval_changed = shared_keys(load_config(TINY, {"eval_model.epochs": 3}))
    assert [k for k in base if base[k] != eval_changed[k]] == ["eval-model"]
    data_changed = shared_keys(load_config(TINY, {"data.num_identities": 5}))
    assert all(base[k] != data_changed[k] for k in base)  # everything reads the data
    assert shared_keys(load_config(TINY, {"attack.steps": 9, "target.epochs": 5})) == base


def test_a_missing_remote_is_a_one_line_error(tmp_path: Path) -> None:
    repo, _ = temp_dvc_repo(tmp_path, tracking=False, repro=False)
    with pytest.raises(LsmiaError, match="dvc remote add") as err:
        ensure_shared(load_config(repo / "params.yaml"), None, repo, log=lambda line: None)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_two_machines_sharing_only_a_remote_train_each_shared_stage_once(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    machines = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        repo, env = temp_dvc_repo(tmp_path / name, tracking=False, repro=False)
        dvc(repo, env, "remote", "add", "-d", "shared", str(remote))
        machines.append((repo, env))
    workers = [
        subprocess.Popen(
            [str(BIN / "lsmia"), "pull-shared"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for repo, env in machines
    ]
    logs = [worker.communicate(timeout=900)[0].decode() for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], logs
    for stage in SHARED_STAGES:  # one machine trained it, the other waited for the lock and pulled it
        outcomes = sorted(line.split(": ")[1].split(" (")[0] for log in logs for line in log.splitlines()
                          if line.startswith(f"shared stage {stage}: "))  # fmt: skip
        assert outcomes == ["pulled", "trained"], (stage, logs)
    manifests = list((remote / "lsmia-shared").glob("*.yaml"))
    assert len(manifests) == len(SHARED_STAGES)
    (a, _), (b, env_b) = machines
    for name in SHARED_FILES:
        assert (a / "out" / name).read_bytes() == (b / "out" / name).read_bytes(), name
    assert sorted(p.name for p in (a / "out/models/attributes").iterdir()) == sorted(
        p.name for p in (b / "out/models/attributes").iterdir()
    )
    for repo, env in machines:  # DVC agrees: nothing left to run on either machine
        assert "up to date" in dvc(repo, env, "status", *SHARED_STAGES)
    # a third run pulls (or finds up to date) on both, training nothing
    again = subprocess.run([str(BIN / "lsmia"), "pull-shared"], cwd=b, env=env_b, capture_output=True, text=True)
    assert again.returncode == 0 and "trained" not in again.stdout, again.stdout + again.stderr

"""A throwaway git + DVC repository running the tiny study through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.paths import ROOT, TINY

BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    return sh([str(BIN / "dvc"), *args], repo, env)


def report_inputs_outside_the_graph() -> list[str]:
    """The committed ablation files the report stage reads (tables, comparisons, figures), as dvc.yaml lists them."""
    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    return [dep for dep in report["deps"] if isinstance(dep, str) and dep.startswith("out/ablations/")]


def temp_dvc_repo(repo: Path, tracking: bool = True, repro: bool = True) -> tuple[Path, dict[str, str]]:
    """Copy the project's pipeline files and code into ``repo``, with the tiny params (every key, as DVC reads
    them), commit them and (by default) run ``dvc repro`` once; returns the repo and its environment."""
    for name in ("dvc.yaml", "MLproject"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("lsmia", "mlflow_project"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for committed in report_inputs_outside_the_graph():
        (repo / committed).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / committed, repo / committed)
    from lsmia.config import load_config

    params = load_config(TINY, {"run.tracking": tracking}).to_dict()
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_RUN_ID", None)
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n*.timings\n")
    sh(["git", "init", "-q"], repo, env)
    dvc(repo, env, "init", "-q")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "study"], repo, env)
    if repro:
        dvc(repo, env, "repro")
    return repo, env

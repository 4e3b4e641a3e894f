"""DVC as its users read it: the README's `dvc exp show` recipe shows the few columns that matter."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.committed import export_committed
from tests.helpers.paths import ROOT

DVC = str(Path(sys.executable).parent / "dvc")
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def readme_command(prefix: str) -> list[str]:
    (line,) = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(prefix)]
    return shlex.split(line)


def test_readme_exp_show_recipe_keeps_the_summary_per_alpha(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", "out/metrics", "out/summary.json"):
        export_committed(name, repo)  # as committed: a user's experiment in the workspace changes nothing here
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=GIT_ENV)
    subprocess.run(["git", "commit", "-qm", "study"], cwd=repo, check=True, env=GIT_ENV)
    command = readme_command("dvc exp show --drop")
    assert command[-1] == "--md"
    done = subprocess.run([DVC, *command[1:-1], "--csv"], cwd=repo, capture_output=True, text=True, check=True)
    header = next(csv.reader(io.StringIO(done.stdout)))
    alphas = yaml.safe_load((repo / "params.yaml").read_text())["study"]["alphas"]
    summary = json.loads((repo / "out/summary.json").read_text())
    assert sorted(summary) == sorted(
        f"alpha={a:g}".replace(".", ",") for a in alphas
    )  # one entry per alpha of the study
    expected = {f"{alpha}.{key}" for alpha, entry in summary.items() for key in entry}
    assert set(header) == {"Experiment", "study.alphas", "study.seeds"} | expected
    assert len(header) <= 3 + 6 * len(alphas)  # a few columns per alpha, not one per metric and run

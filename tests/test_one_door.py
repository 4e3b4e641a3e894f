"""One door per stage: `dvc repro` (each stage's `lsmia stage NAME`), the old stage commands and `lsmia study` all
run lsmia.experiments.graph.run_stage, so they write the same bytes and track the same MLflow runs, and a killed stage's run
is continued whichever of them resumes it."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lsmia.cli.stages import STAGE_NAMES
from lsmia.experiments import graph, render
from tests.helpers.cli import invoke_in, succeed_in
from tests.helpers.paths import ROOT, TINY
from tests.helpers.poll import kill_once_written

runner = CliRunner()
CELLS = ("0.1", "-0.05")  # the tiny study's alphas, seed 0


def study_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(TINY, folder / "params.yaml")
    return folder


def digests(out: Path) -> dict[str, str]:
    """Every file a study wrote, by its path under ``out``, as a sha256 (timings and the report page, which names
    the time it was built, aside)."""
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.suffix != ".timings" and path.name != "index.html"
    }


def stage_commands() -> list[list[str]]:
    """`dvc repro`'s commands for the tiny study, in the graph's order, read from the committed dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = []
    for name, entry in stages.items():
        if name in ("evaluate", "target", "attack"):
            continue  # per cell: below, seed-major like DVC
        commands.append(entry["cmd"].split()[1:])
        if name == "attributes":
            for alpha in CELLS:
                for cell_stage in ("target", "attack", "evaluate"):
                    cmd = stages[cell_stage]["cmd"].replace("${item.alpha}", alpha).replace("${item.seed}", "0")
                    commands.append(cmd.split()[1:])
    return commands


def runs(uri: str) -> list[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]]]:
    """Every run of the lsmia experiment as (name, the tags that tell runs apart, the params' keys), sorted."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lsmia")
    assert experiment is not None
    kept = ("stage", "role", "alpha", "seed", "dataset", "lsmia.resumed")
    found = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        assert run.info.status == "FINISHED", run.info.run_name
        tags = tuple(sorted((key, value) for key, value in run.data.tags.items() if key in kept))
        found.append((run.info.run_name or "", tags, tuple(sorted(run.data.params))))
    return sorted(found)


def test_every_dvc_stage_runs_through_the_stage_door() -> None:
    assert tuple(stage.name for stage in graph.STAGES) == STAGE_NAMES
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in graph.STAGES:
        cell = " --alpha ${item.alpha} --seed ${item.seed}" if stage.per_cell else ""
        assert stages[stage.name]["cmd"] == f"lsmia stage {stage.name}{cell}"


def test_dvc_paths_are_the_study_layout() -> None:
    """dvc.yaml's outputs are lsmia.paths' folders rendered as templates: the study layout of a cell, written."""
    from lsmia.paths import StudyPaths

    paths = StudyPaths(Path("out"))
    cell = graph.Cell(-0.05, 1)
    for stage in graph.STAGES:
        rendered = [
            out.replace("${run.out_dir}", "out").replace("${item.alpha}", "-0.05").replace("${item.seed}", "1")
            for out in (*stage.outs, *stage.uncached_outs)
        ]
        output = graph.StudyLayout(paths).output(stage, cell if stage.per_cell else None)
        mark = output.parent if stage.folder else output
        assert mark.as_posix() in rendered, stage.name


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["stage", "data", "--alpha", "0.1"], "stage data has no smoothing factor: drop --alpha"),
        (["stage", "train"], "no stage 'train': name one of data, prior, eval-model"),
        (["stage", "target", "--shard", "0/2"], "--classes and --shard choose an attack's classes"),
    ],
)
def test_a_wrong_stage_call_is_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    shutil.copy(TINY, tmp_path / "params.yaml")
    result = invoke_in(tmp_path, *args)
    assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_study_and_dvc_commands_write_the_same_bytes_and_track_the_same_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    by_study, by_stage = study_folder(tmp_path, "study"), study_folder(tmp_path, "stages")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{by_study / 'mlflow.db'}")
    succeed_in(by_study, "study", "--track")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{by_stage / 'mlflow.db'}")
    for command in stage_commands():
        succeed_in(by_stage, *command, "--track")

    written = digests(by_study / "out")
    assert written == digests(by_stage / "out")
    for alpha in CELLS:  # the classifiers' DVCLive curves too, under either door
        assert f"curves/target_alpha{alpha}_seed0/plots/metrics/test_acc.tsv" in written
    assert "curves/eval/plots/metrics/loss.tsv" in written
    tracked = runs(f"sqlite:///{by_study / 'mlflow.db'}")
    assert tracked == runs(f"sqlite:///{by_stage / 'mlflow.db'}")
    names = [name for name, _, _ in tracked]
    assert names.count("train-target alpha=0.1 seed=0") == 1 and "train-eval" in names and "report" in names
    assert len(tracked) == 3 * len(CELLS) + 6  # per cell: target, attack, evaluate; data, prior, eval, attributes,
    # toy, report


@pytest.mark.slow
def test_a_killed_study_continues_the_stage_run_it_left_open(tmp_path: Path) -> None:
    """`lsmia study` resumes a killed training and continues its MLflow run, as `dvc repro` (lsmia stage) does."""
    from mlflow import MlflowClient

    folder = study_folder(tmp_path, "study")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "OMP_NUM_THREADS": "1"}
    env.update(MLFLOW_TRACKING_URI=uri)
    for key in ("MLFLOW_RUN_ID", "DVC_STAGE"):
        env.pop(key, None)
    args = ["study", "--track", "-S", "target.epochs=20", "-S", "study.alphas=[0.1]"]
    checkpoint = folder / "out/models/target_alpha0.1_seed0/checkpoint.pt"
    command = [sys.executable, "-c", "from lsmia.cli import main; main()", *args]
    kill_once_written(command, folder, env, checkpoint, signal.SIGKILL, 300)
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("lsmia")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'train' and tags.role = 'target'")
    assert run.info.status == "FINISHED" and run.data.tags.get("lsmia.resumed") == "true"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
    assert steps == set(range(20))  # every epoch, before and after the kill: one history


def test_the_committed_mlproject_is_the_one_generated_and_mlflow_reads_a_door_per_stage() -> None:
    from mlflow.projects import _project_spec

    assert (ROOT / "MLproject").read_text(encoding="utf-8") == render.mlproject(), (
        "MLproject differs from lsmia/experiments/graph.py: run 'lsmia dvc-yaml' and commit it"
    )
    project = _project_spec.load_project(str(ROOT))
    assert set(project._entry_points) == {"main", "study", "sweep", "ablate", *STAGE_NAMES}
    command = project.get_entry_point("target").compute_command({"alpha": -0.05, "seed": "1"}, None)
    assert command.startswith("python -m lsmia stage target --alpha -0.05 --seed 1 --params params.yaml")
    assert "--alpha" not in project.get_entry_point("data").compute_command({}, None)

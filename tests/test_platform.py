"""DVC and MLflow Projects drive the real CLI on the tiny study, in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = tmp_path_factory.mktemp("study")
    for name in ("dvc.yaml", "MLproject"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("lsmia", "mlflow_project"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for results in ROOT.glob("out/ablations/*/results.md"):  # committed ablation tables the report stage includes
        (repo / results.relative_to(ROOT)).parent.mkdir(parents=True)
        shutil.copy(results, repo / results.relative_to(ROOT))
    from lsmia.config import load_config

    params = load_config(ROOT / "tests" / "tiny_params.yaml", {"run.tracking": True}).to_dict()  # every key, as DVC reads them
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    sh(["git", "init", "-q"], repo, env)
    sh([str(BIN / "dvc"), "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "study"], repo, env)
    sh([str(BIN / "dvc"), "repro"], repo, env)
    return repo, env


def dvc_stale(repo: Path, env: dict[str, str]) -> set[str]:
    out = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    return set(json.loads(out.stdout or "{}"))


def test_repro_builds_every_output_and_a_second_repro_runs_nothing(project):
    repo, env = project
    for path in ("out/data/dataset.pt", "out/prior/prior.pt", "out/models/eval/model.pt",
                 "out/models/target_alpha0.1_seed0/model.pt", "out/attacks/alpha-0.05_seed0/attack.pt",
                 "out/metrics/alpha0.1_seed0.json", "out/report/index.html", "out/plots/study.json"):
        assert (repo / path).exists(), path
    page = (repo / "out/report/index.html").read_text()
    for name in ("factors", "alpha", "data"):  # the committed ablation tables, through the report stage's --ablation
        assert f"<h3>{name}</h3><pre>| variant |" in page
    assert dvc_stale(repo, env) == set()
    again = sh([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage" not in again
    shown = json.loads(subprocess.run([str(BIN / "dvc"), "metrics", "show", "--json"], cwd=repo, env=env,
                                      capture_output=True, text=True).stdout)
    files = next(iter(shown.values()))["data"]
    assert "out/metrics/alpha-0.05_seed0.json" in files


def test_an_attack_parameter_reruns_only_attack_evaluation_and_report(project):
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["attack"]["steps"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = dvc_stale(repo, env)
    assert stale and all(s.split("@")[0] in {"attack", "evaluate", "report"} for s in stale), stale
    out = sh([str(BIN / "dvc"), "repro"], repo, env)
    ran = {line.split("'")[1].split("@")[0] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"attack", "evaluate", "report"}, out


def test_adding_an_alpha_trains_only_that_target(project):
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"]["alphas"] = [0.1, -0.05, 0.0]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([str(BIN / "dvc"), "repro"], repo, env)
    trained = [line for line in out.splitlines() if line.startswith("Running stage 'target")]
    assert trained == ["Running stage 'target@2':"] or trained == ["Running stage 'target@0.0-0':"], trained
    assert (repo / "out/metrics/alpha0.0_seed0.json").exists()


def test_mlflow_holds_every_stage_run_with_params_metrics_model_and_images(project):
    import mlflow
    from mlflow import MlflowClient

    repo, env = project
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["lsmia"], output_format="list")
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"data", "prior", "train", "attributes", "attack", "evaluate", "report"} <= stages
    client = MlflowClient()
    target_runs = [r for r in runs if r.data.tags.get("stage") == "train" and r.data.tags.get("role") == "target"]
    assert {r.data.tags["alpha"] for r in target_runs} >= {"0.1", "-0.05"}
    run = target_runs[0]
    assert run.data.params["attack.pool_size"] == "16" and "test_acc" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "alpha")
    assert len(history) == 2 and sorted(m.step for m in history) == [0, 1]
    assert run.data.tags.get("git_commit")
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.source_run_id == run.info.run_id for m in models)
    versions = client.search_model_versions("name='lsmia-target'")
    assert {v.tags.get("alpha") for v in versions} >= {"0.1", "-0.05"}
    attack_runs = [r for r in runs if r.data.tags.get("stage") == "attack"]
    files = [a.path for a in client.list_artifacts(attack_runs[0].info.run_id, "reconstructions")]
    assert any(f.endswith(".png") for f in files)
    assert attack_runs[0].data.tags.get("lsmia.link.target_training")
    evaluate_runs = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert all("final_acc1" in r.data.metrics for r in evaluate_runs)


def test_mlflow_run_main_entry_point_nests_stage_runs(project):
    import mlflow

    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["run"]["out_dir"] = "out_mlflow"
    (repo / "mlflow_params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh([str(BIN / "mlflow"), "run", ".", "-e", "main", "--env-manager", "local", "--experiment-name", "lsmia",
        "-P", "params=mlflow_params.yaml"], repo, env)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["lsmia"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags.get("stage") for r in children} >= {"data", "train", "attack", "evaluate"}
    assert (repo / "out_mlflow/report/index.html").exists()

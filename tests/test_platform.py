"""DVC and MLflow Projects drive the real CLI on the tiny study, in a temporary git repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lsmia.reporting.report import summary_key
from tests.helpers.project import BIN, sh, temp_dvc_repo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return temp_dvc_repo(tmp_path_factory.mktemp("study"), tracking=True)


def dvc_stale(repo: Path, env: dict[str, str]) -> set[str]:
    out = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    return set(json.loads(out.stdout or "{}"))


def test_repro_builds_every_output_and_a_second_repro_runs_nothing(project):
    repo, env = project
    for path in (
        "out/data/dataset.pt",
        "out/prior/prior.pt",
        "out/models/eval/model.pt",
        "out/models/target_alpha0.1_seed0/model.pt",
        "out/attacks/alpha-0.05_seed0/attack.pt",
        "out/metrics/alpha0.1_seed0.json",
        "out/report/index.html",
        "out/plots/study.json",
        "out/curves/eval/plots/metrics/test_acc.tsv",
        "out/curves/target_alpha0.1_seed0/plots/metrics/loss.tsv",
    ):
        assert (repo / path).exists(), path
    page = (repo / "out/report/index.html").read_text()
    for name in ("factors", "alpha", "data"):  # the committed ablation tables, through the report stage's --ablation
        assert f"<h3>{name}</h3><p class='caption'>Variants — <b>" in page and "<pre>" not in page  # HTML tables
    assert dvc_stale(repo, env) == set()
    again = sh([str(BIN / "dvc"), "repro"], repo, env)
    assert "Running stage" not in again
    shown = json.loads(
        subprocess.run(
            [str(BIN / "dvc"), "metrics", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True
        ).stdout
    )
    files = next(iter(shown.values()))["data"]
    assert list(files) == ["out/summary.json"]  # DVC's metrics: the study per alpha, a few columns
    alphas = yaml.safe_load((repo / "params.yaml").read_text())["study"]["alphas"]
    assert set(files["out/summary.json"]["data"]) == {summary_key(a) for a in alphas}  # one entry per alpha


def test_dvc_plots_show_has_every_classifier_s_training_curves(project):
    repo, env = project
    alphas = yaml.safe_load((repo / "params.yaml").read_text())["study"]["alphas"]
    folders = ["eval", *(f"target_alpha{float(a)}_seed0" for a in alphas)]
    # the stages' own plots by their outputs (this repository has no copy of the top-level charts' templates)
    command = [str(BIN / "dvc"), "plots", "show", "--json", *(f"out/curves/{folder}" for folder in folders)]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout, done.stderr
    curves = set(json.loads(done.stdout)["data"])  # plot id -> its rendered data
    for folder in folders:
        assert f"out/curves/{folder}/plots/metrics/test_acc.tsv" in curves, sorted(curves)


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


def test_a_removed_alpha_leaves_no_stale_row_in_report_or_plots(project):
    """Removing alpha 0 (added above) and changing the attack and the data: the report and DVC's plot data show
    exactly the study's cells, not the stale alpha-0 files that still lie in out/."""
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"]["alphas"] = [0.1, -0.05]
    params["attack"]["steps"] = 2
    params["data"]["seed"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh([str(BIN / "dvc"), "repro"], repo, env)
    assert (repo / "out/metrics/alpha0.0_seed0.json").exists()  # the stale file is still there ...
    plotted = json.loads((repo / "out/plots/study.json").read_text())
    assert sorted(row["alpha"] for row in plotted) == [-0.05, 0.1]  # ... but not in the plots
    page = (repo / "out/report/index.html").read_text()
    run = "<th>α = {}<br><small>seed 0</small></th>"  # a column of the raw-metrics table
    assert run.format("0") not in page and run.format("0.1") in page
    assert "not evaluated yet" not in page


def test_mlflow_holds_every_stage_run_with_params_metrics_model_and_images(project):
    import mlflow
    from mlflow import MlflowClient

    _repo, env = project
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["lsmia"], output_format="list")
    stages = {r.data.tags.get("stage") for r in runs}
    assert {"data", "prior", "train", "attributes", "attack", "evaluate", "report"} <= stages
    client = MlflowClient()
    target_runs = [r for r in runs if r.data.tags.get("stage") == "train" and r.data.tags.get("role") == "target"]
    assert {r.data.tags["alpha"] for r in target_runs} >= {"0.1", "-0.05"}
    run = target_runs[0]
    assert "test_acc" in run.data.metrics
    # params: what shapes the run's output (a target: data and target, not the attack), the whole config as a file
    assert "target.smoothing.alpha" in run.data.params and "data.num_identities" in run.data.params
    assert not any(key.startswith(("attack.", "sweep.", "study.")) for key in run.data.params)
    attack_run = next(r for r in runs if r.data.tags.get("stage") == "attack")
    assert attack_run.data.params["attack.pool_size"] == "16" and "target.epochs" in attack_run.data.params
    history = client.get_metric_history(run.info.run_id, "alpha_in_force")  # the warm-up's alpha per epoch
    assert len(history) == 2 and sorted(m.step for m in history) == [0, 1]
    assert not {"alpha", "seed", "epochs"} & set(run.data.metrics)  # settings are params and tags, not metrics
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
    for evaluate_run in evaluate_runs:  # the report's green/red frames: the evaluation model's verdict per sample
        judged = [a.path for a in client.list_artifacts(evaluate_run.info.run_id, "reconstructions")]
        assert judged == ["reconstructions/judged.png"]


def test_mlflow_run_main_runs_dvc_with_overrides_and_nests_stage_runs(project):
    """`mlflow run . -e main -P set=...` goes through DVC (dvc exp run -S): the stage runs nest under the
    project run and `dvc status` is clean afterwards."""
    import mlflow

    repo, env = project
    sh(
        [
            str(BIN / "mlflow"),
            "run",
            ".",
            "-e",
            "main",
            "--env-manager",
            "local",
            "--experiment-name",
            "lsmia",
            "--run-name",
            "pipeline",
            "-P",
            "set=attack.steps=4 attack.final_draws=3",
        ],
        repo,
        env,
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["attack"]["steps"] == 4 and params["attack"]["final_draws"] == 3
    assert dvc_stale(repo, env) == set()
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["lsmia"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    assert len(parents) == 1 and parents[0].info.run_name == "pipeline"  # the README's command, as written
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags.get("stage") for r in children} == {"attack", "evaluate", "report"}


def test_mlflow_run_rejects_a_bad_override_before_dvc_runs(project):
    repo, env = project
    done = subprocess.run(
        [str(BIN / "mlflow"), "run", ".", "-e", "main", "--env-manager", "local", "-P", "set=attack.stepz=4"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "unknown config key 'attack.stepz'" in done.stderr

"""lsmia sweep on the tiny config: budget, workers, MLflow nesting, lost workers, divergence, resume, constraints."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from lsmia.cli import app
from lsmia.config import Config, NoDefense, SmoothingConfig, SweepConfig, build_config, load_config
from lsmia.errors import LsmiaError
from lsmia.experiments import sweep
from lsmia.paths import StudyPaths
from lsmia.stages import attack as attack_stage
from lsmia.stages.attributes import stage_attribute_predictor
from lsmia.stages.data import stage_data
from lsmia.stages.prior import stage_prior
from lsmia.stages.train import stage_train
from tests.helpers.paths import ROOT, TINY
from tests.helpers.poll import wait_until

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def study_cfg(tmp_path_factory) -> Config:
    """The tiny study's data, prior, eval model and attribute predictor, built once for the module."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    cfg = load_config(
        TINY,
        {"run.out_dir": str(out), "sweep.heartbeat_interval": 1, "sweep.grace_period": 3, "sweep.log_models": False},
    )
    paths, device = StudyPaths(out), torch.device("cpu")
    stage_data(cfg, paths.data_file)
    stage_prior(cfg, paths.data_file, paths.prior_dir, device)
    stage_train(cfg, "eval", paths.data_file, paths.eval_dir, device)
    stage_attribute_predictor(cfg, paths.data_file, paths.attribute_dir / "predictor.pt", device)
    return cfg


def configured(cfg: Config, **sweep_values) -> Config:
    return build_config(cfg.to_dict(), {f"sweep.{key}": value for key, value in sweep_values.items()})


def trials_of(cfg: Config) -> list[optuna.trial.FrozenTrial]:
    storage = sweep.open_storage(cfg.sweep.storage, sweep.SweepPaths.of(cfg).journal)
    return optuna.load_study(study_name=cfg.sweep.study_name, storage=storage).get_trials()


def quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------- pure parts


def recommended(front: list[dict[str, Any]], config: SweepConfig) -> object:
    """The number of the trial ``sweep.recommend`` picks from ``front``; the test expects it to pick one."""
    best = sweep.recommend(front, config)
    assert best is not None, "no trial recommended"
    return best["number"]


def test_warmup_end_is_sampled_within_the_remainder_and_never_before_the_start():
    space = SweepConfig(alpha_low=-0.3, alpha_high=0.3)
    base = SmoothingConfig()
    ends = sweep.suggest_smoothing(
        optuna.trial.FixedTrial({"alpha": -0.2, "warmup_start": 0.9, "warmup_fraction": 1.0}), space, base
    )
    assert ends.alpha == -0.2 and ends.warmup_start == 0.9 and ends.warmup_end == 1.0
    half = sweep.suggest_smoothing(
        optuna.trial.FixedTrial({"alpha": -0.1, "warmup_start": 0.2, "warmup_fraction": 0.5}), space, base
    )
    assert half.warmup_end == pytest.approx(0.6)
    # positive alpha with negative_only: the warm-up does not apply, so it is not searched
    positive = sweep.suggest_smoothing(optuna.trial.FixedTrial({"alpha": 0.1}), space, base)
    assert (positive.warmup_start, positive.warmup_end) == (base.warmup_start, base.warmup_end)


def test_sweep_config_rejects_inverted_bounds():
    with pytest.raises(LsmiaError, match="alpha_low < alpha_high"):
        build_config({}, {"sweep.alpha_low": 0.2, "sweep.alpha_high": -0.2})
    with pytest.raises(LsmiaError, match="grace_period"):
        build_config({}, {"sweep.heartbeat_interval": 60, "sweep.grace_period": 30})


def test_pareto_front_and_recommendation():
    def row(number, test_acc, acc1):
        return {"number": number, "state": "COMPLETE", "test_acc": test_acc, "final_acc1": acc1, "alpha": 0.0}

    rows = [
        row(0, 0.90, 0.80),
        row(1, 0.88, 0.50),
        row(2, 0.80, 0.20),
        row(3, 0.85, 0.60),
        row(4, 0.70, 0.30),
        {**row(5, 0.99, 0.01), "state": "FAIL"},
    ]
    front = sweep.pareto_front(rows)
    assert [r["number"] for r in front] == [2, 1, 0]  # 3 is beaten by 1, 4 by 2, 5 failed
    assert recommended(front, SweepConfig(max_acc_drop=0.05)) == 1
    assert recommended(front, SweepConfig(max_acc_drop=0.01)) == 0
    assert recommended(front, SweepConfig(max_acc_drop=0.2)) == 2
    assert sweep.recommend([], SweepConfig()) is None


def test_budget_ignores_failed_trials_that_were_queued_again():
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = study.ask({"alpha": optuna.distributions.FloatDistribution(-0.3, 0.3)})
    study.tell(first, state=TrialState.FAIL)
    assert sweep.consumed_budget(study.get_trials()) == 1
    assert sweep.enqueue_retry(study, study.get_trials()[0], max_retry=1)
    assert sweep.consumed_budget(study.get_trials()) == 0  # the queued retry counts once it starts
    retry = study.ask()
    assert retry.params == first.params
    study.tell(retry, state=TrialState.FAIL)
    assert not sweep.enqueue_retry(study, study.get_trials()[1], max_retry=1)  # retries used up
    assert sweep.consumed_budget(study.get_trials()) == 1


def test_floor_pruner_prunes_only_below_every_trial_that_reached_the_floor():
    study = optuna.create_study(direction="minimize", pruner=sweep.FloorPruner(0.5, min_feasible=2))
    for final, curve in ((0.6, [0.3, 0.6]), (0.7, [0.4, 0.7]), (0.2, [0.1, 0.2])):
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        trial.set_user_attr("test_acc", final)
        study.tell(trial, 0.5)
    trial = study.ask()
    trial.report(0.35, 0)
    assert not trial.should_prune()  # above 0.3, the lowest of the trials that reached 0.5
    trial.report(0.55, 1)
    assert not trial.should_prune()  # below 0.6 and 0.7, but already at the floor
    low = study.ask()
    low.report(0.25, 0)
    assert low.should_prune()
    low.report(0.45, 1)
    assert low.should_prune()


def test_missing_shared_models_is_an_error_naming_the_fix(tmp_path):
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out")})
    with pytest.raises(LsmiaError, match="dvc repro"):
        sweep.run_sweep(cfg, log=quiet)


# ---------------------------------------------------------------- studies on the tiny config


def test_resume_runs_only_the_remaining_budget(study_cfg):
    cfg = configured(study_cfg, study_name="resume", n_trials=2, min_test_acc=0.0)  # tiny targets reach ~0.1
    first = sweep.run_sweep(cfg, log=quiet)
    assert [r["number"] for r in first.rows] == [0, 1] and all(r["state"] == "COMPLETE" for r in first.rows)
    ran: list[str] = []
    again = sweep.run_sweep(configured(cfg, n_trials=3), log=ran.append)
    assert [r["number"] for r in again.rows] == [0, 1, 2]
    assert sum(line.startswith("trial ") for line in ran) == 1  # only trial 2 ran
    assert sweep.run_sweep(configured(cfg, n_trials=3), log=quiet).rows == again.rows
    root = sweep.SweepPaths.of(cfg).root
    assert sorted(p.name for p in root.glob("trial_*")) == ["trial_0", "trial_1", "trial_2"]
    metrics = json.loads((root / "trial_2" / "metrics.json").read_text())
    trial = trials_of(cfg)[2]
    assert trial.values == [metrics["test_acc"], metrics["final_acc1"]]
    assert trial.user_attrs["delta_eval"] == metrics["delta_eval"] and trial.user_attrs["xi"] == metrics["xi"]
    for name in ("trials.csv", "trials.md", "pareto.png", "pareto.html", "recommendation.json"):
        assert (root / name).stat().st_size > 0, name
    recommendation = json.loads((root / "recommendation.json").read_text())
    assert recommendation["recommended"]["number"] in [r["number"] for r in again.pareto]
    assert (root / "trials.csv").read_text().count("\n") == 4  # header + 3 trials


def test_diverging_trial_is_failed_with_its_reason_and_the_study_goes_on(study_cfg, monkeypatch):
    import lsmia.training.classifier as classifier

    honest = classifier.smoothed_cross_entropy

    def nan_for_negative_alpha(logits, labels, alpha):
        loss = honest(logits, labels, alpha)
        return loss * math.nan if alpha < 0 else loss

    monkeypatch.setattr(classifier, "smoothed_cross_entropy", nan_for_negative_alpha)
    cfg = configured(study_cfg, study_name="diverge", sampler="grid", n_trials=3, alpha_low=-0.2, alpha_high=0.2)
    result = sweep.run_sweep(cfg, log=quiet)
    by_alpha = {round(r["alpha"], 6): r for r in result.rows}
    assert sorted(by_alpha) == [-0.2, 0.0, 0.2] and len(result.rows) == 3
    assert by_alpha[-0.2]["state"] == "FAIL" and "diverged" in by_alpha[-0.2]["fail_reason"]
    assert by_alpha[0.0]["state"] == by_alpha[0.2]["state"] == "COMPLETE"
    assert not any(t.state == TrialState.WAITING for t in trials_of(cfg))  # a divergence is not retried


def test_constrained_mode_prunes_targets_below_the_floor_and_records_the_constraint(study_cfg):
    low = configured(study_cfg, study_name="floor-low", mode="constrained", min_test_acc=0.0, n_trials=2)
    result = sweep.run_sweep(low, log=quiet)
    assert [r["state"] for r in result.rows] == ["COMPLETE", "COMPLETE"] and result.recommended is not None
    for trial in trials_of(low):
        assert trial.values == [trial.user_attrs["final_acc1"]]
        assert trial.constraints == {sweep.CONSTRAINT: pytest.approx(-trial.user_attrs["test_acc"])}
    high = configured(study_cfg, study_name="floor-high", mode="constrained", min_test_acc=0.99, n_trials=2)
    result = sweep.run_sweep(high, log=quiet)
    assert [r["state"] for r in result.rows] == ["PRUNED", "PRUNED"] and result.recommended is None
    root = sweep.SweepPaths.of(high).root
    assert (root / "trial_0" / "target" / "model.pt").exists() and not (root / "trial_0" / "attack").exists()
    assert all(t.constraints[sweep.CONSTRAINT] > 0 for t in trials_of(high))
    with pytest.raises(LsmiaError, match="mode"):
        sweep.run_sweep(configured(high, mode="pareto"), log=quiet)


def test_ctrl_c_fails_the_trial_queues_it_again_and_a_rerun_finishes_it(study_cfg, monkeypatch):
    cfg = configured(study_cfg, study_name="interrupt", n_trials=2)
    honest = attack_stage.stage_attack

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attack_stage, "stage_attack", interrupted)  # the graph runs lsmia.stages.attack's
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, log=quiet)
    monkeypatch.setattr(attack_stage, "stage_attack", honest)
    first, *waiting = trials_of(cfg)  # the failed trial, the study's second queued alpha and the retry
    assert first.state == TrialState.FAIL and "interrupted" in first.user_attrs["fail_reason"]
    retry = [t for t in waiting if t.system_attrs.get("failed_trial") == first.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING and retry[0].params == first.params
    result = sweep.run_sweep(cfg, log=quiet)
    states = {r["number"]: r["state"] for r in result.rows}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE"}
    assert trials_of(cfg)[retry[0].number].params == first.params and sweep.consumed_budget(trials_of(cfg)) == 2


def test_cli_sweep_prints_the_recommendation(study_cfg, tmp_path):
    out = CliRunner().invoke(
        app,
        [
            "sweep",
            "--params",
            str(TINY),
            "-S",
            f"run.out_dir={study_cfg.run.out_dir}",
            "-S",
            "sweep.min_test_acc=0",
            "--study-name",
            "cli",
            "--n-trials",
            "1",
            "--no-track",
            "--device",
            "cpu",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "recommended: trial 0" in out.output and "1 trials (1 complete" in out.output
    floor = CliRunner().invoke(
        app,
        [
            "sweep",
            "--params",
            str(TINY),
            "-S",
            f"run.out_dir={study_cfg.run.out_dir}",
            "--study-name",
            "cli-floor",
            "--n-trials",
            "2",
            "--no-track",
            "--device",
            "cpu",
        ],
    )
    assert floor.exit_code == 0, floor.output  # tiny targets stay far below the default floor of 0.5 ...
    assert "recommended: none: no trial reaches the accuracy floor sweep.min_test_acc = 0.5" in floor.output
    worker = CliRunner().invoke(app, ["sweep", "--params", str(TINY), "--worker", "true"])
    assert worker.exit_code == 2 and "unexpected extra argument" in worker.output  # --worker is a flag ...
    assert "<bool>" not in CliRunner().invoke(app, ["sweep", "--help"]).output.split("--help")[0]  # ... and says so
    bad = CliRunner().invoke(app, ["sweep", "--params", str(TINY), "-S", f"run.out_dir={tmp_path}"])
    assert bad.exit_code == 2 and "dvc repro" in bad.output


@pytest.mark.slow  # 11-15 s
def test_a_mid_sweep_searches_beta_records_it_per_trial_and_draws_its_front(study_cfg, tmp_path, monkeypatch):
    import mlflow

    from lsmia.models.classifiers import load_classifier

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = study_cfg.run.out_dir
    reference = StudyPaths(out).metrics_file(0.0, study_cfg.run.seed)  # the study's undefended target, evaluated
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_text(json.dumps({"alpha": 0.0, "seed": 0, "test_acc": 0.5, "final_acc1": 0.9, "delta_eval": 1.0}))
    args = ["sweep", "--params", str(TINY), "-S", f"run.out_dir={out}", "-S", "sweep.min_test_acc=0"]
    args += ["-S", "sweep.log_models=false", "--study-name", "mid", "--n-trials", "2", "--device", "cpu"]
    try:
        done = CliRunner().invoke(app, [*args, "--defense", "mid", "--track"])
    finally:
        reference.unlink()
    assert done.exit_code == 0, done.output
    assert "recommended: trial" in done.output and " mid β=" in done.output
    cfg = configured(study_cfg, study_name="mid", defense="mid")
    trials = trials_of(cfg)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    paths = sweep.SweepPaths.of(cfg)
    for trial in trials:
        beta = trial.params["mid_beta"]
        assert set(trial.params) == {"mid_beta"} and 1e-4 <= beta <= 1.0 and trial.user_attrs["mid_beta"] == beta
        model = load_classifier(paths.trial_dir(trial.number) / "target" / "model.pt", num_classes=4)
        assert model.bottleneck is not None  # the target was trained with MID's bottleneck
    record = json.loads(paths.points_json.read_text())
    assert [t["defense"] for t in record["trials"]] == [
        {"target.defense.kind": "mid", "target.defense.mid_beta": t.params["mid_beta"]} for t in trials
    ]
    assert record["undefended"]["source"] == str(reference) and record["undefended"]["final_acc1"] == 0.9
    assert paths.fronts_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mid_beta" in paths.trials_csv.read_text().splitlines()[0]
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    study = optuna.load_study(study_name="mid", storage=sweep.open_storage(None, paths.journal))
    parent_id = study.user_attrs[sweep.PARENT_RUN_ATTR]
    assert {"sweep/fronts.png", "sweep/points.json"} <= {a.path for a in client.list_artifacts(parent_id, "sweep")}
    for trial in trials:
        child = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent_id and child.data.tags["defense"] == "mid"
        assert float(child.data.params["target.defense.mid_beta"]) == pytest.approx(trial.params["mid_beta"])
    # the study keeps its defense; a defense that does not exist is a one-line error
    other = CliRunner().invoke(app, [*args, "--defense", "bido", "--no-track"])
    assert other.exit_code == 2 and "study 'mid' searches defense 'mid', not 'bido'" in other.output
    bad = CliRunner().invoke(app, ["sweep", "--params", str(TINY), "--defense", "foo"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert bad.output.startswith("error: invalid config value for 'sweep.defense' from the --defense flag")


def test_defense_search_spaces_and_their_bounds():
    mid = SweepConfig(defense="mid")
    beta = sweep.suggest_defense(optuna.trial.FixedTrial({"mid_beta": 0.02}), mid, NoDefense())
    assert beta.model_dump() == {"kind": "mid", "mid_beta": 0.02}
    lambdas = optuna.trial.FixedTrial({"bido_lambda_x": 0.1, "bido_lambda_y": 2.0})
    bido = sweep.suggest_defense(lambdas, SweepConfig(defense="bido"), NoDefense())
    assert bido.model_dump() == {
        "kind": "bido",
        "bido_lambda_x": 0.1,
        "bido_lambda_y": 2.0,
        "bido_measure": "nhsic",
        "bido_label_kernel": "linear",
    }
    layers = optuna.trial.FixedTrial({"tl_trained_layers": 3})
    tl = sweep.suggest_defense(layers, SweepConfig(defense="tl"), NoDefense())
    assert tl.model_dump() == {"kind": "tl", "tl_trained_layers": 3, "tl_pretrain_epochs": 0}
    narrow = SweepConfig(defense="tl", defense_ranges={"tl_trained_layers": (2, 2)})
    assert sweep.search_space(narrow, SmoothingConfig())["tl_trained_layers"] == "integer in [2, 2]"
    nothing = sweep.suggest_defense(optuna.trial.FixedTrial({}), SweepConfig(defense="none"), NoDefense())
    assert nothing.kind == "none"
    assert sweep.search_space(mid, SmoothingConfig())["mid_beta"] == "log-uniform in [0.0001, 1]"
    with pytest.raises(ValueError, match=r"defense_ranges.mid_beta must be \[low, high\]"):
        SweepConfig(defense="mid", defense_ranges={"mid_beta": (1.0, 0.1)})
    with pytest.raises(ValueError, match="the grid sampler searches alpha only"):
        SweepConfig(defense="tl", sampler="grid")


def test_an_undefended_sweep_trains_its_one_model_once_whatever_the_budget(study_cfg):
    lines: list[str] = []
    once = sweep.single_trial_without_search(configured(study_cfg, defense="none", n_trials=6), lines.append)
    assert once.sweep.n_trials == 1 and lines == [
        "sweep.defense none searches nothing: 1 trial (the undefended model), not 6"
    ]
    assert once.to_dict() == configured(study_cfg, defense="none", n_trials=1).to_dict()
    searched = configured(study_cfg, defense="mid", n_trials=6)
    assert sweep.single_trial_without_search(searched, lines.append) is searched and len(lines) == 1


def journal_processes_that_ran_trials(journal: Path) -> set[str]:
    """The processes (worker id '<process uuid>-<thread>') that started a trial: created it running, or took a
    queued one (the study's first trials are queued by the process that creates the study)."""
    from optuna.storages.journal._storage import JournalOperation

    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    running = TrialState.RUNNING.value
    return {
        e["worker_id"].rsplit("-", 1)[0]
        for e in entries
        if e["op_code"] in (JournalOperation.CREATE_TRIAL, JournalOperation.SET_TRIAL_STATE_VALUES)
        and e.get("state", running) == running
    }


@pytest.mark.slow
def test_two_workers_share_the_budget_and_log_one_child_run_per_trial(study_cfg, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = build_config(
        configured(study_cfg, study_name="workers", n_trials=5, n_workers=2, log_models=True).to_dict(),
        {"run.tracking": True},
    )
    result = sweep.run_sweep(cfg, log=quiet)
    trials = trials_of(cfg)
    assert len(trials) == 5 and sorted(t.number for t in trials) == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(result.rows) == 5
    assert len(journal_processes_that_ran_trials(sweep.SweepPaths.of(cfg).journal)) == 2
    storage = sweep.open_storage(None, sweep.SweepPaths.of(cfg).journal)
    parent_id = optuna.load_study(study_name="workers", storage=storage).user_attrs[sweep.PARENT_RUN_ATTR]
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep_study.name"] == "workers"
    assert "sweep/pareto.png" in {a.path for a in client.list_artifacts(parent_id, "sweep")}
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(int(c.data.tags["trial"]) for c in children) == list(range(5))  # exactly one run per trial
    for trial in trials:
        child = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent_id and child.data.tags["trial"] == str(trial.number)
        assert child.data.metrics["test_acc"] == pytest.approx(trial.values[0])
        assert child.data.metrics["final_acc1"] == pytest.approx(trial.values[1])
        assert float(child.data.params["target.smoothing.alpha"]) == pytest.approx(trial.params["alpha"])
        assert "reconstructions" in {a.path for a in client.list_artifacts(child.info.run_id)}
        assert child.data.tags["lsmia.model_format.model"] in ("pt2", "pickle")  # set once the model is logged


WORKER_THAT_HANGS = """
import json, sys, time
from lsmia.experiments import sweep
from lsmia.config import build_config
from lsmia.stages import attack
attack.stage_attack = lambda *args, **kwargs: time.sleep(600)
sweep.run_worker(build_config(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_failed_by_heartbeat_and_retried(study_cfg):
    cfg = configured(study_cfg, study_name="killed", n_trials=2)
    paths = sweep.SweepPaths.of(cfg)
    sweep.create_or_load_study(cfg, sweep.open_storage(None, paths.journal), 0)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_THAT_HANGS, json.dumps(cfg.to_dict())],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def in_its_attack() -> bool:
        assert worker.poll() is None, "the worker died before its attack"
        return any(
            sweep.HEARTBEAT_ATTR in t.system_attrs and t.user_attrs.get("test_acc") is not None for t in trials_of(cfg)
        )

    try:
        wait_until(in_its_attack, 60, "the worker to reach its attack")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    (lost,) = [t for t in trials_of(cfg) if t.state == TrialState.RUNNING]
    assert lost.number == 0
    lines: list[str] = []
    sweep.run_sweep(cfg, log=lines.append)  # waits out the grace period, fails trial 0, retries it
    trials = trials_of(cfg)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"].startswith("worker lost")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE and retries[0].params == lost.params
    assert len(trials) == 3 and sweep.consumed_budget(trials) == 2
    assert all(t.state == TrialState.COMPLETE for t in trials[1:])
    assert "trial 0: worker lost, FAILED; queued again" in lines


# ---------------------------------------------------------------- Optuna's own tools (issue 12)


def test_objectives_are_named_and_their_directions_stored():
    pareto = sweep.create_or_load_study(Config(), optuna.storages.InMemoryStorage(), seed=0)
    assert pareto.metric_names == ["test_acc", "attack_acc1"]
    assert pareto.user_attrs["directions"] == {"test_acc": "maximize", "attack_acc1": "minimize"}
    constrained = sweep.create_or_load_study(
        build_config({}, {"sweep.mode": "constrained"}), optuna.storages.InMemoryStorage(), seed=0
    )
    assert constrained.metric_names == ["attack_acc1"]
    assert constrained.user_attrs["directions"] == {"attack_acc1": "minimize"}
    assert "test_acc >= 0.5" in constrained.user_attrs["constraint"]


def test_summary_uses_optuna_s_pareto_front_figure_and_importance(tmp_path):
    cfg = build_config({"run": {"out_dir": str(tmp_path)}}, {"sweep.study_name": "tools"})
    grid = [
        (-0.3, 0.70, 0.30),
        (-0.2, 0.78, 0.41),
        (-0.1, 0.84, 0.52),
        (0.0, 0.86, 0.60),
        (0.1, 0.85, 0.66),
        (0.2, 0.83, 0.70),
        (-0.25, 0.72, 0.45),
        (0.05, 0.86, 0.62),
    ]
    study = sweep.create_or_load_study(cfg, optuna.storages.InMemoryStorage(), seed=0)
    for _alpha, test_acc, acc1 in grid:
        trial = study.ask(
            {
                "alpha": optuna.distributions.FloatDistribution(-0.3, 0.3),
                "warmup_start": optuna.distributions.FloatDistribution(0.0, 0.9),
            }
        )
        trial.set_user_attr("test_acc", test_acc)
        trial.set_user_attr("final_acc1", acc1)
        study.tell(trial, [test_acc, acc1])
    result = sweep.summarize(study, cfg, sweep.SweepPaths.of(cfg))
    assert [r["number"] for r in result.pareto] == sorted(
        (t.number for t in study.best_trials), key=lambda n: grid[n][1]
    )
    assert set(result.importance) == {"test_acc", "attack_acc1"}
    assert set(result.importance["attack_acc1"]) == {"alpha", "warmup_start"}
    assert sum(result.importance["attack_acc1"].values()) == pytest.approx(1.0)
    page = result.files["pareto_html"].read_text()
    assert "plotly" in page.lower() and "attack_acc1" in page and "test_acc" in page  # named axes, offline JS
    assert "importance" in result.files["importance_html"].read_text().lower()
    assert result.files["pareto_png"].stat().st_size > 0  # the PNG stays
    assert json.loads(result.files["recommendation"].read_text())["importance"] == result.importance


def test_recommendation_respects_the_accuracy_floor_in_every_mode():
    front = [
        {"number": 0, "state": "COMPLETE", "test_acc": 0.285, "final_acc1": 0.2, "alpha": -0.1},
        {"number": 1, "state": "COMPLETE", "test_acc": 0.25, "final_acc1": 0.1, "alpha": -0.2},
    ]
    for mode in ("pareto", "constrained"):
        config = SweepConfig(mode=mode, min_test_acc=0.5)
        assert sweep.recommend(front, config) is None  # a 2-trial sweep once recommended 0.285 at a 0.5 floor
        assert (
            "no trial reaches the accuracy floor sweep.min_test_acc = 0.5 (best test accuracy 0.285)"
            in sweep.no_recommendation(front, config)
        )
        assert recommended(front, SweepConfig(mode=mode, min_test_acc=0.26)) == 0
    assert sweep.no_recommendation([], SweepConfig()) == "no completed trial"


def test_no_warm_up_is_printed_where_none_applies():
    positive = {
        "number": 3,
        "alpha": 0.12,
        "schedule": "linear",
        "warmup_start": None,
        "warmup_end": None,
        "test_acc": 0.9,
        "final_acc1": 0.6,
        "state": "COMPLETE",
    }
    negative = {**positive, "number": 4, "alpha": -0.1, "warmup_start": 0.4, "warmup_end": 0.7}
    assert sweep.smoothing_text(positive) == "constant smoothing (no warm-up)"
    assert sweep.smoothing_text(negative) == "linear warm-up 0.4-0.7"
    result = sweep.SweepResult("s", [positive], [positive], positive, {"trials_md": Path("out/sweep/s/trials.md")})
    assert not any("warm" in line and "no warm-up" not in line for line in sweep.summary_lines(result))
    base = SmoothingConfig(alpha=0.1)
    assert not sweep.warmup_applies(base) and sweep.warmup_applies(SmoothingConfig(alpha=-0.1))
    assert sweep.warmup_applies(SmoothingConfig(alpha=0.1, negative_only=False))
    assert not sweep.warmup_applies(SmoothingConfig(alpha=-0.1, schedule="constant"))


def test_optuna_dashboard_serves_the_journal_with_named_objectives(tmp_path):
    import shutil
    import socket
    import urllib.request

    dashboard = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    if not Path(dashboard).exists():
        pytest.skip("optuna-dashboard is not installed: pip install -e '.[dev]'")
    cfg = build_config({"run": {"out_dir": str(tmp_path)}})
    journal = sweep.SweepPaths.of(cfg).journal
    study = sweep.create_or_load_study(cfg, sweep.open_storage(None, journal), seed=0)
    trial = study.ask({"alpha": optuna.distributions.FloatDistribution(-0.3, 0.3)})
    study.tell(trial, [0.8, 0.4])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [dashboard, str(journal), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # as the README says

    def study_detail() -> dict[str, Any] | None:
        assert server.poll() is None, "optuna-dashboard exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0", timeout=2) as answer:
                return json.load(answer)
        except OSError:
            return None

    try:
        detail = wait_until(study_detail, 30, "optuna-dashboard to serve the study")
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert detail["name"] == "smoothing" and detail["objective_names"] == ["test_acc", "attack_acc1"]
    assert detail["directions"] == ["maximize", "minimize"]


def test_importance_leaves_out_an_objective_that_never_varied(tmp_path):
    cfg = build_config({"run": {"out_dir": str(tmp_path)}}, {"sweep.study_name": "flat", "sweep.n_trials": 1})
    study = sweep.create_or_load_study(cfg, optuna.storages.InMemoryStorage(), seed=0)  # nothing queued
    for alpha, _start in ((-0.3, 0.1), (-0.2, 0.5), (-0.1, 0.2), (-0.05, 0.8), (-0.25, 0.3), (-0.15, 0.6)):
        trial = study.ask(
            {
                "alpha": optuna.distributions.FloatDistribution(-0.3, 0.3),
                "warmup_start": optuna.distributions.FloatDistribution(0.0, 0.9),
            }
        )
        trial.set_user_attr("test_acc", 0.125)
        trial.set_user_attr("final_acc1", 0.5 + alpha)
        study.tell(trial, [0.125, 0.5 + alpha])  # tiny targets: the same test accuracy in every trial
    result = sweep.summarize(study, cfg, sweep.SweepPaths.of(cfg))
    assert set(result.importance) == {"attack_acc1"}
    assert result.importance["attack_acc1"]["alpha"] > result.importance["attack_acc1"]["warmup_start"]
    assert result.files["importance_html"].stat().st_size > 0
    assert any(line.startswith("importance for attack_acc1 (fANOVA): alpha") for line in sweep.summary_lines(result))


def test_each_study_draws_its_own_first_alphas_and_covers_both_signs(tmp_path):
    """Every smoothing study once drew the same first alpha (one seed for all), and a 4-trial sweep could miss
    negative alpha altogether: the study name enters the seed, and the first two trials take one alpha of
    each sign."""
    firsts = {}
    for name in ("smoothing", "smoothing-2"):
        cfg = build_config({"sweep": {"study_name": name, "n_trials": 4}})
        storage = optuna.storages.InMemoryStorage()
        study = sweep.create_or_load_study(cfg, storage, sweep.worker_seed(cfg, 0, 0))
        queued = [t.system_attrs["fixed_params"]["alpha"] for t in study.get_trials(states=(TrialState.WAITING,))]
        assert len(queued) == 2 and queued[0] < 0.0 < queued[1]
        assert cfg.sweep.alpha_low <= queued[0] and queued[1] <= cfg.sweep.alpha_high
        firsts[name] = queued
        again = sweep.create_or_load_study(cfg, storage, sweep.worker_seed(cfg, 0, 0))
        assert len(again.trials) == 2  # reopening the study queues nothing more
    assert firsts["smoothing"] != firsts["smoothing-2"]
    positive_only = build_config({"sweep": {"alpha_low": 0.0, "alpha_high": 0.3}}).sweep
    assert sweep.both_signs(positive_only, 0) == []


def test_only_a_study_run_before_gets_the_reuse_hint() -> None:
    cfg = Config()
    study = sweep.create_or_load_study(cfg, optuna.storages.InMemoryStorage(), seed=0)
    assert len(study.trials) == 2 and sweep.reuse_hint(study, cfg) is None  # its own queued trials: new
    study.set_user_attr(sweep.BUDGET_ATTR, 4)
    assert sweep.reuse_hint(study, cfg) == (
        "study 'smoothing' exists in journal file with 2 trials: continuing it (pass --study-name NAME for a new study)"
    )

"""lsmia.tracking.client against a real MLflow sqlite store in a temporary folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Experiment

from lsmia.config import Config
from lsmia.models.classifiers import build_classifier
from lsmia.tracking.client import (
    NullTracker,
    Tracker,
    find_run,
    flatten_config,
    image_array,
    project_root,
    start_tracking,
    tracking_uri,
)
from tests.helpers.paths import ROOT
from tests.helpers.poll import wait_until

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating its tables takes several seconds."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    uri = f"sqlite:///{db}"
    MlflowClient(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def store(store_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MlflowClient:
    monkeypatch.chdir(tmp_path)  # mlflow's cwd-relative defaults (./mlruns) must not touch the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    return MlflowClient(store_uri)


@pytest.fixture
def experiment() -> str:
    """A fresh experiment name per test, so searches never see another test's runs."""
    return f"test-{uuid.uuid4().hex[:8]}"


def small_config() -> dict:
    config = Config().to_dict()
    config["attack"]["steps"] = 7
    config["target"]["smoothing"]["alpha"] = -0.05
    return config


def track(
    experiment: str,
    stage: str = "train_target",
    config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
) -> Tracker:
    tracker = start_tracking(
        True,
        stage,
        run_name=f"{stage}-run",
        config=small_config() if config is None else config,
        tags={"role": "target"} if tags is None else tags,
        experiment=experiment,
        parent_run_id=parent_run_id,
        system_metrics=system_metrics,
    )
    assert isinstance(tracker, Tracker)
    return tracker


def run_id_of(tracker: NullTracker) -> str:
    """The id of the tracker's MLflow run, which the test needs to have started."""
    assert tracker.run_id is not None, "the MLflow run did not start"
    return tracker.run_id


@contextlib.contextmanager
def sleeps_recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every ``time.sleep`` of this thread inside the block, recorded instead of slept (other threads sleep as
    usual): a retry loop shows up here however short its back-off."""
    sleeps: list[float] = []
    real_sleep, caller = time.sleep, threading.get_ident()

    def record(seconds: float) -> None:
        if threading.get_ident() == caller:
            sleeps.append(seconds)
        else:
            real_sleep(seconds)

    with monkeypatch.context() as patch:
        patch.setattr(time, "sleep", record)
        yield sleeps


class CallsCounted(MlflowClient):
    """The client of a tracking server, recording which of the tracker's logging calls reached it."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.calls: list[str] = []

    def log_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("log_batch")
        return super().log_batch(*args, **kwargs)

    def log_dict(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("log_dict")
        return super().log_dict(*args, **kwargs)


def experiment_named(store: MlflowClient, name: str) -> Experiment:
    experiment = store.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name}"
    return experiment


def test_default_uri_is_absolute_sqlite_under_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "params.yaml").write_text("run: {}\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert project_root() == tmp_path.resolve()
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri().startswith("sqlite:////")  # four slashes: an absolute path

    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "sub"))
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'sub').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'sub').resolve()}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri() == "http://tracking.example:5000"


def test_flatten_config_dots_keys_and_clips_long_values() -> None:
    flat = flatten_config({"attack": {"steps": 5, "betas": (0.1, 0.1)}, "note": "x" * 7000, "path": None})
    assert flat["attack.steps"] == "5"
    assert flat["attack.betas"] == "[0.1, 0.1]"
    assert flat["path"] == "None"
    assert len(flat["note"]) == 6000 and flat["note"].endswith("...")


def test_run_records_tags_params_metrics_and_config(
    store: MlflowClient, store_uri: str, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DVC_STAGE", "train_target@-0.05")
    monkeypatch.setenv("DVC_ROOT", str(ROOT))  # the lsmia git checkout
    with track(experiment, tags={"role": "target", "extra": "yes"}) as tracker:
        for step, loss in enumerate([2.0, 1.5, 1.25]):
            tracker.log_metrics({"train/loss": loss, "train/acc": 0.1 * step}, step=step)
        tracker.set_tags({"note": "done"})
    run = store.get_run(run_id_of(tracker))
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train_target-run"
    tags = run.data.tags
    assert tags["stage"] == "train_target" and tags["role"] == "target" and tags["extra"] == "yes"
    assert tags["alpha"] == "-0.05" and tags["seed"] == "0" and tags["dataset"] == "builtin"
    assert tags["dvc_stage"] == "train_target@-0.05" and tags["note"] == "done"
    assert len(tags["git_commit"]) == 40
    assert run.data.params["attack.steps"] == "7"
    assert run.data.params["target.milestones"] == "[0.75, 0.9]"
    history = store.get_metric_history(run_id_of(tracker), "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.25)]
    config_path = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path="config.json", tracking_uri=store_uri
    )
    assert json.loads(Path(config_path).read_text())["attack"]["steps"] == 7
    runs = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.stage = 'train_target'")
    assert list(runs["run_id"]) == [tracker.run_id]


def test_artifacts_live_beside_the_sqlite_store(store: MlflowClient, store_uri: str, experiment: str) -> None:
    with track(experiment) as tracker:
        pass
    location = experiment_named(store, experiment).artifact_location
    expected = Path(store_uri.removeprefix("sqlite:///")).parent / "mlartifacts" / experiment
    assert location.removeprefix("file://") == str(expected)
    assert (expected / run_id_of(tracker) / "artifacts" / "config.json").exists()


def test_logged_model_loads_back_and_is_registered(store: MlflowClient, experiment: str) -> None:
    model = build_classifier("smallresnet", num_classes=4, image_size=16, width=4)
    model.train()  # logging must export eval-mode behaviour without changing the caller's model
    name = f"target-{experiment}"
    with track(experiment) as tracker:
        model_uri = tracker.log_model(
            model,
            "target",
            input_example=torch.rand(1, 3, 16, 16),
            registered_name=name,
            registry_tags={"alpha": -0.05, "seed": 0},
        )
    assert model.training
    assert tracker.model_format == {"target": "pt2"}
    loaded = mlflow.pytorch.load_model(f"models:/{name}/1")
    images = torch.rand(5, 3, 16, 16)  # batch 5: the batch dimension stayed dynamic
    with torch.no_grad():
        assert torch.allclose(loaded(images), model.eval()(images), atol=1e-5)
    version = store.get_model_version(name, "1")
    assert version.tags == {"alpha": "-0.05", "seed": "0"}
    assert version.run_id == tracker.run_id and version.source == model_uri
    assert store.get_run(run_id_of(tracker)).data.tags[f"lsmia.registered.{name}"] == "1"


def live(store: MlflowClient, model_id: str) -> bool:
    try:
        store.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def test_model_that_cannot_be_exported_falls_back_to_pickle(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x  # data-dependent control flow: torch.export refuses it

    with pytest.warns(RuntimeWarning, match="exporting model branchy as pt2"), track(experiment) as tracker:
        model_uri = tracker.log_model(DataDependent(), "branchy", input_example=torch.ones(2, 3))
    assert tracker.model_format == {"branchy": "pickle"}
    assert store.get_run(run_id_of(tracker)).data.tags["lsmia.model_format.branchy"] == "pickle"
    run_outputs = store.get_run(run_id_of(tracker)).outputs
    assert run_outputs is not None
    outputs = run_outputs.model_outputs
    assert [f"models:/{output.model_id}" for output in outputs if live(store, output.model_id)] == [model_uri]
    assert len(outputs) == 2  # the failed pt2 attempt's model is deleted, its link to the run stays
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    loaded = mlflow.pytorch.load_model(model_uri)
    assert torch.equal(loaded(torch.ones(2, 3)), torch.full((2, 3), 2.0))


def test_images_artifacts_dicts_and_links(store: MlflowClient, experiment: str, tmp_path: Path) -> None:
    with track(experiment, stage="train_target") as target:
        pass
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.txt").write_text("ok\n")
    with track(experiment, stage="attack") as attack:
        attack.log_image(torch.rand(6, 3, 8, 8), "images/grid.png")
        attack.log_image(torch.rand(3, 8, 8), "images/single.png")
        attack.log_artifact(report / "summary.txt")
        attack.log_artifact(report, "report")
        attack.log_dict({"accuracy": 0.5}, "metrics/final.json")
        attack.link("target_training", target.run_id)
    listed = {a.path for a in store.list_artifacts(run_id_of(attack), "images")}
    assert listed == {"images/grid.png", "images/single.png"}
    assert {a.path for a in store.list_artifacts(run_id_of(attack))} >= {
        "summary.txt",
        "report",
        "metrics",
        "config.json",
    }
    tags = store.get_run(run_id_of(attack)).data.tags
    assert tags["lsmia.link.target_training"] == target.run_id
    assert f"runs/{target.run_id})" in tags["mlflow.note.content"]
    assert "[train_target-run]" in tags["mlflow.note.content"]


def test_image_array_tiles_a_batch_into_a_uint8_grid() -> None:
    grid = image_array(torch.ones(4, 3, 8, 8))
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 10, 3)  # 2x2 tiles, 2 px padding
    assert grid.dtype.name == "uint8" and grid.max() == 255


def test_find_run_returns_latest_finished_run_with_tags(store: MlflowClient, experiment: str) -> None:
    tags = {"role": "target", "alpha": "0.1"}
    with track(experiment, tags=tags) as first:
        pass
    with track(experiment, tags=tags) as second:
        pass
    with pytest.raises(ValueError), track(experiment, tags=tags):
        raise ValueError("a failed run is never linked")
    with track(experiment, tags={"role": "target", "alpha": "0.0"}):
        pass
    assert first.run_id != second.run_id
    assert find_run(experiment, tags) == second.run_id
    assert find_run(experiment, {"role": "target", "alpha": "-0.1"}) is None
    assert find_run("no-such-experiment", tags) is None


def test_stage_run_nests_under_mlflow_run_parent(
    store: MlflowClient, experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_experiment = store.create_experiment(f"{experiment}-project", artifact_location=str(tmp_path / "project"))
    parent = store.create_run(parent_experiment, run_name="mlflow-run-entry")
    monkeypatch.setenv("MLFLOW_RUN_ID", parent.info.run_id)
    with track(experiment, stage="train_target") as first:
        pass
    with track(experiment, stage="attack") as second:  # the env survives the first stage's end_run
        pass
    for child in (first, second):
        run = store.get_run(run_id_of(child))
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.experiment_id == parent_experiment  # so the UI shows the nesting
    assert store.get_run(parent.info.run_id).info.status == "RUNNING"  # mlflow run ends it, not us
    assert find_run(experiment, {"stage": "attack"}) == second.run_id  # found via the parent


def test_a_project_run_left_in_default_does_not_pull_the_stage_runs_there(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = store.create_run("0", run_name="mlflow-run-without-experiment-name")  # 'Default'
    monkeypatch.setenv("MLFLOW_RUN_ID", parent.info.run_id)
    with pytest.warns(RuntimeWarning, match="pass --experiment-name"), track(experiment, stage="train_target") as child:
        pass
    run = store.get_run(run_id_of(child))
    assert store.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert find_run(experiment, {"stage": "train_target"}) == child.run_id


def test_parent_run_id_nests_a_sweep_worker(store: MlflowClient, experiment: str) -> None:
    with (
        track(experiment, stage="sweep") as study,
        track(experiment, stage="train_target", parent_run_id=study.run_id) as worker,
    ):
        pass
    assert store.get_run(run_id_of(worker)).data.tags["mlflow.parentRunId"] == study.run_id
    assert store.get_run(run_id_of(study)).info.status == "FINISHED"


def test_block_exception_marks_run_failed_and_propagates(store: MlflowClient, experiment: str) -> None:
    with pytest.raises(RuntimeError, match="diverged"), track(experiment) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError("diverged")
    assert store.get_run(run_id_of(tracker)).info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    "uri", ["bogus-scheme://nowhere", "sqlite:////proc/no/such/dir/mlflow.db", "http://127.0.0.1:9"]
)
def test_broken_tracking_uri_only_warns(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sleeps_recorded(monkeypatch) as sleeps, start_tracking(True, "attack", "r", small_config(), {}) as tracker:
            for step in range(3):
                tracker.log_metrics({"loss": 1.0}, step=step)
                results.append(step)
            tracker.log_model(torch.nn.Linear(2, 2), "m", torch.rand(2, 2))
            tracker.log_image(torch.rand(3, 4, 4), "x.png")
            tracker.link("target_training", "abc")
    assert sleeps == []  # no retry back-off: neither the start nor any later call waits on the broken store
    assert results == [0, 1, 2]
    assert tracker.run_id is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and messages[0].startswith("MLflow tracking: starting the run failed")
    assert "\n" not in messages[0]
    with pytest.warns(RuntimeWarning, match="searching for a run failed"):
        assert find_run("lsmia", {"stage": "x"}) is None


def test_failing_log_call_warns_once_and_the_stage_goes_on(store: MlflowClient, experiment: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with track(experiment) as tracker:
            for step in range(5):
                tracker.log_metrics({"loss": "not a number"}, step=step)  # type: ignore[dict-item]
            tracker.log_metrics({"loss": 0.5}, step=5)
    failures = [w for w in caught if "logging metrics failed" in str(w.message)]
    assert len(failures) == 1
    assert [m.value for m in store.get_metric_history(run_id_of(tracker), "loss")] == [0.5]


def test_lost_server_turns_tracking_off_without_waiting(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = "http://127.0.0.1:9"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with track(experiment) as tracker:
            tracker.log_metrics({"loss": 1.0}, step=0)
            lost = CallsCounted(dead)
            tracker.uri, tracker.client = dead, lost  # the server goes away mid-run
            for step in range(1, 4):
                tracker.log_metrics({"loss": 1.0}, step=step)
            tracker.log_dict({"a": 1}, "a.json")
    # the first call finds the server gone; none after it reaches the client (each would wait on the dead server)
    assert lost.calls == ["log_batch"]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # one warning when the server goes away, one line at the end naming the run that is incomplete on the server
    assert len(messages) == 2 and "tracking is off for the rest of this run" in messages[0]
    assert f"run {tracker.run_id} (" in messages[1] and "is incomplete on http://127.0.0.1:9" in messages[1]
    assert mlflow.active_run() is None  # forgotten locally, no end_run against the dead server
    assert [m.step for m in store.get_metric_history(run_id_of(tracker), "loss")] == [0]


def test_system_metrics_are_sampled_in_a_short_run(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

    from lsmia.tracking.client import SYSTEM_METRICS_INTERVAL_S

    monkeypatch.delenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, raising=False)  # lsmia's interval, not a user's
    with track(experiment, stage="attack", system_metrics=True) as tracker:
        # lsmia's interval, not mlflow's 10 s: a run as short as 1.6 s gets a sample
        assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == SYSTEM_METRICS_INTERVAL_S < 1.6
        wait_until(
            lambda: "system/cpu_utilization_percentage" in store.get_run(run_id_of(tracker)).data.metrics,
            timeout=60,
            what="the run's first system metrics sample",
        )
    metrics = store.get_run(run_id_of(tracker)).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_system_metrics_without_psutil_only_warn(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "psutil" else real_find_spec(name, *args)
    )
    with (
        pytest.warns(RuntimeWarning, match="need psutil"),
        track(experiment, stage="attack", system_metrics=True) as tracker,
    ):
        tracker.log_metrics({"loss": 1.0})
    run = store.get_run(run_id_of(tracker))
    assert run.info.status == "FINISHED" and list(run.data.metrics) == ["loss"]


def test_disabled_tracking_gives_a_null_tracker_that_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with start_tracking(False, "attack", "r", small_config(), {}) as tracker:
        assert isinstance(tracker, NullTracker) and not isinstance(tracker, Tracker)
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_model(torch.nn.Linear(2, 2), "m", torch.rand(2, 2), registered_name="x")
        tracker.log_image(torch.rand(3, 4, 4), "x.png")
        tracker.log_artifact(tmp_path)
        tracker.log_dict({}, "d.json")
        tracker.set_tags({"a": 1})
        tracker.link("target", "abc")
        assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []  # no store, no artifacts


@pytest.mark.slow
def test_default_store_lives_in_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "stage_dir").mkdir()
    monkeypatch.chdir(tmp_path / "stage_dir")
    with start_tracking(True, "attack", "r", small_config(), {}) as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "mlartifacts" / "lsmia" / run_id_of(tracker) / "artifacts" / "config.json").exists()
    assert list((tmp_path / "stage_dir").iterdir()) == []  # nothing lands in the stage's cwd
    assert find_run("lsmia", {"stage": "attack"}) == tracker.run_id


# --- fitting the habits of MLflow users (issue 12) ---


def stage_config(tmp_path: Path) -> Config:
    from lsmia.config import build_config

    return build_config({"run": {"out_dir": str(tmp_path / "out"), "tracking": True}})


def prepared_data(cfg: Config) -> Path:
    """The study's prepared data file and its summary.json, as the data stage writes them."""
    from lsmia.paths import StudyPaths
    from lsmia.stages.data import data_summary
    from lsmia.utils import save_json
    from tests.helpers.data import make_face_data

    data = make_face_data()
    data_file = StudyPaths(cfg.run.out_dir).data_file
    data_file.parent.mkdir(parents=True)
    data.save(data_file)
    save_json(data_summary(data), data_file.with_name("summary.json"))
    return data_file


def test_experiment_is_model_development_with_a_description(store: MlflowClient, experiment: str) -> None:
    with track(experiment):
        pass
    tags = experiment_named(store, experiment).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs list
    assert "label smoothing" in tags["mlflow.note.content"]


def test_runs_name_and_tag_their_dvc_experiment_and_commit(
    store: MlflowClient, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with track(experiment) as baseline:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-frog")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with track(experiment) as queued:
        pass
    base, exp = store.get_run(run_id_of(baseline)), store.get_run(run_id_of(queued))
    assert base.info.run_name == "train_target-run" and base.data.tags["dvc_experiment"] == "workspace"
    assert exp.info.run_name == "train_target-run [bushy-frog]" and exp.data.tags["dvc_experiment"] == "bushy-frog"
    assert exp.data.tags["dvc_baseline_rev"] == "a" * 40
    for run in (base, exp):
        assert (
            "git_commit" not in run.data.tags
            or run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
        )


def test_training_and_attack_runs_log_the_prepared_data_as_dataset_input(store: MlflowClient, tmp_path: Path) -> None:
    from lsmia.tracking.stages import tracked_stage
    from lsmia.utils import file_digest

    cfg = stage_config(tmp_path)
    data_file = prepared_data(cfg)
    ids = {}
    for stage, context in (("train", "training"), ("attack", "attack"), ("report", None)):
        with tracked_stage(cfg, stage, f"{stage}-dataset-test", role="target", alpha=-0.03, seed=21) as log:
            ids[stage] = (run_id_of(log.tracker), context)
    for run_id, context in ids.values():
        run_inputs = store.get_run(run_id).inputs
        assert run_inputs is not None
        inputs = run_inputs.dataset_inputs
        if context is None:
            assert inputs == []  # the report reads no data set
            continue
        (entry,) = inputs
        assert entry.dataset.name == "test" and entry.dataset.digest == file_digest(data_file)
        assert json.loads(entry.dataset.source) == {"uri": str(data_file.resolve())}
        assert entry.dataset.profile is not None
        profile = json.loads(entry.dataset.profile)
        assert profile["num_classes"] == 4 and profile["train_images"] == 32 and profile["test_images"] == 8
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == context


@pytest.mark.slow
def test_registry_keeps_one_version_per_model_file_with_aliases_and_contract(
    store: MlflowClient, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from lsmia.tracking.stages import TARGET_MODEL, tracked_stage

    cfg = stage_config(tmp_path)
    prepared_data(cfg)
    model = build_classifier("smallresnet", num_classes=4, image_size=16, width=4)
    model_file = tmp_path / "model.pt"

    def train_run(content: bytes) -> str:
        model_file.write_bytes(content)
        result = SimpleNamespace(model=model, model_path=model_file, metrics={"test_acc": 0.5})
        with tracked_stage(cfg, "train", "train-target", role="target", alpha=-0.05, seed=0) as log:
            log.log_classifier(result, "target", -0.05, 0)
        return log.tracker.run_id

    first, again, changed = train_run(b"weights"), train_run(b"weights"), train_run(b"other weights")
    versions = store.search_model_versions(f"name = '{TARGET_MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]  # the re-run of an unchanged model added none
    assert store.get_run(again).data.tags[f"lsmia.registered.{TARGET_MODEL}"] == "1"
    assert store.get_run(again).data.tags[f"lsmia.registry_reused.{TARGET_MODEL}"] == "1"
    assert store.get_model_version(TARGET_MODEL, "1").run_id == first
    registered = store.get_registered_model(TARGET_MODEL)
    assert registered.aliases == {"alpha_-0p05_seed_0": 2, "latest-study": 2}
    assert store.get_model_version_by_alias(TARGET_MODEL, "alpha_-0p05_seed_0").run_id == changed
    assert "[N, 3, 16, 16]" in registered.description and "in [0, 1]" in registered.description
    assert "normalises" in registered.description and "Classes: c0, c1, c2, c3" in registered.description
    assert (
        store.get_model_version(TARGET_MODEL, "2").description
        == "label smoothing alpha = -0.05, seed 0, test accuracy 0.500"
    )
    source = store.get_model_version(TARGET_MODEL, "2").source
    assert source is not None
    model_info = mlflow.models.get_model_info(source)
    assert model_info.metadata is not None and model_info.metadata["classes"] == ["c0", "c1", "c2", "c3"]
    classes = mlflow.artifacts.load_dict(f"runs:/{changed}/classes.json")
    assert classes == {"classes": ["c0", "c1", "c2", "c3"]}


def test_evaluate_run_links_its_attack_and_target_runs_and_the_attack_run_gets_the_leakage(
    store: MlflowClient, tmp_path: Path
) -> None:
    from lsmia.tracking.stages import tracked_stage

    cfg = stage_config(tmp_path)
    cell = Cell(role="target", alpha=0.07, seed=13)
    with tracked_stage(cfg, "train", "train-target", **cell) as trained:
        pass
    with tracked_stage(cfg, "attack", "attack", **cell) as attacked:
        attacked.log_attack(SimpleAttack(), tmp_path, 0.07, 13)
    with tracked_stage(cfg, "evaluate", "evaluate", **cell) as evaluated:
        evaluated.log_metrics(
            {
                "alpha": 0.07,
                "seed": 13,
                "final_acc1": 0.625,
                "delta_eval": 27.0,
                "xi": 0.4,
                "test_acc": 0.85,
                "ece": 0.1,
            }
        )
    tags = store.get_run(evaluated.tracker.run_id).data.tags
    assert tags["lsmia.link.attack"] == attacked.tracker.run_id
    assert tags["lsmia.link.target_training"] == trained.tracker.run_id
    assert store.get_run(attacked.tracker.run_id).data.tags["lsmia.link.target_training"] == trained.tracker.run_id
    attack_run = store.get_run(attacked.tracker.run_id)
    assert attack_run.data.metrics["final_acc1"] == 0.625 and attack_run.data.metrics["delta_eval"] == 27.0
    assert "ece" not in attack_run.data.metrics  # headline numbers only
    assert attack_run.data.tags["lsmia.link.evaluation"] == evaluated.tracker.run_id


class Cell(TypedDict):
    """A cell of the study: the keyword arguments of ``tracked_stage`` that name it."""

    role: str
    alpha: float
    seed: int


class SimpleAttack:
    """The parts of an AttackResult that StageLog.log_attack reads."""

    final_targets = torch.zeros(2, dtype=torch.long)
    meta: ClassVar[dict] = {}


def test_the_tracked_config_never_holds_a_storage_password(
    store: MlflowClient, store_uri: str, experiment: str
) -> None:
    config = small_config()
    config["sweep"]["storage"] = "postgresql://lsmia:s3cret@127.0.0.1:5432/optuna"
    with track(experiment, config=config) as tracker:
        pass
    run = store.get_run(run_id_of(tracker))
    assert run.data.params["sweep.storage"] == "postgresql://lsmia:***@127.0.0.1:5432/optuna"
    config_path = mlflow.artifacts.download_artifacts(
        run_id=tracker.run_id, artifact_path="config.json", tracking_uri=store_uri
    )
    assert "s3cret" not in Path(config_path).read_text() and "s3cret" not in json.dumps(run.data.params)


def test_a_copied_workspace_does_not_continue_the_original_s_live_run(
    store: MlflowClient, experiment: str, tmp_path: Path
) -> None:
    from lsmia.tracking.client import claim_orphan, remember_run

    live = store.create_run(store.create_experiment(experiment), run_name="training, still running")
    config = small_config()
    original = tmp_path / "original" / "out" / "models" / "target"
    remember_run(original / ".mlflow-run.json", live.info.run_id, config)
    copy = tmp_path / "copy" / "out" / "models" / "target"
    shutil.copytree(original, copy)
    with pytest.warns(RuntimeWarning, match="this workspace is a copy, or moved"):
        assert claim_orphan(copy / ".mlflow-run.json", config, resumable=True) == (None, None)
    assert store.get_run(live.info.run_id).info.status == "RUNNING"  # left alone: its own stage may be live
    assert claim_orphan(original / ".mlflow-run.json", config, resumable=True) == (live.info.run_id, None)


def test_a_stage_run_s_params_are_what_shapes_its_output() -> None:
    from lsmia.tracking.stages import shaping_params

    cfg = Config()

    def shaped(stage: str) -> dict[str, str]:
        params = shaping_params(cfg, stage, "target")
        assert params is not None, f"{stage} is a graph stage: only what shapes its output"
        return flatten_config(params)

    target = shaped("train")
    assert "target.smoothing.alpha" in target and "data.num_identities" in target and "run.seed" in target
    assert not any(key.startswith(("attack.", "eval_model.", "sweep.", "run.device")) for key in target)
    attack = shaped("attack")
    assert {"attack.steps", "prior.kind", "target.epochs"} <= set(attack) and "eval_model.epochs" not in attack
    evaluate = shaped("evaluate")
    assert {"metrics.attribute_epochs", "eval_model.epochs", "attack.steps"} <= set(evaluate)
    assert len(target) < len(attack) < len(evaluate) < len(flatten_config(cfg.to_dict()))
    assert shaping_params(cfg, "report", "report") is None  # not a graph stage with inputs: every param

"""The one module that talks to MLflow.

lsmia's core (training, attack, metrics) never imports mlflow; the CLI wraps each stage in a
``Tracker`` from ``start_tracking``. Tracking is best effort: a failing tracking call warns once
and the stage goes on, so computed results are never lost to a tracking problem.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import math
import os
import re
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch

DEFAULT_EXPERIMENT = "lsmia"
SYSTEM_METRICS_INTERVAL_S = 1.0  # mlflow publishes a sample only after one interval has passed
LINK_TAG_PREFIX = "lsmia.link."
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_VALUE = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_KEY = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
SERVER_CHECK_TIMEOUT_S = 5.0
# mlflow retries a failed HTTP call 7 times with a back-off factor of 2: about 4 minutes per call against a server
# that went away. 3 retries with factor 1 (about 10 s) ride out a restart; set MLFLOW_HTTP_REQUEST_* to change them.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"  # MLflow 3's UI then opens on the runs list, not the GenAI overview
EXPERIMENT_DESCRIPTION = (
    "lsmia: label smoothing vs. model inversion attacks. One run per stage (data, prior, train, attack, evaluate, "
    "report); filter with the tags stage, alpha, seed and dvc_experiment (the DVC experiment, or workspace). Targets "
    "are registered as lsmia-target with aliases alpha_<α>_seed_<seed> and latest-study; the evaluate run of a target "
    "links to its attack and training runs (tags lsmia.link.*)."
)
DEFAULT_MLFLOW_EXPERIMENT_ID = "0"  # MLflow's 'Default', where `mlflow run` without --experiment-name logs
WORKSPACE = "workspace"  # the dvc_experiment tag of runs outside `dvc exp run`
DIGEST_TAG = "model_digest"  # registry version tag: sha256 of the model file, so an unchanged model is not added twice


# ---------------------------------------------------------------- locations


def project_root() -> Path:
    """DVC_ROOT when DVC runs the stage, else the nearest parent of cwd holding params.yaml or .git."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "params.yaml").exists() or (folder / ".git").exists():
            return folder
    return cwd


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a server), else an absolute sqlite store in the project root.

    A relative sqlite path is taken from the project root, not from the cwd a stage runs in.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{project_root() / uri.removeprefix('sqlite:///')}"
    return uri


def _sqlite_artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts beside a sqlite store (mlflow's default is ./mlruns of whatever cwd the stage has)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///"))
    if not db_path.is_absolute():
        return None
    return str(db_path.parent / "mlartifacts" / re.sub(r"[^A-Za-z0-9._-]", "_", experiment))


def _check_server(uri: str) -> None:
    """Fail fast on an unreachable server instead of sitting through mlflow's retry back-off."""
    if uri.startswith(("http://", "https://")):
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT_S).close()


# ---------------------------------------------------------------- params and tags


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"attack": {"steps": 5}}`` -> ``{"attack.steps": "5"}``; lists become JSON strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[_clip(name, MAX_KEY)] = _clip(_param_text(value), MAX_PARAM_VALUE)
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    return str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def git_commit(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def dvc_experiment() -> str:
    """The DVC experiment a stage runs in (``dvc exp run`` and queued runs set DVC_EXP_NAME), else "workspace"."""
    return os.environ.get("DVC_EXP_NAME") or WORKSPACE


def readable_run_name(run_name: str) -> str:
    """``run_name``, with the DVC experiment appended inside ``dvc exp run``, so its runs stand apart in the list."""
    experiment = dvc_experiment()
    return run_name if experiment == WORKSPACE else f"{run_name} [{experiment}]"


def standard_tags(stage: str, config: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, str]:
    """stage, role, alpha, seed, dataset, git commit, dvc_stage and dvc_experiment; the caller's tags win."""
    commit = git_commit(project_root())
    derived = {
        "stage": stage,
        "role": stage,
        "alpha": _lookup(config, "target.smoothing.alpha"),
        "seed": _lookup(config, "run.seed"),
        "dataset": _lookup(config, "data.source"),
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "dvc_stage": os.environ.get("DVC_STAGE") or stage,
        "dvc_experiment": dvc_experiment(),
        "dvc_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
    }
    merged = {key: value for key, value in derived.items() if value is not None}
    merged.update(tags)
    return {_clip(str(k), MAX_KEY): _clip(str(v), MAX_TAG_VALUE) for k, v in merged.items()}


# ---------------------------------------------------------------- images and models


def image_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A [3,H,W] / [H,W,3] image or an [N,3,H,W] batch (tiled into a grid) as uint8 [H,W,C]."""
    tensor = torch.as_tensor(image).detach().cpu()
    if tensor.dim() == 4:
        from torchvision.utils import make_grid

        tensor = make_grid(
            tensor.float() / 255 if tensor.dtype == torch.uint8 else tensor,
            nrow=max(1, math.ceil(math.sqrt(tensor.shape[0]))),
            padding=2,
        )
    if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    if tensor.dtype != torch.uint8:
        tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return tensor.numpy()


def _pip_requirements() -> list[str]:
    """Explicit requirements: mlflow's inference imports the model in a subprocess (about 10 s)."""
    return [f"torch=={metadata.version('torch')}", f"mlflow=={metadata.version('mlflow')}"]


def _export_copy(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.nn.Module, np.ndarray]:
    """An eval-mode CPU copy (export bakes in train-mode BatchNorm and the device) and its example.

    torch.export fixes a size-1 dimension, so a one-image example is repeated to keep the
    batch dimension dynamic in the logged model.
    """
    exported = copy.deepcopy(model).cpu().eval()
    example = example.detach().cpu()
    if example.dim() > 0 and example.shape[0] == 1:
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    return exported, example.numpy()


def _lsmia_code_paths(model: torch.nn.Module) -> list[str] | None:
    """A pickled model needs its class importable at load time: ship the lsmia package with it."""
    if not type(model).__module__.startswith("lsmia"):
        return None
    return [str(Path(__file__).resolve().parent)]


# ---------------------------------------------------------------- trackers


class NullTracker:
    """The Tracker interface doing nothing: tracking off, and the core's tests."""

    @property
    def run_id(self) -> str | None:
        return None

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        return False

    def end(self, status: str = "FINISHED") -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_model(
        self,
        model: torch.nn.Module,
        name: str,
        input_example: torch.Tensor,
        registered_name: str | None = None,
        registry_tags: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        version_description: str | None = None,
    ) -> str | None:
        return None

    def log_dataset(self, name: str, path: str | Path, digest: str, profile: Mapping[str, Any], context: str) -> None:
        pass

    def annotate_run(self, run_id: str | None, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        pass

    def log_image(self, image: str | Path | torch.Tensor | np.ndarray, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def link(self, name: str, run_id: str | None) -> None:
        pass


class Tracker(NullTracker):
    """One MLflow run for one stage run. Every method is best effort: it warns once and goes on."""

    def __init__(
        self,
        stage: str,
        run_name: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
        experiment: str = DEFAULT_EXPERIMENT,
        parent_run_id: str | None = None,
        system_metrics: bool = False,
        resume_run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage, self.experiment = stage, experiment
        self._run_id: str | None = None
        self._active = False  # logging calls go through
        self._open = False  # the run was started and not yet ended
        self._server_lost = False
        self.model_format: dict[str, str] = {}  # logged model name -> "pt2" or "pickle"
        self._warned: set[str] = set()
        self._links: list[str] = []
        self._outer_run_env = os.environ.get("MLFLOW_RUN_ID")
        try:
            if resume_run_id:
                self._resume(resume_run_id, system_metrics)
                return  # a resumed run keeps the params it was created with (mlflow params are immutable)
            self._start(run_name, config, tags, parent_run_id, system_metrics)
        except Exception as err:
            self._warn("starting the run", err)
            self._restore_run_env()
            if self._run_id is not None:  # created but not started: do not leave it RUNNING
                with contextlib.suppress(Exception):
                    self._terminate("FAILED")
                self._run_id = None
            return
        try:
            self._log_config(config, config if params is None else params)
        except Exception as err:
            self._failed("logging the config", err)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (kept after the run ended); None when the run could not be started."""
        return self._run_id

    # -- lifecycle

    def _start(
        self,
        run_name: str,
        config: Mapping[str, Any],
        tags: Mapping[str, str],
        parent_run_id: str | None,
        system_metrics: bool,
    ) -> None:
        import mlflow

        self.uri = tracking_uri()
        _check_server(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient(self.uri)
        parent = self._parent_run(parent_run_id or self._outer_run_env)
        experiment_id = self._experiment_of(parent)
        run_tags = standard_tags(self.stage, config, tags)
        if parent:
            run_tags[PARENT_TAG] = parent.info.run_id
        run = self.client.create_run(
            experiment_id, tags=_with_context_tags(run_tags), run_name=readable_run_name(run_name)
        )
        self._run_id, self.experiment_id = run.info.run_id, experiment_id
        self._describe_experiment(experiment_id)
        # nested=True: a run already active in this process (e.g. a study parent) must not block ours
        mlflow.start_run(run_id=self._run_id, nested=True, log_system_metrics=_system_metrics_ready(system_metrics))
        self._active = self._open = True

    def _resume(self, run_id: str, system_metrics: bool) -> None:
        """Reopen an existing run (e.g. a sweep's parent run when the sweep is resumed)."""
        import mlflow

        self.uri = tracking_uri()
        _check_server(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = mlflow.MlflowClient(self.uri)
        run = self.client.get_run(run_id)
        mlflow.start_run(run_id=run_id, nested=True, log_system_metrics=_system_metrics_ready(system_metrics))
        # set only once reopened: a failed resume must not mark someone else's run FAILED
        self._run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self._active = self._open = True

    def _experiment_of(self, parent: Any) -> str:
        """The parent's experiment (so the UI shows the nesting), unless the parent sits in MLflow's 'Default'
        because `mlflow run` was not given an experiment: then the configured one, with a hint."""
        if parent is None:
            return self._experiment_id()
        if parent.info.experiment_id == DEFAULT_MLFLOW_EXPERIMENT_ID and self.experiment != "Default":
            warnings.warn(
                f"MLflow tracking: the project run {parent.info.run_id} is in experiment 'Default', so this "
                f"stage's run goes to '{self.experiment}', tagged with its parent: pass --experiment-name "
                f"{self.experiment} to `mlflow run` to see them nested",
                RuntimeWarning,
                stacklevel=4,
            )
            return self._experiment_id()
        return str(parent.info.experiment_id)

    def _parent_run(self, parent_id: str | None) -> Any:
        """The parent run, or None (with a warning) when it does not exist in this store."""
        if not parent_id:
            return None
        try:
            return self.client.get_run(parent_id)
        except Exception as err:
            self._warn(f"finding parent run {parent_id} (logging a top-level run)", err)
            return None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            location = _sqlite_artifact_location(self.uri, self.experiment)
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # a parallel worker created it first
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _describe_experiment(self, experiment_id: str) -> None:
        """Mark the experiment as model development (MLflow 3's UI opens on its runs) and describe it, once."""
        try:
            tags = self.client.get_experiment(experiment_id).tags
            if EXPERIMENT_KIND_TAG not in tags:
                self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
            if NOTE_TAG not in tags:
                self.client.set_experiment_tag(experiment_id, NOTE_TAG, EXPERIMENT_DESCRIPTION)
        except Exception as err:
            self._warn("describing the experiment", err)

    def _log_config(self, config: Mapping[str, Any], shown: Mapping[str, Any]) -> None:
        """``shown`` as the run's params (what its output depends on), the whole ``config`` as config.json."""
        from mlflow.entities import Param

        from lsmia.infra.redaction import redact_tree

        config = redact_tree(config)  # e.g. sweep.storage's database password
        params = [Param(key, value) for key, value in flatten_config(redact_tree(shown)).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self._active_run_id, params=params[start : start + BATCH])
        self.client.log_dict(self._active_run_id, json.loads(json.dumps(config, default=str)), "config.json")

    @property
    def _active_run_id(self) -> str:
        """The id of the run this tracker logs to; only called while one is open."""
        if self._run_id is None:
            raise RuntimeError("no MLflow run is open: the tracker logs only between start and end")
        return self._run_id

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        return False

    def end(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED); stops system metrics and flushes them."""
        if not self._open:
            return
        self._active = self._open = False
        try:
            if self._server_lost:
                self._forget_run()
                warnings.warn(
                    f"MLflow tracking: run {self._run_id} ({self.stage}) is incomplete on {self.uri}: the server went "
                    "away mid-run, what followed was not logged (the stage's outputs are on disk)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            else:
                self._terminate(status)
        except Exception as err:
            self._warn("ending the run", err)
        finally:
            self._restore_run_env()

    def _terminate(self, status: str) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self._run_id:
            mlflow.end_run(status)
        else:
            self.client.set_terminated(self._active_run_id, status)

    def _forget_run(self) -> None:
        """Drop the run from mlflow's in-process state without calling the lost server.

        mlflow.end_run would wait out the HTTP retries (minutes), here and again at exit. This
        reaches into mlflow.tracking.fluent internals, so any surprise there is ignored.
        """
        from mlflow.tracking import fluent

        with contextlib.suppress(Exception):
            monitor = fluent.run_id_to_system_metrics_monitor.pop(self._run_id, None)
            if monitor is not None:
                monitor._shutdown_event.set()
            stack = fluent._active_run_stack.get()
            stack[:] = [run for run in stack if run.info.run_id != self._run_id]

    def _restore_run_env(self) -> None:
        # mlflow.end_run unsets MLFLOW_RUN_ID; later stages in this process must still nest under it
        if self._outer_run_env is not None:
            os.environ["MLFLOW_RUN_ID"] = self._outer_run_env

    def _failed(self, action: str, err: BaseException) -> None:
        """Warn once per action; stop tracking if the server went away (each call would wait out retries)."""
        if self._active and self.uri.startswith(("http://", "https://")):
            try:
                _check_server(self.uri)
            except Exception:
                self._active, self._server_lost = False, True
                self._warn(action, err, then="the server is unreachable: tracking is off for the rest of this run")
                return
        self._warn(action, err)

    def _warn(self, action: str, err: BaseException, then: str = "the stage goes on") -> None:
        if action in self._warned:
            return
        self._warned.add(action)
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"MLflow tracking: {action} failed ({type(err).__name__}: {reason}); {then}, "
            "results are still written to disk",
            RuntimeWarning,
            stacklevel=3,
        )

    # -- logging

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._active:
            return
        try:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
            for start in range(0, len(batch), 1000):
                self.client.log_batch(self._active_run_id, metrics=batch[start : start + 1000])
        except Exception as err:
            self._failed("logging metrics", err)

    def log_model(
        self,
        model: torch.nn.Module,
        name: str,
        input_example: torch.Tensor,
        registered_name: str | None = None,
        registry_tags: Mapping[str, Any] | None = None,
        aliases: Sequence[str] = (),
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        version_description: str | None = None,
    ) -> str | None:
        """Log an eval-mode CPU copy (pt2, or pickle when torch.export fails); optionally register it.

        ``metadata`` goes into the model's MLmodel file (e.g. the class list). Registering: a version whose
        ``DIGEST_TAG`` equals the one in ``registry_tags`` is reused instead of adding a duplicate; ``aliases``
        then point at the new or reused version, ``description`` describes the registered model and
        ``version_description`` a new version.
        Returns the model URI (``models:/<model id>``), or None when logging failed.
        """
        if not self._active:
            return None
        try:
            model_uri = self._log_model(model, name, input_example, metadata)
            if registered_name:
                self._register(
                    model_uri, registered_name, registry_tags or {}, aliases, description, version_description
                )
            return model_uri
        except Exception as err:
            self._failed(f"logging model {name}", err)
            return None

    def _log_model(
        self, model: torch.nn.Module, name: str, input_example: torch.Tensor, metadata: Mapping[str, Any] | None = None
    ) -> str:
        from mlflow.models import infer_signature

        exported, example = _export_copy(model, input_example)
        with torch.no_grad():
            signature = infer_signature(example, exported(torch.from_numpy(example)).numpy())
        common = dict(
            name=name,
            input_example=example,
            signature=signature,
            run_id=self._run_id,
            pip_requirements=_pip_requirements(),
            metadata=dict(metadata) if metadata else None,
        )
        try:
            info = self._log_model_as("pt2", exported, **common)
            self.model_format[name] = "pt2"
        except Exception as err:
            self._warn(
                f"exporting model {name} as pt2 (logged with pickle instead; loading it needs "
                "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true)",
                err,
            )
            info = self._log_model_as("pickle", exported, code_paths=_lsmia_code_paths(model), **common)
            self.model_format[name] = "pickle"
        self.client.set_tag(self._active_run_id, f"lsmia.model_format.{name}", self.model_format[name])
        return info.model_uri

    def _log_model_as(self, serialization_format: str, model: torch.nn.Module, **options: Any) -> Any:
        """mlflow.pytorch.log_model; a failed attempt's half-created logged model is deleted."""
        import mlflow
        import mlflow.pytorch

        previous = _last_logged_model_id()
        try:
            return mlflow.pytorch.log_model(model, serialization_format=serialization_format, **options)
        except Exception:
            partial = _last_logged_model_id()
            if partial is not None and partial != previous:
                with contextlib.suppress(Exception):
                    self.client.delete_logged_model(partial)
            raise

    def _register(
        self,
        model_uri: str,
        registered_name: str,
        registry_tags: Mapping[str, Any],
        aliases: Sequence[str] = (),
        description: str | None = None,
        version_description: str | None = None,
    ) -> None:
        import mlflow

        tags = {str(key): str(value) for key, value in registry_tags.items()}
        version = self._version_with_digest(registered_name, tags.get(DIGEST_TAG))
        if version is None:
            version = mlflow.register_model(model_uri, registered_name, tags=tags)
            if version_description:
                self.client.update_model_version(registered_name, str(version.version), description=version_description)
        else:
            self.client.set_tag(self._active_run_id, f"lsmia.registry_reused.{registered_name}", str(version.version))
        for alias in aliases:
            self.client.set_registered_model_alias(registered_name, alias, str(version.version))
        if description is not None:
            self.client.update_registered_model(registered_name, description=description)
        self.client.set_tag(self._active_run_id, f"lsmia.registered.{registered_name}", str(version.version))

    def _version_with_digest(self, registered_name: str, digest: str | None) -> Any:
        """The newest registered version of the same model file (same digest tag), or None."""
        if not digest:
            return None
        versions = self.client.search_model_versions(f"name = '{_quote(registered_name)}'")
        same = [v for v in versions if v.tags.get(DIGEST_TAG) == digest]
        return max(same, key=lambda v: int(v.version)) if same else None

    def log_dataset(self, name: str, path: str | Path, digest: str, profile: Mapping[str, Any], context: str) -> None:
        """A run input (the UI's Datasets column): the prepared data file, its digest and counts (``profile``)."""
        if not self._active:
            return
        try:
            from mlflow.entities import DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            dataset = _file_dataset(name, Path(path), digest, profile)
            self.client.log_inputs(
                self._active_run_id,
                datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])],
            )
        except Exception as err:
            self._failed(f"logging data set {name}", err)

    def annotate_run(self, run_id: str | None, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        """Add metrics and tags to another (finished) run, e.g. the evaluation's headline numbers to its attack run."""
        if not self._active or not run_id:
            return
        try:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                tags=[RunTag(str(k), _clip(str(v), MAX_TAG_VALUE)) for k, v in tags.items()],
            )
        except Exception as err:
            self._failed(f"annotating run {run_id}", err)

    def log_image(self, image: str | Path | torch.Tensor | np.ndarray, artifact_file: str) -> None:
        """An image file, an image tensor or a batch of images (tiled into a grid)."""
        if not self._active:
            return
        try:
            if isinstance(image, (str, Path)):
                from PIL import Image

                with Image.open(image) as opened:
                    self.client.log_image(self._active_run_id, opened.copy(), artifact_file=artifact_file)
            else:
                self.client.log_image(self._active_run_id, image_array(image), artifact_file=artifact_file)
        except Exception as err:
            self._failed(f"logging image {artifact_file}", err)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or every file in a folder."""
        if not self._active:
            return
        try:
            if Path(path).is_dir():
                self.client.log_artifacts(self._active_run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self._active_run_id, str(path), artifact_path)
        except Exception as err:
            self._failed(f"logging artifact {path}", err)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if not self._active:
            return
        try:
            self.client.log_dict(self._active_run_id, obj, artifact_file)
        except Exception as err:
            self._failed(f"logging {artifact_file}", err)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self._active:
            return
        try:
            from mlflow.entities import RunTag

            batch = [RunTag(_clip(str(k), MAX_KEY), _clip(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
            for start in range(0, len(batch), BATCH):
                self.client.log_batch(self._active_run_id, tags=batch[start : start + BATCH])
        except Exception as err:
            self._failed("setting tags", err)

    def link(self, name: str, run_id: str | None) -> None:
        """Record a related run: tag ``lsmia.link.<name>`` and a markdown link in the run description."""
        if not self._active or not run_id:
            return
        try:
            self.client.set_tag(self._active_run_id, f"{LINK_TAG_PREFIX}{name}", run_id)
            self._links.append(f"- {name}: [{self._run_label(run_id)}]({self._run_url(run_id)})")
            self.client.set_tag(self._active_run_id, NOTE_TAG, "Related runs:\n" + "\n".join(self._links))
        except Exception as err:
            self._failed(f"linking run {name}", err)

    def _run_label(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.run_name or run_id

    def _run_url(self, run_id: str) -> str:
        experiment_id = self.client.get_run(run_id).info.experiment_id
        fragment = f"#/experiments/{experiment_id}/runs/{run_id}"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{fragment}"
        return fragment


def _file_dataset(name: str, path: Path, digest: str, profile: Mapping[str, Any]) -> Any:
    """An mlflow.data Dataset that describes a file on disk (source, digest, profile) without reading it."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]  # registered at import

    class FileDataset(MetaDataset):
        @property
        def profile(self) -> dict[str, Any]:
            return dict(profile)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile, sort_keys=True, default=str)}

    return FileDataset(LocalArtifactDatasetSource(str(path.resolve())), name=name, digest=digest)


def _last_logged_model_id() -> str | None:
    """The model id mlflow last created in this thread; None when there is none (or it was deleted)."""
    import mlflow

    try:
        model = mlflow.last_logged_model()
    except Exception:
        return None
    return model.model_id if model is not None else None


def _with_context_tags(tags: dict[str, str]) -> dict[str, str]:
    """Add mlflow's usual source/user tags, as mlflow.start_run does for runs it creates itself."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:
        return tags
    return resolve_tags(tags)


def _system_metrics_ready(wanted: bool) -> bool:
    """True when mlflow can sample CPU/memory (psutil); warns about what is missing."""
    if not wanted:
        return False
    if importlib.util.find_spec("psutil") is None:
        warnings.warn(
            "MLflow system metrics need psutil: pip install psutil (run goes on without them)",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    if torch.cuda.is_available() and importlib.util.find_spec("pynvml") is None:
        warnings.warn(
            "MLflow GPU metrics need nvidia-ml-py: pip install nvidia-ml-py (CPU/memory still logged)",
            RuntimeWarning,
            stacklevel=4,
        )
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        import mlflow

        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    return True


def quiet_mlflow_logs() -> None:
    """MLflow's INFO lines (table creation, system-metrics monitor) would drown the CLI's own output."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    for key, value in HTTP_RETRIES.items():  # read at each request: a lost server is noticed in seconds
        os.environ.setdefault(key, value)
    import mlflow  # noqa: F401  (mlflow configures its logger on import; set the level after that)

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def start_tracking(
    enabled: bool,
    stage: str,
    run_name: str,
    config: Mapping[str, Any],
    tags: Mapping[str, str],
    experiment: str = DEFAULT_EXPERIMENT,
    parent_run_id: str | None = None,
    system_metrics: bool = False,
    resume_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Tracker | NullTracker:
    """Start one MLflow run for a stage run (use it as a context manager), or a NullTracker when off.

    Inside ``mlflow run`` (MLFLOW_RUN_ID) or with ``parent_run_id`` the run is a nested child,
    created in its parent's experiment so the MLflow UI shows the nesting. ``resume_run_id`` reopens
    that existing run instead of creating one. ``params``: the part of ``config`` logged as the run's params
    (default: all of it); the whole config is always the run's ``config.json``.
    """
    if not enabled:
        return NullTracker()
    quiet_mlflow_logs()
    return Tracker(
        stage,
        run_name,
        config,
        tags,
        experiment=experiment,
        parent_run_id=parent_run_id,
        system_metrics=system_metrics,
        resume_run_id=resume_run_id,
        params=params,
    )


def find_run(experiment: str, tags: Mapping[str, Any], parent_run_id: str | None = None) -> str | None:
    """The latest FINISHED run carrying all ``tags``, in ``experiment`` or the parent run's experiment.

    The parent (``parent_run_id`` or MLFLOW_RUN_ID) matters inside ``mlflow run``, where stage runs
    are created in the parent's experiment.
    """
    try:
        import mlflow

        _check_server(tracking_uri())
        client = mlflow.MlflowClient(tracking_uri())
        experiment_ids = _search_experiments(client, experiment, parent_run_id or os.environ.get("MLFLOW_RUN_ID"))
        if not experiment_ids:
            return None
        clauses = [f"tags.`{key}` = '{_quote(str(value))}'" for key, value in tags.items()]
        clauses.append("attributes.status = 'FINISHED'")
        runs = client.search_runs(
            experiment_ids, " and ".join(clauses), order_by=["attributes.start_time DESC"], max_results=1
        )
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"MLflow tracking: searching for a run failed ({type(err).__name__}: {reason}); no run is linked",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return runs[0].info.run_id if runs else None


def _search_experiments(client: Any, experiment: str, parent_id: str | None) -> list[str]:
    found = client.get_experiment_by_name(experiment)
    ids = [found.experiment_id] if found is not None else []
    if parent_id:
        try:
            parent_experiment = client.get_run(parent_id).info.experiment_id
        except Exception:
            parent_experiment = None
        if parent_experiment and parent_experiment not in ids:
            ids.append(parent_experiment)
    return ids


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# ---------------------------------------------------------------- runs of killed stages

RUN_MARKER = ".mlflow-run.json"  # beside a stage's checkpoint while its run is open; left behind only by a kill
INTERRUPTED_LINK = "interrupted_run"
RESUMED_TAG = "lsmia.resumed"


def config_digest(config: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_marker(marker: Path) -> dict[str, str] | None:
    try:
        record = json.loads(Path(marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def remember_run(marker: Path, run_id: str | None, config: Mapping[str, Any]) -> None:
    """Store the open run's id beside the stage's checkpoint, so a resume after a kill can find it."""
    if run_id is None:
        return
    from lsmia.errors import LsmiaError
    from lsmia.utils import atomic_path

    record = {"run_id": run_id, "config": config_digest(config), "where": _marker_place(Path(marker))}
    with contextlib.suppress(OSError, LsmiaError):
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(marker) as tmp:  # no temporary left by a kill
            tmp.write_text(json.dumps(record), encoding="utf-8")


def _marker_place(marker: Path) -> str:
    """The machine and folder a marker was written for: a copy of the workspace is somewhere else."""
    import socket

    return f"{socket.gethostname()}:{Path(marker).parent.resolve()}"


def forget_run(marker: Path) -> None:
    """The run ended in this process (finished, failed or interrupted): nothing is left orphaned."""
    with contextlib.suppress(OSError):
        Path(marker).unlink(missing_ok=True)


def claim_orphan(marker: Path, config: Mapping[str, Any], resumable: bool) -> tuple[str | None, str | None]:
    """(run to continue, orphan to link) for the run a killed (RUNNING) or interrupted (KILLED) stage left, as
    named by ``marker``.

    With ``resumable`` (the stage resumes from its checkpoint) and the same config, the orphan is
    continued, so one run holds every epoch; otherwise it is marked FAILED and the new run links to it.
    (None, None) without a marker, when its run ended normally, or when MLflow cannot be reached.
    """
    record = _read_marker(marker)
    if record is None:
        return None, None
    run_id = record["run_id"]
    if record.get("where", _marker_place(marker)) != _marker_place(marker):
        warnings.warn(
            f"MLflow tracking: the run {run_id} named in {marker} belongs to {record['where']} (this workspace is "
            "a copy, or moved); a new run is started and that one is left as it is",
            RuntimeWarning,
            stacklevel=2,
        )
        return None, None
    try:
        import mlflow

        quiet_mlflow_logs()
        _check_server(tracking_uri())
        client = mlflow.MlflowClient(tracking_uri())
        status = client.get_run(run_id).info.status  # RUNNING: killed; KILLED: interrupted (Ctrl-C)
        if status not in ("RUNNING", "KILLED"):
            return None, None
        if resumable and record.get("config") == config_digest(config):
            return run_id, None
        if status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
        return None, run_id
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"MLflow tracking: checking the run {run_id} a killed stage left failed "
            f"({type(err).__name__}: {reason}); a new run is started",
            RuntimeWarning,
            stacklevel=2,
        )
        return None, None

"""What each stage records in MLflow, expressed through lsmia.tracking.client (the only module that imports mlflow).

With ``run.tracking`` off every call is a no-op, so the core runs without MLflow.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from lsmia.config import Config
from lsmia.errors import LsmiaError
from lsmia.infra.threads import describe as describe_threads
from lsmia.paths import StudyPaths
from lsmia.reporting import metric_registry
from lsmia.tracking.client import DIGEST_TAG, LINK_TAG_PREFIX, RUN_MARKER

# what a stage does with the prepared data (the MLflow dataset input's context); stages not listed read none
DATA_CONTEXT = {
    "prior": "training",
    "train": "training",
    "attributes": "training",
    "attack": "attack",
    "evaluate": "evaluation",
}
TARGET_MODEL = "lsmia-target"
LATEST_ALIAS = "latest-study"
LISTED_CLASSES = 50  # the registered model's description names at most this many classes


def model_alias(alpha: float, seed: int) -> str:
    """The registry alias of one target: ``alpha_-0p05_seed_0`` (MLflow aliases allow only letters, digits, _, -)."""
    return f"alpha_{alpha:g}_seed_{seed}".replace(".", "p")


def input_contract(image_size: int, classes: list[str]) -> str:
    return (
        f"Input: float32 images `[N, 3, {image_size}, {image_size}]` with values in [0, 1]; the model normalises "
        f"them itself (no mean/std step before it). Output: logits `[N, {len(classes)}]` over the class list, "
        "in its order (MLmodel metadata `classes` of each version; `classes.json` in its run)."
    )


def registry_description(image_size: int, classes: list[str]) -> str:
    """The registered target model's description: what a version is, its input contract and the class list."""
    shown = ", ".join(classes[:LISTED_CLASSES])
    if len(classes) > LISTED_CLASSES:
        shown += f", ... ({len(classes)} in all)"
    return (
        "Target classifiers of the lsmia study: one version per label-smoothing factor and seed (version tags "
        f"`alpha`, `seed`, `{DIGEST_TAG}`; aliases `alpha_<alpha>_seed_<seed>` with p for the decimal point, "
        f"e.g. `alpha_-0p05_seed_0`, and `{LATEST_ALIAS}`, the target trained last).\n\n"
        f"{input_contract(image_size, classes)}\n\nClasses: {shown}"
    )


SETTINGS_NOT_METRICS = frozenset({"alpha", "seed", "epochs"})


@dataclass(frozen=True)
class DataFacts:
    """What the run inputs record of a prepared data file: its name, digest, counts and class list."""

    name: str
    digest: str
    profile: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


def data_facts(data_file: Path) -> DataFacts:
    """Facts of ``data_file`` (cached while the file is unchanged); counts from its summary.json when beside it."""
    stat = Path(data_file).stat()
    return _data_facts(str(Path(data_file).resolve()), stat.st_mtime_ns, stat.st_size)


def _class_names(path: str) -> list[str]:
    """The data set's identity names, read lazily (mmap); a damaged, empty or foreign file gets the stage's own
    checked loader and its one-line error, never a traceback from here."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged or empty: the checked loader below names it
        obj = None
    names = obj.get("class_names") if isinstance(obj, dict) else None
    if isinstance(names, list):
        return [str(name) for name in names]
    from lsmia.data.base import FaceData

    return list(FaceData.load(path).class_names)  # raises the stage's LsmiaError for a bad file


def _summary_beside(path: str) -> dict[str, Any]:
    """The summary.json 'lsmia data' writes beside its data file; {} when there is none."""
    summary_file = Path(path).with_name("summary.json")
    if not summary_file.is_file():
        return {}
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except ValueError:  # not UTF-8 or not JSON
        summary = None
    if not isinstance(summary, dict):
        raise LsmiaError(
            f"{summary_file} is not the data summary 'lsmia data' writes (a JSON object): re-run 'lsmia data'"
        )
    return summary


@lru_cache(maxsize=8)
def _data_facts(path: str, mtime_ns: int, size: int) -> DataFacts:
    from lsmia.utils import file_digest

    summary = _summary_beside(path)
    classes = _class_names(path)
    keys = ("num_classes", "image_size", "train_images", "test_images", "public_images")
    profile = {"file": Path(path).name, "bytes": size, **{k: summary[k] for k in keys if k in summary}}
    return DataFacts(str(summary.get("source") or Path(path).stem), file_digest(path), profile, classes)


class StageLog:
    """Stage-level logging on top of a lsmia.tracking.client Tracker (or its NullTracker).

    ``data_file``: the prepared data the stage reads (default: the study's), logged as the run's data set input.
    """

    def __init__(self, tracker: Any, cfg: Config, stage: str = "", data_file: Path | None = None) -> None:
        self.tracker, self.cfg, self.stage = tracker, cfg, stage
        self.data_file = Path(data_file) if data_file is not None else StudyPaths(cfg.run.out_dir).data_file
        self.attack_run: str | None = None  # evaluate: the attack run that gets the headline metrics

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Numbers only; the cell's settings (alpha, seed, epochs) are params and tags, never final metrics: as
        metrics they made the compare page's default chart plot alpha against alpha. Per epoch, the alpha the
        warm-up puts in force is a real curve: ``alpha_in_force``."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if step is not None and "alpha" in numbers:
            numbers["alpha_in_force"] = numbers.pop("alpha")
        numbers = {k: v for k, v in numbers.items() if k not in SETTINGS_NOT_METRICS}
        self.tracker.log_metrics(numbers, step=step)
        headline = {k: numbers[k] for k in metric_registry.headline() if k in numbers}
        if step is None and self.attack_run and headline:
            self.tracker.annotate_run(self.attack_run, headline, {f"{LINK_TAG_PREFIX}evaluation": self.tracker.run_id})

    def _facts(self) -> DataFacts | None:
        if not self.cfg.run.tracking or not self.data_file.is_file():
            return None
        return data_facts(self.data_file)

    def log_dataset(self, context: str) -> None:
        """The prepared data as the run's data set input (source, digest, counts), for the UI's Datasets column."""
        facts = self._facts()
        if facts is not None:
            self.tracker.log_dataset(facts.name, self.data_file, facts.digest, facts.profile, context)

    def link_evaluated_runs(self, alpha: float, seed: int) -> None:
        """Evaluate: link the attack and target-training runs of the cell; the attack run gets the headline metrics."""
        if not self.cfg.run.tracking:
            return
        cell = {"alpha": str(alpha), "seed": str(seed)}
        self.attack_run = find_related({"stage": "attack", **cell})
        self.tracker.link("attack", self.attack_run)
        self.tracker.link("target_training", find_related({"stage": "train", "role": "target", **cell}))

    def epoch_logger(self) -> Callable[[int, dict[str, float]], None]:
        return lambda epoch, row: self.log_metrics(row, step=epoch)

    def log_prior(self, result: Any) -> None:
        self.log_metrics(result.metrics)
        if Path(result.samples_path).exists():
            self.tracker.log_artifact(result.samples_path, "samples")

    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None:
        """Metrics and the model with its class list; a target is registered (no duplicate of an unchanged file)."""
        self.log_metrics(result.metrics)
        model = result.model.cpu().eval()
        example = torch.rand(1, 3, model.image_size, model.image_size)
        facts = self._facts()
        classes = facts.classes if facts is not None else []
        metadata = {"classes": classes, "input_contract": input_contract(model.image_size, classes)}
        self.tracker.log_dict({"classes": classes}, "classes.json")
        if role != "target":
            self.tracker.log_model(model, "model", example, metadata=metadata)
            return
        tags = {"alpha": str(alpha), "seed": str(seed), "role": role}
        if Path(result.model_path).is_file():
            from lsmia.utils import file_digest

            tags[DIGEST_TAG] = file_digest(result.model_path)
        accuracy = result.metrics.get("test_acc")
        self.tracker.log_model(
            model,
            "model",
            example,
            registered_name=TARGET_MODEL,
            registry_tags=tags,
            aliases=(model_alias(alpha, seed), LATEST_ALIAS),
            description=registry_description(model.image_size, classes),
            metadata=metadata,
            version_description=f"label smoothing alpha = {alpha:g}, seed {seed}"
            + (f", test accuracy {accuracy:.3f}" if isinstance(accuracy, float) else ""),
        )

    def log_report(self, report_dir: Path) -> None:
        self.tracker.log_artifact(report_dir, "report")

    def log_attack_diagnostics(self, curves: dict[str, list[float]]) -> None:
        """The attack's per-step curves as step metrics; ``grad_cosine[i]`` belongs to step i + 1 (see ppa)."""
        by_step: dict[int, dict[str, float]] = {}
        for name, offset in (("loss", 0), ("target_confidence", 0), ("grad_cosine", 1)):
            for index, value in enumerate(curves.get(name, [])):
                by_step.setdefault(index + offset, {})[f"attack_{name}"] = value
        for step in sorted(by_step):
            self.log_metrics(by_step[step], step=step)

    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None:
        self.log_metrics({"num_final_samples": len(result.final_targets), **result.meta.get("timings", {})})
        grid = Path(out_dir) / "reconstructions.png"
        if grid.exists():
            self.tracker.log_artifact(grid, "reconstructions")
        self.tracker.log_artifact(Path(out_dir) / "attack.pt", "attack")
        self.log_attack_diagnostics(result.meta.get("diagnostics", {}))
        if not self.cfg.run.tracking:
            return
        self.tracker.link(
            "target_training",
            find_related({"stage": "train", "role": "target", "alpha": str(alpha), "seed": str(seed)}),
        )

    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None:
        """The evaluation's metrics and the reconstructions framed by the evaluation model's verdict (green: it
        recognises the identity, red: it does not), the grid the report shows."""
        self.log_metrics(metrics)
        if not self.cfg.run.tracking or not self.data_file.is_file():
            return
        import tempfile

        from lsmia.data.base import FaceData
        from lsmia.models.classifiers import load_classifier
        from lsmia.reporting.report import write_judged_grid

        try:
            data = FaceData.load(self.data_file)
            model = load_classifier(eval_model_file, num_classes=data.num_classes, what="evaluation model")
            with tempfile.TemporaryDirectory() as folder:
                grid = Path(folder) / "judged.png"
                write_judged_grid((data, model), Path(attack_file), grid)
                self.tracker.log_artifact(grid, "reconstructions")
        except (LsmiaError, OSError) as err:
            warnings.warn(
                f"MLflow tracking: the judged reconstruction grid was not logged ({err})", RuntimeWarning, stacklevel=2
            )


def find_related(tags: dict[str, str]) -> str | None:
    """The latest finished run with ``tags``, of this DVC experiment when it has one (a stage DVC did not re-run
    in the experiment keeps the workspace's run)."""
    from lsmia.tracking.client import dvc_experiment, find_run

    return find_run("lsmia", {**tags, "dvc_experiment": dvc_experiment()}) or find_run("lsmia", tags)


@contextmanager
def tracked_stage(
    cfg: Config,
    stage: str,
    run_name: str,
    role: str | None = None,
    alpha: float | None = None,
    seed: int | None = None,
    system_metrics: bool = False,
    run_dir: Path | None = None,
    data_file: Path | None = None,
) -> Iterator[StageLog]:
    """One MLflow run for a stage. ``run_dir``: the stage's output folder, where a marker file beside its
    checkpoint holds the open run's id.

    A kill (SIGKILL) leaves the marker and its run RUNNING; the next run of the stage continues that run
    when a checkpoint is there to resume from (same config), else marks it FAILED and links to it.
    ``data_file`` (default: the study's prepared data) is logged as the run's data set input for the stages that
    read it; an evaluate run links its attack and target-training runs.
    """
    from lsmia.tracking.client import start_tracking

    tags = {"stage": stage, "dataset": cfg.data.source, "seed": str(cfg.run.seed if seed is None else seed)}
    if role is not None:
        tags["role"] = role
    tags["alpha"] = "n/a" if alpha is None else str(alpha)  # the prior and eval model have no smoothing factor
    threads = describe_threads()
    if threads:
        tags["threads"] = threads  # run.threads auto: what the load left this run
    if alpha is not None:
        run_name = f"{run_name} alpha={alpha} seed={tags['seed']}"
    marker = Path(run_dir) / RUN_MARKER if cfg.run.tracking and run_dir is not None else None
    resumable = run_dir is not None and (Path(run_dir) / "checkpoint.pt").exists()
    with (
        _orphan_handling(marker, cfg, resumable) as (resume_id, orphan_id),
        start_tracking(
            cfg.run.tracking,
            stage,
            run_name,
            cfg.to_dict(),
            tags,
            system_metrics=system_metrics,
            resume_run_id=resume_id,
            params=shaping_params(cfg, stage, role),
        ) as tracker,
    ):
        _record_interruption(tracker, marker, cfg, resume_id, orphan_id)
        stage_log = StageLog(tracker, cfg, stage, data_file)
        if stage in DATA_CONTEXT:
            stage_log.log_dataset(DATA_CONTEXT[stage])
        if stage == "evaluate" and alpha is not None:
            stage_log.link_evaluated_runs(alpha, int(tags["seed"]))
        yield stage_log


GRAPH_STAGE = {"data": "data", "prior": "prior", "attack": "attack", "evaluate": "evaluate", "attributes": "attributes"}


def shaping_params(cfg: Config, stage: str, role: str | None) -> dict[str, Any] | None:
    """The part of the config a graph stage's output depends on (its params and its inputs'), so a run's params
    are what tells it apart from its neighbours on MLflow's compare page; None (everything) for other runs."""
    from lsmia.experiments import graph

    name = {"target": "target", "eval": "eval-model"}.get(role or "") if stage == "train" else GRAPH_STAGE.get(stage)
    if name is None:
        return None
    full = cfg.to_dict()
    kept: dict[str, Any] = {}
    for key in graph.params_shaping(name):
        section, _, field_name = key.partition(".")
        if not field_name:
            kept[section] = full[section]
        elif field_name in full[section]:
            kept.setdefault(section, {})[field_name] = full[section][field_name]
    return kept


@contextmanager
def _orphan_handling(marker: Path | None, cfg: Config, resumable: bool) -> Iterator[tuple[str | None, str | None]]:
    """(run to continue, orphan to link) before the stage; the marker removed after it (and its folder if empty)."""
    if marker is None:
        yield None, None
        return
    from lsmia.tracking.client import claim_orphan

    created = not marker.parent.exists()
    try:
        yield claim_orphan(marker, cfg.to_dict(), resumable)
    except KeyboardInterrupt:
        raise  # Ctrl-C: the marker stays, so the resumed stage continues this (KILLED) run, one history
    except BaseException:
        _drop_marker(marker, created)
        raise
    _drop_marker(marker, created)


def _drop_marker(marker: Path, created: bool) -> None:
    from lsmia.tracking.client import forget_run

    forget_run(marker)
    if created:
        with contextlib.suppress(OSError):
            marker.parent.rmdir()  # only when empty: a stage that failed validation leaves no folder


def _record_interruption(
    tracker: Any, marker: Path | None, cfg: Config, resume_id: str | None, orphan_id: str | None
) -> None:
    from lsmia.tracking.client import INTERRUPTED_LINK, RESUMED_TAG, remember_run

    if resume_id is not None:
        tracker.set_tags({RESUMED_TAG: "true"})
    tracker.link(INTERRUPTED_LINK, orphan_id)
    if marker is not None:
        remember_run(marker, tracker.run_id, cfg.to_dict())

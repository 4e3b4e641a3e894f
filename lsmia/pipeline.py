"""The study in one process, and the stage functions the CLI calls.

config -> data -> models (prior, eval model, targets) -> attack -> metrics -> report. Each stage's
library function lives in ``lsmia.stages.<name>`` (one module per stage, so each stage's code
dependencies are its own imports, see lsmia.graph); ``run_study`` executes the one stage graph of
lsmia.graph, as ``lsmia ablate`` and ``lsmia sweep`` do with other layouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lsmia import distributed, graph
from lsmia.config import Config
from lsmia.paths import StudyPaths
from lsmia.stages.attack import stage_attack
from lsmia.stages.attributes import stage_attribute_predictor
from lsmia.stages.data import data_summary, prepare_data, stage_data
from lsmia.stages.evaluate import stage_evaluate
from lsmia.stages.prior import stage_prior
from lsmia.stages.train import stage_train
from lsmia.utils import EpochCallback

__all__ = [
    "QuietStage",
    "StudyResult",
    "data_summary",
    "launched_stage",
    "prepare_data",
    "quiet_stage",
    "run_study",
    "stage_attack",
    "stage_attribute_predictor",
    "stage_data",
    "stage_evaluate",
    "stage_prior",
    "stage_train",
]


@dataclass
class StudyResult:
    metrics: list[dict[str, Any]]
    seconds: dict[str, float]


class QuietStage:
    """The stage observer used without tracking: every hook is a no-op."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def epoch_logger(self) -> EpochCallback | None:
        return None

    def log_prior(self, result: Any) -> None: ...
    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None: ...
    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...
    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None: ...


@contextmanager
def quiet_stage(cfg: Config, stage: str, run_name: str, **tags: Any) -> Iterator[QuietStage]:
    yield QuietStage()


@contextmanager
def launched_stage(
    cfg: Config, device: torch.device, observe: Callable[..., Any], stage: str, run_name: str, **tags: Any
) -> Iterator[tuple[Any, torch.device]]:
    """A stage alone or under torchrun: (observer, this rank's device).

    Under torchrun the process group lives for the block (nccl for CUDA, gloo for the CPU),
    ``observe`` (e.g. MLflow tracking) runs on rank 0 only and the other ranks get ``quiet_stage``.
    Alone it is ``observe`` with ``device``.
    """
    with distributed.process_group(use_cuda=device.type == "cuda"):
        observer = observe if distributed.is_main() else quiet_stage
        with observer(cfg, stage, run_name, **tags) as obs:
            yield obs, distributed.rank_device(device)


def run_study(
    cfg: Config, device: torch.device, log: Callable[[str], None] = print, observe: Callable[..., Any] = quiet_stage
) -> StudyResult:
    """The whole study in one process: the stage graph (lsmia.graph) for every alpha and seed of ``study``.

    ``observe(cfg, stage, run_name, role=, alpha=, seed=, system_metrics=)`` is a context manager yielding a
    stage observer (lsmia.tracked.tracked_stage logs to MLflow; the default does nothing).
    """
    from lsmia.metrics.evaluate import require_metric_weights
    from lsmia.models.classifiers import require_pretrained_weights

    for section in ("target", "eval_model"):  # before hours of data and prior: a missing weight file fails at once
        require_pretrained_weights(getattr(cfg, section), section)
    require_metric_weights(cfg.metrics)
    layout = graph.StudyLayout(StudyPaths(cfg.run.out_dir))
    seconds: dict[str, float] = {}
    results = []
    for stage, cell in graph.schedule(cfg, graph.cells_of(cfg)):
        name = stage.name if cell is None else f"{stage.name} alpha={cell.alpha} seed={cell.seed}"
        started = time.perf_counter()
        out = graph.run_stage(stage, cfg, cell, layout, device, observe)
        seconds[name] = time.perf_counter() - started
        log(f"{name}: {seconds[name]:.1f} s")
        if stage.name == "evaluate":
            results.append(out)
    return StudyResult(results, seconds)

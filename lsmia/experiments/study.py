"""``lsmia study``: the study in one process.

config -> data -> models (prior, eval model, targets) -> attack -> metrics -> report. Each stage's library
function lives in ``lsmia.stages.<name>`` (one module per stage, so each stage's code dependencies are its own
imports, see lsmia.experiments.graph); :func:`run_study` executes the one stage graph of lsmia.experiments.graph
in the study layout, as ``lsmia ablate`` and ``lsmia sweep`` do with other layouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lsmia.config import Config
from lsmia.experiments import graph
from lsmia.experiments.graph import quiet_stage
from lsmia.paths import StudyPaths


@dataclass
class StudyResult:
    metrics: list[dict[str, Any]]
    seconds: dict[str, float]


def run_study(
    cfg: Config, device: torch.device, log: Callable[[str], None] = print, observe: Callable[..., Any] = quiet_stage
) -> StudyResult:
    """The whole study in one process: the stage graph (lsmia.experiments.graph) for every alpha and seed of ``study``.

    ``observe(cfg, stage, run_name, role=, alpha=, seed=, system_metrics=)`` is a context manager yielding a
    stage observer (lsmia.tracking.stages.tracked_stage logs to MLflow; the default does nothing).
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

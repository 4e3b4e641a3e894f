"""What each stage records in MLflow, expressed through lsmia.tracking (the only module that imports mlflow).

With ``run.tracking`` off every call is a no-op, so the core runs without MLflow.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from lsmia.config import Config


class StageLog:
    """Stage-level logging on top of a lsmia.tracking Tracker (or its NullTracker)."""

    def __init__(self, tracker: Any, cfg: Config) -> None:
        self.tracker, self.cfg = tracker, cfg

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.tracker.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def epoch_logger(self) -> Callable[[int, dict[str, float]], None]:
        return lambda epoch, row: self.log_metrics(row, step=epoch)

    def log_prior(self, result: Any) -> None:
        self.log_metrics(result.metrics)
        if Path(result.samples_path).exists():
            self.tracker.log_artifact(result.samples_path, "samples")

    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None:
        self.log_metrics(result.metrics)
        model = result.model.cpu().eval()
        example = torch.rand(1, 3, model.image_size, model.image_size)
        registered = f"lsmia-{role}" if role == "target" else None
        self.tracker.log_model(model, "model", example, registered_name=registered,
                               registry_tags={"alpha": str(alpha), "seed": str(seed), "role": role})

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
        from lsmia.tracking import find_run

        self.log_metrics({"num_final_samples": len(result.final_targets), **result.meta.get("timings", {})})
        grid = Path(out_dir) / "reconstructions.png"
        if grid.exists():
            self.tracker.log_artifact(grid, "reconstructions")
        self.tracker.log_artifact(Path(out_dir) / "attack.pt", "attack")
        self.log_attack_diagnostics(result.meta.get("diagnostics", {}))
        if not self.cfg.run.tracking:
            return
        train_run = find_run("lsmia", {"stage": "train", "role": "target", "alpha": str(alpha), "seed": str(seed)})
        if train_run:
            self.tracker.link("target_training", train_run)


@contextmanager
def tracked_stage(cfg: Config, stage: str, run_name: str, role: str | None = None, alpha: float | None = None,
                  seed: int | None = None, system_metrics: bool = False, run_marker: Path | None = None,
                  resumable: bool = False) -> Iterator[StageLog]:
    """One MLflow run for a stage. ``run_marker``: a file beside the stage's checkpoint holding the open run's id.

    A kill (SIGKILL) leaves the marker and its run RUNNING; the next run of the stage continues that run
    when ``resumable`` (it resumes from the checkpoint, same config), else marks it FAILED and links to it.
    """
    from lsmia.tracking import start_tracking

    tags = {"stage": stage, "dataset": cfg.data.source, "seed": str(cfg.run.seed if seed is None else seed)}
    if role is not None:
        tags["role"] = role
    tags["alpha"] = "n/a" if alpha is None else str(alpha)  # the prior and eval model have no smoothing factor
    if alpha is not None:
        run_name = f"{run_name} alpha={alpha} seed={tags['seed']}"
    marker = Path(run_marker) if cfg.run.tracking and run_marker is not None else None
    with _orphan_handling(marker, cfg, resumable) as (resume_id, orphan_id):
        with start_tracking(cfg.run.tracking, stage, run_name, cfg.to_dict(), tags, system_metrics=system_metrics,
                            resume_run_id=resume_id) as tracker:
            _record_interruption(tracker, marker, cfg, resume_id, orphan_id)
            yield StageLog(tracker, cfg)


@contextmanager
def _orphan_handling(marker: Path | None, cfg: Config,
                     resumable: bool) -> Iterator[tuple[str | None, str | None]]:
    """(run to continue, orphan to link) before the stage; the marker removed after it (and its folder if empty)."""
    if marker is None:
        yield None, None
        return
    from lsmia.tracking import claim_orphan, forget_run

    created = not marker.parent.exists()
    try:
        yield claim_orphan(marker, cfg.to_dict(), resumable)
    finally:
        forget_run(marker)
        if created:
            with contextlib.suppress(OSError):
                marker.parent.rmdir()  # only when empty: a stage that failed validation leaves no folder


def _record_interruption(tracker: Any, marker: Path | None, cfg: Config, resume_id: str | None,
                         orphan_id: str | None) -> None:
    from lsmia.tracking import INTERRUPTED_LINK, RESUMED_TAG, remember_run

    if resume_id is not None:
        tracker.set_tags({RESUMED_TAG: "true"})
    tracker.link(INTERRUPTED_LINK, orphan_id)
    if marker is not None:
        remember_run(marker, tracker.run_id, cfg.to_dict())

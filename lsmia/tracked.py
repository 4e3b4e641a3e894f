"""What each stage records in MLflow, expressed through lsmia.tracking (the only module that imports mlflow).

With ``run.tracking`` off every call is a no-op, so the core runs without MLflow.
"""

from __future__ import annotations

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

    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None:
        from lsmia.tracking import find_run

        self.log_metrics({"num_final_samples": len(result.final_targets), **result.meta.get("timings", {})})
        grid = Path(out_dir) / "reconstructions.png"
        if grid.exists():
            self.tracker.log_artifact(grid, "reconstructions")
        self.tracker.log_artifact(Path(out_dir) / "attack.pt", "attack")
        if not self.cfg.run.tracking:
            return
        train_run = find_run("lsmia", {"stage": "train", "role": "target", "alpha": str(alpha), "seed": str(seed)})
        if train_run:
            self.tracker.link("target_training", train_run)


@contextmanager
def tracked_stage(cfg: Config, stage: str, run_name: str, role: str | None = None, alpha: float | None = None,
                  seed: int | None = None, system_metrics: bool = False) -> Iterator[StageLog]:
    from lsmia.tracking import start_tracking

    tags = {"stage": stage, "dataset": cfg.data.source, "seed": str(cfg.run.seed if seed is None else seed)}
    if role is not None:
        tags["role"] = role
    tags["alpha"] = "n/a" if alpha is None else str(alpha)  # the prior and eval model have no smoothing factor
    if alpha is not None:
        run_name = f"{run_name} alpha={alpha} seed={tags['seed']}"
    with start_tracking(cfg.run.tracking, stage, run_name, cfg.to_dict(), tags,
                        system_metrics=system_metrics) as tracker:
        yield StageLog(tracker, cfg)

"""Stages ``eval-model`` and ``target``: classifiers on the private identities."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.infra.distributed import is_main
from lsmia.models.classifiers import require_pretrained_weights
from lsmia.reporting.curves import write_training_curves
from lsmia.training.classifier import TrainResult, train_classifier
from lsmia.utils import EpochCallback

ROLES = {"target": "target", "eval": "eval_model"}  # --role -> its config section
EVAL_SEED_OFFSET = 1000  # the evaluation model never shares an initialisation with a target of the same seed


def stage_train(
    cfg: Config,
    role: str,
    data_file: Path,
    out_dir: Path,
    device: torch.device,
    seed: int | None = None,
    on_epoch: EpochCallback | None = None,
    code_version: str = "",
    curves_dir: Path | None = None,
) -> TrainResult:
    """Train the target (label smoothing ``cfg.target.smoothing``, defense ``cfg.target.defense``) or the evaluation
    model (hard labels).

    ``code_version`` (lsmia.experiments.code.code_digest) makes a checkpoint written by other code start afresh, so a stage
    that DVC re-runs after a code edit retrains instead of resuming a finished checkpoint. ``curves_dir``: where
    the per-epoch curves go for `dvc plots` (rank 0 only)."""
    if role in ROLES:  # before reading the data: a missing weight file fails at once
        require_pretrained_weights(getattr(cfg, ROLES[role]), ROLES[role])
    data = FaceData.load(data_file)
    seed = cfg.run.seed if seed is None else seed
    result = _train(cfg, role, data, out_dir, device, seed, on_epoch, code_version)
    if curves_dir is not None and is_main():
        write_training_curves(result.history, curves_dir)
    return result


def _train(
    cfg: Config,
    role: str,
    data: FaceData,
    out_dir: Path,
    device: torch.device,
    seed: int,
    on_epoch: EpochCallback | None,
    code_version: str,
) -> TrainResult:
    if role == "target":
        return train_classifier(
            cfg.target,
            data,
            out_dir,
            device,
            seed=seed,
            smoothing=cfg.target.smoothing,
            on_epoch=on_epoch,
            code_version=code_version,
            defense=cfg.target.defense,
        )
    if role == "eval":
        return train_classifier(
            cfg.eval_model,
            data,
            out_dir,
            device,
            seed=seed + EVAL_SEED_OFFSET,
            on_epoch=on_epoch,
            code_version=code_version,
        )
    raise LsmiaError(f"unknown role '{role}': use --role target or --role eval")

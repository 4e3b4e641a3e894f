"""Stage ``prior``: the GAN image prior, trained on the public identities only."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.training.prior import PriorResult, train_prior
from lsmia.utils import EpochCallback


def stage_prior(
    cfg: Config,
    data_file: Path,
    out_dir: Path,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    code_version: str = "",
) -> PriorResult:
    data = FaceData.load(data_file)
    if data.public is None or len(data.public) == 0:
        raise LsmiaError(
            "the prepared data has no public images for the prior: set data.public_root "
            "or use prior.kind=torchscript with prior.path"
        )
    return train_prior(
        cfg.prior, data.public, out_dir, device, seed=cfg.run.seed, on_epoch=on_epoch, code_version=code_version
    )

"""Stage ``attack``: Plug & Play Attacks against one target."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia import distributed
from lsmia.attack.result import AttackResult
from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.models.classifiers import load_classifier
from lsmia.utils import save_timings, seed_everything
from lsmia.visualize import save_attack_grid


def stage_attack(
    cfg: Config,
    data_file: Path,
    target_file: Path,
    prior_file: Path | None,
    out_dir: Path,
    device: torch.device,
    seed: int = 0,
) -> AttackResult:
    """Invert the target; ``seed`` (the study seed) offsets ``attack.seed`` so replicates are independent."""
    from lsmia.attack.ppa import resolve_targets, run_attack
    from lsmia.models.generator import load_prior

    data = FaceData.load(data_file)
    targets = resolve_targets(cfg.attack.targets, data.num_classes)
    target = load_classifier(target_file, num_classes=data.num_classes, what="target model").to(device)
    prior = load_prior(cfg.prior, prior_file).to(device)
    attack_cfg = cfg.attack.model_copy(update={"seed": cfg.attack.seed + seed})
    seed_everything(attack_cfg.seed)
    result = run_attack(attack_cfg, target, prior, targets, device)
    if distributed.is_main():  # under torchrun every rank holds the whole result; rank 0 writes it
        result.save(Path(out_dir) / "attack.pt")
        save_timings(Path(out_dir) / "attack.pt", result.meta.get("timings", {}))
        save_attack_grid(data, result, Path(out_dir) / "reconstructions.png")
    distributed.barrier()
    return result

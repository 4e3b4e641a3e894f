"""Stage ``attack``: Plug & Play Attacks against one target."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from lsmia import distributed
from lsmia.attack.result import AttackResult
from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.models.classifiers import load_classifier
from lsmia.utils import file_digest, save_timings, seed_everything
from lsmia.visualize import save_attack_grid

CHECKPOINT = "checkpoint.pt"  # a killed attack resumes from it (lsmia.attack.ppa.Checkpoint)


def stage_attack(
    cfg: Config,
    data_file: Path,
    target_file: Path,
    prior_file: Path | None,
    out_dir: Path,
    device: torch.device,
    seed: int = 0,
    classes: list[int] | None = None,
    code_version: str = "",
    log: Callable[[str], None] | None = None,
) -> AttackResult:
    """Invert the target; ``seed`` (the study seed) offsets ``attack.seed`` so replicates are independent.

    ``classes`` (a subset of ``attack.targets``) writes a shard (see lsmia.attack.shards; merge with
    :func:`stage_merge_attack`). A killed run resumes from ``out_dir/checkpoint.pt`` when the config, classes,
    input files and ``code_version`` are the same; the checkpoint is removed once ``attack.pt`` is written.
    """
    from lsmia.attack.ppa import RUN_ONLY_KEYS, resolve_classes, resolve_targets, run_attack
    from lsmia.models.generator import load_prior

    data = FaceData.load(data_file)
    targets = resolve_targets(cfg.attack.targets, data.num_classes)
    shard = resolve_classes(classes, targets) if classes is not None else None
    target = load_classifier(target_file, num_classes=data.num_classes, what="target model").to(device)
    prior = load_prior(cfg.prior, prior_file).to(device)
    attack_cfg = cfg.attack.model_copy(update={"seed": cfg.attack.seed + seed})
    seed_everything(attack_cfg.seed)
    checkpoint = Path(out_dir) / CHECKPOINT
    key = json.dumps(
        [
            attack_cfg.model_dump(mode="json", exclude=set(RUN_ONLY_KEYS)),
            cfg.prior.model_dump(mode="json"),
            targets,
            shard,
            [file_digest(f) for f in (data_file, target_file, prior_file) if f is not None and Path(f).is_file()],
            code_version,
        ],
        sort_keys=True,
        default=str,
    )
    result = run_attack(
        attack_cfg,
        target,
        prior,
        targets,
        device,
        classes=shard,
        checkpoint=checkpoint if distributed.is_main() else None,
        checkpoint_key=key,
        log=log,
    )
    if distributed.is_main():  # under torchrun every rank holds the whole result; rank 0 writes it
        save_attack(data, result, Path(out_dir), grid="shard" not in result.meta)
        checkpoint.unlink(missing_ok=True)
    distributed.barrier()
    return result


def save_attack(data: FaceData, result: AttackResult, out_dir: Path, grid: bool = True) -> None:
    result.save(out_dir / "attack.pt")
    save_timings(out_dir / "attack.pt", result.meta.get("timings", {}))
    if grid:
        save_attack_grid(data, result, out_dir / "reconstructions.png")


def stage_merge_attack(data_file: Path, shard_dirs: list[Path], out_dir: Path) -> AttackResult:
    """Merge attack shards (``<dir>/attack.pt`` each) into ``out_dir/attack.pt`` and its reconstruction grid."""
    from lsmia.attack.shards import load_shards, merge_shards

    result = merge_shards(load_shards(shard_dirs), [str(d) for d in shard_dirs])
    save_attack(FaceData.load(data_file), result, Path(out_dir))
    return result

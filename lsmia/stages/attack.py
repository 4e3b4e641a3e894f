"""Stage ``attack``: Plug & Play Attacks against one target."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from lsmia.attack.result import AttackResult
from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.infra import distributed
from lsmia.models.classifiers import load_classifier
from lsmia.reporting.visualize import save_attack_grid
from lsmia.utils import file_digest, save_timings, seed_everything

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
    if "shard" in result.meta:  # what lsmia.attack.shards.merge_shards compares across shards
        result.meta["shard"]["digests"] = input_digests(cfg, seed, target_file, prior_file)
    if distributed.is_main():  # under torchrun every rank holds the whole result; rank 0 writes it
        save_attack(data, result, Path(out_dir), grid="shard" not in result.meta)
        checkpoint.unlink(missing_ok=True)
    distributed.barrier()
    return result


def input_digests(cfg: Config, seed: int, target_file: Path, prior_file: Path | None) -> dict[str, str]:
    """Digests of what an attack (shard) computed from: the target model file, the prior file (the DCGAN
    checkpoint or prior.path) and the attack and prior config."""
    from lsmia.attack.ppa import RUN_ONLY_KEYS

    attack_cfg = cfg.attack.model_copy(update={"seed": cfg.attack.seed + seed})
    config = [attack_cfg.model_dump(mode="json", exclude=set(RUN_ONLY_KEYS)), cfg.prior.model_dump(mode="json")]
    prior = prior_file if prior_file is not None else cfg.prior.path
    return {
        "target": file_digest(target_file),
        "prior": file_digest(prior) if prior is not None and Path(prior).is_file() else "none",
        "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
    }


def save_attack(data: FaceData, result: AttackResult, out_dir: Path, grid: bool = True) -> None:
    result.save(out_dir / "attack.pt")
    save_timings(out_dir / "attack.pt", result.meta.get("timings", {}))
    if grid:
        save_attack_grid(data, result, out_dir / "reconstructions.png")


def stage_merge_attack(
    data_file: Path, shard_dirs: list[Path], out_dir: Path, log: Callable[[str], None] | None = None
) -> AttackResult:
    """Merge attack shards (``<dir>/attack.pt`` each) into ``out_dir/attack.pt`` and its reconstruction grid.

    ``out_dir`` may not be, or lie inside, a shard folder. Shards written before shards carried the digests of
    their inputs are merged with a warning (``log``; default: warnings.warn)."""
    from lsmia.attack.shards import load_shards, merge_shards, undigested

    require_separate_output(shard_dirs, out_dir)
    names = [str(d) for d in shard_dirs]
    parts = load_shards(shard_dirs)
    unchecked = undigested(parts, names)
    if unchecked:
        message = (
            f"{', '.join(unchecked)} carry no digest of their target model, prior and config, so the merge cannot "
            "check that every shard attacked the same target: re-run those attack shards to have it checked"
        )
        if log is None:
            warnings.warn(message, stacklevel=2)
        else:
            log(f"warning: {message}")
    result = merge_shards(parts, names)
    save_attack(FaceData.load(data_file), result, Path(out_dir))
    return result


def require_separate_output(shard_dirs: list[Path], out_dir: Path) -> None:
    """The merged attack may not overwrite a shard: ``out_dir`` is neither a shard folder nor inside one."""
    out = Path(out_dir).resolve()
    for folder in shard_dirs:
        if out.is_relative_to(Path(folder).resolve()):
            where = "is" if out == Path(folder).resolve() else "is inside"
            raise LsmiaError(
                f"--out-dir {out_dir} {where} the shard folder {folder}: the merge would overwrite its input; "
                "write the merged attack to another folder"
            )

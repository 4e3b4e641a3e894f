"""Training of target and evaluation classifiers, with label smoothing, per-epoch checkpoints and resume.

Under ``torchrun`` (world size > 1) the model runs in DistributedDataParallel: every rank draws
the same permutation and augments the whole global batch with the shared generator, so the
random stream is the single-process one; each rank then trains on its rows ``rank::world`` and
DDP averages the gradients. ``batch_size`` stays the global batch size. BatchNorm: SyncBatchNorm
on CUDA; on the CPU (gloo) batch statistics are per shard and the running statistics are averaged
over the ranks after each epoch. Rank 0 alone writes files and calls ``on_epoch``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lsmia.config import ClassifierConfig, DefenseConfig, SmoothingConfig
from lsmia.data.augment import resize, training_augment
from lsmia.data.base import FaceData, ImageSet
from lsmia.defenses.base import Defense, Preparation
from lsmia.defenses.factory import active, needs_bottleneck, prepare_defense
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.infra import distributed
from lsmia.models.classifiers import Classifier, build_classifier, save_classifier
from lsmia.models.inference import predict_logits
from lsmia.training.schedules import alpha_at
from lsmia.training.smoothing import smoothed_cross_entropy
from lsmia.utils import EpochCallback, load_torch, progress, save_json, save_timings, save_torch, seed_everything

TRAINING_EVAL_BATCH = 512  # rows per forward pass when training scores its test and train sets
TrainOutputs = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"


@dataclass
class TrainResult:
    model: Classifier
    model_path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def make_optimizer(cfg: ClassifierConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: ClassifierConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    milestones = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)


@torch.no_grad()
def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """Accuracy, expected calibration error (equal-width bins), mean confidence, mean logit L2 norm."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for low, high in itertools.pairwise(edges):
        in_bin = (conf > low) & (conf <= high)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return {
        "accuracy": correct.mean().item(),
        "ece": ece.item(),
        "mean_confidence": conf.mean().item(),
        "mean_logit_norm": logits.norm(dim=1).mean().item(),
    }


def _loss(
    outputs: TrainOutputs,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    aux_weight: float,
    defense: Defense | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed cross-entropy (plus the auxiliary head's) plus the defense's penalty of this forward pass."""
    logits, aux = outputs(x)
    loss = smoothed_cross_entropy(logits, y, alpha)
    if aux is not None:
        loss = loss + aux_weight * smoothed_cross_entropy(aux, y, alpha)
    penalty = defense.penalty(x, y) if defense is not None else None
    if penalty is not None:
        loss = loss + penalty
    return loss, logits


class _TrainOutputs(nn.Module):
    """``model.train_outputs`` as ``forward``, so DistributedDataParallel hooks the training pass."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.train_outputs(x)


def distributed_outputs(model: Classifier, device: torch.device) -> nn.Module:
    """The training pass of ``model`` wrapped in DistributedDataParallel (needs a process group).

    Buffers are not broadcast at each step: BatchNorm running statistics follow each rank's
    shards and are averaged over the ranks after each epoch (see ``_average_buffers``).
    """
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(_TrainOutputs(model), device_ids=ids, broadcast_buffers=False)


def _finite_on_every_rank(loss: torch.Tensor) -> bool:
    if distributed.world_size() == 1:
        return bool(torch.isfinite(loss))
    flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    return bool(distributed.all_reduce_(flag, "min").item())


def train_step(
    outputs: TrainOutputs,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    aux_weight: float,
    defense: Defense | None = None,
) -> tuple[float, int, int]:
    """One optimiser step on the global batch ``x, y``; (loss sum, correct, rows) of the rows run here.

    With world size > 1 this rank runs rows ``rank::world``; its mean loss is scaled by
    ``rows * world / global rows``, so DDP's mean of the ranks' gradients is the gradient of the
    global batch mean, also for unequal shards (for equal shards the scale is exactly 1).
    """
    world = distributed.world_size()
    scale = 1.0
    if world > 1:
        total = len(y)
        x, y = x[distributed.rank() :: world], y[distributed.rank() :: world]
        scale = len(y) * world / total
    loss, logits = _loss(outputs, x, y, alpha, aux_weight, defense)
    if not _finite_on_every_rank(loss):
        raise DivergenceError(
            f"training diverged (non-finite loss at alpha={alpha}): "
            "lower the learning rate or |alpha|; the last good checkpoint is kept"
        )
    optimizer.zero_grad(set_to_none=True)
    (loss * scale if world > 1 else loss).backward()
    optimizer.step()
    return loss.item() * len(y), int((logits.argmax(1) == y).sum().item()), len(y)


def _average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            distributed.all_reduce_(buffer, "mean")


def _reduced_stats(total_loss: float, correct: int, seen: int, device: torch.device) -> tuple[float, int, int]:
    stats = distributed.all_reduce_(torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device))
    return stats[0].item(), int(stats[1].item()), int(stats[2].item())


def _run_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    train: ImageSet,
    cfg: ClassifierConfig,
    alpha: float,
    device: torch.device,
    gen: torch.Generator,
    outputs: nn.Module | None = None,
    defense: Defense | None = None,
) -> dict[str, float]:
    """One epoch; ``outputs`` is the DDP-wrapped training pass under torchrun (None: ``model.train_outputs``)."""
    model.train()
    if outputs is not None:
        outputs.train()
    if defense is not None:
        defense.set_train_mode(model)
    world = distributed.world_size()
    order = torch.randperm(len(train), generator=gen)
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = [b for b in batches if len(b) > 1]  # BatchNorm cannot train on a single sample
    total_loss, correct, seen = 0.0, 0, 0
    aug = cfg.augment
    for index in batches:
        x = train.images[index].to(device, non_blocking=True).float().div_(255.0)
        y = train.labels[index].to(device, non_blocking=True)
        x = resize(x, model.image_size)  # to the model's input size (cfg.image_size), as PPA's Resize precedes the crop
        x = training_augment(x, aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)  # whole global batch
        if world > 1 and len(index) < 2 * world:
            continue  # a shard of one row cannot train BatchNorm; the draws above keep the stream aligned
        loss_sum, right, rows = train_step(
            model.train_outputs if outputs is None else outputs, optimizer, x, y, alpha, cfg.aux_loss_weight, defense
        )
        total_loss += loss_sum
        correct += right
        seen += rows
    if world > 1:
        total_loss, correct, seen = _reduced_stats(total_loss, correct, seen, device)
        _average_buffers(model)
    return {"loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def plain_batchnorm(model: Classifier) -> Classifier:
    """A copy of ``model`` with plain BatchNorm layers (same state), usable outside the process group."""
    plain = build_classifier(
        model.arch,
        model.num_classes,
        model.image_size,
        model.width,
        bottleneck=model.bottleneck is not None,
        transform_input=model.transform_input,
    )
    plain.load_state_dict(model.state_dict())
    return plain.to(next(model.parameters()).device).train(model.training)


def _fingerprint(
    cfg: ClassifierConfig,
    smoothing: SmoothingConfig | None,
    data: FaceData,
    seed: int,
    code_version: str = "",
    defense: DefenseConfig | None = None,
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: config, smoothing, defense, the training images, seed and code."""
    images = hashlib.sha256(data.train.images.contiguous().numpy().tobytes()).hexdigest()[:16]
    fingerprint = {
        "config": cfg.model_dump(mode="json"),
        "smoothing": smoothing.model_dump(mode="json") if smoothing else None,
        "num_classes": data.num_classes,
        "train_size": len(data.train),
        "train_images": images,
        "seed": seed,
        "code": code_version,
    }
    return {**fingerprint, "defense": defense.model_dump(mode="json")} if defense is not None else fingerprint


def _global_rng(device: torch.device) -> dict[str, torch.Tensor]:
    """The global random streams (MID's sampling draws from them), saved with a checkpoint for an exact resume."""
    state = {"torch_rng": torch.get_rng_state()}
    return {**state, "cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else state


def _restore_global_rng(state: dict[str, Any], device: torch.device) -> None:
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)


def _load_resume_state(out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    state = load_torch(path, what="training checkpoint", keys=(), fix="delete it (training then starts afresh)")
    if state.get("fingerprint") != fingerprint:
        warnings.warn(f"{path} belongs to another configuration; training starts afresh", stacklevel=2)
        return None
    return state


SAFE_STRIDED_1X1_CHANNELS = 8  # oneDNN's AVX2 vector width in floats


def channels_last_is_safe(backbone: nn.Module) -> bool:
    """Whether training ``backbone`` in channels_last on the CPU is safe.

    oneDNN's AVX2 kernel for the weight gradient of a strided 1x1 convolution in channels_last corrupts memory
    (SIGSEGV, "double free or corruption") when the convolution has fewer than 8 input channels: smallresnet
    widths 4-7 (its shortcuts); 8 and more train, as does every width in NCHW (measured with oneDNN 3.12,
    ONEDNN_MAX_CPU_ISA=AVX2; CHANGELOG 2026-12-07). Such a backbone trains in NCHW, a little slower."""
    return all(
        conv.in_channels >= SAFE_STRIDED_1X1_CHANNELS
        for conv in backbone.modules()
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride != (1, 1)
    )


def steps_per_epoch(batch_size: int, train_size: int, world: int = 1) -> int:
    """Optimiser steps of one epoch: batches of at least 2 rows (at least 2 per process under torchrun)."""
    sizes = [min(batch_size, train_size - start) for start in range(0, train_size, batch_size)]
    return sum(1 for size in sizes if size > 1 and (world == 1 or size >= 2 * world))


def require_training_steps(batch_size: int, train_size: int, world: int = 1) -> None:
    """Fail before training when the configuration would take no optimiser step (an untrained model)."""
    if steps_per_epoch(batch_size, train_size, world) == 0:
        raise LsmiaError(
            f"batch_size {batch_size} with {train_size} training image(s) on {world} process(es) gives no "
            "batch of at least 2 images per process, so training would take no step: add training "
            "images or change batch_size"
        )


def train_classifier(
    cfg: ClassifierConfig,
    data: FaceData,
    out_dir: Path,
    device: torch.device,
    seed: int = 0,
    smoothing: SmoothingConfig | None = None,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = True,
    stop_after_epoch: int | None = None,
    code_version: str = "",
    defense: DefenseConfig | None = None,
) -> TrainResult:
    """Train a classifier on ``data.train``; resume from ``out_dir/checkpoint.pt`` when it matches.

    ``smoothing`` None means hard labels (alpha = 0). ``defense`` (lsmia.defenses; None or ``kind: none``: none)
    shapes the model, the trained parameters and the loss. ``stop_after_epoch`` ends the run early
    as an interruption would (used by tests of resume).
    """
    defense = active(defense)
    out_dir = Path(out_dir)
    world, main = distributed.world_size(), distributed.is_main()
    if world > 1 and cfg.batch_size < 2 * world:
        raise LsmiaError(
            f"batch_size {cfg.batch_size} is the global batch and leaves fewer than 2 rows for each of "
            f"{world} processes: set it to at least {2 * world}"
        )
    require_training_steps(cfg.batch_size, len(data.train), world)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    model = build_classifier(
        cfg.arch,
        data.num_classes,
        cfg.image_size or data.image_size,
        cfg.width,
        cfg.pretrained_path,
        bottleneck=needs_bottleneck(defense),
        transform_input=cfg.transform_input,
    ).to(device)
    if device.type == "cpu" and channels_last_is_safe(model.backbone):  # oneDNN's NHWC convolutions: training
        model.backbone.to(memory_format=torch.channels_last)  # ~1.25x faster (bench/training_overhead.py)
    guard = (
        None
        if defense is None
        else prepare_defense(
            defense, model, Preparation(cfg, data, out_dir, device, seed, train_classifier, code_version)
        )
    )
    sync_bn = world > 1 and device.type == "cuda"  # SyncBatchNorm has no CPU kernels
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(cfg, model.parameters() if guard is None else guard.trainable(model))
    scheduler = make_scheduler(cfg, optimizer)
    gen = torch.Generator().manual_seed(seed)
    fingerprint = _fingerprint(cfg, smoothing, data, seed, code_version, defense)
    history: list[dict[str, float]] = []
    start_epoch = 0
    state = _load_resume_state(out_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        _restore_global_rng(state, device)
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
    outputs = distributed_outputs(model, device) if world > 1 else None  # every rank has loaded by now
    started = time.perf_counter()
    epochs = range(start_epoch, cfg.epochs)
    for epoch in progress(epochs, desc="epochs") if show_progress and main else epochs:
        alpha = alpha_at(smoothing, epoch, cfg.epochs) if smoothing else 0.0
        stats = _run_epoch(model, optimizer, data.train, cfg, alpha, device, gen, outputs, guard)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test_logits = predict_logits(model, data.test.images, TRAINING_EVAL_BATCH)
        test_acc = (test_logits.argmax(1) == data.test.labels).float().mean().item()
        row = {"epoch": epoch, "alpha": alpha, "lr": lr, **stats, "test_acc": test_acc}
        history.append(row)
        if main:
            if on_epoch:  # before the checkpoint: a kill in between re-runs (and re-logs) this epoch, never skips it
                on_epoch(epoch, {k: float(v) for k, v in row.items() if k != "epoch"})
            save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": gen.get_state(),
                    "epoch": epoch,
                    "history": history,
                    "fingerprint": fingerprint,
                    **_global_rng(device),
                },
                out_dir / CHECKPOINT,
            )
        distributed.barrier()
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            if guard is not None:
                guard.close()
            return TrainResult(model.eval(), out_dir / CHECKPOINT, {}, history, start_epoch)
    if guard is not None:
        guard.close()
    model = plain_batchnorm(model) if sync_bn else model
    model.backbone.to(memory_format=torch.contiguous_format)  # the layout a loaded model has: the same numbers
    model.eval()
    metrics = final_metrics(model, data, device, history)
    seconds = time.perf_counter() - started
    if main:
        save_classifier(
            model,
            out_dir / MODEL,
            # through JSON: the pickle then holds no shared float objects, so a run resumed from a finished
            # checkpoint writes the same bytes as the run that finished it (DVC sees no change)
            extra=json.loads(
                json.dumps({"history": history, "metrics": metrics, "alpha": smoothing.alpha if smoothing else 0.0})
            ),
        )
        save_json(metrics, out_dir / METRICS)
        save_timings(out_dir / MODEL, {"train_s": seconds, "epochs_run": cfg.epochs - start_epoch})
    distributed.barrier()
    return TrainResult(model, out_dir / MODEL, {**metrics, "train_seconds": seconds}, history, start_epoch)


def final_metrics(
    model: Classifier, data: FaceData, device: torch.device, history: list[dict[str, float]]
) -> dict[str, float]:
    test = calibration_metrics(predict_logits(model, data.test.images, TRAINING_EVAL_BATCH), data.test.labels)
    train_logits = predict_logits(model, data.train.images, TRAINING_EVAL_BATCH)
    train_acc = (train_logits.argmax(1) == data.train.labels).float().mean().item()
    last = history[-1] if history else {}
    return {
        "test_acc": test["accuracy"],
        "train_acc": train_acc,
        "ece": test["ece"],
        "mean_confidence": test["mean_confidence"],
        "mean_logit_norm": test["mean_logit_norm"],
        "final_loss": float(last.get("loss", math.nan)),
        "final_alpha": float(last.get("alpha", 0.0)),
        "epochs": float(len(history)),
    }

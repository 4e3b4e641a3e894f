"""Training of target and evaluation classifiers, with label smoothing, per-epoch checkpoints and resume."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lsmia.augment import training_augment
from lsmia.config import ClassifierConfig, SmoothingConfig
from lsmia.data.base import FaceData, ImageSet
from lsmia.errors import DivergenceError
from lsmia.losses import smoothed_cross_entropy
from lsmia.models.classifiers import Classifier, build_classifier, save_classifier
from lsmia.schedules import alpha_at
from lsmia.utils import load_torch, progress, save_json, save_torch, seed_everything

EpochCallback = Callable[[int, dict[str, float]], None]
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
def predict_logits(model: Classifier, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Logits for uint8 or float images, in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, float]:
    """Accuracy, expected calibration error (equal-width bins), mean confidence, mean logit L2 norm."""
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (conf > low) & (conf <= high)
        if in_bin.any():
            ece += in_bin.float().mean() * (conf[in_bin].mean() - correct[in_bin].mean()).abs()
    return {"accuracy": correct.mean().item(), "ece": ece.item(), "mean_confidence": conf.mean().item(),
            "mean_logit_norm": logits.norm(dim=1).mean().item()}


def _loss(model: Classifier, x: torch.Tensor, y: torch.Tensor, alpha: float, aux_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits, aux = model.train_outputs(x)
    loss = smoothed_cross_entropy(logits, y, alpha)
    if aux is not None:
        loss = loss + aux_weight * smoothed_cross_entropy(aux, y, alpha)
    return loss, logits


def _run_epoch(model: Classifier, optimizer: torch.optim.Optimizer, train: ImageSet, cfg: ClassifierConfig,
               alpha: float, device: torch.device, gen: torch.Generator) -> dict[str, float]:
    model.train()
    order = torch.randperm(len(train), generator=gen)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    batches = [b for b in batches if len(b) > 1]  # BatchNorm cannot train on a single sample
    total_loss, correct, seen = 0.0, 0, 0
    aug = cfg.augment
    for index in batches:
        x = train.images[index].to(device, non_blocking=True).float().div_(255.0)
        y = train.labels[index].to(device, non_blocking=True)
        x = training_augment(x, aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)
        loss, logits = _loss(model, x, y, alpha, cfg.aux_loss_weight)
        if not torch.isfinite(loss):
            raise DivergenceError(f"training diverged (non-finite loss at alpha={alpha}): "
                                  "lower the learning rate or |alpha|; the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _fingerprint(cfg: ClassifierConfig, smoothing: SmoothingConfig | None, data: FaceData, seed: int) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "smoothing": smoothing.model_dump(mode="json") if smoothing else None,
            "num_classes": data.num_classes, "train_size": len(data.train), "seed": seed}


def _load_resume_state(out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    path = out_dir / CHECKPOINT
    if not path.exists():
        return None
    state = load_torch(path, what="training checkpoint")
    if state.get("fingerprint") != fingerprint:
        warnings.warn(f"{path} belongs to another configuration; training starts afresh", stacklevel=2)
        return None
    return state


def train_classifier(cfg: ClassifierConfig, data: FaceData, out_dir: Path, device: torch.device, seed: int = 0,
                     smoothing: SmoothingConfig | None = None, on_epoch: EpochCallback | None = None,
                     show_progress: bool = True, stop_after_epoch: int | None = None) -> TrainResult:
    """Train a classifier on ``data.train``; resume from ``out_dir/checkpoint.pt`` when it matches.

    ``smoothing`` None means hard labels (alpha = 0). ``stop_after_epoch`` ends the run early
    as an interruption would (used by tests of resume).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    model = build_classifier(cfg.arch, data.num_classes, data.image_size, cfg.width, cfg.pretrained_path).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    gen = torch.Generator().manual_seed(seed)
    fingerprint = _fingerprint(cfg, smoothing, data, seed)
    history: list[dict[str, float]] = []
    start_epoch = 0
    state = _load_resume_state(out_dir, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        history, start_epoch = list(state["history"]), int(state["epoch"]) + 1
    started = time.perf_counter()
    epochs = range(start_epoch, cfg.epochs)
    for epoch in (progress(epochs, desc="epochs") if show_progress else epochs):
        alpha = alpha_at(smoothing, epoch, cfg.epochs) if smoothing else 0.0
        stats = _run_epoch(model, optimizer, data.train, cfg, alpha, device, gen)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test_logits = predict_logits(model, data.test.images, device)
        test_acc = (test_logits.argmax(1) == data.test.labels).float().mean().item()
        row = {"epoch": epoch, "alpha": alpha, "lr": lr, **stats, "test_acc": test_acc}
        history.append(row)
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": gen.get_state(), "epoch": epoch,
                    "history": history, "fingerprint": fingerprint}, out_dir / CHECKPOINT)
        if on_epoch:
            on_epoch(epoch, {k: float(v) for k, v in row.items() if k != "epoch"})
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return TrainResult(model.eval(), out_dir / CHECKPOINT, {}, history, start_epoch)
    model.eval()
    metrics = final_metrics(model, data, device, history)
    metrics["train_seconds"] = time.perf_counter() - started
    save_classifier(model, out_dir / MODEL, extra={"history": history, "metrics": metrics,
                                                    "alpha": smoothing.alpha if smoothing else 0.0})
    save_json(metrics, out_dir / METRICS)
    return TrainResult(model, out_dir / MODEL, metrics, history, start_epoch)


def final_metrics(model: Classifier, data: FaceData, device: torch.device,
                  history: list[dict[str, float]]) -> dict[str, float]:
    test = calibration_metrics(predict_logits(model, data.test.images, device), data.test.labels)
    train_logits = predict_logits(model, data.train.images, device)
    train_acc = (train_logits.argmax(1) == data.train.labels).float().mean().item()
    last = history[-1] if history else {}
    return {"test_acc": test["accuracy"], "train_acc": train_acc, "ece": test["ece"],
            "mean_confidence": test["mean_confidence"], "mean_logit_norm": test["mean_logit_norm"],
            "final_loss": float(last.get("loss", math.nan)), "final_alpha": float(last.get("alpha", 0.0)),
            "epochs": float(len(history))}

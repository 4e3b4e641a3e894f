"""Attack accuracy: does the evaluation model recognise the target in each reconstruction?"""

from __future__ import annotations

import torch
import torch.nn as nn

from lsmia.errors import LsmiaError
from lsmia.metrics.features import predict_logits


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of rows whose target is among the ``k`` highest logits (k is capped at the class count)."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == targets.view(-1, 1)).any(dim=1)
    return hits.double().mean().item()


def attack_accuracy(
    eval_model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``eval_model`` on ``images`` w.r.t. their target classes.

    ``acc5`` counts a target within the top-5 logits, or within all C when C < 5.
    """
    if len(images) != len(targets):
        raise LsmiaError(f"{len(images)} images but {len(targets)} targets: pass one target per image")
    logits = predict_logits(eval_model, images, batch_size)
    targets = targets.long().cpu()
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise LsmiaError(
            f"targets must lie in 0..{logits.shape[1] - 1} for a {logits.shape[1]}-class "
            "evaluation model: evaluate with the model trained on the attacked data set"
        )
    return {"acc1": topk_accuracy(logits, targets, 1), "acc5": topk_accuracy(logits, targets, 5)}

"""The training loss of a smoothed target: cross-entropy against label-smoothed targets, any alpha <= 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_alpha(alpha: float) -> None:
    if not math.isfinite(alpha) or alpha > 1.0:
        raise ValueError(f"label smoothing factor alpha must be finite and <= 1, got {alpha}")


def smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cross-entropy against (1-alpha)*onehot + alpha/C, batch mean; any alpha <= 1, negative included.

    L = (1-alpha) * (-log p_y) + alpha * mean_c(-log p_c). Equals F.cross_entropy(..., label_smoothing=alpha)
    for 0 <= alpha <= 1.
    """
    check_alpha(alpha)
    log_p = F.log_softmax(logits.float(), dim=1)
    nll = -log_p.gather(1, targets.view(-1, 1)).squeeze(1)
    uniform = -log_p.mean(dim=1)
    return ((1.0 - alpha) * nll + alpha * uniform).mean()

"""Training and attack losses."""

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


def poincare_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PPA's Poincaré loss: hyperbolic distance between L1-normalised logits and a clipped one-hot."""
    u = logits / logits.norm(p=1, dim=1, keepdim=True)
    v = F.one_hot(targets, logits.shape[1]).to(u.dtype)
    v = torch.clamp(v - 1e-4, 0.0, 1.0)
    u_sq = (u * u).sum(1)
    v_sq = (v * v).sum(1)
    diff_sq = ((u - v) ** 2).sum(1)
    delta = 2 * diff_sq / ((1 - u_sq) * (1 - v_sq))
    return torch.acosh(1 + delta).mean()


def max_margin_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative margin between the target logit and the largest other logit (Yuan et al. 2022), batch mean."""
    target_logit = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf"))
    return (others.max(1).values - target_logit).mean()


def logit_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LOMMA's logit loss without its feature regulariser: -f_y(x), the target logit negated, batch mean.

    Nguyen et al. (CVPR 2023) maximise the raw logit instead of a softmax probability, which saturates: L = -f_y(x)
    + lambda * ||phi(x) - p_reg||^2. The regulariser pulls the penultimate features phi(x) to a public-feature
    prototype p_reg; it is left out here (lambda = 0): this loss sees logits only, and PPA's GAN prior and final
    selection already keep the images natural.
    """
    return -logits.gather(1, targets.view(-1, 1)).squeeze(1).mean()


def identity_loss(name: str):
    """The attack loss by config name: poincare, ce, max_margin or logit."""
    losses = {
        "poincare": poincare_loss,
        "ce": lambda lg, t: F.cross_entropy(lg, t),
        "max_margin": max_margin_loss,
        "logit": logit_loss,
    }
    return losses[name]

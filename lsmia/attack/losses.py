"""The attack's identity losses: how far the target is from recognising the wanted class in a batch of logits.

A new loss is a function here and one line in :data:`ATTACK_LOSSES`; ``attack.loss`` in the config names it (its
``Literal`` lists the same names, which tests/test_losses_schedules.py checks against this registry).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [N, C], target classes [N]) -> scalar


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


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy (GMI, KED-MI), batch mean."""
    return F.cross_entropy(logits, targets)


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


ATTACK_LOSSES: dict[str, AttackLoss] = {
    "poincare": poincare_loss,
    "ce": cross_entropy_loss,
    "max_margin": max_margin_loss,
    "logit": logit_loss,
}


def identity_loss(name: str) -> AttackLoss:
    """The attack loss by config name (``attack.loss``)."""
    return ATTACK_LOSSES[name]

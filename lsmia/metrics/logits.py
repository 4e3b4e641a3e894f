"""How a classifier's true-class logit stands out among the other classes' logits (its logit geometry).

Negative smoothing pushes every other class's logit down without bound, and the attack losses read the logits
differently: PPA's Poincaré loss through their L1-normalised shape, cross-entropy through the softmax, the
LOMMA-style loss through the raw target logit. These numbers, on the target's private test images, say what
shape each loss meets.
"""

from __future__ import annotations

import torch

GEOMETRY_KEYS = (
    "accuracy",
    "logit_norm",
    "target_logit",
    "other_logit_mean",
    "other_logit_spread",
    "margin",
    "relative_margin",
    "target_l1_share",
)


@torch.no_grad()
def logit_geometry(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Means over images of: the L2 norm; the true class's logit f_y; the mean and the spread (population
    standard deviation) of the C - 1 other logits; the margin f_y - max_{c≠y} f_c; the margin in units of that
    spread (relative_margin: how far the true class stands out of the crowd the attack has to climb through);
    and f_y's share of the L1 norm (what PPA's Poincaré loss normalises by)."""
    logits = logits.double()
    own = labels.view(-1, 1)
    target = logits.gather(1, own).squeeze(1)
    is_other = torch.ones_like(logits, dtype=torch.bool).scatter(1, own, False)
    others = logits[is_other].view(len(logits), -1)
    spread = others.std(dim=1, unbiased=False)
    margin = target - others.max(dim=1).values
    per_image = {
        "accuracy": (logits.argmax(1) == labels).double(),
        "logit_norm": logits.norm(dim=1),
        "target_logit": target,
        "other_logit_mean": others.mean(dim=1),
        "other_logit_spread": spread,
        "margin": margin,
        "relative_margin": margin / spread,
        "target_l1_share": target / logits.abs().sum(dim=1),
    }
    return {key: per_image[key].mean().item() for key in GEOMETRY_KEYS}

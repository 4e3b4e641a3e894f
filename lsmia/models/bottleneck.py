"""The variational information bottleneck MID puts before a classifier's head (lsmia.defenses.mid trains it):
a model part, so the models never import a defense."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIGMA_SHIFT = 5.0  # sigma = softplus(s - 5), the reference's parameterisation
MIN_SIGMA = 1e-8  # keeps log sigma^2 finite where softplus underflows


def bottleneck_dim(feature_dim: int) -> int:
    """The size of z: half the backbone's feature size, as in the reference."""
    return max(1, feature_dim // 2)


class VariationalBottleneck(nn.Module):
    """z = mu(h) + sigma(h) * eps in training, mu(h) in evaluation; one linear layer gives mu and s."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.encoder = nn.Linear(in_dim, 2 * dim)

    def statistics(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) from the encoder's output [N, 2 * dim]."""
        mu, s = encoded.split(self.dim, dim=1)
        sigma = F.softplus(s - SIGMA_SHIFT).clamp_min(MIN_SIGMA)
        return mu, 2.0 * sigma.log()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, log_var = self.statistics(self.encoder(h))
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * (0.5 * log_var).exp()

"""MID (Wang et al., AAAI 2021): a variational information bottleneck before the classifier head.

The backbone features h give a Gaussian q(z|x) = N(mu(h), diag sigma(h)^2) of half their size (the reference's
k = feature_dim // 2); training samples z = mu + sigma * eps (reparameterisation), evaluation and attacks use
z = mu, and the head classifies z. The loss is CE + beta * KL(q(z|x) || N(0, I)), which bounds I(x; z) and so
what the model's output can reveal about its input. As in the reference code (BiDO repository ``train_vib``,
MIBench ``VibWrapper``), sigma = softplus(s - 5), so training starts with little noise (sigma ~ 0.0067).
The reference codes sample z in evaluation too (their ``predict``); lsmia evaluates and attacks the mean, a
deterministic model whose gradients an attack can follow (sampling would add gradient noise, a form of
obfuscation the comparison should not credit to the bottleneck).
"""

from __future__ import annotations

from typing import Any

import torch

from lsmia.config import MidSettings
from lsmia.defenses.base import Defense, DefenseSpec, SearchParam
from lsmia.models.bottleneck import VariationalBottleneck, bottleneck_dim

__all__ = ["SPEC", "MidDefense", "VariationalBottleneck", "bottleneck_dim", "gaussian_kl"]


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^log_var) || N(0, I)) = 1/2 * sum_k (mu_k^2 + sigma_k^2 - log sigma_k^2 - 1), batch mean."""
    return 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1.0).sum(dim=1).mean()


class MidDefense(Defense):
    """loss = CE + beta * KL(q(z|x) || N(0, I)) of the training batch, read from the bottleneck's encoder."""

    name = "mid"

    def __init__(self, bottleneck: VariationalBottleneck, beta: float) -> None:
        super().__init__()
        self.bottleneck, self.beta = bottleneck, beta
        self.encoded: list[torch.Tensor] = []
        self.capture([bottleneck.encoder], self.encoded)

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        encoded = self.encoded[-1]
        self.encoded.clear()
        mu, log_var = self.bottleneck.statistics(encoded.float())
        return self.beta * gaussian_kl(mu, log_var)


def build(settings: MidSettings, model: Any) -> MidDefense:
    assert model.bottleneck is not None, "a MID model is built with its bottleneck (SPEC.bottleneck)"
    return MidDefense(model.bottleneck, settings.mid_beta)


SPEC = DefenseSpec(
    "mid", build, (SearchParam("mid_beta", 1e-4, 1.0, symbol="β"),), strength="β={mid_beta:g}", bottleneck=True
)

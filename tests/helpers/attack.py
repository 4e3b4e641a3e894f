"""Tiny priors and targets whose attack optimum is known: the attack tests and the distributed tests share them."""

from __future__ import annotations

import torch
import torch.nn as nn

from lsmia.config import AttackConfig

NUM_CLASSES = 6


class ColourPrior(nn.Module):
    """Latent → flat colour (sigmoid of the first three latents) plus a faint horizontal ramp (the fourth).

    The ramp has a non-zero mean, so every latent moves the mean colour and gets a real gradient.
    """

    latent_dim = 4
    image_size = 8
    ramp: torch.Tensor  # a buffer

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("ramp", torch.linspace(0, 1, self.image_size).view(1, 1, 1, -1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        colour = torch.sigmoid(self.gain * z[:, :3]).view(-1, 3, 1, 1)
        ramp = 0.1 * torch.tanh(z[:, 3]).view(-1, 1, 1, 1) * self.ramp
        return (colour + ramp).expand(-1, 3, self.image_size, self.image_size).clamp(0, 1)

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)


class MeanColourClassifier(nn.Module):
    """Linear in the mean colour: class 2k wants channel k bright, class 2k+1 wants it dark."""

    num_classes = NUM_CLASSES
    image_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, NUM_CLASSES)
        directions = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
        with torch.no_grad():
            self.linear.weight.copy_(8.0 * directions)
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean((2, 3)) - 0.5)


def make_cfg(**overrides) -> AttackConfig:
    base = dict(
        targets=3,
        pool_size=64,
        candidates=6,
        final_samples=3,
        steps=20,
        lr=0.1,
        batch_size=8,
        selection_batch_size=16,
        final_draws=4,
        seed=0,
        latent="z",
    )
    return AttackConfig(**{**base, **overrides})

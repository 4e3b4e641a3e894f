"""Image grids: prior samples and real images beside reconstructions."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from lsmia.attack.result import AttackResult
from lsmia.data.base import FaceData
from lsmia.utils import atomic_path


def save_png(images: torch.Tensor, path: Path | str, nrow: int, padding: int = 2) -> None:
    """Save float [0,1] or uint8 images as one PNG grid, atomically."""
    images = images.float().div(255.0) if images.dtype == torch.uint8 else images
    with atomic_path(path) as tmp:
        save_image(images, tmp, nrow=nrow, padding=padding, format="png")


def comparison_rows(data: FaceData, result: AttackResult, n_real: int = 4, n_fake: int = 8,
                    max_targets: int = 10) -> tuple[torch.Tensor, int]:
    """Per target a row: ``n_real`` training images of the class, then its best ``n_fake`` reconstructions."""
    size = result.final_images.shape[-1]
    rows = []
    for cls in result.targets[:max_targets]:
        real = data.train.images[data.train.labels == cls][:n_real]
        real = torch.nn.functional.interpolate(real.float(), size=(size, size), mode="bilinear",
                                               antialias=True).clamp(0, 255) if real.shape[-1] != size else real.float()
        fake_idx = (result.final_targets == cls).nonzero().squeeze(1)
        fake_idx = fake_idx[result.final_scores[fake_idx].argsort(descending=True)][:n_fake]
        fake = result.final_images[fake_idx].float()
        blank = torch.full((1, 3, size, size), 255.0)
        pad_real = torch.full((n_real - len(real), 3, size, size), 255.0)
        pad_fake = torch.full((n_fake - len(fake), 3, size, size), 255.0)
        rows.append(torch.cat([real, pad_real, blank, fake, pad_fake]))
    return torch.cat(rows).div(255.0), n_real + 1 + n_fake


def save_attack_grid(data: FaceData, result: AttackResult, path: Path | str, **kwargs) -> None:
    images, nrow = comparison_rows(data, result, **kwargs)
    save_png(images, path, nrow=nrow)

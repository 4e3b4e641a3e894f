"""Batched, differentiable image transforms on float tensors in [0, 1].

Each sample of a batch draws its own parameters, and everything runs as a few tensor
ops (one ``grid_sample`` for all crops), so training and the attack never loop over
samples in Python. Gradients flow through every transform, as the attack needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device="cpu").to(device) * (high - low) + low


def sample_crop_params(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of ``random_resized_crop`` for ``n`` samples: width, height (fractions) and centre.

    Calling it alone advances ``gen`` exactly as a crop of ``n`` samples would (the attack uses that
    to skip another rank's batches without changing the random stream).
    """
    area = _uniform(n, scale[0], scale[1], gen, device)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    aspect = torch.exp(log_r)
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the full width/height
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (_uniform(n, 0, 1, gen, device) * 2 - 1) * (1 - crop_w)
    cy = (_uniform(n, 0, 1, gen, device) * 2 - 1) * (1 - crop_h)
    return crop_w, crop_h, cx, cy


def random_resized_crop(
    x: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (1.0, 1.0),
    out_size: int | None = None,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` with aspect ``ratio`` per sample, resize to ``out_size``.

    Like torchvision's RandomResizedCrop but one draw per sample and bilinear via grid_sample.
    """
    n, _, h, _w = x.shape
    out_size = out_size or h
    crop_w, crop_h, cx, cy = sample_crop_params(n, scale, ratio, gen, x.device)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w, cx
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, cy
    grid = F.affine_grid(theta, [n, x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_flip(x: torch.Tensor, p: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    flip = (_uniform(len(x), 0, 1, gen, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x[:, 0], x[:, 1], x[:, 2]
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - v.unsqueeze(1) * s.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue jitter (torchvision's ranges, fixed order)."""
    n = len(x)
    shape = (n, 1, 1, 1)
    if brightness > 0:
        x = x * _uniform(n, max(0, 1 - brightness), 1 + brightness, gen, x.device).view(shape)
    if contrast > 0:
        mean = _gray(x).mean((1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, max(0, 1 - contrast), 1 + contrast, gen, x.device).view(shape) + mean
    if saturation > 0:
        g = _gray(x)
        x = (x - g) * _uniform(n, max(0, 1 - saturation), 1 + saturation, gen, x.device).view(shape) + g
    x = x.clamp(0, 1)
    if hue > 0:
        hsv = _rgb_to_hsv(x)
        shift = _uniform(n, -hue, hue, gen, x.device).view(n, 1, 1)
        hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
        x = _hsv_to_rgb(hsv)
    return x.clamp(0, 1)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def training_augment(
    x: torch.Tensor,
    crop_scale: tuple[float, float],
    flip: bool,
    jitter: tuple[float, float, float, float],
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """PPA's training augmentation: RandomResizedCrop(ratio 1), ColorJitter, horizontal flip."""
    x = random_resized_crop(x, crop_scale, (1.0, 1.0), gen=gen)
    if any(j > 0 for j in jitter):
        x = color_jitter(x, *jitter, gen=gen)
    if flip:
        x = random_flip(x, gen=gen)
    return x

"""The generative image prior: a small DCGAN for the built-in data, or any TorchScript generator.

The attack only sees :class:`Prior`: latents ``z`` [N, latent_dim] in, float images in [0, 1]
[N, 3, S, S] out, and ``sample_latents`` to draw the initial pool reproducibly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from lsmia.config import PriorConfig
from lsmia.errors import LsmiaError
from lsmia.utils import load_torch, save_torch

DCGAN_FORMAT = "lsmia-dcgan-prior"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256


def check_image_size(size: int) -> None:
    if size < MIN_IMAGE_SIZE or size > MAX_IMAGE_SIZE or size & (size - 1):
        raise LsmiaError(f"the DCGAN prior needs square power-of-two images (16, 32, 64, 128), got {size} px: "
                         "set data.image_size to a power of two")


def _channels(resolution: int, image_size: int, width: int) -> int:
    """Feature channels at ``resolution``: ``width`` just below the output size, doubling (up to 8x) per halving."""
    return width * min(8, max(1, image_size // (2 * resolution)))


def _resolutions(image_size: int) -> list[int]:
    """The intermediate resolutions 4, 8, ..., image_size / 2."""
    return [2 ** k for k in range(2, int(math.log2(image_size)))]


class Generator(nn.Module):
    """DCGAN generator: z -> 4x4 features -> (4x4 stride-2 transposed conv, BN, ReLU) per doubling -> RGB.

    The last doubling is nearest upsampling and a 3x3 conv to RGB (tanh): it avoids the
    checkerboard a transposed conv would print on the output, at a small cost.
    """

    def __init__(self, latent_dim: int, image_size: int, width: int) -> None:
        super().__init__()
        check_image_size(image_size)
        self.latent_dim, self.image_size, self.width = latent_dim, image_size, width
        res = _resolutions(image_size)
        c0 = _channels(4, image_size, width)
        self.stem = nn.Sequential(nn.Linear(latent_dim, c0 * 16, bias=False), nn.Unflatten(1, (c0, 4, 4)),
                                  nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        for r in res[1:]:
            cin, cout = _channels(r // 2, image_size, width), _channels(r, image_size, width)
            blocks += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(_channels(res[-1], image_size, width), 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]."""
        return self.to_rgb(self.blocks(self.stem(z)))


class Discriminator(nn.Module):
    """DCGAN discriminator with spectral norm on every layer (no BN): stride-2 4x4 convs down to 4x4."""

    def __init__(self, image_size: int, width: int) -> None:
        super().__init__()
        check_image_size(image_size)
        layers: list[nn.Module] = []
        cin = 3
        for r in reversed(_resolutions(image_size)):
            cout = _channels(r, image_size, width)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = spectral_norm(nn.Linear(cin * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One realness score per image in [-1, 1]."""
        return self.head(self.body(x)).squeeze(1)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Prior(nn.Module):
    """What the attack uses: ``forward(z)`` -> float images in [0, 1] [N, 3, S, S]."""

    latent_dim: int
    image_size: int

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal latents [n, latent_dim], drawn on the CPU so a seed gives the same pool anywhere."""
        return torch.randn(n, self.latent_dim, generator=generator, device="cpu")


class DCGANPrior(Prior):
    """The trained DCGAN generator (EMA weights) in eval mode, frozen."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.latent_dim, self.image_size = generator.latent_dim, generator.image_size

    def train(self, mode: bool = True) -> "DCGANPrior":
        # BN must keep its running statistics: an image may never depend on the rest of its batch.
        super().train(mode)
        self.generator.eval()
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z).add(1.0).mul(0.5).clamp(0.0, 1.0)


class TorchScriptPrior(Prior):
    """A user-exported TorchScript generator mapping latents [N, latent_dim] to images in ``output_range``."""

    def __init__(self, path: Path, latent_dim: int, output_range: tuple[float, float],
                 center_crop: float = 1.0) -> None:
        super().__init__()
        low, high = float(output_range[0]), float(output_range[1])
        if not high > low:
            raise LsmiaError(f"prior.output_range {output_range} must be (low, high) with high > low, e.g. [-1, 1]")
        self.module = _load_script(path).eval()
        for param in self.module.parameters():  # ScriptModules lack requires_grad_()
            param.requires_grad_(False)
        self.latent_dim, self.low, self.high = latent_dim, low, high
        self.full_size = self._probe(path)
        self.crop = max(1, round(self.full_size * center_crop))  # PPA keeps the central 800 px of 1024
        self.image_size = self.crop

    def train(self, mode: bool = True) -> "TorchScriptPrior":
        super().train(mode)
        self.module.eval()
        return self

    def _probe(self, path: Path) -> int:
        """Run two latents through the module; return the image size or raise naming the fix."""
        z = torch.randn(2, self.latent_dim, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                out = self.module(z)
        except Exception as err:
            raise LsmiaError(f"TorchScript prior {path} failed on latents of size {self.latent_dim} "
                             f"({type(err).__name__}): set prior.latent_dim to the latent size it expects") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 2 or out.shape[1] != 3 \
                or out.shape[2] != out.shape[3] or not out.is_floating_point():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LsmiaError(f"TorchScript prior {path} returned {shape}, not float images [N, 3, S, S]: "
                             "export a module that maps latents [N, latent_dim] to RGB images")
        return int(out.shape[-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.module(z).float()
        if self.crop < self.full_size:
            start = (self.full_size - self.crop) // 2
            out = out[..., start:start + self.crop, start:start + self.crop]
        return ((out - self.low) / (self.high - self.low)).clamp(0.0, 1.0)


def _load_script(path: Path) -> torch.jit.ScriptModule:
    if not path.exists():
        raise LsmiaError(f"TorchScript prior {path} does not exist: set prior.path to the exported generator file")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise LsmiaError(f"{path} is not a TorchScript file ({type(err).__name__}): "
                         "export the generator with torch.jit.script or torch.jit.trace and torch.jit.save") from None


def generator_spec(generator: Generator) -> dict[str, Any]:
    return {"format": DCGAN_FORMAT, "latent_dim": generator.latent_dim,
            "image_size": generator.image_size, "width": generator.width}


def save_dcgan_prior(generator: Generator, path: Path | str, extra: dict[str, Any] | None = None) -> None:
    """Write the spec and state_dict of ``generator`` (tensors and primitives only)."""
    save_torch({**generator_spec(generator), "state_dict": generator.state_dict(), **(extra or {})}, path)


def load_dcgan_prior(path: Path | str) -> DCGANPrior:
    ckpt = load_torch(path, what="prior checkpoint", fix="run 'lsmia train-prior' first")
    if not isinstance(ckpt, dict) or ckpt.get("format") != DCGAN_FORMAT:
        raise LsmiaError(f"{path} is not an lsmia DCGAN prior: re-run 'lsmia train-prior' to write it")
    generator = Generator(int(ckpt["latent_dim"]), int(ckpt["image_size"]), int(ckpt["width"]))
    generator.load_state_dict(ckpt["state_dict"])
    return DCGANPrior(generator)


def load_prior(cfg: PriorConfig, checkpoint: Path | None) -> Prior:
    """The prior named by ``cfg``: the DCGAN at ``checkpoint`` or the TorchScript file at ``cfg.path``."""
    if cfg.kind == "torchscript":
        if cfg.path is None:
            raise LsmiaError("prior.kind is 'torchscript' but prior.path is not set: set prior.path to the exported file")
        return TorchScriptPrior(Path(cfg.path), cfg.latent_dim, cfg.output_range, cfg.center_crop)
    if checkpoint is None:
        raise LsmiaError("the DCGAN prior needs the checkpoint written by 'lsmia train-prior': run that stage first")
    return load_dcgan_prior(checkpoint)

"""Train the DCGAN prior on the public images only (hinge loss, spectral-norm D, DiffAugment, G EMA).

Resumable: ``checkpoint.pt`` is written atomically after every epoch and holds everything
the next epoch needs (G, D, G_ema, both optimisers, the step count and the RNG state), so a
run resumed on the CPU ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from lsmia.config import PriorConfig
from lsmia.data.base import ImageSet
from lsmia.errors import DivergenceError, LsmiaError
from lsmia.models.generator import Discriminator, Generator, check_image_size, parameter_count, save_dcgan_prior
from lsmia.utils import atomic_path, load_torch, progress, save_timings, save_torch

EpochCallback = Callable[[int, dict[str, float]], None]
TRANSLATION_RATIO = 0.125  # DiffAugment's default shift: up to 1/8 of the image size
EMA_WARMUP = 10  # the EMA decay ramps as (1 + step) / (EMA_WARMUP + step) until it reaches ema_decay
BN_CALIBRATION_BATCHES = 16
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # 1d: the stem of a generator with a mapping network


@dataclass
class PriorResult:
    checkpoint_path: Path  # prior.pt: spec + EMA generator state_dict
    samples_path: Path  # samples.png: a grid of EMA samples from a fixed seed
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0  # epochs trained by this call (0 when the checkpoint was already complete)


@dataclass
class GANState:
    generator: Generator
    discriminator: Discriminator
    generator_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator
    epoch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


# --- DiffAugment (Zhao et al. 2020): the same random transform family on real and fake images ---


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=gen).to(device)


def augment_colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, saturation and contrast jitter for images in [-1, 1]."""
    n = len(x)
    x = x + (_rand(n, gen, x.device) - 0.5)
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (_rand(n, gen, x.device) * 2) + mean
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, gen, x.device) + 0.5) + mean


def augment_translation(x: torch.Tensor, gen: torch.Generator, ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n, 1, 1), generator=gen).to(x.device)
    dx = torch.randint(-sw, sw + 1, (n, 1, 1), generator=gen).to(x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # a clamped index lands on the zero border
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return augment_translation(augment_colour(x, gen), gen)


# --- EMA and BN calibration ---


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) are copied."""
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=False):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=False):
        b_ema.copy_(b)


def ema_decay_at(step: int, target: float) -> float:
    return min(target, (1.0 + step) / (EMA_WARMUP + step))


@torch.no_grad()
def calibrate_batchnorm(generator: Generator, batch_size: int, seed: int, device: torch.device) -> Generator:
    """A copy of ``generator`` whose BN running statistics are the exact averages over fresh latents.

    The EMA weights never ran in train mode, so the statistics copied from G do not quite match them.
    """
    calibrated = copy.deepcopy(generator).eval()  # only BN in training mode: w_avg must not move
    for module in calibrated.modules():
        if isinstance(module, BATCH_NORMS):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
            module.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(BN_CALIBRATION_BATCHES):
        calibrated(torch.randn(batch_size, generator.latent_dim, generator=gen).to(device))
    for module in calibrated.modules():
        if isinstance(module, BATCH_NORMS):
            module.momentum = 0.1
    return calibrated.eval()


# --- state, checkpoints and fingerprints ---


def fingerprint(cfg: PriorConfig, public: ImageSet, seed: int, code_version: str = "") -> str:
    """Identifies a run: everything that shapes the weights except the number of epochs."""
    ignored = {"epochs", "sample_grid", "kind", "path", "output_range"}
    if cfg.mapping_layers == 0:  # a plain DCGAN keeps the fingerprint it had before the mapping network existed
        ignored |= {"mapping_layers", "w_dim", "mapping_lr_mult"}
    settings = cfg.model_dump(mode="json", exclude=ignored)
    digest = hashlib.sha256(public.images.contiguous().numpy().tobytes()).hexdigest()
    identity = {"cfg": settings, "seed": seed, "data": digest, **({"code": code_version} if code_version else {})}
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def generator_groups(generator: Generator, cfg: PriorConfig) -> list[dict]:
    """Adam parameter groups: the mapping network (if any) at ``cfg.mapping_lr_mult`` times the lr, as in StyleGAN."""
    if not generator.has_mapping:
        return [{"params": list(generator.parameters())}]
    mapping = {id(p) for p in generator.mapping.parameters()}
    return [
        {"params": [p for p in generator.parameters() if id(p) not in mapping]},
        {"params": list(generator.mapping.parameters()), "lr": cfg.lr * cfg.mapping_lr_mult},
    ]


def new_state(cfg: PriorConfig, image_size: int, device: torch.device, seed: int) -> GANState:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(cfg.latent_dim, image_size, cfg.width, cfg.mapping_layers, cfg.w_dim).to(device)
        discriminator = Discriminator(image_size, cfg.width).to(device)
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    betas = (cfg.betas[0], cfg.betas[1])
    opt_g = torch.optim.Adam(generator_groups(generator, cfg), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=betas)
    return GANState(generator, discriminator, generator_ema, opt_g, opt_d, torch.Generator().manual_seed(seed))


def save_checkpoint(state: GANState, path: Path, run_id: str) -> None:
    save_torch(
        {
            "fingerprint": run_id,
            "epoch": state.epoch,
            "step": state.step,
            "metrics": state.metrics,
            "generator": state.generator.state_dict(),
            "discriminator": state.discriminator.state_dict(),
            "generator_ema": state.generator_ema.state_dict(),
            "opt_g": state.opt_g.state_dict(),
            "opt_d": state.opt_d.state_dict(),
            "rng": state.rng.get_state(),
        },
        path,
    )


def try_resume(state: GANState, path: Path, run_id: str) -> bool:
    """Load ``path`` into ``state`` if it belongs to this run; a foreign or unreadable checkpoint is ignored."""
    if not path.exists():
        return False
    try:
        ckpt = load_torch(path, what="prior training checkpoint")
    except LsmiaError:
        return False
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != run_id:
        return False
    state.generator.load_state_dict(ckpt["generator"])
    state.discriminator.load_state_dict(ckpt["discriminator"])
    state.generator_ema.load_state_dict(ckpt["generator_ema"])
    state.opt_g.load_state_dict(ckpt["opt_g"])
    state.opt_d.load_state_dict(ckpt["opt_d"])
    state.rng.set_state(ckpt["rng"])
    state.epoch, state.step, state.metrics = int(ckpt["epoch"]), int(ckpt["step"]), dict(ckpt["metrics"])
    return True


# --- training ---


def check_public(public: ImageSet | None, batch_size: int) -> int:
    """Return the image size of the public set, or raise naming the fix."""
    if public is None or len(public) == 0:
        raise LsmiaError(
            "the prior needs public images but there are none: set data.public_root or use the builtin data"
        )
    h, w = public.images.shape[-2:]
    if h != w:
        raise LsmiaError(f"the prior needs square images, got {h}x{w}: set data.image_size to resize them")
    check_image_size(int(h))
    if len(public) < batch_size:
        raise LsmiaError(
            f"the public set has {len(public)} images, fewer than prior.batch_size={batch_size}: lower prior.batch_size"
        )
    return int(h)


def train_step(state: GANState, real: torch.Tensor, cfg: PriorConfig) -> tuple[float, float, float, float]:
    """One D and one G update (hinge loss); returns loss_d, loss_g, mean D score on real and fake."""
    g, d, rng = state.generator, state.discriminator, state.rng
    z = torch.randn(len(real), cfg.latent_dim, generator=rng).to(real.device)
    fake = g(z)
    d_real = d(diff_augment(real, rng))
    d_fake = d(diff_augment(fake.detach(), rng))
    loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
    state.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    state.opt_d.step()
    loss_g = -d(diff_augment(fake, rng)).mean()
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    update_ema(state.generator_ema, g, ema_decay_at(state.step, cfg.ema_decay))
    state.step += 1
    return loss_d.item(), loss_g.item(), d_real.mean().item(), d_fake.mean().item()


def train_epoch(
    state: GANState, images: torch.Tensor, cfg: PriorConfig, device: torch.device, checkpoint: Path
) -> dict[str, float]:
    state.generator.train()
    state.discriminator.train()
    perm = torch.randperm(len(images), generator=state.rng)
    steps = len(images) // cfg.batch_size
    totals = torch.zeros(4, dtype=torch.float64)
    for i in range(steps):
        batch = images[perm[i * cfg.batch_size : (i + 1) * cfg.batch_size].to(device)]
        values = train_step(state, batch.float().div_(127.5).sub_(1.0), cfg)
        if not all(math.isfinite(v) for v in values[:2]):
            raise DivergenceError(
                f"prior training diverged in epoch {state.epoch + 1} (loss_d={values[0]}, loss_g={values[1]}): "
                f"lower prior.lr (now {cfg.lr}); the last good checkpoint {checkpoint} is kept"
            )
        totals += torch.tensor(values, dtype=torch.float64)
    means = (totals / steps).tolist()
    return dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), means, strict=False))


@torch.no_grad()
def save_samples(generator: Generator, n: int, seed: int, path: Path, device: torch.device) -> None:
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    images = generator(z).add(1.0).mul(0.5).clamp(0.0, 1.0).cpu()
    grid = make_grid(images, nrow=max(1, math.ceil(math.sqrt(n))), padding=1)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def train_prior(
    cfg: PriorConfig,
    public: ImageSet,
    out_dir: Path,
    device: torch.device,
    seed: int,
    on_epoch: EpochCallback | None = None,
    code_version: str = "",
) -> PriorResult:
    """Train (or resume) the DCGAN prior (a checkpoint of the same config, data, seed and ``code_version`` only); write prior.pt, checkpoint.pt and samples.png under ``out_dir``."""
    image_size = check_public(public, cfg.batch_size)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.pt"
    run_id = fingerprint(cfg, public, seed, code_version)
    state = new_state(cfg, image_size, device, seed)
    try_resume(state, checkpoint, run_id)
    first_epoch, images = state.epoch, public.images.to(device)
    training_started = time.perf_counter()
    for _ in progress(range(state.epoch, cfg.epochs), total=max(0, cfg.epochs - state.epoch), desc="prior epochs"):
        started = time.perf_counter()
        state.metrics = train_epoch(state, images, cfg, device, checkpoint)  # no seconds: checkpoints stay byte-stable
        state.epoch += 1
        if on_epoch is not None:  # before the checkpoint: a kill between the two re-runs this epoch, never skips it
            on_epoch(state.epoch, {**state.metrics, "epoch_seconds": time.perf_counter() - started})
        save_checkpoint(state, checkpoint, run_id)
    result = finish(cfg, state, out_dir, device, seed, epochs_run=state.epoch - first_epoch)
    save_timings(
        result.checkpoint_path,
        {"train_s": time.perf_counter() - training_started, "epochs_run": state.epoch - first_epoch},
    )
    return result


def finish(
    cfg: PriorConfig, state: GANState, out_dir: Path, device: torch.device, seed: int, epochs_run: int
) -> PriorResult:
    final = calibrate_batchnorm(state.generator_ema, cfg.batch_size, seed, device)
    prior_path, samples_path = out_dir / "prior.pt", out_dir / "samples.png"
    save_dcgan_prior(final, prior_path, extra={"epochs": state.epoch, "seed": seed})
    save_samples(final, cfg.sample_grid, seed, samples_path, device)
    metrics = {
        **state.metrics,
        "epochs": float(state.epoch),
        "generator_params": float(parameter_count(state.generator)),
        "discriminator_params": float(parameter_count(state.discriminator)),
    }
    return PriorResult(prior_path, samples_path, metrics, epochs_run)

"""The generative image prior: a small DCGAN for the built-in data, or any TorchScript generator.

The attack only sees :class:`Prior`: ``configure_latent`` picks the space it optimises (``z``, or
StyleGAN's ``w`` = mapping(z) for priors with a mapping network), ``sample_latents`` draws the
initial pool in that space reproducibly (w truncated around ``w_avg``), and ``forward`` turns
latents [N, latent_dim] into float images in [0, 1] [N, 3, S, S].
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from lsmia.config import PriorConfig
from lsmia.errors import LsmiaError
from lsmia.utils import load_torch, require_keys, save_torch

DCGAN_FORMAT = "lsmia-dcgan-prior"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256
W_AVG_BETA = 0.995  # StyleGAN2-ADA's w_avg tracking: w_avg <- lerp(mean w of the batch, w_avg, beta)
TRUNCATION_CUTOFF = 8  # StyleGAN / PPA: truncate the first 8 layers of w
W_AVG_SAMPLES = 10_000  # latents averaged for w_avg when a TorchScript StyleGAN does not declare it
LatentSpace = Literal["z", "w", "w+"]


def check_image_size(size: int) -> None:
    if size < MIN_IMAGE_SIZE or size > MAX_IMAGE_SIZE or size & (size - 1):
        raise LsmiaError(
            f"the DCGAN prior needs square power-of-two images (16, 32, 64, 128), got {size} px: "
            "set data.image_size to a power of two"
        )


def _channels(resolution: int, image_size: int, width: int) -> int:
    """Feature channels at ``resolution``: ``width`` just below the output size, doubling (up to 8x) per halving."""
    return width * min(8, max(1, image_size // (2 * resolution)))


def _resolutions(image_size: int) -> list[int]:
    """The intermediate resolutions 4, 8, ..., image_size / 2."""
    return [2**k for k in range(2, int(math.log2(image_size)))]


class MappingNetwork(nn.Module):
    """StyleGAN's z -> w: z scaled to unit second moment, then ``layers`` x (Linear, LeakyReLU 0.2)."""

    def __init__(self, latent_dim: int, w_dim: int, layers: int) -> None:
        super().__init__()
        dims = [latent_dim] + [w_dim] * layers
        body: list[nn.Module] = []
        for cin, cout in pairwise(dims):
            linear = nn.Linear(cin, cout)
            # Variance-preserving (He) init and zero bias, as StyleGAN's equalised layers start: w keeps z's scale.
            # PyTorch's default init shrinks the second moment ~6x per layer, leaving w a small wobble on a bias.
            nn.init.kaiming_normal_(linear.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            body += [linear, nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*body)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z * z.square().mean(1, keepdim=True).add(1e-8).rsqrt())


class Generator(nn.Module):
    """DCGAN generator: z -> 4x4 features -> (4x4 stride-2 transposed conv, BN, ReLU) per doubling -> RGB.

    The last doubling is nearest upsampling and a 3x3 conv to RGB (tanh): it avoids the
    checkerboard a transposed conv would print on the output, at a small cost.

    With ``mapping_layers`` > 0 a StyleGAN-like mapping network turns z into w [N, w_dim], the
    synthesis net (everything above) takes w, and ``w_avg`` tracks the mean w during training as
    StyleGAN does. With 0 there is no mapping: w is z and the module is the plain DCGAN.
    """

    w_avg: torch.Tensor  # a buffer, with a mapping network only

    def __init__(
        self, latent_dim: int, image_size: int, width: int, mapping_layers: int = 0, w_dim: int | None = None
    ) -> None:
        super().__init__()
        check_image_size(image_size)
        self.latent_dim, self.image_size, self.width = latent_dim, image_size, width
        self.mapping_layers = mapping_layers
        self.w_dim = (w_dim or latent_dim) if mapping_layers else latent_dim
        res = _resolutions(image_size)
        c0 = _channels(4, image_size, width)
        if mapping_layers:
            # w has a mean (z has none): BN per channel would keep its projection as a fixed 4x4 pattern as strong
            # as the per-sample signal (measured), and the GAN collapsed; BN per feature removes it.
            self.stem = nn.Sequential(
                nn.Linear(self.w_dim, c0 * 16, bias=False),
                nn.BatchNorm1d(c0 * 16),
                nn.Unflatten(1, (c0, 4, 4)),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Linear(self.w_dim, c0 * 16, bias=False),
                nn.Unflatten(1, (c0, 4, 4)),
                nn.BatchNorm2d(c0),
                nn.ReLU(inplace=True),
            )
        blocks: list[nn.Module] = []
        for r in res[1:]:
            cin, cout = _channels(r // 2, image_size, width), _channels(r, image_size, width)
            blocks += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(_channels(res[-1], image_size, width), 3, 3, 1, 1),
            nn.Tanh(),
        )
        if mapping_layers:  # built last, so the synthesis layers draw the same initial weights as without it
            self.mapping = MappingNetwork(latent_dim, self.w_dim, mapping_layers)
            self.register_buffer("w_avg", torch.zeros(self.w_dim))

    @property
    def has_mapping(self) -> bool:
        return self.mapping_layers > 0

    def to_w(self, z: torch.Tensor) -> torch.Tensor:
        """w = mapping(z) (z itself without a mapping network); in training mode it also updates ``w_avg``."""
        if not self.has_mapping:
            return z
        w = self.mapping(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(0).lerp(self.w_avg, W_AVG_BETA))
        return w

    def synthesis(self, w: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from w [N, w_dim]."""
        return self.to_rgb(self.blocks(self.stem(w)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]."""
        return self.synthesis(self.to_w(z))


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


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float | None, cutoff: int | None = None) -> torch.Tensor:
    """StyleGAN's truncation trick, w_avg + psi (w - w_avg); on [N, num_ws, w_dim] only the first ``cutoff`` layers.

    ``psi`` None leaves w untouched; psi 0 gives exactly w_avg and psi 1 exactly w (torch.lerp's ends are exact).
    """
    if psi is None:
        return w
    truncated = torch.lerp(w_avg.to(w.dtype).expand_as(w), w, psi)
    if w.ndim == 3 and cutoff is not None and cutoff < w.shape[1]:
        layer = torch.arange(w.shape[1], device=w.device).view(1, -1, 1)
        truncated = torch.where(layer < cutoff, truncated, w)
    return truncated


class Prior(nn.Module):
    """What the attack uses: ``forward(latent)`` -> float images in [0, 1] [N, 3, S, S].

    ``configure_latent`` chooses the space the latents live in: ``z`` (the generator's input) or
    ``w`` (one mapped vector per sample, PPA's choice; priors with a mapping network only) or ``w+``
    (one w per synthesis layer, PPA's ``single_w: false``; StyleGAN priors only), flattened to
    [N, num_ws * w_dim] so the attack treats every space alike. In all spaces a mapping prior applies
    the truncation psi around ``w_avg``, so they start from the same images. Subclasses provide
    ``_images_from_z``, ``_images_from_w``, ``_truncated_w`` and, for w+, ``_truncated_ws`` and
    ``_images_from_ws`` with ``num_ws`` > 0.
    """

    z_dim: int
    w_dim: int
    image_size: int
    latent_space: LatentSpace = "z"
    truncation: float | None = None  # psi around w_avg; None: no truncation (also: no mapping network)
    num_ws: int = 0  # synthesis layers that each take a w; 0: w enters once and w+ is not defined
    clip: bool = True  # clamp images to [0, 1]; the attack turns it off for attack.clip: false (PPA's attack)
    no_mapping_fix = "set attack.latent: z"
    no_per_layer_fix = "its synthesis takes one w, so w+ is w: set attack.latent: w"

    @property
    def has_mapping(self) -> bool:
        return False

    @property
    def latent_dim(self) -> int:
        """Columns of the latents the attack optimises."""
        if self.latent_space == "w+":
            return self.num_ws * self.w_dim
        return self.w_dim if self.latent_space == "w" else self.z_dim

    def configure_latent(self, space: LatentSpace, truncation: float | None) -> None:
        if space not in ("z", "w", "w+"):
            raise LsmiaError(f"unknown latent space '{space}': set attack.latent to z, w or w+")
        if space in ("w", "w+") and not self.has_mapping:
            raise LsmiaError(f"attack.latent is '{space}' but the prior has no mapping network: {self.no_mapping_fix}")
        if space == "w+" and not self.num_ws:
            raise LsmiaError(f"attack.latent is 'w+' but {self.no_per_layer_fix}")
        self.latent_space = space
        self.truncation = truncation if self.has_mapping else None

    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Latents [n, latent_dim] from standard normal z drawn on the CPU, so a seed gives the same pool anywhere."""
        z = torch.randn(n, self.z_dim, generator=generator, device="cpu")
        if self.latent_space == "z":
            return z
        with torch.no_grad():
            if self.latent_space == "w+":
                return self._truncated_ws(z.to(self._device())).flatten(1).cpu()
            return self._truncated_w(z.to(self._device())).cpu()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.latent_space == "w+":
            return self._images_from_ws(latent.view(-1, self.num_ws, self.w_dim))
        return self._images_from_w(latent) if self.latent_space == "w" else self._images_from_z(latent)

    def _device(self) -> torch.device:
        tensor = next(iter([*self.parameters(), *self.buffers()]), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _images_from_w(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _truncated_w(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _truncated_ws(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _images_from_ws(self, ws: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DCGANPrior(Prior):
    """The trained DCGAN generator (EMA weights) in eval mode, frozen."""

    no_mapping_fix = "set prior.mapping_layers > 0 and re-run 'lsmia train-prior', or set attack.latent: z"
    no_per_layer_fix = "the built-in prior feeds w to its first layer only, so w+ is w: set attack.latent: w"

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.z_dim, self.w_dim, self.image_size = generator.latent_dim, generator.w_dim, generator.image_size

    @property
    def has_mapping(self) -> bool:
        return self.generator.has_mapping

    def train(self, mode: bool = True) -> DCGANPrior:
        # BN must keep its running statistics: an image may never depend on the rest of its batch.
        super().train(mode)
        self.generator.eval()
        return self

    def _truncated_w(self, z: torch.Tensor) -> torch.Tensor:
        return truncate(self.generator.to_w(z), self.generator.w_avg, self.truncation)

    def _images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        if self.has_mapping and self.truncation is not None:
            return self._images_from_w(self._truncated_w(z))
        return self._to_unit(self.generator(z))

    def _images_from_w(self, w: torch.Tensor) -> torch.Tensor:
        return self._to_unit(self.generator.synthesis(w))

    def _to_unit(self, images: torch.Tensor) -> torch.Tensor:
        images = images.add(1.0).mul(0.5)
        return images.clamp(0.0, 1.0) if self.clip else images


class TorchScriptPrior(Prior):
    """A user-exported TorchScript generator with images in ``output_range``, in one of two formats.

    - single forward: ``module(z)`` maps latents [N, latent_dim] to images (z space only);
    - StyleGAN (both ``mapping`` and ``synthesis`` present, as submodules or exported methods):
      ``mapping(z)`` -> w [N, num_ws, w_dim] (or [N, w_dim]) and ``synthesis(ws)`` -> images, with
      ``w_avg`` a buffer of the module or, when it declares none, the mean mapping of 10,000 z.
      In w space the attack optimises one w per sample, repeated to every layer as PPA does; in w+
      space one w per layer (PPA's ``single_w: false``), starting from the truncated mapping.
    """

    no_mapping_fix = (
        "export mapping and synthesis (README: 'Exporting a StyleGAN2-ADA generator') or set attack.latent: z"
    )
    no_per_layer_fix = "its mapping returns one w [N, w_dim] for all layers: set attack.latent: w"
    w_avg: torch.Tensor  # a buffer, StyleGAN format only

    def __init__(
        self,
        path: Path,
        latent_dim: int,
        output_range: tuple[float, float],
        center_crop: float = 1.0,
        time_limit: bool = True,
    ) -> None:
        """``time_limit``: load and probe the file first in a child process that is killed after
        PROBE_SECONDS (a forward that never returns must not hang the attack)."""
        super().__init__()
        low, high = float(output_range[0]), float(output_range[1])
        if not high > low:
            raise LsmiaError(f"prior.output_range {output_range} must be (low, high) with high > low, e.g. [-1, 1]")
        if time_limit:
            probe_within_time_limit(path, latent_dim, (low, high), center_crop)
        self.module = _load_script(path).eval()
        for param in self.module.parameters():  # ScriptModules lack requires_grad_()
            param.requires_grad_(False)
        self.path, self.z_dim, self.w_dim, self.low, self.high = path, latent_dim, latent_dim, low, high
        self.is_stylegan = hasattr(self.module, "mapping") and hasattr(self.module, "synthesis")
        self.num_ws = 0  # layers of w the synthesis takes; 0: it takes [N, w_dim]
        if self.is_stylegan:
            self._probe_mapping()
            self.register_buffer("w_avg", self._declared_w_avg())
        self.full_size = self._probe()
        self.crop = max(1, round(self.full_size * center_crop))  # PPA keeps the central 800 px of 1024
        self.image_size = self.crop

    @property
    def has_mapping(self) -> bool:
        return self.is_stylegan

    def train(self, mode: bool = True) -> TorchScriptPrior:
        super().train(mode)
        self.module.eval()
        return self

    def _probe_latents(self) -> torch.Tensor:
        return torch.randn(2, self.z_dim, generator=torch.Generator().manual_seed(0))

    def _fail(self, what: str, err: Exception, fix: str) -> LsmiaError:
        return LsmiaError(f"TorchScript prior {self.path} failed on {what} ({type(err).__name__}): {fix}")

    def _probe_mapping(self) -> None:
        """Set ``w_dim`` and ``num_ws`` from the mapping of two latents, or raise naming the fix."""
        try:
            with torch.no_grad():
                w = self.module.mapping(self._probe_latents())
        except Exception as err:
            raise self._fail(
                f"latents of size {self.z_dim}", err, "set prior.latent_dim to the latent size its mapping expects"
            ) from None
        if not isinstance(w, torch.Tensor) or w.ndim not in (2, 3) or w.shape[0] != 2 or not w.is_floating_point():
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise LsmiaError(
                f"TorchScript prior {self.path}: mapping returned {shape}, not w [N, num_ws, w_dim]: "
                "export a mapping that takes z [N, latent_dim] and returns float w"
            )
        self.w_dim, self.num_ws = int(w.shape[-1]), int(w.shape[1]) if w.ndim == 3 else 0

    @torch.no_grad()
    def _declared_w_avg(self) -> torch.Tensor:
        """The module's ``w_avg`` buffer, or the mean mapping of W_AVG_SAMPLES fixed-seed latents."""
        declared = getattr(self.module, "w_avg", None)
        if isinstance(declared, torch.Tensor):
            if declared.shape[-1] != self.w_dim:
                raise LsmiaError(
                    f"TorchScript prior {self.path}: w_avg has {declared.shape[-1]} columns but w has "
                    f"{self.w_dim}: export the mapping network's own w_avg buffer"
                )
            return declared.detach().float().clone()
        gen = torch.Generator().manual_seed(0)
        sums = [
            self.module.mapping(torch.randn(1000, self.z_dim, generator=gen)).float().sum(0)
            for _ in range(W_AVG_SAMPLES // 1000)
        ]
        return torch.stack(sums).sum(0) / W_AVG_SAMPLES

    def _probe(self) -> int:
        """Run two latents through the module; return the image size or raise naming the fix."""
        z = self._probe_latents()
        try:
            with torch.no_grad():
                out = self._raw_images_from_z(z)
        except Exception as err:
            raise self._fail(
                f"latents of size {self.z_dim}", err, "set prior.latent_dim to the latent size it expects"
            ) from None
        if (
            not isinstance(out, torch.Tensor)
            or out.ndim != 4
            or out.shape[0] != 2
            or out.shape[1] != 3
            or out.shape[2] != out.shape[3]
            or not out.is_floating_point()
        ):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LsmiaError(
                f"TorchScript prior {self.path} returned {shape}, not float images [N, 3, S, S]: "
                "export a module that maps latents [N, latent_dim] to RGB images"
            )
        return int(out.shape[-1])

    def _raw_images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        if not self.is_stylegan:
            return self.module(z)
        return self.module.synthesis(self._truncated_ws(z))

    def _truncated_w(self, z: torch.Tensor) -> torch.Tensor:
        """One w per sample: PPA's single w, the (truncated) first layer of the mapping."""
        w = self._truncated_ws(z)
        return w[:, 0] if w.ndim == 3 else w

    def _truncated_ws(self, z: torch.Tensor) -> torch.Tensor:
        """Every layer's w [N, num_ws, w_dim], truncated as StyleGAN's G(z) truncates them."""
        return truncate(self.module.mapping(z), self.w_avg, self.truncation, TRUNCATION_CUTOFF)

    def _images_from_w(self, w: torch.Tensor) -> torch.Tensor:
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1) if self.num_ws else w
        return self._images_from_ws(ws)

    def _images_from_ws(self, ws: torch.Tensor) -> torch.Tensor:
        return self._to_unit(self.module.synthesis(ws))

    def _images_from_z(self, z: torch.Tensor) -> torch.Tensor:
        return self._to_unit(self._raw_images_from_z(z))

    def _to_unit(self, out: torch.Tensor) -> torch.Tensor:
        out = out.float()
        if self.crop < self.full_size:
            start = (self.full_size - self.crop) // 2
            out = out[..., start : start + self.crop, start : start + self.crop]
        out = (out - self.low) / (self.high - self.low)
        return out.clamp(0.0, 1.0) if self.clip else out


PROBE_SECONDS = 300.0  # loading a TorchScript prior and running two latents (w_avg: 10,000) through it, on 1 thread
TRUST_NOTE = "prior.path is code that runs here: use only files you trust"


def probe_within_time_limit(path: Path, latent_dim: int, output_range: tuple[float, float], center_crop: float) -> None:
    """Build the TorchScript prior in a forked child (one thread) and kill it after PROBE_SECONDS.

    Raises the child's LsmiaError, or one naming the time limit or the crash; returns when the child built it
    (the caller then builds it again, now known to finish). Without fork (not Linux/macOS) it returns at once:
    the caller's probe then runs without a time limit."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_probe_child, args=(sender, path, latent_dim, output_range, center_crop))
    child.start()
    sender.close()
    try:
        message = _probe_outcome(receiver, child, path)
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if message is not None:
        raise LsmiaError(message)


def _probe_outcome(receiver: Any, child: Any, path: Path) -> str | None:
    if not receiver.poll(PROBE_SECONDS):
        return (
            f"TorchScript prior {path} did not load and turn two latents into images within {PROBE_SECONDS:g} s "
            f"(does its forward ever return?): fix or re-export it; {TRUST_NOTE}"
        )
    try:
        return cast(str | None, receiver.recv())
    except EOFError:
        child.join()
        return (
            f"TorchScript prior {path} crashed the process that loaded and probed it (exit code {child.exitcode}): "
            f"re-export it; {TRUST_NOTE}"
        )


def _probe_child(
    sender: Any, path: Path, latent_dim: int, output_range: tuple[float, float], center_crop: float
) -> None:
    """In the forked child: build the prior; send None when built, the message of a LsmiaError otherwise."""
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP thread pool: it would hang
    try:
        TorchScriptPrior(path, latent_dim, output_range, center_crop, time_limit=False)
        sender.send(None)
    except LsmiaError as err:
        sender.send(str(err))
    except Exception:  # the parent's own build raises it again, with its traceback
        sender.send(None)


def _load_script(path: Path) -> torch.jit.ScriptModule:
    if not path.exists():
        raise LsmiaError(f"TorchScript prior {path} does not exist: set prior.path to the exported generator file")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise LsmiaError(
            f"{path} is not a TorchScript file ({type(err).__name__}): "
            "export the generator with torch.jit.script or torch.jit.trace and torch.jit.save"
        ) from None


def generator_spec(generator: Generator) -> dict[str, Any]:
    """The constructor arguments; the mapping keys only with a mapping network, so plain DCGAN files stay as before."""
    spec = {
        "format": DCGAN_FORMAT,
        "latent_dim": generator.latent_dim,
        "image_size": generator.image_size,
        "width": generator.width,
    }
    if generator.has_mapping:
        spec.update(mapping_layers=generator.mapping_layers, w_dim=generator.w_dim)
    return spec


def save_dcgan_prior(generator: Generator, path: Path | str, extra: dict[str, Any] | None = None) -> None:
    """Write the spec and state_dict (with ``w_avg`` when it has a mapping network); tensors and primitives only."""
    save_torch({**generator_spec(generator), "state_dict": generator.state_dict(), **(extra or {})}, path)


def load_dcgan_prior(path: Path | str) -> DCGANPrior:
    fix = "re-run 'lsmia train-prior' to write it"
    ckpt = load_torch(path, what="prior checkpoint", fix="run 'lsmia train-prior' first")
    if not isinstance(ckpt, dict) or ckpt.get("format") != DCGAN_FORMAT:
        found = f"a {type(ckpt).__name__}" if not isinstance(ckpt, dict) else "a mapping of another format"
        raise LsmiaError(f"{path} is not an lsmia DCGAN prior (it holds {found}): {fix}")
    require_keys(ckpt, ("latent_dim", "image_size", "width", "state_dict"), f"prior checkpoint {path}", fix)
    try:
        generator = Generator(
            int(ckpt["latent_dim"]),
            int(ckpt["image_size"]),
            int(ckpt["width"]),
            mapping_layers=int(ckpt.get("mapping_layers", 0)),
            w_dim=ckpt.get("w_dim"),
        )
        generator.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise LsmiaError(f"prior checkpoint {path} does not describe a DCGAN ({type(err).__name__}): {fix}") from None
    return DCGANPrior(generator)


def load_prior(cfg: PriorConfig, checkpoint: Path | None) -> Prior:
    """The prior named by ``cfg``: the DCGAN at ``checkpoint`` or the TorchScript file at ``cfg.path``."""
    if cfg.kind == "torchscript":
        if cfg.path is None:
            raise LsmiaError(
                "prior.kind is 'torchscript' but prior.path is not set: set prior.path to the exported file"
            )
        return TorchScriptPrior(Path(cfg.path), cfg.latent_dim, cfg.output_range, cfg.center_crop)
    if checkpoint is None:
        raise LsmiaError("the DCGAN prior needs the checkpoint written by 'lsmia train-prior': run that stage first")
    return load_dcgan_prior(checkpoint)

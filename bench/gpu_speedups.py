"""GPU speed-ups for lsmia's two hot loops: bf16 autocast, channels_last and torch.compile vs fp32 eager.

Workloads (the study's defaults): a training step of the target (smallresnet w32 at 32 px,
training_augment, smoothed cross-entropy, Adam) and an attack step (DCGAN prior -> random
resized crop -> target -> Poincaré loss -> Adam on the latents, 256 rows). Every variant
gets its own copy of the models, is warmed up (compilation happens there), then all are
timed in interleaved rounds; medians are reported as ms per step and speed-up over fp32 eager.

Without a CUDA device it prints a SKIP line and exits 0. ``--device cpu`` runs the same code
on the CPU (to check the script, not to measure GPUs). Sized to finish in a few minutes on
an H200 including compilation; ``--no-compile`` drops the compiled variants.

    .venv/bin/python bench/gpu_speedups.py [--quick] [--no-compile] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import benchutil
import torch
import torch.nn as nn

from lsmia.attack.losses import identity_loss
from lsmia.attack.ppa import attack_step_loss, frozen
from lsmia.config import AttackConfig, AugmentConfig
from lsmia.data.augment import training_augment
from lsmia.models.classifiers import Classifier, build_classifier
from lsmia.models.generator import DCGANPrior, Generator
from lsmia.training.smoothing import smoothed_cross_entropy

IMAGE_SIZE, LATENT_DIM, NUM_CLASSES = 32, 64, 50
Step = Callable[[], None]
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Variant:
    name: str
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = [
    Variant("fp32_eager"),
    Variant("bf16", bf16=True),
    Variant("channels_last", channels_last=True),
    Variant("bf16+channels_last", bf16=True, channels_last=True),
    Variant("compile", compile=True),
    Variant("compile+bf16+channels_last", bf16=True, channels_last=True, compile=True),
]


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script only)")
    parser.add_argument("--train-batch", type=int, default=64, help="training batch size (default 64, the study's)")
    parser.add_argument("--attack-batch", type=int, default=256, help="attack rows per batch (default 256)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant (default 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    return benchutil.parse(parser, train_batch=8, attack_batch=8, steps=2, warmup=1, repeats=1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(variant: Variant, device: torch.device) -> contextlib.AbstractContextManager:
    if variant.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(module: M, variant: Variant, device: torch.device) -> M:
    """A copy of ``module`` on ``device`` in the variant's memory format (compiled by the caller)."""
    module = copy.deepcopy(module).to(device)
    return module.to(memory_format=torch.channels_last) if variant.channels_last else module


def maybe_compile(module: M, variant: Variant) -> M:
    """``module`` or its compiled wrapper, which forwards attribute access (e.g. ``image_size``) to it."""
    # torch.compile's stub types the result as a plain callable; for a module it is an OptimizedModule
    return cast(M, torch.compile(module)) if variant.compile else module


def train_step(base: Classifier, variant: Variant, device: torch.device, batch: int) -> Step:
    model = prepare(base, variant, device).train()
    forward = maybe_compile(model, variant)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    aug = AugmentConfig()
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format

    def step() -> None:
        x = training_augment(images.float().div(255.0), aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)
        with autocast(variant, device):
            loss = smoothed_cross_entropy(forward(x.contiguous(memory_format=memory_format)), labels, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@contextlib.contextmanager
def attack_models(
    target: Classifier, prior: DCGANPrior, variant: Variant, device: torch.device
) -> Iterator[tuple[Classifier, DCGANPrior]]:
    target, prior = prepare(target, variant, device), prepare(prior, variant, device)
    with frozen(target, prior):
        yield target, prior


def attack_step(target: Classifier, prior: nn.Module, variant: Variant, device: torch.device, rows: int) -> Step:
    cfg = AttackConfig()
    compiled_target, compiled_prior = maybe_compile(target, variant), maybe_compile(prior, variant)
    z = torch.randn(rows, LATENT_DIM, device=device, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (rows,), device=device)
    optimizer = torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas)
    loss_fn, gen = identity_loss(cfg.loss), torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(variant, device):
            loss = attack_step_loss(compiled_prior, compiled_target, z, labels, cfg, loss_fn, gen)
        loss.float().backward()
        optimizer.step()

    return step


def warm(step: Step, steps: int, device: torch.device) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return time.perf_counter() - started


def time_steps(step: Step, steps: int, device: torch.device) -> float:
    """Milliseconds per step."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps * 1000


def measure(
    name: str, steps_by_variant: dict[str, Step], args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Warm every variant, then interleaved timed rounds; median ms per step by variant."""
    for variant, step in steps_by_variant.items():
        print(f"  {name} {variant}: warm-up {warm(step, args.warmup, device):.1f} s", flush=True)
    samples: dict[str, list[float]] = {variant: [] for variant in steps_by_variant}
    for _ in range(args.repeats):
        for variant, step in steps_by_variant.items():
            samples[variant].append(time_steps(step, args.steps, device))
    return {variant: statistics.median(times) for variant, times in samples.items()}


def print_results(name: str, ms: dict[str, float]) -> float:
    """Table of ms per step and speed-up over fp32 eager; returns the best speed-up."""
    base = ms["fp32_eager"]
    print(f"\n{name}: {'variant':<28} {'ms/step':>9} {'speed-up':>9}")
    for variant, value in ms.items():
        print(f"{name}: {variant:<28} {value:>9.3f} {base / value:>8.2f}x")
    return max(base / value for value in ms.values())


def main() -> None:
    args = parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "SKIP gpu_speedups: no CUDA device (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --device cpu to exercise the script"
        )
        sys.exit(0)
    device = torch.device(args.device)
    benchutil.setup(
        args.threads, "GPU speed-ups: bf16 autocast, channels_last, torch.compile vs fp32 eager", args.device
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = [v for v in VARIANTS if not (v.compile and args.no_compile)]
    torch.manual_seed(0)
    target = build_classifier("smallresnet", NUM_CLASSES, IMAGE_SIZE, width=32)
    prior = DCGANPrior(Generator(LATENT_DIM, IMAGE_SIZE, 32))
    print(
        f"# train batch {args.train_batch}, attack rows {args.attack_batch}, {args.steps} steps x "
        f"{args.repeats} interleaved rounds per variant",
        flush=True,
    )
    train_ms = measure(
        "train", {v.name: train_step(target, v, device, args.train_batch) for v in variants}, args, device
    )
    with contextlib.ExitStack() as stack:
        steps = {}
        for v in variants:
            t_model, p_model = stack.enter_context(attack_models(target, prior, v, device))
            steps[v.name] = attack_step(t_model, p_model, v, device, args.attack_batch)
        attack_ms = measure("attack", steps, args, device)
    best_train = print_results("train", train_ms)
    print_results("attack", attack_ms)
    base, fastest = attack_ms["fp32_eager"], min(attack_ms, key=attack_ms.__getitem__)
    print(f"best training speed-up: {best_train:.2f}x ({min(train_ms, key=train_ms.__getitem__)})")
    benchutil.print_ratio(
        "gpu_attack_step_best",
        base / 1000,
        attack_ms[fastest] / 1000,
        "fp32_eager",
        fastest,
        note="median seconds per step",
    )


if __name__ == "__main__":
    main()

"""Speed against the hardware's limit: lsmia's real training and attack loops as a fraction of the measured peak.

(a) Peak: the fastest of ``--matmul-reps`` float32 matmuls of ``--matmul-size`` squared (2 n^3 FLOPs each) per
    thread count of ``--threads-list`` (CUDA: fp32 with TF32 off, TF32, bf16).
(b) FLOPs of one step, counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
    forward and backward; element-wise work, BatchNorm and resizing count nothing): a training step of the default
    target (``lsmia.training.classifier.train_step``: training_augment, smoothed cross-entropy, backward, Adam) and
    an attack step of the default DCGAN prior (``lsmia.attack.ppa.attack_step`` on the attack's BN-folded model
    copies: prior -> resize -> crop -> target -> Poincaré loss, backward to the latents, Adam), rows as lsmia's
    attack batch.
(c) The real code: ``train_classifier`` (what the train stage calls) for one epoch of ``--train-steps`` steps on a
    synthetic data set, and ``run_attack`` on one batch of rows for ``--attack-steps`` steps. The epoch loop
    (``_run_epoch``) and the optimisation phase (``optimise``) are timed inside the call; a separate, untimed pass
    counts their FLOPs, so the achieved rate is the loop's own FLOPs per second. Cases run interleaved over the
    thread counts; medians of ``--repeats`` rounds.
(d) achieved / peak per workload and thread count. Each ratio line gives the seconds of a real step against the
    seconds the same FLOPs take at the peak (the inverse of the fraction of peak).

    .venv/bin/python bench/roofline.py [--quick] [--threads-list 1,2] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from lsmia.attack import ppa
from lsmia.attack.losses import identity_loss
from lsmia.attack.ppa import attack_step, configure_latent_space, frozen, resolve_targets, run_attack
from lsmia.config import AttackConfig, DataConfig, PriorConfig, TargetConfig
from lsmia.data.augment import training_augment
from lsmia.data.base import FaceData, ImageSet
from lsmia.models.classifiers import Classifier, build_classifier
from lsmia.models.fusion import inference_copy
from lsmia.models.generator import DCGANPrior, Generator
from lsmia.training import classifier as training
from lsmia.training.classifier import make_optimizer, train_classifier, train_step

SEED = 0
TEST_IMAGES = 16  # the per-epoch test evaluation stays small: it is outside the timed loop anyway
WORKLOADS = ("training", "attack")


@dataclass
class Setup:
    data: FaceData
    train_cfg: TargetConfig
    attack_cfg: AttackConfig
    target: Classifier
    prior: DCGANPrior
    device: torch.device


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(threads=None)
    for action in parser._actions:
        if action.dest == "threads":
            action.help = "torch intra-op threads: measure this count only (default: --threads-list)"
    parser.add_argument("--threads-list", default="1,2", help="thread counts to measure (default 1,2; --threads N: N)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--matmul-size", type=int, default=None, help="n of the n x n matmul (2048; CUDA 8192)")
    parser.add_argument("--matmul-reps", type=int, default=10, help="timed matmuls per thread count (default 10)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default: the target's, 64)")
    parser.add_argument("--train-steps", type=int, default=5, help="training steps per timed call (default 5)")
    parser.add_argument("--attack-rows", type=int, default=None, help="attack rows (default: attack.batch_size)")
    parser.add_argument("--attack-steps", type=int, default=5, help="attack steps per timed call (default 5)")
    return benchutil.parse(
        parser, matmul_size=512, matmul_reps=5, train_batch=8, train_steps=2, attack_rows=8, attack_steps=2, repeats=1
    )


def thread_counts(args: argparse.Namespace) -> list[int]:
    if args.threads is not None:
        return [args.threads]
    try:
        counts = [int(part) for part in args.threads_list.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--threads-list must be comma-separated integers, got {args.threads_list!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads-list needs thread counts of at least 1, got {args.threads_list!r}")
    return counts


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- (a) peak


def matmul_peak(n: int, reps: int, device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the fastest of ``reps`` n x n matmuls (after one untimed)."""
    gen = torch.Generator().manual_seed(SEED)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(max(1, reps)):
        synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def peaks(args: argparse.Namespace, device: torch.device, counts: list[int]) -> dict[str, float]:
    """Peak FLOP/s by label: ``<threads>t`` on the CPU, ``fp32``/``tf32``/``bf16`` on CUDA."""
    n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    found: dict[str, float] = {}
    if device.type == "cuda":
        for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True)):
            with matmul_tf32(tf32):
                found[label] = matmul_peak(n, args.matmul_reps, device, dtype)
        found["bf16"] = matmul_peak(n, args.matmul_reps, device, torch.bfloat16)
    else:
        for threads in counts:
            torch.set_num_threads(threads)
            found[f"{threads}t"] = matmul_peak(n, args.matmul_reps, device)
    print(f"\n(a) peak: fastest of {args.matmul_reps} matmuls {n} x {n} ({2 * n**3 / 1e9:.2f} GFLOP each)")
    for label, rate in found.items():
        print(f"peak {label:<6} {rate / 1e9:>10.1f} GFLOP/s")
    return found


# ----------------------------------------------------------------------------- workloads


def attack_config(rows: int) -> AttackConfig:
    """The default attack on one batch of ``rows`` rows (targets x candidates), no extras in the final selection."""
    default = AttackConfig()
    candidates = min(default.candidates, rows)
    targets = max(1, rows // candidates)
    return default.model_copy(
        update={
            "targets": targets,
            "candidates": candidates,
            "pool_size": targets * candidates,
            "batch_size": targets * candidates,
            "final_samples": 1,
            "final_draws": 1,
        }
    )


def build(args: argparse.Namespace, device: torch.device) -> Setup:
    """The study's default target, prior and attack, and a synthetic data set of exactly the training steps."""
    data_cfg, prior_cfg = DataConfig(), PriorConfig()
    base = TargetConfig()
    train_cfg = base.model_copy(update={"epochs": 1, "batch_size": args.train_batch or base.batch_size})
    classes, size = data_cfg.num_identities, data_cfg.image_size
    gen = torch.Generator().manual_seed(SEED)

    def images(n: int) -> ImageSet:
        pixels = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
        return ImageSet(pixels, torch.randint(0, classes, (n,), generator=gen))

    data = FaceData(
        train=images(args.train_steps * train_cfg.batch_size),
        test=images(TEST_IMAGES),
        class_names=[f"id{i}" for i in range(classes)],
    )
    torch.manual_seed(SEED)
    target = build_classifier(train_cfg.arch, classes, size, train_cfg.width).eval()
    generator = Generator(prior_cfg.latent_dim, size, prior_cfg.width, prior_cfg.mapping_layers, prior_cfg.w_dim)
    attack_cfg = attack_config(args.attack_rows or AttackConfig().batch_size)
    attack_cfg = attack_cfg.model_copy(update={"steps": args.attack_steps})
    return Setup(data, train_cfg, attack_cfg, target, DCGANPrior(generator), device)


# ----------------------------------------------------------------------------- (b) FLOPs of one step


def training_step_flops(s: Setup) -> int:
    """One training step of the default target on the first batch, as ``_run_epoch`` takes it."""
    cfg, device = s.train_cfg, s.device
    torch.manual_seed(SEED)
    model = build_classifier(cfg.arch, s.data.num_classes, s.data.image_size, cfg.width).to(device).train()
    if device.type == "cpu":  # as train_classifier: same FLOPs, same kernels
        model.backbone.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model.parameters())
    gen, aug = torch.Generator().manual_seed(SEED), cfg.augment
    x = s.data.train.images[: cfg.batch_size].to(device).float().div_(255.0)
    y = s.data.train.labels[: cfg.batch_size].to(device)
    with FlopCounterMode(display=False) as counter:
        x = training_augment(x, aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)
        train_step(model.train_outputs, optimizer, x, y, 0.0, cfg.aux_loss_weight)
    return counter.get_total_flops()


def attack_step_flops(s: Setup) -> int:
    """One attack step on lsmia's attack copies of the models (BN folded), all rows of the batch."""
    cfg, device = s.attack_cfg, s.device
    configure_latent_space(s.prior, cfg)
    prior, target = s.prior.to(device), s.target.to(device)
    with frozen(prior, target):
        prior_copy, target_copy = inference_copy(prior, device), inference_copy(target, device)
        latents = s.prior.sample_latents(cfg.batch_size, torch.Generator().manual_seed(SEED))
        z = latents.to(device).requires_grad_(True)
        labels = (torch.arange(cfg.batch_size) % target.num_classes).to(device)
        optimiser = torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas)
        gen = torch.Generator().manual_seed(SEED)
        with FlopCounterMode(display=False) as counter:
            optimiser.zero_grad(set_to_none=True)
            loss, _ = attack_step(prior_copy, target_copy, z, labels, cfg, identity_loss(cfg.loss), gen)
            loss.backward()
            optimiser.step()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------- (c) the real code


@contextlib.contextmanager
def instrumented(module: Any, name: str, record: dict[str, float], count: bool, device: torch.device) -> Iterator[None]:
    """Replace ``module.name`` by a wrapper that adds its seconds (and, with ``count``, its FLOPs) to ``record``."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counter: contextlib.AbstractContextManager[Any] = (
            FlopCounterMode(display=False) if count else contextlib.nullcontext()
        )
        synchronize(device)
        started = time.perf_counter()
        with counter:
            out = original(*args, **kwargs)
        synchronize(device)
        record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - started
        if isinstance(counter, FlopCounterMode):
            record["flops"] = record.get("flops", 0.0) + counter.get_total_flops()
        return out

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_training(s: Setup, count: bool = False) -> dict[str, float]:
    """``train_classifier`` for one epoch in a fresh directory; its epoch loop (``_run_epoch``) timed inside."""
    record: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="lsmia-roofline-") as out,
        instrumented(training, "_run_epoch", record, count, s.device),
    ):
        train_classifier(s.train_cfg, s.data, Path(out), s.device, seed=SEED, show_progress=False)
    return record


def run_real_attack(s: Setup, count: bool = False) -> dict[str, float]:
    """``run_attack`` on one batch; its optimisation phase (``optimise``) timed inside."""
    record: dict[str, float] = {}
    targets = resolve_targets(s.attack_cfg.targets, s.target.num_classes)
    with instrumented(ppa, "optimise", record, count, s.device):
        run_attack(s.attack_cfg, s.target, s.prior, targets, s.device, progress=False)
    return record


def steps_of(s: Setup) -> dict[str, int]:
    return {"training": s.data.train.images.shape[0] // s.train_cfg.batch_size, "attack": s.attack_cfg.steps}


RUNNERS: dict[str, Callable[[Setup, bool], dict[str, float]]] = {"training": run_training, "attack": run_real_attack}


def real_code(
    s: Setup, counts: list[int], repeats: int
) -> tuple[dict[str, float], dict[tuple[str, int], dict[str, float]]]:
    """FLOPs per step of each loop (one counting pass, which also warms up), then interleaved timed rounds:
    median seconds per step of the loop and of the whole call, by (workload, threads)."""
    steps = steps_of(s)
    loop_flops = {}
    for workload, runner in RUNNERS.items():
        loop_flops[workload] = runner(s, True)["flops"] / steps[workload]

    def case(workload: str, threads: int) -> benchutil.Case:
        def run() -> benchutil.Timings:
            torch.set_num_threads(threads)
            record = RUNNERS[workload](s, False)
            return {"step_s": record["seconds"] / steps[workload]}

        return run

    cases = {f"{w} {t}t": case(w, t) for t in counts for w in WORKLOADS}
    print(f"\n(c) real code: {repeats} interleaved round(s) of {', '.join(cases)}", flush=True)
    runs = benchutil.interleaved(cases, repeats)
    times = {(w, t): benchutil.medians(runs[f"{w} {t}t"]) for t in counts for w in WORKLOADS}
    return loop_flops, times


# ----------------------------------------------------------------------------- (d) the table


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP roofline: no CUDA device (torch.cuda.is_available() is False); run it without --device cuda")
        sys.exit(0)
    counts = thread_counts(args) if args.device == "cpu" else [args.threads or 1]
    device = torch.device(args.device)
    benchutil.setup(counts[0], "roofline: lsmia's training and attack steps against the measured peak", args.device)
    if device.type == "cuda":
        print(
            f"# matmul TF32 {torch.backends.cuda.matmul.allow_tf32}, cuDNN conv TF32 "
            f"{torch.backends.cudnn.allow_tf32} (the real code runs with these)"
        )
    peak = peaks(args, device, counts)
    s = build(args, device)
    step_flops = {"training": training_step_flops(s), "attack": attack_step_flops(s)}
    print(
        f"\n(b) FLOPs of one step (FlopCounterMode): training {step_flops['training'] / 1e9:.3f} GFLOP "
        f"({s.train_cfg.arch} w{s.train_cfg.width}, {s.data.image_size} px, {s.data.num_classes} classes, batch "
        f"{s.train_cfg.batch_size}, fwd+bwd+{s.train_cfg.optimizer}); attack {step_flops['attack'] / 1e9:.3f} GFLOP "
        f"(DCGAN prior latent {s.attack_cfg.latent} -> target -> {s.attack_cfg.loss} -> latents, "
        f"{s.attack_cfg.batch_size} rows)",
        flush=True,
    )
    loop_flops, times = real_code(s, counts, args.repeats)

    print("\n(d) achieved against peak (loop: FLOPs counted in the real loop, per step; median seconds)")
    header = (
        f"{'workload':<9} {'peak':>5} {'step GFLOP':>11} {'loop GFLOP':>11} {'s/step':>10} "
        f"{'GFLOP/s':>9} {'peak GFLOP/s':>13} {'of peak':>8}"
    )
    print(header)
    ratios: list[tuple[str, float, float, float]] = []
    for label, rate in peak.items():
        threads = int(label[:-1]) if device.type == "cpu" else counts[0]
        for workload in WORKLOADS:
            seconds = times[(workload, threads)]["step_s"]
            flops = loop_flops[workload]
            achieved = flops / seconds
            print(
                f"{workload:<9} {label:>5} {step_flops[workload] / 1e9:>11.4f} {flops / 1e9:>11.4f} "
                f"{seconds:>10.6f} {achieved / 1e9:>9.2f} {rate / 1e9:>13.2f} {100 * achieved / rate:>7.2f}%"
            )
            ratios.append((f"{workload}_vs_peak_{label}", seconds, flops / rate, flops))
    for name, seconds, at_peak, flops in ratios:
        benchutil.print_ratio(
            name,
            seconds,
            at_peak,
            "real step",
            "at peak",
            note=f"the same {flops / 1e9:.4f} GFLOP; the inverse of the fraction of peak",
            digits=6,
        )


if __name__ == "__main__":
    main()

"""One prepared GPU check: the paper's models at the paper's sizes, fp32 eager vs bf16 + channels_last (+ compile).

Workloads, each in three variants (fp32 eager; bf16 autocast + channels_last; the same under torch.compile unless
``--no-compile``), one after another so that each variant's peak memory is its own:

* ``train_resnet152``: a training step of a ResNet-152 at 224 px, FaceScrub's 530 classes, batch 64;
* ``train_inception_v3``: a training step of an Inception-v3 at 299 px with its auxiliary logits, CelebA's 1000
  identities, batch 32. Both through lsmia's ``train_step`` (training_augment, smoothed cross-entropy, Adam);
* ``attack_stylegan1024``: an attack step (``lsmia.attack.ppa.attack_step``: prior -> centre crop 800 -> resize to
  224 -> random crop -> ResNet-152 target, BN folded as the attack does -> Poincaré loss -> backward to w -> Adam)
  through a randomly initialised stand-in in StyleGAN2's TorchScript format (``mapping(z)`` -> ws [N, 18, 512],
  ``synthesis(ws)`` -> 1024 px images, a ``w_avg`` buffer), exported with ``torch.jit.script`` and loaded by
  lsmia's ``TorchScriptPrior``, 25 rows (PPA's batch). TorchScript is not compiled: the compile variant compiles
  the target only. A last row runs lsmia's whole ``run_attack`` (fp32) on one batch through the same prior.

Per row: ms per step (median of ``--repeats`` rounds of ``--steps`` steps after ``--warmup`` untimed ones, which
include compiling), images per second, peak memory (``torch.cuda.max_memory_allocated``) and the speed-up over
fp32 eager. Then the tiny study end to end (``lsmia study``, tests/tiny_params.yaml, a temp dir, no tracking) on the
device, with its wall time. Ratio lines: fp32 eager / each variant, seconds per step.

Bounded: a time budget (``--budget-s``, default 420 s) skips what would not fit (the study keeps a reserve), every
case runs under an alarm, the study under a subprocess timeout, and a watchdog ends the process 45 s after the
budget whatever happens. Without CUDA it prints a SKIP line and exits 0; ``--device cpu`` runs it all at toy sizes
(``--quick``: 16 px ResNet, 64 px prior, batch 2, one step, no compile) to check the script, not to measure.

    .venv/bin/python bench/gpu_check.py [--no-compile] [--no-study] [--device cpu --quick]
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import cast

import benchutil
import torch
import torch.nn as nn
import torch.nn.functional as F

from lsmia.attack.losses import identity_loss
from lsmia.attack.ppa import attack_step, run_attack
from lsmia.config import AttackConfig, TargetConfig
from lsmia.data.augment import training_augment
from lsmia.models.classifiers import Classifier, build_classifier
from lsmia.models.fusion import inference_copy
from lsmia.models.generator import TorchScriptPrior
from lsmia.training.classifier import _TrainOutputs, make_optimizer, train_step

REPO = Path(__file__).resolve().parent.parent
TINY_PARAMS = REPO / "tests" / "tiny_params.yaml"
SEED = 0
FACESCRUB_CLASSES, CELEBA_CLASSES = 530, 1000
INCEPTION_SIZE = 299
CENTER_CROP = 800 / 1024  # PPA keeps the central 800 px of StyleGAN's 1024
W_DIM = 512
STUDY_RESERVE_S = 120.0  # of the budget, kept for the tiny study
WATCHDOG_GRACE_S = 45.0  # after the budget, the watchdog ends the process
Step = Callable[[], None]
WORKLOADS = ("resnet152", "inception_v3", "attack")  # what --only picks from


@dataclass(frozen=True)
class Variant:
    name: str
    key: str  # for ratio names
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False


VARIANTS = [
    Variant("fp32_eager", "fp32"),
    Variant("bf16+channels_last", "bf16_cl", bf16=True, channels_last=True),
    Variant("compile+bf16+channels_last", "compile_bf16_cl", bf16=True, channels_last=True, compile=True),
]


@dataclass
class Row:
    workload: str
    variant: str
    key: str
    batch: int
    ms: float | None = None
    warmup_s: float | None = None
    peak_mib: float | None = None
    status: str = "ok"


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (toy sizes, to check the script)")
    parser.add_argument("--resnet-size", type=int, default=224, help="ResNet-152 input px (default 224)")
    parser.add_argument("--resnet-batch", type=int, default=64, help="ResNet-152 training batch (default 64)")
    parser.add_argument("--inception-batch", type=int, default=32, help="Inception-v3 training batch (default 32)")
    parser.add_argument("--prior-size", type=int, default=1024, help="stand-in StyleGAN output px (default 1024)")
    parser.add_argument("--prior-channels", type=int, default=16384, help="stand-in channels x px (default 16384)")
    parser.add_argument("--attack-rows", type=int, default=25, help="attack rows per batch (default 25, PPA's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant, compiling (default 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--no-study", action="store_true", help="skip the tiny study")
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"workloads to run, comma-separated (default {','.join(WORKLOADS)})"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget in seconds (default 420)")
    parser.add_argument("--case-limit-s", type=float, default=150.0, help="limit per variant (default 150)")
    args = benchutil.parse(
        parser,
        resnet_size=16,
        resnet_batch=2,
        inception_batch=2,
        prior_size=64,
        prior_channels=256,
        attack_rows=2,
        steps=1,
        warmup=0,
        repeats=1,
        no_compile=True,
    )
    args.only = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(args.only) - set(WORKLOADS))
    if unknown or not args.only:
        raise SystemExit(f"--only takes workloads among {', '.join(WORKLOADS)}, got {unknown or 'none'}")
    if args.prior_size < 8 or args.prior_size & (args.prior_size - 1):
        raise SystemExit(f"--prior-size must be a power of two of at least 8, got {args.prior_size}")
    if min(args.resnet_batch, args.inception_batch) < 2:
        raise SystemExit("training batches need at least 2 images (BatchNorm)")
    if min(args.steps, args.attack_rows, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--steps, --attack-rows and --repeats must be at least 1, --warmup at least 0")
    return args


# ----------------------------------------------------------------------------- bounds


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after ``seconds`` (POSIX alarm; no limit where there is none)."""
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"timeout after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, reserve: float = 0.0) -> float:
        return self.end - reserve - time.monotonic()


# ----------------------------------------------------------------------------- the stand-in StyleGAN


def channels(resolution: int, base: int) -> int:
    return max(1, min(256, base // resolution))


class Mapping(nn.Module):
    """z [N, 512] -> ws [N, num_ws, 512]: StyleGAN's normalised z through 8 x (Linear, LeakyReLU), one w per layer."""

    def __init__(self, num_ws: int) -> None:
        super().__init__()
        self.num_ws = num_ws
        layers: list[nn.Module] = []
        for _ in range(8):
            layers += [nn.Linear(W_DIM, W_DIM), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.net(z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt())
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)


class StyledConv(nn.Module):
    """(nearest 2x up,) input scaled per channel by an affine of w, 3x3 conv, LeakyReLU: StyleGAN2's cost shape."""

    def __init__(self, cin: int, cout: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.affine = nn.Linear(W_DIM, cin)
        nn.init.ones_(self.affine.bias)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.leaky_relu(self.conv(x * self.affine(w).unsqueeze(-1).unsqueeze(-1)), 0.2)


class Synthesis(nn.Module):
    """ws [N, num_ws, 512] -> images [N, 3, size, size]: a constant 4x4, one conv at 4 px, two per doubling, RGB."""

    def __init__(self, size: int, base: int) -> None:
        super().__init__()
        resolutions = [2**k for k in range(2, int(math.log2(size)) + 1)]
        self.const = nn.Parameter(torch.randn(1, channels(4, base), 4, 4))
        layers = [StyledConv(channels(4, base), channels(4, base), up=False)]
        for res in resolutions[1:]:
            layers += [
                StyledConv(channels(res // 2, base), channels(res, base), up=True),
                StyledConv(channels(res, base), channels(res, base), up=False),
            ]
        self.layers = nn.ModuleList(layers)
        self.rgb_affine = nn.Linear(W_DIM, channels(size, base))
        nn.init.ones_(self.rgb_affine.bias)
        self.to_rgb = nn.Conv2d(channels(size, base), 3, 1)
        self.num_ws = len(layers) + 1  # 18 at 1024 px, as StyleGAN2

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        style = self.rgb_affine(ws[:, self.num_ws - 1]).unsqueeze(-1).unsqueeze(-1)
        return self.to_rgb(x * style)


class StandInStyleGAN(nn.Module):
    """The format lsmia's TorchScriptPrior reads for StyleGAN2: ``mapping``, ``synthesis`` and a ``w_avg`` buffer."""

    def __init__(self, size: int, base: int) -> None:
        super().__init__()
        self.synthesis = Synthesis(size, base)
        self.mapping = Mapping(self.synthesis.num_ws)
        self.register_buffer("w_avg", torch.zeros(W_DIM))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.mapping(z))


def export_stand_in(path: Path, size: int, base: int) -> Path:
    torch.manual_seed(SEED)
    torch.jit.save(torch.jit.script(StandInStyleGAN(size, base).eval()), str(path))
    return path


# ----------------------------------------------------------------------------- steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(variant: Variant, device: torch.device) -> contextlib.AbstractContextManager[object]:
    if variant.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(variant: Variant) -> torch.memory_format:
    return torch.channels_last if variant.channels_last else torch.contiguous_format


def training(arch: str, classes: int, size: int, batch: int, variant: Variant, device: torch.device) -> Step:
    """lsmia's train_step on a fresh model (the target's Adam, label smoothing 0.1, inception's aux loss)."""
    cfg = TargetConfig()
    torch.manual_seed(SEED)
    model = build_classifier(arch, classes, size).to(device).train()
    model = model.to(memory_format=memory_format(variant))
    outputs: nn.Module = _TrainOutputs(model)
    forward = cast(nn.Module, torch.compile(outputs)) if variant.compile else outputs
    optimizer = make_optimizer(cfg, model.parameters())
    gen, aug = torch.Generator().manual_seed(SEED), cfg.augment
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)

    def step() -> None:
        x = training_augment(images.float().div(255.0), aug.crop_scale, aug.flip, aug.color_jitter, gen=gen)
        with autocast(variant, device):
            x = x.contiguous(memory_format=memory_format(variant))
            train_step(forward, optimizer, x, labels, 0.1, cfg.aux_loss_weight)

    return step


def attack(prior: TorchScriptPrior, target: Classifier, rows: int, variant: Variant, device: torch.device) -> Step:
    """lsmia's attack step in w space on the attack's copy of the target (BN folded), Adam on the latents."""
    cfg = AttackConfig()
    prior.to(device).to(memory_format=memory_format(variant))
    fast = inference_copy(target, device).to(device).to(memory_format=memory_format(variant))
    forward = cast(Classifier, torch.compile(fast)) if variant.compile else fast
    gen = torch.Generator().manual_seed(SEED)
    z = prior.sample_latents(rows, gen).to(device).requires_grad_(True)
    labels = (torch.arange(rows) % target.num_classes).to(device)
    optimiser = torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas)
    loss_fn = identity_loss(cfg.loss)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast(variant, device):
            loss, _ = attack_step(prior, forward, z, labels, cfg, loss_fn, gen)
        loss.float().backward()
        optimiser.step()

    return step


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_steps(make: Callable[[], Step], row: Row, args: argparse.Namespace, device: torch.device) -> None:
    """Build the step, warm it up, then ``repeats`` timed rounds; fills ``row`` in."""
    step = make()
    started = time.perf_counter()
    for _ in range(args.warmup):
        step()
    synchronize(device)
    row.warmup_s = time.perf_counter() - started
    per_round = []
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        per_round.append((time.perf_counter() - started) / args.steps * 1000)
    row.ms = statistics.median(per_round)


def bounded(row: Row, work: Callable[[Row], None], budget: Budget, limit: float, device: torch.device) -> Row:
    """Run ``work(row)`` under an alarm of at most ``limit`` s and the budget; failures become the row's status."""
    seconds = min(limit, budget.left(STUDY_RESERVE_S))
    if seconds < 10:
        row.status = "skipped (time budget)"
        return row
    reset_memory(device)
    try:
        with time_limit(seconds):
            work(row)
        row.peak_mib = peak_mib(device)
    except CaseTimeout as err:
        row.ms, row.status = None, str(err)
    except torch.cuda.OutOfMemoryError:
        row.ms, row.status = None, "out of memory"
    except Exception as err:  # a failing variant (e.g. compile) must not end the check
        row.ms, row.status = None, f"error: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    reset_memory(device)
    print(f"  {row.workload} {row.variant}: {row.status}", flush=True)
    return row


def run_cases(args: argparse.Namespace, device: torch.device, budget: Budget, scratch: Path) -> list[Row]:
    """Every (workload, variant) of ``--only``: the eager variants first, then the compiled ones (slow to compile:
    what the budget cuts comes last); rows in table order."""
    variants = [v for v in VARIANTS if not (v.compile and args.no_compile)]
    cases: list[tuple[Row, Callable[[Row], None]]] = []
    trainings = {
        "resnet152": ("train_resnet152", FACESCRUB_CLASSES, args.resnet_size, args.resnet_batch),
        "inception_v3": ("train_inception_v3", CELEBA_CLASSES, INCEPTION_SIZE, args.inception_batch),
    }
    for arch, (workload, classes, size, batch) in trainings.items():
        if arch not in args.only:
            continue
        for v in variants:

            def work(row: Row, arch: str = arch, classes: int = classes, size: int = size, v: Variant = v) -> None:
                time_steps(lambda: training(arch, classes, size, row.batch, v, device), row, args, device)

            cases.append((Row(workload, v.name, v.key, batch), work))
    if "attack" in args.only:
        started = time.perf_counter()
        path = export_stand_in(scratch / "stylegan_stand_in.pt", args.prior_size, args.prior_channels)
        prior = TorchScriptPrior(path, W_DIM, (-1.0, 1.0), CENTER_CROP)
        prior.configure_latent("w", AttackConfig().truncation)
        torch.manual_seed(SEED)
        target = build_classifier("resnet152", FACESCRUB_CLASSES, args.resnet_size).eval()
        print(f"  stand-in StyleGAN exported and loaded in {time.perf_counter() - started:.1f} s", flush=True)
        workload = f"attack_stylegan{args.prior_size}"
        for v in variants:

            def attack_work(row: Row, v: Variant = v) -> None:
                time_steps(lambda: attack(prior, target, row.batch, v, device), row, args, device)

            cases.append((Row(workload, v.name, v.key, args.attack_rows), attack_work))
        whole = Row(workload, "run_attack_fp32", "run_attack", args.attack_rows)
        cases.append((whole, whole_attack(prior, target, args, device)))
    compiled = {v.name for v in VARIANTS if v.compile}
    for row, run in sorted(cases, key=lambda case: case[0].variant in compiled):  # stable: eager first
        bounded(row, run, budget, args.case_limit_s, device)
    return [row for row, _ in cases]


def whole_attack(
    prior: TorchScriptPrior, target: Classifier, args: argparse.Namespace, device: torch.device
) -> Callable[[Row], None]:
    """lsmia's run_attack on one batch of rows (one target class): ms per optimisation step from its timings."""
    cfg = AttackConfig().model_copy(
        update={
            "targets": 1,
            "candidates": args.attack_rows,
            "pool_size": args.attack_rows,
            "final_samples": 1,
            "final_draws": 1,
            "batch_size": args.attack_rows,
            "selection_batch_size": args.attack_rows,
            "steps": args.steps,
        }
    )

    def work(row: Row) -> None:
        prior.to(memory_format=torch.contiguous_format)
        started = time.perf_counter()
        result = run_attack(cfg, target, prior, [0], device, progress=False)  # its own BN-folded copy inside
        row.warmup_s = time.perf_counter() - started  # the whole call: selection, optimisation, final selection
        row.ms = float(result.meta["timings"]["optimisation_s"]) / cfg.steps * 1000
        row.status = "ok (warm-up s: the whole call)"

    return work


# ----------------------------------------------------------------------------- study and report


def run_study(device: torch.device, budget: Budget) -> str:
    """``lsmia study`` on tests/tiny_params.yaml in a temp dir on ``device``; a one-line outcome with its wall time."""
    timeout = budget.left() - 5
    if timeout < 30:
        return "skipped (time budget)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="lsmia-gpu-check-study-") as scratch:
        command = [
            sys.executable, "-m", "lsmia", "study", "--params", str(TINY_PARAMS), "--device", device.type,
            "--set", "run.tracking=false", "--set", f"run.out_dir={Path(scratch) / 'out'}",
        ]  # fmt: skip
        print(f"# running: lsmia {' '.join(command[3:])}", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timeout after {timeout:.0f} s"
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"failed (exit {done.returncode}) after {seconds:.1f} s: {last[:200]}"
    return f"ok in {seconds:.1f} s"


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    base = {row.workload: row.ms for row in rows if row.key == "fp32"}
    print(
        f"\n{'workload':<20} {'variant':<26} {'batch':>5} {'ms/step':>10} {'images/s':>10} {'peak MiB':>10} "
        f"{'warm-up s':>9} {'vs fp32':>8}  status"
    )
    for row in rows:
        images = None if row.ms is None else row.batch / (row.ms / 1000)
        fp32 = base.get(row.workload)
        speedup = f"{fp32 / row.ms:.2f}x" if fp32 is not None and row.ms is not None else "-"
        print(
            f"{row.workload:<20} {row.variant:<26} {row.batch:>5} {fmt(row.ms, 3):>10} {fmt(images, 1):>10} "
            f"{fmt(row.peak_mib, 1):>10} {fmt(row.warmup_s, 1):>9} {speedup:>8}  {row.status}"
        )


def print_ratios(rows: list[Row]) -> None:
    base = {row.workload: row.ms for row in rows if row.key == "fp32" and row.ms is not None}
    for row in rows:
        fp32 = base.get(row.workload)
        if row.key in ("fp32", "run_attack") or row.ms is None or fp32 is None:
            continue
        benchutil.print_ratio(
            f"{row.workload}_{row.key}_vs_fp32",
            fp32 / 1000,
            row.ms / 1000,
            "fp32_eager",
            row.variant,
            note="median seconds per step",
            digits=6,
        )


def main() -> None:
    args = parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "SKIP gpu_check: no CUDA device (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --device cpu --quick to exercise the script"
        )
        sys.exit(0)
    faulthandler.dump_traceback_later(args.budget_s + WATCHDOG_GRACE_S, exit=True)  # the last resort: never hang
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    benchutil.setup(args.threads, "GPU check: paper-size training and attack steps, then the tiny study", args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(
            f"# cuDNN benchmark on, conv TF32 {torch.backends.cudnn.allow_tf32}, matmul TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32}; budget {args.budget_s:.0f} s",
            flush=True,
        )
    print(
        f"# ResNet-152 {args.resnet_size} px x {args.resnet_batch} ({FACESCRUB_CLASSES} classes), Inception-v3 "
        f"{INCEPTION_SIZE} px x {args.inception_batch} ({CELEBA_CLASSES} classes), stand-in StyleGAN "
        f"{args.prior_size} px -> ResNet-152, {args.attack_rows} rows; {args.warmup} warm-up + {args.repeats} x "
        f"{args.steps} timed steps per variant{'' if not args.no_compile else '; no torch.compile'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="lsmia-gpu-check-") as scratch:
        rows = run_cases(args, device, budget, Path(scratch))
    print_table(rows)
    study = "skipped (--no-study)" if args.no_study else run_study(device, budget)
    print(f"\nstudy (tests/tiny_params.yaml, --device {device.type}): {study}")
    print_ratios(rows)
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()

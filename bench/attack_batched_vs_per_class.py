"""The batched multi-target PPA attack against PPA's per-class loop (25 latents per batch).

Both schedules run lsmia.attack.ppa.run_attack with the same models, config, steps and
targets x candidates; only ``schedule`` differs (ratio ``attack_batched_vs_per_class``). A third
case, ``ppa_style``, runs the per-class loop on the plain eval-mode models as PPA does, without
lsmia's BN-folded channels_last copies (ratio ``attack_lsmia_vs_ppa_style``: the whole attack). The models are randomly initialised: the
attack's cost does not depend on what the weights are. ``--step-sweep`` adds a per-row
micro-benchmark of one attack step (and of the final selection's forward pass) over batch
sizes and memory layouts, which is where the suggestions in bench/README.md come from.

    .venv/bin/python bench/attack_batched_vs_per_class.py [--quick] [--threads 2] [--step-sweep]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import benchutil
import torch
import torch.nn as nn

from lsmia.attack import ppa
from lsmia.attack.losses import identity_loss
from lsmia.attack.ppa import Schedule, attack_step_loss, frozen, resolve_targets, run_attack
from lsmia.config import AttackConfig
from lsmia.models.classifiers import Classifier, build_classifier
from lsmia.models.fusion import fold_batchnorm_
from lsmia.models.generator import DCGANPrior, Generator

PHASES = ["selection_s", "optimisation_s", "final_selection_s"]
IMAGE_SIZE, LATENT_DIM, NUM_CLASSES = 32, 64, 50
SCHEDULES: tuple[Schedule, ...] = ("batched", "per_class")
M = TypeVar("M", bound=nn.Module)


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10, help="target classes (default 10)")
    parser.add_argument("--candidates", type=int, default=50, help="candidates per target (default 50)")
    parser.add_argument("--steps", type=int, default=10, help="optimisation steps (default 10)")
    parser.add_argument("--final-draws", type=int, default=20, help="final-selection draws (default 20)")
    parser.add_argument("--batch-size", type=int, default=256, help="batched schedule's rows per batch (default 256)")
    parser.add_argument("--step-sweep", action="store_true", help="also time one step per row by batch size and layout")
    return benchutil.parse(parser, targets=2, candidates=26, steps=1, final_draws=1, repeats=1)


def build_models(seed: int = 0) -> tuple[Classifier, DCGANPrior]:
    torch.manual_seed(seed)
    target = build_classifier("smallresnet", NUM_CLASSES, IMAGE_SIZE, width=32).eval()
    return target, DCGANPrior(Generator(LATENT_DIM, IMAGE_SIZE, 32))


def attack_config(args: argparse.Namespace) -> AttackConfig:
    return AttackConfig(
        targets=args.targets,
        pool_size=max(args.candidates, 10 * args.targets),
        candidates=args.candidates,
        final_samples=min(8, args.candidates),
        steps=args.steps,
        final_draws=args.final_draws,
        batch_size=args.batch_size,
        latent="z",
    )  # the DCGAN has no w


def attack_case(
    cfg: AttackConfig, target: Classifier, prior: DCGANPrior, schedule: Schedule, plain_models: bool = False
) -> benchutil.Case:
    """``plain_models``: run on the models as given, as PPA does, instead of lsmia's BN-folded channels_last copies."""

    def case() -> benchutil.Timings:
        with plain_model_copies(plain_models):
            result = run_attack(
                cfg,
                target,
                prior,
                resolve_targets(cfg.targets, NUM_CLASSES),
                torch.device("cpu"),
                progress=False,
                schedule=schedule,
            )
        return {phase: float(result.meta["timings"][phase]) for phase in PHASES}

    return case


@contextmanager
def plain_model_copies(active: bool) -> Iterator[None]:
    """Swap lsmia's inference copies (BN folded, channels_last) for the eval-mode models themselves."""
    original = ppa.inference_copy
    if active:
        ppa.inference_copy = lambda model, device: model.eval()
    try:
        yield
    finally:
        ppa.inference_copy = original


# ----------------------------------------------------------------------------- step sweep


def fold_batchnorm(module: M) -> M:
    """A copy with every eval-mode BatchNorm folded into the conv before it (lsmia's attack does this)."""
    return fold_batchnorm_(copy.deepcopy(module).eval())


def model_variants(target: Classifier, prior: DCGANPrior) -> dict[str, tuple[Classifier, DCGANPrior]]:
    last = torch.channels_last
    folded_target, folded_prior = fold_batchnorm(target), fold_batchnorm(prior)
    return {
        "nchw": (target, prior),
        "channels_last": (copy.deepcopy(target).to(memory_format=last), copy.deepcopy(prior).to(memory_format=last)),
        "cl+bn_folded": (folded_target.to(memory_format=last), folded_prior.to(memory_format=last)),
    }


def ms_per_row(fn: Callable[[], None], rows: int, min_rows: int) -> float:
    fn()  # warm-up: oneDNN primitive creation
    reps = max(2, -(-min_rows // rows))
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) / rows * 1000


def step_fn(target: Classifier, prior: nn.Module, rows: int, cfg: AttackConfig) -> Callable[[], None]:
    z = torch.randn(rows, LATENT_DIM, requires_grad=True)
    labels = torch.randint(0, NUM_CLASSES, (rows,))
    optimiser = torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas)
    loss_fn, gen = identity_loss(cfg.loss), torch.Generator().manual_seed(0)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        attack_step_loss(prior, target, z, labels, cfg, loss_fn, gen).backward()
        optimiser.step()

    return step


def forward_fn(target: nn.Module, prior: nn.Module, rows: int) -> Callable[[], None]:
    z = torch.randn(rows, LATENT_DIM)

    def forward() -> None:
        with torch.inference_mode():
            target(prior(z))

    return forward


def step_sweep(target: Classifier, prior: DCGANPrior, cfg: AttackConfig, quick: bool) -> None:
    """ms per row of one optimisation step and of one final-selection forward, by batch size and layout."""
    sizes = [25, 64] if quick else [25, 64, 128, 256]
    min_rows = 50 if quick else 512
    print("\nstep sweep: ms per row (median); step = prior + crop + target + backward + Adam")
    print(f"{'layout':<14} {'rows':>5} {'step ms/row':>12} {'forward ms/row':>15}")
    for layout, (t_model, p_model) in model_variants(target, prior).items():
        with frozen(t_model, p_model):
            for rows in sizes:
                step = ms_per_row(step_fn(t_model, p_model, rows, cfg), rows, min_rows)
                forward = ms_per_row(forward_fn(t_model, p_model, rows), rows, min_rows)
                print(f"{layout:<14} {rows:>5} {step:>12.2f} {forward:>15.2f}", flush=True)


def main() -> None:
    args = parse_args()
    benchutil.setup(args.threads, "attack: batched schedule vs per-class loop (25 latents per batch)")
    cfg = attack_config(args)
    target, prior = build_models()
    print(
        f"# smallresnet w32 @ {IMAGE_SIZE}px, DCGANPrior(Generator({LATENT_DIM}, {IMAGE_SIZE}, 32)); "
        f"{cfg.targets} targets x {cfg.candidates} candidates, {cfg.steps} steps, pool {cfg.pool_size}, "
        f"final draws {cfg.final_draws}, batched batch {cfg.batch_size}; {args.repeats} interleaved repeats"
    )
    if args.step_sweep:
        step_sweep(target, prior, cfg, args.quick)
    cases: dict[str, benchutil.Case] = {schedule: attack_case(cfg, target, prior, schedule) for schedule in SCHEDULES}
    cases["ppa_style"] = attack_case(cfg, target, prior, "per_class", plain_models=True)
    rows = {name: benchutil.medians(runs) for name, runs in benchutil.interleaved(cases, args.repeats).items()}
    print()
    benchutil.print_table(rows, [benchutil.TOTAL, *PHASES])
    optimisation = rows["per_class"]["optimisation_s"] / max(rows["batched"]["optimisation_s"], 1e-9)
    print(f"phase ratio optimisation (per_class / batched): {optimisation:.2f}x")
    benchutil.print_ratio(
        "attack_batched_vs_per_class",
        rows["per_class"][benchutil.TOTAL],
        rows["batched"][benchutil.TOTAL],
        "per_class",
        "batched",
    )
    # the whole of lsmia's attack (batched, BN-folded channels_last copies) against PPA's way (per-class, plain models)
    benchutil.print_ratio(
        "attack_lsmia_vs_ppa_style",
        rows["ppa_style"][benchutil.TOTAL],
        rows["batched"][benchutil.TOTAL],
        "ppa_style",
        "batched",
    )


if __name__ == "__main__":
    main()

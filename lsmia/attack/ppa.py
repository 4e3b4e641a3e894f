"""The Plug & Play Attack (Struppek et al. 2022), batched over all target classes.

Three stages, each working on every target class at once:

1. Initial selection: one shared pool of latents is scored by the target (softmax averaged
   over the image and its mirror); each target class takes its top ``candidates`` latents
   from one ``[pool, C]`` score matrix.
2. Optimisation: all (target, candidate) rows are optimised with Adam in batches of
   ``batch_size`` rows that mix targets. Each step: prior → resize → random resized crop →
   target logits → identity loss.
3. Final selection: every optimised sample is scored by its mean target confidence under
   random crops and flips; each class keeps its top ``final_samples``.

Batch independence: the identity losses are batch means, so the attack minimises
``batch_mean * rows`` = the sum of per-row losses. Models run in eval mode (no batch
statistics) and Adam's state is elementwise, so every row receives exactly the update it
would receive if optimised alone; batching changes only which augmentation draws a row
gets. ``schedule="per_class"`` (the reference's loop over classes, 25 latents per batch)
therefore optimises the same objective and differs only in that randomness.

Under ``torchrun`` rank r optimises the batches ``index % world == r`` and the latents are
all-gathered; a rank still draws the step crops of the batches it skips, so every batch gets
the draws it gets in one process and the result is identical for any number of ranks. Initial
and final selection are cheap and run on every rank.

Diagnostics (``meta["diagnostics"]``): per attack step, means over all optimised rows of the loss, the
target's confidence in the row's class on the augmented batch, and the cosine between each row's latent
gradient and its gradient one step earlier (the paper's Fig. 6b). ``grad_cosine[i]`` compares steps i
and i + 1, so it has ``steps - 1`` entries. They only read what the step computes anyway, so the latents
are bit-identical with or without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
import torch.nn as nn

from lsmia.attack.batches import SCHEDULES, Schedule, StepDiagnostics, row_batches
from lsmia.attack.losses import identity_loss
from lsmia.attack.result import AttackResult
from lsmia.attack.scoring import LogitView, ScaledLogits, class_scores, label_scores, make_view
from lsmia.attack.shards import merge_shards
from lsmia.attack.target import AttackTarget
from lsmia.config import AttackConfig
from lsmia.data.augment import random_flip, random_resized_crop, resize, sample_crop_params
from lsmia.errors import LsmiaError
from lsmia.infra import distributed
from lsmia.models.fusion import inference_copy
from lsmia.utils import load_torch, save_torch
from lsmia.utils import progress as progress_bar

RUN_ONLY_KEYS = ("shards", "checkpoint_seconds")  # how the attack runs, not what it computes
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_targets(spec: list[int] | int, num_classes: int) -> list[int]:
    """An int N means the first N classes; a list is checked for range and repeats."""
    if isinstance(spec, bool) or not isinstance(spec, (int, list)):
        raise LsmiaError(
            f"attack.targets must be a class count or a list of classes, got {spec!r}: set it to e.g. 10 or [0, 3, 7]"
        )
    if isinstance(spec, int):
        if not 1 <= spec <= num_classes:
            raise LsmiaError(
                f"attack.targets asks for {spec} classes but the target model has {num_classes}: "
                f"set attack.targets to a number from 1 to {num_classes}"
            )
        return list(range(spec))
    if not spec:
        raise LsmiaError("attack.targets is an empty list: list at least one class or give a class count")
    outside = [c for c in spec if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes]
    if outside:
        raise LsmiaError(
            f"attack.targets holds class {outside[0]!r} outside 0..{num_classes - 1}: "
            f"list only classes of the target model"
        )
    repeated = first_repeat(spec)
    if repeated is not None:
        raise LsmiaError(f"attack.targets lists class {repeated} more than once: list each class once")
    return list(spec)


def first_repeat(values: Iterable[int]) -> int | None:
    """The first value seen a second time (in linear time), or None."""
    seen: set[int] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


@contextmanager
def frozen(*models: nn.Module | AttackTarget) -> Iterator[None]:
    """Eval mode and no parameter gradients; requires_grad flags are restored afterwards."""
    flags = [(p, p.requires_grad) for m in models for p in m.parameters()]
    for model in models:
        model.eval()
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


@contextmanager
def clipping(prior: nn.Module, clip: bool) -> Iterator[None]:
    """The prior's images clamped to [0, 1] (``clip``) or left as the generator gives them, restored afterwards;
    a prior without the switch (``Prior.clip``) keeps its own behaviour."""
    before = getattr(prior, "clip", None)
    if before is None:
        yield
        return
    setattr(prior, "clip", clip)  # noqa: B010 (a plain attribute of some priors, not of nn.Module)
    try:
        yield
    finally:
        setattr(prior, "clip", before)  # noqa: B010


def stage_generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """Independent CPU generators for pool sampling, step augmentation and final draws."""
    base = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**62, (3,), generator=base).tolist()
    pool, steps, final = (torch.Generator().manual_seed(int(s)) for s in seeds)
    return pool, steps, final


def render(prior: nn.Module, z: torch.Tensor, size: int) -> torch.Tensor:
    """Prior images resized to the target's input size."""
    return resize(prior(z), size)


@torch.no_grad()
def pool_logits(
    prior: nn.Module, target: AttackTarget, pool: torch.Tensor, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """[pool, C] target logits of each pool image and of its horizontal flip (float32, on the CPU)."""
    plain, flipped = [], []
    for chunk in pool.split(batch_size):
        images = render(prior, chunk.to(device), target.image_size)
        plain.append(target(images).float().cpu())
        flipped.append(target(images.flip(-1)).float().cpu())
    return torch.cat(plain), torch.cat(flipped)


def pool_scores(
    logits: tuple[torch.Tensor, torch.Tensor], cfg: AttackConfig, view: LogitView | None = None
) -> torch.Tensor:
    """[pool, C] each class's score averaged over each image and its flip (:func:`scoring.class_scores`; PPA as
    published: the float32 softmax of the raw logits)."""
    view = view or LogitView()
    return class_scores([view(v) for v in logits], cfg.ranking, cfg.score)


def select_candidates(scores: torch.Tensor, targets: list[int], candidates: int) -> torch.Tensor:
    """Pool indices [T, candidates]: each target's top-scoring latents, best first, no repeats."""
    return scores[:, targets].topk(candidates, dim=0).indices.T


def configure_latent_space(prior: nn.Module, cfg: AttackConfig) -> None:
    """Set the prior to latents in ``cfg.latent`` space, truncated by ``cfg.truncation``; plain modules know only z."""
    configure = getattr(prior, "configure_latent", None)
    if configure is not None:
        configure(cfg.latent, cfg.truncation)
    elif cfg.latent != "z":
        raise LsmiaError(f"attack.latent is '{cfg.latent}' but the prior has no mapping network: set attack.latent: z")


def latent_scale(latents: torch.Tensor) -> float:
    """The typical std of one latent coordinate: root mean square of the per-column stds."""
    return float(latents.double().var(dim=0).mean().sqrt())


def effective_lr(cfg: AttackConfig, pool: torch.Tensor) -> float:
    """Adam's lr: ``cfg.lr``, times the pool's latent scale when ``cfg.lr_relative``."""
    if not cfg.lr_relative:
        return cfg.lr
    scale = latent_scale(pool)
    if not scale > 0:
        raise LsmiaError(
            "attack.lr_relative scales the lr by the initial latents' std, but they are all equal "
            "(attack.truncation 0?): raise attack.truncation or set attack.lr_relative: false"
        )
    return cfg.lr * scale


def latent_meta(prior: nn.Module, cfg: AttackConfig, lr: float) -> dict[str, object]:
    """What the report states about the optimised space: its name and size, the truncation, the lr used."""
    return {
        "latent": cfg.latent,
        "latent_dim": int(cast(int, prior.latent_dim)),
        "truncation": getattr(prior, "truncation", None),
        "lr_effective": lr,
    }


def attack_step(
    prior: nn.Module,
    target: AttackTarget,
    z: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    loss_fn: LossFn,
    gen: torch.Generator,
    view: LogitView | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of the identity loss on the attacker's ``view`` of the logits, so no row's gradient depends
    on the batch size; and the target's logits."""
    images = render(prior, z, target.image_size)
    images = random_resized_crop(images, cfg.step_crop_scale, (1.0, 1.0), gen=gen)
    logits = target(images)
    return loss_fn(logits if view is None else view(logits), labels) * len(z), logits


def attack_step_loss(
    prior: nn.Module,
    target: AttackTarget,
    z: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    loss_fn: LossFn,
    gen: torch.Generator,
) -> torch.Tensor:
    return attack_step(prior, target, z, labels, cfg, loss_fn, gen)[0]


def optimise(
    prior: nn.Module,
    target: AttackTarget,
    start: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
    cfg: AttackConfig,
    gen: torch.Generator,
    device: torch.device,
    show_progress: bool,
    rank: int = 0,
    world: int = 1,
    diagnostics: StepDiagnostics | None = None,
    needed: set[int] | None = None,
    first: int = 0,
    on_batch: Callable[[int, torch.Tensor], None] | None = None,
    view: LogitView | None = None,
    reach: torch.Tensor | None = None,
) -> torch.Tensor:
    """Adam on the latents, one batch of rows after another, ``cfg.steps`` steps each.

    ``view``: the attacker's view of the logits the loss reads (None: the raw logits). With
    ``cfg.until_accept`` each batch then goes on (:func:`extend_until_accepted`) and ``reach[index]`` gets the
    batch's steps in all and the fraction of its rows the target accepts.

    With ``world`` > 1 only batches ``index % world == rank`` are optimised (the other rows keep
    their start); for the others only the step crops are drawn, so ``gen`` advances as in one process.
    ``needed`` (a shard's batches; None: all) skips the other batches the same way. ``first`` starts at
    that batch (a resumed shard: ``start`` holds the earlier batches' results, ``gen`` its state there);
    ``on_batch(index, latents)`` is called after each batch this rank optimised, with the latents so far.
    ``diagnostics`` records this rank's batches; call its ``merge_ranks`` afterwards.
    """
    loss_fn = identity_loss(cfg.loss)
    result = start.clone()
    work: Iterable[tuple[int, torch.Tensor, int]] = (
        (index, batch, step) for index, batch in enumerate(batches) if index >= first for step in range(cfg.steps)
    )
    if show_progress:
        work = progress_bar(work, total=(len(batches) - first) * cfg.steps, desc="attack steps")
    z, optimiser = torch.empty(0), None
    with torch.enable_grad():
        for index, batch, step in work:
            if index % world != rank or (needed is not None and index not in needed):  # same draws, no work
                sample_crop_params(len(batch), cfg.step_crop_scale, (1.0, 1.0), gen, torch.device("cpu"))
                continue
            if step == 0:
                z = start[batch].to(device).requires_grad_(True)
                optimiser = torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas)
            assert optimiser is not None, "every batch starts at step 0"
            optimiser.zero_grad(set_to_none=True)
            batch_labels = labels[batch].to(device)
            loss, logits = attack_step(prior, target, z, batch_labels, cfg, loss_fn, gen, view)
            loss.backward()
            if diagnostics is not None and z.grad is not None:  # before the update, which must not see any of this
                diagnostics.record_step(step, loss, logits, batch_labels, z.grad)
            optimiser.step()
            if step == cfg.steps - 1:
                if cfg.until_accept is not None:
                    taken, accepted = extend_until_accepted(
                        prior, target, z, optimiser, batch_labels, cfg, loss_fn, view, index
                    )
                    if reach is not None:
                        reach[index] = torch.tensor([float(taken), accepted], dtype=torch.float64)
                result[batch] = z.detach().cpu()
                if diagnostics is not None:
                    diagnostics.end_batch(index)
                if on_batch is not None:
                    on_batch(index, result)
    return result


@torch.no_grad()
def accepted_fraction(prior: nn.Module, target: AttackTarget, z: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of rows whose clean image (no crop) the target classifies as the row's class."""
    logits = target(render(prior, z.detach(), target.image_size))
    return float((logits.argmax(1) == labels).double().mean())


def extension_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s extra step crops: its own stream, so shards and ranks agree without drawing
    the other batches' extra steps."""
    return (seed * 1_000_003 + 7_919 * (batch + 1)) % 2**62


def extend_until_accepted(
    prior: nn.Module,
    target: AttackTarget,
    z: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    labels: torch.Tensor,
    cfg: AttackConfig,
    loss_fn: LossFn,
    view: LogitView | None,
    batch: int,
) -> tuple[int, float]:
    """The unbounded check: after ``cfg.steps`` steps, go on until the target accepts ``cfg.until_accept`` of the
    batch's rows or ``cfg.max_steps`` (0: 10 x steps) in all; checked every ``cfg.accept_check_every`` steps.
    The steps in all and the fraction accepted at the end."""
    assert cfg.until_accept is not None
    cap = cfg.max_steps or 10 * cfg.steps
    gen = torch.Generator().manual_seed(extension_seed(cfg.seed, batch))
    taken, accepted = cfg.steps, accepted_fraction(prior, target, z, labels)
    while accepted < cfg.until_accept and taken < cap:
        for _ in range(min(cfg.accept_check_every, cap - taken)):
            optimiser.zero_grad(set_to_none=True)
            loss, _ = attack_step(prior, target, z, labels, cfg, loss_fn, gen, view)
            loss.backward()
            optimiser.step()
            taken += 1
        accepted = accepted_fraction(prior, target, z, labels)
    return taken, accepted


def merge_ranks(parts: list[torch.Tensor], batches: list[torch.Tensor]) -> torch.Tensor:
    """The rows of batch ``i`` from ``parts[i % len(parts)]``, the rank that optimised it."""
    merged = parts[0].clone()
    for index, batch in enumerate(batches):
        merged[batch] = parts[index % len(parts)][batch]
    return merged


@torch.no_grad()
def final_scores(
    prior: nn.Module,
    target: AttackTarget,
    z: torch.Tensor,
    labels: torch.Tensor,
    cfg: AttackConfig,
    gen: torch.Generator,
    device: torch.device,
    wanted: torch.Tensor | None = None,
    view: LogitView | None = None,
) -> torch.Tensor:
    """Each row's score for its class over ``cfg.final_draws`` random crops and flips: PPA's mean target
    confidence, or its exact log, or the mean margin (:func:`scoring.label_scores`), on the attacker's ``view``.

    ``wanted`` (a shard's rows, a bool mask): chunks without such a row are only drawn, not scored (NaN), so
    ``gen`` advances as for all rows and every chunk is scored at the same shape as in an unsharded run.
    """
    rows_per_chunk = max(1, cfg.selection_batch_size // cfg.final_draws)
    scores = []
    cpu = torch.device("cpu")
    for index, (z_chunk, label_chunk) in enumerate(
        zip(z.split(rows_per_chunk), labels.split(rows_per_chunk), strict=False)
    ):
        if wanted is not None and not wanted[index * rows_per_chunk : index * rows_per_chunk + len(z_chunk)].any():
            n = cfg.final_draws * len(z_chunk)
            sample_crop_params(n, cfg.final_crop_scale, cfg.final_crop_ratio, gen, cpu)
            torch.rand(n, generator=gen)  # random_flip's draw
            scores.append(torch.full((len(z_chunk),), float("nan")))
            continue
        images = render(prior, z_chunk.to(device), target.image_size)
        draws = images.repeat(cfg.final_draws, 1, 1, 1)  # draw-major: [draws * rows, ...]
        draws = random_resized_crop(draws, cfg.final_crop_scale, cfg.final_crop_ratio, gen=gen)
        draws = random_flip(draws, 0.5, gen=gen)
        logits = target(draws).float()
        logits = (logits if view is None else view(logits)).view(cfg.final_draws, len(z_chunk), -1)
        scores.append(label_scores(logits, label_chunk.to(device), cfg.ranking, cfg.score).float().cpu())
    return torch.cat(scores)


def keep_best(scores: torch.Tensor, num_targets: int, keep: int) -> torch.Tensor:
    """Row indices of each target's ``keep`` best rows, target-major, best first."""
    per_target = scores.view(num_targets, -1)
    best = per_target.topk(keep, dim=1).indices
    offsets = torch.arange(num_targets).view(-1, 1) * per_target.shape[1]
    return (best + offsets).flatten()


def chunks_of(rows: torch.Tensor, chunk: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """The chunks ``[start, stop)`` of size ``chunk`` over all rows that hold some of ``rows`` (sorted indices),
    with the positions of those rows inside ``rows``."""
    chunk_of = torch.div(rows, chunk, rounding_mode="floor")
    for index in torch.unique_consecutive(chunk_of).tolist():
        yield index * chunk, (index + 1) * chunk, (chunk_of == index).nonzero().flatten()


@torch.no_grad()
def raw_confidences(
    target: AttackTarget,
    images: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor,
    total: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's confidence in each image's class, on the uint8 images as saved (no transforms; resized to the
    target's input when ``attack.render_size`` differs), and whether the target classifies the image as that class
    (its acceptance: 1.0 or 0.0).

    ``images`` are the rows at ``positions`` (sorted) of a list of ``total``; each is scored inside its chunk of
    ``batch_size`` of that list (other rows zero), at the shape it has in the whole list.
    """
    found, accepted = torch.empty(len(images)), torch.empty(len(images))
    for begin, end, mine in chunks_of(positions, batch_size):
        chunk = torch.zeros((min(end, total) - begin, *images.shape[1:]), dtype=images.dtype)
        chunk_labels = torch.zeros(len(chunk), dtype=torch.int64)
        chunk[positions[mine] - begin], chunk_labels[positions[mine] - begin] = images[mine], labels[mine]
        logits = target(resize(chunk.to(device).float() / 255, target.image_size)).float()
        probs = torch.softmax(logits, dim=1)
        found[mine] = probs.gather(1, chunk_labels.to(device).view(-1, 1)).flatten().cpu()[positions[mine] - begin]
        hits = (logits.argmax(1) == chunk_labels.to(device)).float().cpu()
        accepted[mine] = hits[positions[mine] - begin]
    return found, accepted


@torch.no_grad()
def to_uint8_images(
    prior: nn.Module,
    z: torch.Tensor,
    size: int,
    batch_size: int,
    device: torch.device,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prior's images of ``z[rows]`` (default all), each rendered in its chunk of ``batch_size`` rows of ``z``."""
    rows = torch.arange(len(z)) if rows is None else rows
    images = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)
    for begin, end, mine in chunks_of(rows, batch_size):
        chunk = render(prior, z[begin:end].to(device), size).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
        images[mine] = chunk[rows[mine] - begin]
    return images


def shard_rows(targets: list[int], classes: list[int], per_class: int) -> torch.Tensor:
    """The rows (target-major, ``per_class`` each) of ``classes`` among ``targets``, in the order of ``targets``."""
    return (target_positions(targets, classes).view(-1, 1) * per_class + torch.arange(per_class)).flatten()


def target_positions(targets: list[int], classes: list[int]) -> torch.Tensor:
    """The sorted positions of ``classes`` in ``targets`` (int64)."""
    position = {c: i for i, c in enumerate(targets)}
    return torch.tensor(sorted(position[c] for c in classes), dtype=torch.int64)


def resolve_classes(classes: list[int] | None, targets: list[int]) -> list[int]:
    """A shard's classes in the order of ``targets``; every class must be a target, none twice."""
    if classes is None:
        return list(targets)
    if not classes:
        raise LsmiaError("the shard lists no class: give at least one class of attack.targets")
    attacked = set(targets)
    outside = [c for c in classes if c not in attacked]
    if outside:
        raise LsmiaError(
            f"class {outside[0]} is not among attack.targets ({len(targets)} classes): "
            "shard only classes the attack targets"
        )
    repeated = first_repeat(classes)
    if repeated is not None:
        raise LsmiaError(f"the shard lists class {repeated} more than once: list each class once")
    wanted = set(classes)
    return [c for c in targets if c in wanted]


class Checkpoint:
    """A shard's progress after its last finished batch: the next batch, the step generator's state there, the
    optimised latents and diagnostics so far. Saved at most every ``every`` seconds and when interrupted; loaded
    only when ``key`` (config, classes, inputs, code) matches."""

    def __init__(self, path: Path | None, key: str, every: float) -> None:
        self.path, self.key, self.every = path, key, every
        self.last_save = time.monotonic()
        self.snapshot: dict[str, object] | None = None

    def load(self) -> dict[str, object] | None:
        if self.path is None or not self.path.exists():
            return None
        state = load_torch(self.path, what="attack checkpoint")
        return state if isinstance(state, dict) and state.get("key") == self.key else None

    def record(self, state: dict[str, object]) -> None:
        self.snapshot = {"key": self.key, **state}
        if time.monotonic() - self.last_save >= self.every:
            self.save()

    def save(self) -> None:
        if self.path is not None and self.snapshot is not None:
            save_torch(self.snapshot, self.path)
            self.last_save = time.monotonic()

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def attacker_meta(cfg: AttackConfig, view: LogitView) -> dict[str, object]:
    """What the attacker knew and did: PPA as published, or the adaptive attacker's settings."""
    published = cfg.ranking == "softmax" and cfg.score == "probability" and cfg.temperature == 1.0
    return {
        "kind": "published" if published and cfg.until_accept is None else "adaptive",
        "ranking": cfg.ranking,
        "score": cfg.score,
        "temperature_setting": cfg.temperature,
        **view.describe(),
        "target_logit_scale": cfg.target_logit_scale,
        "until_accept": cfg.until_accept,
    }


def run_attack(
    cfg: AttackConfig,
    target: AttackTarget,
    prior: nn.Module,
    targets: list[int],
    device: torch.device,
    progress: bool = True,
    schedule: Schedule = "batched",
    diagnostics: bool = True,
    classes: list[int] | None = None,
    checkpoint: Path | None = None,
    checkpoint_key: str = "",
    log: Callable[[str], None] | None = None,
) -> AttackResult:
    """Run PPA against ``target`` for every class in ``targets`` (see the module docstring).

    ``classes`` (a subset of ``targets``) runs one shard: the rows of those classes get exactly what they get
    in a run of all ``targets``, so :func:`lsmia.attack.shards.merge_shards` of shards covering ``targets``
    equals the unsharded result. A shard result carries ``meta["shard"]``. ``checkpoint`` (a file) makes the
    optimisation resumable after a kill (single process only).

    The models are moved to ``device`` and put in eval mode; their parameters are frozen
    during the attack and their requires_grad flags restored afterwards. ``diagnostics`` False leaves
    out the per-step curves and the raw final confidence (the latents are the same either way).
    """
    if schedule not in SCHEDULES:
        raise LsmiaError(f"unknown attack schedule '{schedule}': use one of {', '.join(SCHEDULES)}")
    targets = resolve_targets(list(targets), target.num_classes)
    shard_classes = resolve_classes(classes, targets)
    part = attack_shard(
        cfg, target, prior, targets, shard_classes, device, progress, schedule, diagnostics,
        Checkpoint(checkpoint, checkpoint_key, cfg.checkpoint_seconds), log or (lambda line: None),
    )  # fmt: skip
    return part if len(shard_classes) < len(targets) else merge_shards([part])


def attack_shard(
    cfg: AttackConfig,
    target: AttackTarget,
    prior: nn.Module,
    targets: list[int],
    classes: list[int],
    device: torch.device,
    progress: bool,
    schedule: Schedule,
    diagnostics: bool,
    checkpoint: Checkpoint,
    log: Callable[[str], None],
) -> AttackResult:
    """The rows of ``classes`` of an attack on ``targets``, as a shard result (``meta["shard"]``)."""
    configure_latent_space(prior, cfg)
    prior, target = prior.to(device), target.to(device)
    pool_gen, step_gen, final_gen = stage_generators(cfg.seed)
    timings: dict[str, float] = {}
    num_targets, candidates = len(targets), cfg.candidates
    rows = shard_rows(targets, classes, candidates)
    wanted = torch.zeros(num_targets * candidates, dtype=torch.bool)
    wanted[rows] = True
    with frozen(prior, target):
        images_prior = prior  # final images come from the caller's prior, untouched
        prior = inference_copy(prior, device)
        if isinstance(target, nn.Module):  # a torch module (every target here) is BN-folded; another is used as is
            target = inference_copy(target, device)
        if cfg.target_logit_scale != 1.0:  # the negative control: same decisions, larger logits
            target = ScaledLogits(target, cfg.target_logit_scale)
        started = time.perf_counter()
        sample_latents = cast(Callable[..., torch.Tensor], prior.sample_latents)  # every prior has one (Prior)
        pool = sample_latents(cfg.pool_size, generator=pool_gen).cpu()
        lr = effective_lr(cfg, pool)
        with clipping(prior, True):  # PPA's candidate search always clips (attacks/initial_selection.py:64-68)
            logits = pool_logits(prior, target, pool, cfg.selection_batch_size, device)
        view = make_view(cfg.temperature, logits[0])
        chosen = select_candidates(pool_scores(logits, cfg, view), targets, candidates)
        start = pool[chosen.flatten()]
        labels = torch.tensor(targets, dtype=torch.int64).repeat_interleave(candidates)
        timings["selection_s"] = time.perf_counter() - started

        started = time.perf_counter()
        batches = row_batches(num_targets, candidates, cfg.batch_size, schedule)
        needed = {index for index, batch in enumerate(batches) if wanted[batch].any()}
        rank, world = distributed.rank(), distributed.world_size()
        recorder = StepDiagnostics(batches, cfg.steps) if diagnostics else None
        reach = torch.zeros(len(batches), 2, dtype=torch.float64)  # until_accept: each batch's steps, acceptance
        first, begin = 0, start
        resumed = checkpoint.load() if world == 1 else None
        if resumed is not None:
            first = int(cast(int, resumed["next_batch"]))
            begin = start.clone()
            begin[rows] = cast(torch.Tensor, resumed["latents"])
            step_gen.set_state(cast(torch.Tensor, resumed["generator"]))
            if recorder is not None and resumed.get("diagnostics") is not None:
                recorder.sums = cast(torch.Tensor, resumed["diagnostics"]).clone()
            if resumed.get("reach") is not None:
                reach = cast(torch.Tensor, resumed["reach"]).clone()
            log(f"attack: resumed at batch {first} of {len(batches)} from {checkpoint.path}")

        def on_batch(index: int, so_far: torch.Tensor) -> None:
            if world == 1:
                checkpoint.record(
                    {
                        "next_batch": index + 1,
                        "generator": step_gen.get_state(),
                        "latents": so_far[rows].clone(),
                        "diagnostics": None if recorder is None else recorder.sums.clone(),
                        "reach": reach.clone(),
                    }
                )

        try:
            with clipping(prior, cfg.clip):  # PPA's attack: clip false (configs/attacking/FaceScrub_FFHQ.yaml:25)
                latents = optimise(
                    prior,
                    target,
                    begin,
                    labels,
                    batches,
                    cfg.model_copy(update={"lr": lr}),
                    step_gen,
                    device,
                    progress and distributed.is_main(),
                    rank,
                    world,
                    recorder,
                    needed,
                    first,
                    on_batch,
                    view,
                    reach,
                )
        except BaseException:
            checkpoint.save()  # Ctrl-C or a crash: keep what finished
            raise
        if world > 1:
            latents = merge_ranks(distributed.all_gather(latents), batches)
            if recorder is not None:
                recorder.merge_ranks()
            reach_parts = distributed.all_gather(reach)
            for index in range(len(batches)):
                reach[index] = reach_parts[index % world][index]
        timings["optimisation_s"] = time.perf_counter() - started

        started = time.perf_counter()
        # PPA's final selection renders without clipping (attacks/final_selection.py:54, utils/stylegan.py:47-75)
        with clipping(prior, cfg.clip):
            scores = final_scores(prior, target, latents, labels, cfg, final_gen, device, wanted, view)
        positions = target_positions(targets, classes)
        keep = cfg.final_samples
        best = keep_best(scores.view(num_targets, candidates)[positions].flatten(), len(classes), keep)
        best = rows[best]  # rows of the whole attack
        size = cfg.render_size or target.image_size  # the evaluation's input (PPA: 299)
        images = to_uint8_images(images_prior, latents, size, cfg.selection_batch_size, device, rows)
        final_images = images[torch.searchsorted(rows, best)]
        timings["final_selection_s"] = time.perf_counter() - started
        raw = accepted = None
        if recorder is not None:
            final_positions = (positions.view(-1, 1) * keep + torch.arange(keep)).flatten()
            raw, accepted = raw_confidences(
                target,
                final_images,
                labels[best],
                final_positions,
                num_targets * keep,
                cfg.selection_batch_size,
                device,
            )

    meta = {
        "timings": timings,
        "schedule": schedule,
        "pool_size": cfg.pool_size,
        **latent_meta(prior, cfg, lr),
        "attacker": attacker_meta(cfg, view),
        "config": cfg.model_dump(mode="json", exclude=set(RUN_ONLY_KEYS)),
        "shard": {
            "targets": targets,
            "classes": classes,
            "batches": sorted(needed),
            "diagnostics": None if recorder is None else recorder.sums[sorted(needed)],
            "final_confidence_raw": raw,
            "final_accepted_raw": accepted,
            "reach": reach[sorted(needed)] if cfg.until_accept is not None else None,
        },
    }
    return AttackResult(
        targets=classes,
        all_latents=latents[rows],
        all_images=images,
        all_targets=labels[rows],
        final_latents=latents[best],
        final_images=final_images,
        final_targets=labels[best],
        final_scores=scores[best],
        meta=meta,
    )

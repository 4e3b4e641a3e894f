"""The paper's 2-D toy: why label smoothing changes what a model inversion attack extracts.

Three Gaussian blobs in the plane, one small ReLU MLP per smoothing factor alpha (same data, same
initial weights, same full-batch Adam run, only alpha differs, trained with lsmia's own
``smoothed_cross_entropy``), then a gradient attack on the 2-D input that starts from one fixed point
below the data (between the two non-target classes) and optimises it with Adam to make the model
predict the target class. The attack loss is plain cross-entropy (``identity_loss("ce")``), not PPA's
Poincaré loss: the Poincaré loss scores the *direction* of the logit vector (target logit positive,
the others near zero), which a 3-class toy MLP has no reason to produce, so on the toy it rewards
logit geometry instead of confidence (tried: no alpha's attack reached the data). The attack's Adam
keeps torch's default betas (0.9, 0.999), not PPA's (0.1, 0.1): PPA's near-sign steps ignore how small
the gradient has become, so with them (tried, seed 0) the alpha = 0 attack reaches the data (0.11), the
alpha = +0.05 one follows the ReLU net's extrapolation past the data (22.8 away, confidence 1.0) and only
negative smoothing still stops at the boundary (3.4).

What the toy shows (seed 0, defaults): positive smoothing caps the confidence (at 1 - alpha + alpha/C
on the training data), so the cross-entropy gradient never vanishes and the confidence maximum sits on
the data: the attack walks onto the training samples. Without smoothing the confidence saturates
towards 1 soon after the decision boundary, the gradient decays exponentially and Adam's steps shrink
with it: the attack stalls between the boundary and the data. Negative smoothing has a loss unbounded
below, so training inflates the logits without limit (logit norms of ~1e5-1e6 here): the confidence is
a step function, exactly 1.0 in float32 just past the boundary, the input gradient underflows to
exactly zero there and the attack stops at the boundary, farthest from the data; before it stops, its
consecutive gradients point in less consistent directions (the paper's Fig. 6b quantity).

Measured per alpha: the distance of the attack's end point to the nearest training sample of the
target class, the target confidence there, the mean cosine similarity of consecutive input gradients
(over the steps where both gradients are non-zero, since a zero gradient has no direction) and the
number of steps whose gradient vanished exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsmia.attack.losses import identity_loss
from lsmia.errors import LsmiaError
from lsmia.reporting import figures as style
from lsmia.training.smoothing import smoothed_cross_entropy
from lsmia.utils import atomic_path, save_json

NUM_CLASSES = 3
POINTS_PER_CLASS = 100
BLOB_RADIUS = 5.0  # blob centres on a circle: every pair of classes is equally far apart
BLOB_STD = 0.6
HIDDEN = 64
TRAIN_EPOCHS = 300  # full batch; enough for alpha >= 0 to fit, negative alpha never converges (loss unbounded)
TRAIN_LR = 1e-2
TARGET_CLASS = 0  # the blob at the top
START = (0.0, -6.0)  # below the data, equidistant from the two non-target blobs
ATTACK_LOSS = "ce"
ATTACK_LR = 0.1
ATTACK_STEPS = 300
DECIMALS = 6  # JSON floats rounded so that the bytes are stable
GRID_POINTS = 160  # per axis of the confidence landscape in the figure


@dataclass
class ToyResult:
    """Per alpha: end distance, end confidence, gradient cosine, training accuracy; and the figure."""

    rows: list[dict[str, float]]  # keys: alpha, end_distance, end_confidence, grad_cosine, vanished_steps, train_acc
    figure: Path | None
    trajectories: dict[float, list[list[float]]] = field(default_factory=dict)  # alpha -> [[x, y], ...] per step


@dataclass
class _Run:
    alpha: float
    model: nn.Module
    trajectory: torch.Tensor  # (steps + 1, 2)
    gradients: torch.Tensor  # (steps, 2)


@contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread while the toy runs: the reduction order, hence every bit of the result, is fixed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs on a circle; the same points for every alpha."""
    gen = torch.Generator().manual_seed(seed)
    angles = torch.arange(NUM_CLASSES, dtype=torch.float32) * (2 * math.pi / NUM_CLASSES) + math.pi / 2
    centres = BLOB_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(POINTS_PER_CLASS)
    points = centres[labels] + BLOB_STD * torch.randn(len(labels), 2, generator=gen)
    return points, labels


def make_classifier(seed: int) -> nn.Sequential:
    """2 -> 64 -> 64 -> C ReLU MLP; the same initial weights for every alpha, the caller's RNG left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, NUM_CLASSES)
        )


def train_classifier(points: torch.Tensor, labels: torch.Tensor, alpha: float, seed: int) -> nn.Module:
    """Full-batch Adam on the smoothed loss the real targets use (constant alpha, no warm-up)."""
    model = make_classifier(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    for _ in range(TRAIN_EPOCHS):
        optimiser.zero_grad()
        smoothed_cross_entropy(model(points), labels, alpha).backward()
        optimiser.step()
    return model.eval().requires_grad_(False)


def invert(model: nn.Module, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on the input from START towards TARGET_CLASS; returns the visited points and the input gradients."""
    point = torch.tensor(START, dtype=torch.float32).requires_grad_(True)
    optimiser = torch.optim.Adam([point], lr=ATTACK_LR)
    loss_fn = identity_loss(ATTACK_LOSS)
    target = torch.tensor([TARGET_CLASS])
    visited, gradients = [point.detach().clone()], []
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(point[None]), target).backward()
        assert point.grad is not None  # backward() sets it: point requires grad
        gradients.append(point.grad.detach().clone())
        optimiser.step()
        visited.append(point.detach().clone())
    return torch.stack(visited), torch.stack(gradients)


def mean_consecutive_cosine(gradients: torch.Tensor) -> float:
    """Mean cosine of consecutive input gradients where both are non-zero (a zero gradient has no direction)."""
    previous, current = gradients[:-1], gradients[1:]
    defined = (previous.norm(dim=1) > 0) & (current.norm(dim=1) > 0)
    if not defined.any():
        return float("nan")
    return F.cosine_similarity(previous[defined], current[defined], dim=1).mean().item()


def target_confidence(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    return model(points).softmax(dim=1)[:, TARGET_CLASS]


def measure(run: _Run, points: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    end = run.trajectory[-1:]
    target_points = points[labels == TARGET_CLASS]
    return {
        "alpha": float(run.alpha),
        "end_distance": torch.cdist(end, target_points).min().item(),
        "end_confidence": target_confidence(run.model, end).item(),
        "grad_cosine": mean_consecutive_cosine(run.gradients),
        "vanished_steps": float((run.gradients.norm(dim=1) == 0).sum().item()),
        "train_acc": (run.model(points).argmax(dim=1) == labels).float().mean().item(),
    }


def run_toy(
    alphas: Sequence[float] = (0.05, 0.0, -0.05), seed: int = 0, steps: int = ATTACK_STEPS, out_dir: Path | None = None
) -> ToyResult:
    """Train one toy classifier per alpha, invert each from the same start; write toy.png and toy.json if asked."""
    if steps < 1:
        raise LsmiaError(f"the toy attack needs at least 1 step, got {steps}: pass --steps 1 or more")
    if not alphas:
        raise LsmiaError("the toy needs at least one alpha")
    with _single_thread():
        points, labels = make_blobs(seed)
        runs = []
        for alpha in alphas:
            model = train_classifier(points, labels, float(alpha), seed)
            trajectory, gradients = invert(model, steps)
            runs.append(_Run(float(alpha), model, trajectory, gradients))
        rows = [{key: round(value, DECIMALS) for key, value in measure(run, points, labels).items()} for run in runs]
        figure = None
        if out_dir is not None:
            out_dir = Path(out_dir)
            figure = plot_toy(runs, rows, points, labels, out_dir / "toy.png")
            save_json(_json_record(rows, seed, steps), out_dir / "toy.json")
    trajectories = {run.alpha: run.trajectory.tolist() for run in runs}
    return ToyResult(rows=rows, figure=figure, trajectories=trajectories)


def _json_record(rows: list[dict[str, float]], seed: int, steps: int) -> dict:
    settings = {
        "seed": seed,
        "steps": steps,
        "num_classes": NUM_CLASSES,
        "points_per_class": POINTS_PER_CLASS,
        "blob_radius": BLOB_RADIUS,
        "blob_std": BLOB_STD,
        "hidden": HIDDEN,
        "train_epochs": TRAIN_EPOCHS,
        "train_lr": TRAIN_LR,
        "target_class": TARGET_CLASS,
        "start": list(START),
        "attack_loss": ATTACK_LOSS,
        "attack_lr": ATTACK_LR,
    }
    return {"rows": rows, "settings": settings}


def _plot_bounds(points: torch.Tensor, runs: Sequence[_Run]) -> tuple[float, float, float, float]:
    """One square window holding the data and every trajectory, so the panels compare at a glance."""
    everything = torch.cat([points] + [run.trajectory for run in runs])
    low, high = everything.min(dim=0).values - 1.0, everything.max(dim=0).values + 1.0
    centre, half = (low + high) / 2, (high - low).max().item() / 2
    return centre[0].item() - half, centre[0].item() + half, centre[1].item() - half, centre[1].item() + half


def plot_toy(
    runs: Sequence[_Run], rows: Sequence[dict[str, float]], points: torch.Tensor, labels: torch.Tensor, path: Path
) -> Path:
    """One panel per alpha: target confidence (filled contour), training points, attack path; stable PNG bytes."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    x0, x1, y0, y1 = _plot_bounds(points, runs)
    xs, ys = torch.linspace(x0, x1, GRID_POINTS), torch.linspace(y0, y1, GRID_POINTS)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)
    fig = Figure(figsize=style.toy_size(len(runs)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharex=True, sharey=True))
    levels = np.linspace(0.0, 1.0, 11)
    contour = None
    for ax, run, row in zip(axes, runs, rows, strict=False):
        confidence = target_confidence(run.model, grid).reshape(GRID_POINTS, GRID_POINTS).numpy()
        contour = ax.contourf(xs.numpy(), ys.numpy(), confidence, levels=levels, cmap=style.TOY_CONFIDENCE_MAP)
        _draw_points(ax, points, labels)
        _draw_trajectory(ax, run.trajectory.numpy())
        ax.set_title(
            f"α = {run.alpha:+.2f}: end {row['end_distance']:.2f} from the data\n"
            f"confidence {row['end_confidence']:.4f}, gradient cosine {row['grad_cosine']:.2f}",
            fontsize=style.PANEL_TITLE_FONT,
        )
        ax.set_aspect("equal")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    assert contour is not None  # one panel per run, and there is at least one run
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=style.LEGEND_FONT)
    fig.colorbar(contour, ax=list(axes), label=f"confidence of class {TARGET_CLASS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=style.STABLE_DPI, bbox_inches="tight", metadata=style.STABLE_METADATA)
    return path


def _draw_points(ax, points: torch.Tensor, labels: torch.Tensor) -> None:
    for cls in range(NUM_CLASSES):
        chosen = points[labels == cls].numpy()
        name = f"class {cls} (target)" if cls == TARGET_CLASS else f"class {cls}"
        ax.scatter(
            chosen[:, 0],
            chosen[:, 1],
            s=6,
            c=style.TOY_CLASSES[cls % len(style.TOY_CLASSES)],
            edgecolors=style.EDGE,
            linewidths=0.3,
            label=name,
        )


def _draw_trajectory(ax, trajectory: np.ndarray) -> None:
    ax.plot(trajectory[:, 0], trajectory[:, 1], color=style.TOY_ATTACK, linewidth=1.5)
    ends = (
        (trajectory[:1], "o", 50, style.TOY_ATTACK, "attack start"),
        (trajectory[-1:], "*", 160, style.TOY_END, "attack end"),
    )
    for points, marker, size, colour, label in ends:
        ax.scatter(
            points[:, 0], points[:, 1], marker=marker, s=size, c=colour, edgecolors=style.EDGE, zorder=3, label=label
        )

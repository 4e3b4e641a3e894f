"""How the attack reads the target's logits: the adaptive attacker's view of them, and the candidate scores.

PPA ranks latents by the target's softmax probability, averaged over an image and its mirror (initial
selection) or over random crops and flips (final selection), in float32. Once a target's logits are huge
(negative label smoothing spreads them over thousands of units) those probabilities underflow to exactly 0 and
the ranking degenerates into ties that ``topk`` breaks by index. ``ranking="log"`` computes the same average
exactly, as the log of the mean probability (``logsumexp(log_softmax) - log n``): the same order wherever
nothing underflows, a strict order where it does. ``ranking="softmax"`` keeps PPA's published arithmetic.

The adaptive attacker also undoes the defense's blow-up of the logits before every loss and every ranking
(:class:`LogitView`): a temperature derived from the target itself (``auto``) or a per-image
standardisation. Either makes the attack invariant to a rescaling of the target's logits, which changes no
decision and so carries no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from lsmia.attack.target import AttackTarget

Ranking = Literal["log", "softmax"]
Score = Literal["probability", "margin"]
STANDARDISE_EPS = 1e-12


class LogitView:
    """The logits as the attacker uses them: divided by ``temperature``, or each row standardised."""

    def __init__(self, temperature: float = 1.0, standardise: bool = False) -> None:
        if not (standardise or (math.isfinite(temperature) and temperature > 0)):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        self.temperature, self.standardise = float(temperature), standardise

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            centred = logits - logits.mean(dim=1, keepdim=True)
            return centred / centred.square().mean(dim=1, keepdim=True).sqrt().clamp_min(STANDARDISE_EPS)
        return logits if self.temperature == 1.0 else logits / self.temperature

    def describe(self) -> dict[str, object]:
        return {"standardise": self.standardise, "temperature": None if self.standardise else self.temperature}


def auto_temperature(logits: torch.Tensor) -> float:
    """The mean over images of the per-image std of the logits: dividing by it brings any target's logits to
    unit spread, so a target whose logits are all ``c`` times larger gets exactly ``c`` times the temperature."""
    spread = logits.double().std(dim=1, correction=0).mean()
    if not float(spread) > 0:
        return 1.0  # constant logits: nothing to undo
    return float(spread)


def make_view(setting: float | str, pool_logits: torch.Tensor) -> LogitView:
    """``attack.temperature`` resolved on the target's logits for the initial pool."""
    if setting == "standardise":
        return LogitView(standardise=True)
    if setting == "auto":
        return LogitView(auto_temperature(pool_logits))
    return LogitView(float(setting))


def margins(logits: torch.Tensor) -> torch.Tensor:
    """``[n, C]``: each class's logit minus the best other class's logit."""
    top2 = logits.topk(min(2, logits.shape[1]), dim=1)
    best, runner_up = top2.values[:, :1], top2.values[:, -1:]
    others_best = best.expand_as(logits).clone()
    others_best.scatter_(1, top2.indices[:, :1], runner_up)
    return logits - others_best


def class_scores(versions: Sequence[torch.Tensor], ranking: Ranking, score: Score) -> torch.Tensor:
    """``[n, C]`` scores of every class, averaged over ``versions`` (the logits of transformed copies of the
    same images): the mean probability (``softmax``: float32 as published; ``log``: its exact log) or the mean
    margin."""
    if score == "margin":
        return torch.stack([margins(v.double()) for v in versions]).mean(0)
    if ranking == "softmax":
        return torch.stack([torch.softmax(v.float(), dim=1) for v in versions]).mean(0)
    logs = torch.stack([torch.log_softmax(v.double(), dim=1) for v in versions])
    return torch.logsumexp(logs, dim=0) - math.log(len(versions))


def label_scores(logits: torch.Tensor, labels: torch.Tensor, ranking: Ranking, score: Score) -> torch.Tensor:
    """``[draws, n]`` logits of each row's draws -> ``[n]``: the row's score for its label (see
    :func:`class_scores`), averaged over the draws."""
    draws, rows, classes = logits.shape
    index = labels.view(1, -1, 1).expand(draws, -1, 1)
    if score == "margin":
        return margins(logits.reshape(-1, classes).double()).view(draws, rows, classes).gather(2, index).mean(0)[:, 0]
    if ranking == "softmax":
        return torch.softmax(logits.float(), dim=2).gather(2, index).squeeze(2).mean(0)
    logs = torch.log_softmax(logits.double(), dim=2).gather(2, index).squeeze(2)
    return torch.logsumexp(logs, dim=0) - math.log(draws)


class ScaledLogits(nn.Module):
    """A classifier whose logits are multiplied by ``scale``: the same decisions, logits as large as a
    defended target's (the negative control; it carries no privacy by construction)."""

    def __init__(self, inner: AttackTarget, scale: float) -> None:
        super().__init__()
        self.inner, self.scale = inner, float(scale)
        self.num_classes = inner.num_classes
        self.image_size = inner.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale

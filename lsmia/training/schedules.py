"""Label-smoothing factor per epoch."""

from __future__ import annotations

from lsmia.config import SmoothingConfig

UPSTREAM_RAMP_START, UPSTREAM_FULL = 50, 75  # absolute epochs of the reference code's warm-up


def reference_alpha(alpha: float, epoch: int, epochs: int) -> float:
    """The reference warm-up's shape in proportion to the run (e counted from 0): lsmia's own variant.

    e < E/2: 0; E/2 <= e < 3E/4: alpha*(e+1-E/2)/(E/2), which reaches only ~alpha/2; e >= 3E/4: alpha (a jump).
    Equal to ``upstream_alpha`` at E = 100; for other epoch counts it scales with the run, the reference does not.
    """
    half, three_q = epochs / 2, epochs * 0.75
    if epoch < half:
        return 0.0
    if epoch < three_q:
        return alpha * (epoch + 1 - half) / (epochs - half)
    return alpha


def upstream_alpha(alpha: float, epoch: int, epochs: int) -> float:
    """The reference code's warm-up exactly, in absolute epochs whatever ``epochs`` is (e counted from 0).

    e < 50: 0; 50 <= e < 75: alpha*(e+1-50)/(E-50); e >= 75: alpha. At E = 100 the ramp reaches alpha/2 at
    e = 74 and jumps to alpha at 75; with E <= 50 the run never smooths; with 50 < E <= 75 it ends at alpha.
    """
    if epoch < UPSTREAM_RAMP_START:
        return 0.0
    if epoch < UPSTREAM_FULL:
        return alpha * (epoch + 1 - UPSTREAM_RAMP_START) / (epochs - UPSTREAM_RAMP_START)
    return alpha


def linear_alpha(alpha: float, epoch: int, epochs: int, start: float, end: float) -> float:
    """0 before ``start*epochs``, a straight ramp that reaches exactly ``alpha`` at ``end*epochs``, then alpha."""
    first, last = start * epochs, end * epochs
    if epoch < first:
        return 0.0
    if epoch >= last or last <= first:
        return alpha
    # the epoch just before `last` gets a fraction < 1, the epoch at `last` gets alpha exactly
    return alpha * (epoch + 1 - first) / (last - first + 1)


def alpha_at(cfg: SmoothingConfig, epoch: int, epochs: int) -> float:
    """The smoothing factor in force at ``epoch`` (0-based) of ``epochs``."""
    if cfg.schedule == "constant" or (cfg.negative_only and cfg.alpha >= 0):
        return cfg.alpha
    if cfg.schedule == "reference":
        return reference_alpha(cfg.alpha, epoch, epochs)
    if cfg.schedule == "upstream":
        return upstream_alpha(cfg.alpha, epoch, epochs)
    return linear_alpha(cfg.alpha, epoch, epochs, cfg.warmup_start, cfg.warmup_end)


def alpha_trajectory(cfg: SmoothingConfig, epochs: int) -> list[float]:
    return [alpha_at(cfg, e, epochs) for e in range(epochs)]

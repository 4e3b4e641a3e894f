"""How far PPA's float32 softmax ranking degenerates on a trained target (``lsmia ranking-check PLAN``).

For every finished target of an ablation plan: the initial pool of its attack is rendered and scored as PPA
publishes it (float32 softmax, averaged over the image and its flip) and exactly (log space). Per target it
reports how many pool latents keep a non-zero probability for their class, how many distinct latents the
candidates of all attacked classes start from, and how much of the exact selection PPA's selection keeps.
Where nothing underflows the two agree completely; where the defended target's logits are huge, the softmax
ties at exactly 0 and ``topk`` hands the same block of pool latents to every class. It trains nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from lsmia.attack.ppa import configure_latent_space, pool_logits, resolve_targets, select_candidates, stage_generators
from lsmia.attack.scoring import class_scores
from lsmia.config import Config
from lsmia.experiments import graph
from lsmia.experiments.ablation import AblationPlan, finished_targets
from lsmia.models.classifiers import load_classifier
from lsmia.models.fusion import inference_copy
from lsmia.models.generator import load_prior


def selection_agreement(
    pool: tuple[torch.Tensor, torch.Tensor], targets: list[int], candidates: int
) -> dict[str, float]:
    """PPA's float32 softmax selection against the exact one, on the pool's logits (image, flip)."""
    published = class_scores(list(pool), "softmax", "probability")[:, targets]
    exact = class_scores(list(pool), "log", "probability")
    chosen_published = select_candidates(published, list(range(len(targets))), candidates)
    chosen_exact = select_candidates(exact, targets, candidates)
    kept = [
        len(set(a.tolist()) & set(b.tolist())) / candidates for a, b in zip(chosen_published, chosen_exact, strict=True)
    ]
    return {
        "nonzero_scores_per_class": float((published > 0).sum(0).double().mean()),
        "pool": float(len(published)),
        "distinct_starts_published": float(len(set(chosen_published.flatten().tolist()))),
        "distinct_starts_exact": float(len(set(chosen_exact.flatten().tolist()))),
        "starts": float(chosen_exact.numel()),
        "agreement": sum(kept) / len(kept),
    }


@torch.no_grad()
def target_rows(base: Config, plan: AblationPlan, device: torch.device) -> list[dict[str, Any]]:
    """One row per finished target of ``plan`` (the first variant naming it), attacked as that variant would."""
    rows: list[dict[str, Any]] = []
    for finished in finished_targets(base, plan):
        if not finished.done("prior"):
            continue
        cfg = finished.cfg
        target = inference_copy(load_classifier(finished.model).to(device), device)
        prior = load_prior(cfg.prior, finished.layout.output(graph.BY_NAME["prior"], None)).to(device).eval()
        configure_latent_space(prior, cfg.attack)
        pool = prior.sample_latents(cfg.attack.pool_size, generator=stage_generators(cfg.attack.seed)[0])
        logits = pool_logits(prior, target, pool.cpu(), cfg.attack.selection_batch_size, device)
        targets = resolve_targets(cfg.attack.targets, target.num_classes)
        rows.append({**finished.cell, **selection_agreement(logits, targets, cfg.attack.candidates)})
    return rows


def lines(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| variant | α | seed | non-zero softmax scores per class (of the pool) | distinct starts: PPA / exact "
        "(of all) | PPA's selection ∩ exact |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['variant']} | {r['alpha']:+g} | {r['seed']} | {r['nonzero_scores_per_class']:.1f} / "
            f"{r['pool']:.0f} | {r['distinct_starts_published']:.0f} / {r['distinct_starts_exact']:.0f} "
            f"({r['starts']:.0f}) | {100 * r['agreement']:.0f} % |"
        )
    return out

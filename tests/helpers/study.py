"""A made-up evaluated study on disk (data, targets, metrics, grids) for the report's tests, and a made-up attack."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia.attack.result import AttackResult
from lsmia.models.classifiers import build_classifier, save_classifier
from lsmia.paths import StudyPaths
from lsmia.reporting.visualize import save_png
from lsmia.stages.data import data_summary
from lsmia.utils import save_json
from tests.helpers.data import make_face_data

ALPHAS = (-0.05, 0.0, 0.1)
SEEDS = (0, 1)
TILE = 16  # px: make_face_data's image size


def fake_metrics(alpha: float, seed: int, attributes: bool = True) -> dict[str, float]:
    row = {
        "alpha": alpha,
        "seed": seed,
        "test_acc": 0.8 - alpha + 0.03 * seed,
        "train_acc": 0.99,
        "ece": 0.05 + alpha,
        "mean_confidence": 0.9 - alpha,
        "mean_logit_norm": 10.0 - 20 * alpha,
        "final_acc1": 0.6 + 2 * alpha - 0.1 * seed,
        "final_acc5": 0.9 + alpha,
        "all_acc1": 0.4,
        "all_acc5": 0.7,
        "delta_eval": 50.0 - 100 * alpha + seed,
        "fid_eval_features": 30.0 + seed,
        "precision": 0.5,
        "recall": 0.4,
        "density": 0.6,
        "coverage": 0.3,
        "xi": 0.5 + alpha,
        "num_targets": 4.0,
        "train_seconds": 1.5,
        "evaluate_seconds": 0.5,
    }
    if attributes:
        row.update(attribute_acc=0.7 + alpha, attribute_chance=0.4, attribute_acc_real=0.9)
    return row


def make_study(root: Path, attributes: bool = True) -> StudyPaths:
    paths = StudyPaths(root)
    data = make_face_data()
    data.save(paths.data_file)
    save_json(data_summary(data), paths.data_summary)
    for alpha in ALPHAS:
        for seed in SEEDS:
            torch.manual_seed(seed)
            model = build_classifier("smallresnet", 4, 16, width=4)
            with torch.no_grad():
                model.head.weight.mul_(1.0 - 5 * alpha)  # distinct logit scales per alpha
            save_classifier(model, paths.target_dir(alpha, seed) / "model.pt")
            save_json(fake_metrics(alpha, seed, attributes), paths.metrics_file(alpha, seed))
            save_png(torch.rand(6, 3, 16, 16), paths.attack_dir(alpha, seed) / "reconstructions.png", nrow=3)
    return paths


def fake_attack(targets: list[int], per_target: int = 3) -> AttackResult:
    """Final samples: solid grey images, ``per_target`` per target, scores falling within each target."""
    n = len(targets) * per_target
    final_targets = torch.tensor(targets).repeat_interleave(per_target)
    images = torch.full((n, 3, TILE, TILE), 128, dtype=torch.uint8)
    return AttackResult(
        targets=targets,
        all_latents=torch.zeros(n, 4),
        all_images=images,
        all_targets=final_targets,
        final_latents=torch.zeros(n, 4),
        final_images=images,
        final_targets=final_targets,
        final_scores=torch.linspace(1.0, 0.1, n),
    )

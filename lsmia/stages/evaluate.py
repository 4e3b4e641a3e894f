"""Stage ``evaluate``: what one attack leaked, merged with its target's accuracy and calibration."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lsmia.attack.result import AttackResult
from lsmia.config import Config
from lsmia.data.base import FaceData
from lsmia.models.classifiers import load_classifier
from lsmia.utils import load_json, save_json, save_timings


def stage_evaluate(
    cfg: Config,
    data_file: Path,
    attack_file: Path,
    eval_file: Path,
    target_dir: Path,
    out_file: Path,
    device: torch.device,
    alpha: float,
    seed: int,
    attribute_file: Path | None = None,
) -> dict[str, Any]:
    from lsmia.metrics.attributes import load_attribute_predictor
    from lsmia.metrics.evaluate import evaluate_attack, require_metric_weights

    require_metric_weights(cfg.metrics)  # a missing FID Inception or FaceNet file fails before any loading
    data = FaceData.load(data_file)
    result = AttackResult.load(attack_file)
    eval_model = load_classifier(eval_file, num_classes=data.num_classes, what="evaluation model").to(device)
    predictor = None
    if attribute_file is not None and Path(attribute_file).exists():
        predictor = load_attribute_predictor(attribute_file).to(device)
    target_metrics = load_json(  # before the long part: a bad file fails at once
        Path(target_dir) / "metrics.json", what="target metrics", keys=("test_acc",), fix="re-run 'lsmia train'"
    )
    started = time.perf_counter()
    leakage = evaluate_attack(cfg.metrics, result, eval_model, data, device, seed=seed, attribute_predictor=predictor)
    metrics = {"alpha": alpha, "seed": seed, **target_metrics, **leakage}
    save_json(metrics, out_file)
    seconds = time.perf_counter() - started
    save_timings(out_file, {"evaluate_s": seconds})
    return {**metrics, "evaluate_seconds": seconds}

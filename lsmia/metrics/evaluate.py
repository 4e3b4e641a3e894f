"""All leakage metrics of one attack result, as the flat dict written to metrics JSON."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from lsmia.attack.result import AttackResult
from lsmia.config import MetricsConfig
from lsmia.data.base import FaceData, ImageSet
from lsmia.errors import LsmiaError
from lsmia.metrics.accuracy import attack_accuracy
from lsmia.metrics.attributes import AttributePredictor, attribute_leakage
from lsmia.metrics.delta import delta_eval, delta_face
from lsmia.metrics.features import extract_features
from lsmia.metrics.fid import frechet_distance, inception_fid, tf_inception_fid
from lsmia.metrics.knowledge import knowledge_extraction
from lsmia.metrics.prdc import prdc_per_class
from lsmia.models.facenet import load_facenet
from lsmia.models.published import FACENET, FID_INCEPTION


def _check_targets(result: AttackResult, data: FaceData) -> None:
    if len(result.final_images) == 0:
        raise LsmiaError("the attack result holds no final samples: re-run 'lsmia attack'")
    bad = [t for t in result.targets if not 0 <= t < data.num_classes]
    if bad:
        raise LsmiaError(
            f"attack targets {bad[:5]} do not exist in the {data.num_classes}-class data set: "
            "evaluate the attack against the data it was run on"
        )


def require_metric_weights(cfg: MetricsConfig) -> None:
    """Each weight file the metrics section names must exist: a one-line error naming the file to place there (read
    before hours of work; the loaders check the contents)."""
    for weights, path in ((FID_INCEPTION, cfg.fid_inception_path), (FACENET, cfg.facenet_path)):
        if path is not None:
            weights.require(path)


def comparable_metrics(
    cfg: MetricsConfig,
    result: AttackResult,
    train: ImageSet,
    device: torch.device | str,
) -> dict[str, float]:
    """The metrics PPA reports with published networks, each only where its weights are configured (absent, not zero,
    otherwise): ``fid_tf_inception`` (pytorch-fid's FID Inception, ``metrics.fid_inception_path``) and ``delta_face``
    (FaceNet VGGFace2, ``metrics.facenet_path``); ``train`` holds the targeted classes' training images."""
    metrics: dict[str, float] = {}
    if cfg.fid_inception_path is not None:
        metrics["fid_tf_inception"] = tf_inception_fid(
            result.final_images, train.images, cfg.fid_inception_path, device
        )
    if cfg.facenet_path is not None:
        facenet = load_facenet(cfg.facenet_path).to(device)
        metrics["delta_face"] = delta_face(
            facenet, result.final_images, result.final_targets.cpu(), train.images, train.labels
        )
    return metrics


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


def _prdc_or_nothing(
    cfg: MetricsConfig,
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    fake_feats: torch.Tensor,
    result: AttackResult,
) -> dict[str, float]:
    try:
        return prdc_per_class(
            train_feats, train_labels, fake_feats, result.final_targets.cpu(), list(result.targets), cfg.prdc_k
        )
    except LsmiaError as err:  # e.g. one final sample per target: no k-NN radius exists
        warnings.warn(f"PRDC left out: {err}", stacklevel=2)
        return {}


def final_target_confidence(result: AttackResult) -> float | None:
    """The target's own mean confidence in the final samples (under the final selection's transforms), read off
    the final scores; None where they are not the target's probabilities (margins, or a tempered or
    standardised view of the logits).

    Read against final acc@1: a target that is sure of samples the evaluation model rejects is
    overconfident off its training data, the mechanism the paper gives for negative smoothing.
    """
    attacker = result.meta.get("attacker", {})
    viewed = attacker.get("standardise") or attacker.get("temperature", 1.0) != 1.0
    if attacker.get("score", "probability") != "probability" or viewed:
        return None
    scores = result.final_scores.double()
    return float((scores.exp() if attacker.get("ranking") == "log" else scores).mean())


def attack_diagnostics(result: AttackResult) -> dict[str, float]:
    """Summaries of the attack's own diagnostics; empty for attacks saved without them.

    ``final_target_confidence_raw``: the target's mean confidence in the final samples as saved (no
    transforms), beside ``final_target_confidence`` under the selection's crops and flips.
    ``grad_cosine_mean``: the cosine of consecutive latent gradients, averaged over rows and steps (the
    paper's Fig. 6b quantity; it predicts lower values for negative smoothing).
    """
    summary: dict[str, float] = {}
    for key in ("final_target_confidence_raw", "final_target_acceptance_raw"):
        if key in result.meta:
            summary[key] = float(result.meta[key])
    reach = result.meta.get("until_accept")
    if reach:
        summary["until_accept_mean_steps"] = float(reach["mean_steps"])
        summary["until_accept_accepted"] = float(reach["accepted"])
    cosines = result.meta.get("diagnostics", {}).get("grad_cosine", [])
    if cosines:
        summary["grad_cosine_mean"] = round(sum(cosines) / len(cosines), 6)
    return summary


def evaluate_attack(
    cfg: MetricsConfig,
    result: AttackResult,
    eval_model: nn.Module,
    data: FaceData,
    device: torch.device | str,
    seed: int = 0,
    attribute_predictor: AttributePredictor | None = None,
) -> dict[str, float]:
    """Every metric of ``result``; real references are the targeted classes' images of ``data``.

    ``fid_eval_features`` is a Fréchet distance in the evaluation model's feature space, not
    Inception FID; ``inception_fid`` (torchvision's Inception) is added only when ``cfg.inception_path`` is set,
    ``fid_tf_inception`` and ``delta_face`` (comparable with PPA's FID and δ_face) only when
    ``cfg.fid_inception_path`` and ``cfg.facenet_path`` are (``comparable_metrics``).
    PRDC is the mean over the targeted classes (real = training images of the class).
    """
    _check_targets(result, data)
    require_metric_weights(cfg)
    device = torch.device(device)
    eval_model = eval_model.to(device)
    train = data.train.of_classes(result.targets)
    final_targets = result.final_targets.cpu()
    metrics: dict[str, float] = {
        **_prefixed("final", attack_accuracy(eval_model, result.final_images, final_targets)),
        **_prefixed("all", attack_accuracy(eval_model, result.all_images, result.all_targets.cpu())),
    }
    fake_feats = extract_features(eval_model, result.final_images)
    train_feats = extract_features(eval_model, train.images)
    metrics["delta_eval"] = delta_eval(fake_feats, final_targets, train_feats, train.labels)
    metrics["fid_eval_features"] = frechet_distance(fake_feats, train_feats)
    if cfg.inception_path is not None:
        metrics["inception_fid"] = inception_fid(result.final_images, train.images, cfg.inception_path, device)
    metrics.update(comparable_metrics(cfg, result, train, device))
    metrics.update(_prdc_or_nothing(cfg, train_feats, train.labels, fake_feats, result))
    test = data.test.of_classes(result.targets)
    real = ImageSet(torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]))
    metrics["xi"] = knowledge_extraction(cfg.student, result.final_images, final_targets, real, device, seed)
    metrics.update(
        attribute_leakage(
            data, result.final_images, final_targets, device, cfg.attribute_epochs, seed, predictor=attribute_predictor
        )
    )
    confidence = final_target_confidence(result)
    if confidence is not None:
        metrics["final_target_confidence"] = confidence
    metrics.update(attack_diagnostics(result))
    metrics["num_targets"] = float(len(result.targets))
    metrics["num_final_samples"] = float(len(result.final_images))
    return metrics

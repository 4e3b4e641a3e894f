"""Knowledge extraction ξ: how well a student trained only on the reconstructions classifies real images."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lsmia.config import StudentConfig
from lsmia.data.base import ImageSet
from lsmia.errors import LsmiaError
from lsmia.metrics.accuracy import topk_accuracy
from lsmia.metrics.features import predict_logits
from lsmia.metrics.training import fit
from lsmia.models.classifiers import build_classifier


def remap_labels(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Map each label to its position in ``classes`` (the student's restricted label space)."""
    lookup = {cls: i for i, cls in enumerate(classes)}
    missing = sorted(set(labels.tolist()) - set(lookup))
    if missing:
        raise LsmiaError(
            f"labels {missing[:5]} are not among the targeted classes: pass real images of the targets only"
        )
    return torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.long)


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def train_student(
    cfg: StudentConfig,
    samples: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    device: torch.device | str,
    seed: int,
    image_size: int | None = None,
) -> nn.Module:
    """A classifier trained from scratch on ``samples`` (uint8) with ``labels`` in 0..num_classes-1, at
    ``image_size`` (None: the samples' size; samples of another size are resized batch by batch)."""
    device = torch.device(device)
    size = image_size or int(samples.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = build_classifier(cfg.arch, num_classes, size, width=cfg.width).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    fit(
        student,
        samples,
        labels,
        _cross_entropy,
        optimizer,
        cfg.epochs,
        cfg.batch_size,
        device,
        gen,
        desc="evaluate: ξ student epochs",
        image_size=size,
    )
    return student


def knowledge_extraction(
    cfg: StudentConfig,
    samples: torch.Tensor,
    sample_targets: torch.Tensor,
    real: ImageSet,
    device: torch.device | str,
    seed: int = 0,
) -> float:
    """ξ: top-1 accuracy on ``real`` of a student trained only on ``samples`` labelled by their targets.

    The student's label space is the targeted classes only (labels remapped to 0..T-1 in
    ascending class order), so ξ's chance level is 1/T, not 1/num_classes. ``real`` holds the
    real (train + test) images of exactly the targeted classes.
    """
    if len(samples) == 0 or len(samples) != len(sample_targets):
        raise LsmiaError(f"{len(samples)} samples and {len(sample_targets)} targets: pass one target per sample")
    classes = sorted(set(sample_targets.tolist()))
    # at the real images' size: samples rendered for the evaluation model (attack.render_size) are resized to it
    size = int(real.images.shape[-1])
    student = train_student(cfg, samples, remap_labels(sample_targets, classes), len(classes), device, seed, size)
    logits = predict_logits(student, real.images, batch_size=256)
    return topk_accuracy(logits, remap_labels(real.labels, classes), 1)

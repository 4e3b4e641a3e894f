"""PPA's δ_eval and δ_face: distance from each reconstruction to the closest training image of its target, in the
evaluation model's penultimate features (δ_eval) or FaceNet's embedding (δ_face)."""

from __future__ import annotations

import torch
import torch.nn as nn

from lsmia.errors import LsmiaError
from lsmia.metrics.features import extract_features


def nearest_class_distances(
    sample_feats: torch.Tensor, sample_targets: torch.Tensor, train_feats: torch.Tensor, train_labels: torch.Tensor
) -> torch.Tensor:
    """Per sample, the squared L2 distance to the nearest training feature of its target class [N]."""
    if len(sample_feats) != len(sample_targets) or len(train_feats) != len(train_labels):
        raise LsmiaError("features and labels differ in length: pass one label per feature row")
    out = torch.empty(len(sample_feats), dtype=torch.float64)
    for cls in torch.unique(sample_targets).tolist():
        rows = (sample_targets == cls).nonzero().squeeze(1)
        refs = train_feats[train_labels == cls]
        if len(refs) == 0:
            raise LsmiaError(f"target class {cls} has no training images: attack classes that exist in the data")
        dist = torch.cdist(sample_feats[rows].double(), refs.double()).pow(2)
        out[rows] = dist.min(dim=1).values
    return out


def delta_eval(
    sample_feats: torch.Tensor, sample_targets: torch.Tensor, train_feats: torch.Tensor, train_labels: torch.Tensor
) -> float:
    """Mean over samples of the squared L2 distance to the nearest training image of the target class."""
    return nearest_class_distances(sample_feats, sample_targets, train_feats, train_labels).mean().item()


def delta_eval_per_target(
    sample_feats: torch.Tensor, sample_targets: torch.Tensor, train_feats: torch.Tensor, train_labels: torch.Tensor
) -> dict[int, float]:
    """δ_eval averaged separately over each target's samples."""
    dist = nearest_class_distances(sample_feats, sample_targets, train_feats, train_labels)
    return {int(cls): dist[sample_targets == cls].mean().item() for cls in torch.unique(sample_targets).tolist()}


def delta_face(
    facenet: nn.Module,
    sample_images: torch.Tensor,
    sample_targets: torch.Tensor,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    batch_size: int = 128,
) -> float:
    """PPA's δ_face: ``delta_eval`` on the embeddings of ``facenet`` (``lsmia.models.facenet``, VGGFace2 weights)
    instead of the evaluation model's features.

    As PPA (metrics/distance_metrics.py:65-115 with attack.py:366-379): images resized to 160 px (antialiased),
    FaceNet's L2-normalised 512-d embedding, per sample the squared L2 distance to the nearest training image of its
    target class, mean over all samples. PPA standardises with Normalize(0.5, 0.5) (2x - 1); lsmia with FaceNet's own
    (255x - 127.5) / 128 (``fixed_standardisation``). Any model with ``features`` (and optionally ``image_size``)
    works, which is how the tests check the arithmetic.
    """
    return delta_eval(
        extract_features(facenet, sample_images, batch_size),
        sample_targets,
        extract_features(facenet, train_images, batch_size),
        train_labels,
    )

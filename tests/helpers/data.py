"""Tiny image data sets the tests build in memory: coloured blobs a small net learns in a few epochs."""

from __future__ import annotations

import torch

from lsmia.data.base import FaceData, ImageSet, split_per_identity


def colour_blobs(num_classes: int, per_class: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is a colour and a bright quadrant, plus noise: learnable in a few epochs."""
    gen = torch.Generator().manual_seed(seed)
    palette = torch.rand(num_classes, 3, generator=gen)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = palette[labels].view(-1, 3, 1, 1).expand(-1, 3, size, size).clone()
    half = size // 2
    for cls in range(num_classes):
        q = cls % 4
        rows = slice(0, half) if q < 2 else slice(half, size)
        cols = slice(0, half) if q % 2 == 0 else slice(half, size)
        images[labels == cls, :, rows, cols] += 0.35
    images += 0.08 * torch.randn(images.shape, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def make_face_data(num_classes: int = 4, per_class: int = 10, size: int = 16, seed: int = 0) -> FaceData:
    """A :class:`FaceData` of colour blobs: 80/20 split per identity, three public classes of other colours."""
    images, labels = colour_blobs(num_classes, per_class, size, seed)
    train_idx, test_idx = split_per_identity(labels, 0.2, seed)
    pub_images, pub_labels = colour_blobs(3, per_class, size, seed + 1)
    return FaceData(
        train=ImageSet(images[train_idx], labels[train_idx]),
        test=ImageSet(images[test_idx], labels[test_idx]),
        class_names=[f"c{i}" for i in range(num_classes)],
        public=ImageSet(pub_images, pub_labels),
        meta={"source": "test"},
    )

"""Shared fixtures: tiny data sets and shrunk configs so each test runs in seconds."""

from __future__ import annotations

import os

import pytest
import torch

from lsmia.data.base import FaceData, ImageSet, split_per_identity

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA device: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def mlflow_global_uris_restored():
    """A test that calls ``mlflow.set_tracking_uri`` or ``set_registry_uri`` must not redirect later tests'
    ``models:/`` or run lookups (the registry URI comes from the process-wide value, then MLFLOW_REGISTRY_URI)."""
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking

    saved = tracking._tracking_uri, registry._registry_uri
    # mlflow.set_*_uri also exports MLFLOW_*_URI so that subprocesses inherit it: restore those too
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    tracking._tracking_uri, registry._registry_uri = saved
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


@pytest.fixture
def tiny_data() -> FaceData:
    return make_face_data()

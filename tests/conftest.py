"""Shared fixtures and hooks only; what they build comes from tests/helpers (the tiny data sets: tests/helpers/data.py)."""

from __future__ import annotations

import os

import pytest
import torch

from lsmia.data.base import FaceData
from tests.helpers.data import make_face_data

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


@pytest.fixture
def tiny_data() -> FaceData:
    return make_face_data()

"""Stage ``attributes``: the attribute predictor for attribute leakage (built-in data only)."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia.config import Config
from lsmia.data.base import FaceData


def stage_attribute_predictor(cfg: Config, data_file: Path, out_file: Path, device: torch.device) -> bool:
    """Train the attribute predictor on the public identities; False when the data has no attributes."""
    from lsmia.metrics.attributes import save_attribute_predictor, train_attribute_predictor

    data = FaceData.load(data_file)
    if not data.public_attributes:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        return False
    predictor = train_attribute_predictor(data, device, epochs=cfg.metrics.attribute_epochs, seed=cfg.run.seed)
    save_attribute_predictor(predictor, out_file)
    return True

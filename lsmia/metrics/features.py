"""The forward passes metrics use: re-exported from lsmia.models.inference, which training shares."""

from __future__ import annotations

from lsmia.models.inference import as_float_images, extract_features, image_batches, model_device, predict_logits

__all__ = ["as_float_images", "extract_features", "image_batches", "model_device", "predict_logits"]

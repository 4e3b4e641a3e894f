"""Batched, no-grad forward passes that training, metrics and the report share (one ``predict_logits``).

Images may be uint8 (converted with /255) or float in [0, 1]; they are resized to the
model's ``image_size`` when it declares one, since a Classifier expects its own input size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch.nn as nn

from lsmia.data.augment import resize
from lsmia.errors import LsmiaError


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> float in [0, 1]; float input is returned as float32 unchanged."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise LsmiaError(f"images must be [N,3,H,W], got shape {tuple(images.shape)}: pass RGB image batches")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def image_batches(
    images: torch.Tensor, batch_size: int, device: torch.device, size: int | None = None
) -> Iterator[torch.Tensor]:
    """Float [0, 1] batches on ``device``, resized to ``size`` when given."""
    if batch_size < 1:
        raise LsmiaError(f"batch size must be >= 1, got {batch_size}: pass a positive batch size")
    for start in range(0, len(images), batch_size):
        batch = as_float_images(images[start : start + batch_size].to(device))
        yield batch if size is None else resize(batch, size)


def _batched_outputs(
    model: nn.Module, images: torch.Tensor, batch_size: int, call: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    device = model_device(model)
    size = getattr(model, "image_size", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outs = [call(batch).float().cpu() for batch in image_batches(images, batch_size, device, size)]
    finally:
        model.train(was_training)
    if not outs:
        raise LsmiaError("no images to evaluate: the attack result or data split is empty; re-run the attack")
    return torch.cat(outs)


def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (``model.features``) of ``images`` as a CPU float tensor [N, D]."""
    features = cast(Callable[[torch.Tensor], torch.Tensor], model.features)  # a method, not a submodule or tensor
    return _batched_outputs(model, images, batch_size, features)


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``images`` as a CPU float tensor [N, C]."""
    return _batched_outputs(model, images, batch_size, model)

"""A compact supervised loop shared by the student (ξ) and the attribute predictor."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn

from lsmia.data.augment import resize, training_augment
from lsmia.errors import DivergenceError
from lsmia.metrics.features import as_float_images
from lsmia.utils import progress

CROP_SCALE = (0.85, 1.0)  # PPA's RandomResizedCrop scale, ratio 1
NO_JITTER = (0.0, 0.0, 0.0, 0.0)

M = TypeVar("M", bound=nn.Module)
LossFn = Callable[[M, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> loss


def fit(
    model: M,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: LossFn[M],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    device: torch.device,
    gen: torch.Generator,
    desc: str = "",
    image_size: int | None = None,
) -> None:
    """Train ``model`` with crop+flip augmentation and a per-step cosine learning-rate schedule.

    ``labels`` is indexed like ``images`` ([N] or [N, A]); ``loss_fn(model, x, y)`` returns the loss.
    ``desc`` names the epochs in progress output (none without it). ``image_size``: each batch is resized to it
    (antialiased) before the augmentation; None: the images' own size.
    """
    steps_per_epoch = math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps_per_epoch))
    model.train()
    for _ in progress(range(epochs), total=epochs, desc=desc) if desc else range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            x = as_float_images(images[index].to(device))
            x = x if image_size is None else resize(x, image_size)
            x = training_augment(x, CROP_SCALE, flip=True, jitter=NO_JITTER, gen=gen)
            loss = loss_fn(model, x, labels[index].to(device))
            if not torch.isfinite(loss):
                raise DivergenceError("metric model training diverged (non-finite loss): lower metrics.student.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()

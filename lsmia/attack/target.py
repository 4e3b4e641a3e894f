"""What the attack needs of its target classifier, as a structural type.

:func:`lsmia.attack.ppa.run_attack` reads the target's class count and input size, calls it on images for
logits, and moves, freezes and (when it is a torch module) copies it for inference. Anything with those
members is a target: :class:`lsmia.models.classifiers.Classifier`, the attack's own wrappers
(:class:`lsmia.attack.scoring.ScaledLogits`) and the small modules the tests attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, Self

import torch
import torch.nn as nn


class AttackTarget(Protocol):
    """The target as the attack uses it: ``num_classes``, ``image_size``, logits of a batch of images in [0, 1],
    and the module operations :func:`lsmia.attack.ppa.attack_shard` applies to it."""

    @property
    def num_classes(self) -> int:
        """The number of classes (the width of the logits)."""
        ...

    @property
    def image_size(self) -> int:
        """The side of the square images the target takes."""
        ...

    def __call__(self, images: torch.Tensor, /) -> torch.Tensor:
        """``[n, C]`` logits of ``[n, 3, image_size, image_size]`` images in [0, 1]."""
        ...

    def to(self, device: torch.device) -> Self:
        """The target on the attack's device."""
        ...

    def eval(self) -> Self:
        """Inference mode (:func:`lsmia.attack.ppa.frozen`)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The weights :func:`lsmia.attack.ppa.frozen` takes out of autograd for the attack."""
        ...

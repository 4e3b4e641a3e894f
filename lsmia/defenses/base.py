"""What a defense does to training: a penalty added to the loss, frozen parameters, hooks on the model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn


class Defense:
    """A training-time defense: ``penalty`` is added to the loss of each batch after the model's forward pass.

    Subclasses capture what they need of that pass with forward hooks (``capture``); ``close`` removes them.
    """

    name = "none"

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """The term added to the training loss of batch ``x, y`` (None: nothing), after its forward pass."""
        return None

    def trainable(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """The parameters the optimiser updates."""
        return (p for p in model.parameters() if p.requires_grad)

    def set_train_mode(self, model: nn.Module) -> None:
        """Called after ``model.train()`` at the start of each epoch (e.g. to keep frozen BatchNorm in eval mode)."""

    def capture(self, modules: Iterable[nn.Module], store: list[torch.Tensor]) -> None:
        """Append each module's output to ``store`` on every forward pass with gradients (the training pass, not
        the no-grad scoring of the test set); the consumer clears ``store``."""

        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                store.append(output)

        for module in modules:
            self._handles.append(module.register_forward_hook(keep))

    def capture_inputs(self, modules: Iterable[nn.Module], store: list[torch.Tensor]) -> None:
        """Like :meth:`capture`, for each module's (first) input."""

        def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if torch.is_grad_enabled():
                store.append(inputs[0])

        for module in modules:
            self._handles.append(module.register_forward_pre_hook(keep))

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

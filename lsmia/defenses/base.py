"""What a defense does to training: a penalty added to the loss, frozen parameters, hooks on the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lsmia.config import ClassifierConfig
from lsmia.data.base import FaceData


class TrainClassifier(Protocol):
    """lsmia.training.classifier.train_classifier, handed in by the training that prepares a defense (it imports
    this package, so importing it here would close a cycle)."""

    def __call__(
        self,
        cfg: ClassifierConfig,
        data: FaceData,
        out_dir: Path,
        device: torch.device,
        *,
        seed: int,
        show_progress: bool,
        code_version: str,
    ) -> Any: ...


@dataclass(frozen=True)
class Preparation:
    """The target's training, as a defense's ``prepare`` sees it: what it trains on, where, and with what (e.g. TL's
    public pre-training runs ``train`` into a folder of ``out_dir``)."""

    cfg: ClassifierConfig
    data: FaceData
    out_dir: Path
    device: torch.device
    seed: int
    train: TrainClassifier
    code_version: str = ""


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


@dataclass(frozen=True)
class SearchParam:
    """A setting of a defense that ``lsmia sweep --defense KIND`` searches: log-uniform in [low, high], or an integer
    there; ``sweep.defense_ranges`` replaces the range."""

    name: str  # the setting, a field of the defense's settings (target.defense.<name>)
    low: float
    high: float
    integer: bool = False
    symbol: str = ""  # how the sweep's tables name it, e.g. β

    def suggest(self, trial: Any, ranges: Mapping[str, tuple[float, float]]) -> float | int:
        low, high = ranges.get(self.name, (self.low, self.high))
        if self.integer:
            return int(trial.suggest_int(self.name, int(low), int(high)))
        return float(trial.suggest_float(self.name, low, high, log=True))

    def described(self, ranges: Mapping[str, tuple[float, float]]) -> str:
        low, high = ranges.get(self.name, (self.low, self.high))
        return f"integer in [{int(low)}, {int(high)}]" if self.integer else f"log-uniform in [{low:g}, {high:g}]"


@dataclass(frozen=True)
class DefenseSpec:
    """What one kind of ``target.defense`` is: its builder (the :class:`Defense` on a model built for it), the settings
    a sweep searches, how a table writes its strength, whether its model has MID's bottleneck, and what trains before
    it (``prepare``: e.g. TL's public pre-training, returning the backbone's state). A new defense is a module with
    its ``SPEC`` and one line in lsmia.defenses.registry (and its settings in lsmia.config's ``DefenseConfig``)."""

    kind: str
    build: Callable[[Any, Any], Defense]  # (its settings, the model) -> the defense
    search: tuple[SearchParam, ...]
    strength: str  # str.format of its settings, e.g. "β={mid_beta:g}"
    bottleneck: bool = False
    prepare: Callable[[Any, Any, Preparation], None] | None = None  # (its settings, the model, the training)

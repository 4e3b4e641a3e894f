"""``target.defense`` wired into training: the model it needs and the :class:`Defense` that trains it, through the
registry of defenses (lsmia.defenses.registry)."""

from __future__ import annotations

from lsmia.config import DefenseConfig
from lsmia.defenses.base import Defense, Preparation
from lsmia.defenses.registry import spec
from lsmia.models.classifiers import Classifier


def active(defense: DefenseConfig | None) -> DefenseConfig | None:
    """``defense`` unless it is absent or ``kind: none`` (then training is exactly the undefended one)."""
    return defense if defense is not None and defense.kind != "none" else None


def needs_bottleneck(defense: DefenseConfig | None) -> bool:
    """A model with MID's variational bottleneck before its head."""
    return defense is not None and defense.kind != "none" and spec(defense.kind).bottleneck


def build_defense(defense: DefenseConfig, model: Classifier) -> Defense:
    """The defense of ``defense.kind`` on ``model`` (built with :func:`needs_bottleneck` and pre-trained)."""
    return spec(defense.kind).build(defense, model)


def prepare_defense(defense: DefenseConfig, model: Classifier, run: Preparation) -> Defense:
    """Build the defense (which checks its settings against ``model``), then what trains before it (the spec's
    ``prepare``, e.g. TL's public pre-training with ``run.train``)."""
    built = build_defense(defense, model)
    prepare = spec(defense.kind).prepare
    if prepare is not None:
        prepare(defense, model, run)
    return built

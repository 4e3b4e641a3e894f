"""``target.defense`` wired into training: the model it needs and the :class:`Defense` that trains it."""

from __future__ import annotations

from pathlib import Path

import torch

from lsmia.config import ClassifierConfig, DefenseConfig
from lsmia.data.base import FaceData
from lsmia.defenses.base import Defense
from lsmia.defenses.bido import BidoDefense
from lsmia.defenses.mid import MidDefense
from lsmia.defenses.tl import TrainClassifier, TransferDefense, pretrain_on_public
from lsmia.models.classifiers import Classifier


def active(defense: DefenseConfig | None) -> DefenseConfig | None:
    """``defense`` unless it is absent or ``kind: none`` (then training is exactly the undefended one)."""
    return defense if defense is not None and defense.kind != "none" else None


def needs_bottleneck(defense: DefenseConfig | None) -> bool:
    """MID's model has a variational bottleneck before its head."""
    return defense is not None and defense.kind == "mid"


def build_defense(defense: DefenseConfig, model: Classifier) -> Defense:
    """The defense of ``defense.kind`` on ``model`` (built with :func:`needs_bottleneck` and pre-trained)."""
    if defense.kind == "mid":
        assert model.bottleneck is not None, "a MID model is built with bottleneck=True"
        return MidDefense(model.bottleneck, defense.mid_beta)
    if defense.kind == "bido":
        return BidoDefense(
            model.blocks(),
            model.num_classes,
            defense.bido_lambda_x,
            defense.bido_lambda_y,
            defense.bido_measure,
            defense.bido_label_kernel,
        )
    return TransferDefense(model, defense.tl_trained_layers)


def prepare_defense(
    defense: DefenseConfig,
    cfg: ClassifierConfig,
    model: Classifier,
    data: FaceData,
    out_dir: Path,
    device: torch.device,
    seed: int,
    train: TrainClassifier,
    code_version: str = "",
) -> Defense:
    """Build the defense (which checks its settings against ``model``), then pre-train ``model`` with ``train``
    when it needs it (TL without ``pretrained_path``)."""
    built = build_defense(defense, model)
    if defense.kind == "tl" and cfg.pretrained_path is None:
        state = pretrain_on_public(cfg, defense, data, out_dir, device, seed, train, code_version)
        model.backbone.load_state_dict(state)
    return built

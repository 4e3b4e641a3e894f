"""TL-DMI (Ho et al., CVPR 2024): transfer learning as a defense against model inversion.

The first blocks of the target are trained on public data and frozen; only its last ``tl_trained_layers`` blocks
(lsmia.models.classifiers.Classifier.blocks, the head counting as one) are trained on the private identities, so
the private data shape few parameters. Fewer trained blocks: a stronger defense and a lower accuracy.

Pre-training: with ``target.pretrained_path`` those weights are the pre-trained blocks (e.g. ImageNet weights, as
in the paper); otherwise the target's architecture and recipe are first trained on the data's public identities
(``FaceData.public``, split 90/10 per identity) inside the target's training call, into ``<out_dir>/public/``.
Inside the call, because the public images are part of the prepared data the target stage already reads: the
DVC dependencies and the ablation cache keys stay exact without a new stage, and each seed gets its own
pre-training (seed + 2000), so intervals over seeds include its variance.

Frozen blocks stay in evaluation mode during training, so their BatchNorm statistics keep the public values
(MIBench's ``freeze_front_layers`` only stops gradients; its BatchNorm statistics follow the private data).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lsmia.config import ClassifierConfig, TlSettings
from lsmia.data.base import FaceData, split_per_identity
from lsmia.defenses.base import Defense, DefenseSpec, Preparation, SearchParam
from lsmia.errors import LsmiaError
from lsmia.models.classifiers import Classifier

PRETRAIN_SEED_OFFSET = 2000  # the public pre-training never shares an initialisation with a target of the same seed
PUBLIC_DIR = "public"  # the pre-trained model's folder inside the target's output folder
PUBLIC_TEST_FRACTION = 0.1


def public_task(data: FaceData, seed: int) -> FaceData:
    """The public identities as a classification task, split per identity (90/10)."""
    public = data.public
    if public is None or len(torch.unique(public.labels)) < 2:
        raise LsmiaError(
            "target.defense.kind 'tl' pre-trains on public identities, but the data has fewer than 2: "
            "use data with public identities (the built-in data has them) or set target.pretrained_path"
        )
    train_idx, test_idx = split_per_identity(public.labels, PUBLIC_TEST_FRACTION, seed)
    names = [f"public_{i}" for i in range(int(public.labels.max()) + 1)]
    return FaceData(train=public.subset(train_idx), test=public.subset(test_idx), class_names=names)


def pretraining_config(cfg: ClassifierConfig, defense: TlSettings) -> ClassifierConfig:
    """The target's architecture and recipe, for ``tl_pretrain_epochs`` epochs (0: the target's), from scratch."""
    fields = cfg.model_dump(include=set(ClassifierConfig.model_fields))
    fields.update(epochs=defense.tl_pretrain_epochs or cfg.epochs, pretrained_path=None, pretrained=False)
    return ClassifierConfig.model_validate(fields)


def pretrain_on_public(defense: TlSettings, run: Preparation) -> dict[str, torch.Tensor]:
    """Train on the public identities into ``run.out_dir/public`` with ``run.train`` (resumable like any training);
    its backbone's state."""
    result = run.train(
        pretraining_config(run.cfg, defense),
        public_task(run.data, run.seed + PRETRAIN_SEED_OFFSET),
        Path(run.out_dir) / PUBLIC_DIR,
        run.device,
        seed=run.seed + PRETRAIN_SEED_OFFSET,
        show_progress=False,
        code_version=run.code_version,
    )
    return result.model.backbone.state_dict()


class TransferDefense(Defense):
    """Freezes all but the last ``trained_layers`` blocks of ``model`` (parameters and BatchNorm statistics)."""

    name = "tl"

    def __init__(self, model: Classifier, trained_layers: int) -> None:
        super().__init__()
        blocks = model.blocks()
        if trained_layers > len(blocks):
            raise LsmiaError(
                f"target.defense.tl_trained_layers is {trained_layers} but {model.arch} has {len(blocks)} "
                f"blocks (the head counts as one): set it from 1 to {len(blocks)}"
            )
        self.frozen_blocks = len(blocks) - trained_layers
        for module in self.frozen(model):
            module.requires_grad_(False)

    def frozen(self, model: Classifier) -> list[nn.Module]:
        return [module for block in model.blocks()[: self.frozen_blocks] for module in block]

    def set_train_mode(self, model: nn.Module) -> None:
        if isinstance(model, Classifier):
            for module in self.frozen(model):
                module.eval()


def build(settings: TlSettings, model: Classifier) -> TransferDefense:
    return TransferDefense(model, settings.tl_trained_layers)


def prepare(settings: TlSettings, model: Classifier, run: Preparation) -> None:
    """The frozen blocks come from public pre-training, unless the target starts from ``pretrained_path``."""
    if run.cfg.pretrained_path is None:
        model.backbone.load_state_dict(pretrain_on_public(settings, run))


SPEC = DefenseSpec(
    "tl",
    build,
    (SearchParam("tl_trained_layers", 1, 4, integer=True, symbol="trained"),),
    strength="{tl_trained_layers} trained",
    prepare=prepare,
)

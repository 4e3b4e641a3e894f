"""Attribute leakage: which true attributes of a private identity its reconstructions reveal.

Only for data with known attributes (the built-in data). A multi-head predictor is trained
on the PUBLIC identities' images, so it never saw the private identities, then applied to
the reconstructions of each target identity.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lsmia.data.base import FaceData
from lsmia.errors import LsmiaError
from lsmia.metrics.features import predict_logits
from lsmia.metrics.training import fit
from lsmia.models.classifiers import small_resnet
from lsmia.utils import load_torch, save_torch

NO_ATTRIBUTES = "attribute leakage needs data with public images and attributes: use data.source=builtin"


class AttributePredictor(nn.Module):
    """A small ResNet with one linear head per attribute; forward returns all heads' logits concatenated."""

    def __init__(self, cardinality: dict[str, int], image_size: int, width: int = 16) -> None:
        super().__init__()
        self.cardinality, self.image_size, self.width = dict(cardinality), image_size, width
        self.backbone, dim = small_resnet(width)
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in self.cardinality.values())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        return torch.cat([head(feats) for head in self.heads], dim=1)

    def split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Concatenated logits -> {attribute: logits [N, cardinality]}."""
        return dict(zip(self.cardinality, logits.split(list(self.cardinality.values()), dim=1), strict=False))


def _multi_head_loss(model: AttributePredictor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    heads = model.split(model(x)).values()
    losses = [F.cross_entropy(logits, y[:, i]) for i, logits in enumerate(heads)]
    return sum(losses[1:], losses[0])


def has_attributes(data: FaceData) -> bool:
    return data.attributes is not None and data.public_attributes is not None and data.public is not None


def _private_attributes(data: FaceData) -> dict[str, torch.Tensor]:
    if data.attributes is None:
        raise LsmiaError(NO_ATTRIBUTES)
    return data.attributes


def _cardinality(
    attributes: dict[str, torch.Tensor], public_attributes: dict[str, torch.Tensor], known: dict[str, int] | None
) -> dict[str, int]:
    if known is not None:
        return {name: int(known[name]) for name in attributes}
    return {name: int(max(attributes[name].max(), public_attributes[name].max())) + 1 for name in attributes}


def train_attribute_predictor(
    data: FaceData,
    device: torch.device | str,
    epochs: int,
    seed: int = 0,
    width: int = 16,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> AttributePredictor:
    """Train the predictor on the public identities' images labelled with their attributes (Adam, cosine)."""
    if data.attributes is None or data.public_attributes is None or data.public is None:  # not has_attributes(data)
        raise LsmiaError(NO_ATTRIBUTES)
    device = torch.device(device)
    cardinality = _cardinality(data.attributes, data.public_attributes, data.attribute_cardinality)
    labels = torch.stack([data.public_attributes[name][data.public.labels] for name in cardinality], dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictor = AttributePredictor(cardinality, data.image_size, width).to(device)
    optimizer = torch.optim.Adam(predictor.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    fit(
        predictor,
        data.public.images,
        labels,
        _multi_head_loss,
        optimizer,
        epochs,
        batch_size,
        device,
        gen,
        desc="attribute predictor epochs",
    )
    return predictor


def save_attribute_predictor(predictor: AttributePredictor, path: Path | str) -> None:
    save_torch(
        {
            "cardinality": predictor.cardinality,
            "image_size": predictor.image_size,
            "width": predictor.width,
            "state_dict": predictor.state_dict(),
        },
        path,
    )


def load_attribute_predictor(path: Path | str) -> AttributePredictor:
    ckpt = load_torch(path, what="attribute predictor")
    try:
        predictor = AttributePredictor(ckpt["cardinality"], ckpt["image_size"], ckpt["width"])
        predictor.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        raise LsmiaError(
            f"{path} is not an lsmia attribute predictor: delete it and re-run 'lsmia train-attributes'"
        ) from None
    return predictor.eval()


def identity_predictions(
    predictor: AttributePredictor,
    images: torch.Tensor,
    image_targets: torch.Tensor,
    identities: list[int],
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per attribute, the predicted value [len(identities)] of each identity: argmax of the mean
    predicted probability over that identity's images."""
    probs = {
        name: logits.softmax(dim=1)
        for name, logits in predictor.split(predict_logits(predictor, images, batch_size)).items()
    }
    out = {}
    for name, p in probs.items():
        means = [p[image_targets == ident].mean(dim=0) for ident in identities]
        out[name] = torch.stack(means).argmax(dim=1)
    return out


def _accuracies(
    predicted: dict[str, torch.Tensor], attributes: dict[str, torch.Tensor], identities: list[int]
) -> dict[str, float]:
    index = torch.tensor(identities, dtype=torch.long)
    return {name: (pred == attributes[name][index]).double().mean().item() for name, pred in predicted.items()}


def chance_accuracies(data: FaceData, identities: list[int]) -> dict[str, float]:
    """Per attribute, the accuracy on ``identities`` of always guessing the most frequent value
    among all private identities (the best guess without looking at any image)."""
    index = torch.tensor(identities, dtype=torch.long)
    out = {}
    for name, values in _private_attributes(data).items():
        mode = torch.bincount(values).argmax()
        out[name] = (values[index] == mode).double().mean().item()
    return out


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def attribute_leakage(
    data: FaceData,
    samples: torch.Tensor,
    sample_targets: torch.Tensor,
    device: torch.device | str,
    epochs: int,
    seed: int = 0,
    predictor: AttributePredictor | None = None,
) -> dict[str, float]:
    """Attribute accuracy of the reconstructions per target identity; {} for data without attributes.

    Keys: attribute_acc (mean over attributes and targets), attribute_acc_<name>,
    attribute_chance (majority-value baseline), attribute_acc_real (the same scoring on the
    real private test images of the targets: a ceiling). ``predictor`` skips training.
    """
    if not has_attributes(data):
        return {}
    if len(samples) != len(sample_targets) or len(samples) == 0:
        raise LsmiaError(f"{len(samples)} samples and {len(sample_targets)} targets: pass one target per sample")
    predictor = predictor if predictor is not None else train_attribute_predictor(data, device, epochs, seed)
    predictor = predictor.to(device)
    attributes = _private_attributes(data)
    targets = sorted(set(sample_targets.tolist()))
    fake = _accuracies(identity_predictions(predictor, samples, sample_targets.cpu(), targets), attributes, targets)
    real_test = data.test.of_classes(targets)
    tested = sorted(set(real_test.labels.tolist()))
    real = _accuracies(identity_predictions(predictor, real_test.images, real_test.labels, tested), attributes, tested)
    return {
        "attribute_acc": _mean(fake),
        **{f"attribute_acc_{name}": acc for name, acc in fake.items()},
        "attribute_chance": _mean(chance_accuracies(data, targets)),
        "attribute_acc_real": _mean(real),
    }

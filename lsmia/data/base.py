"""The one in-memory form of every data set: uint8 image tensors with labels and splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lsmia.errors import LsmiaError
from lsmia.utils import load_torch, save_torch


@dataclass
class ImageSet:
    """Labelled images: ``images`` uint8 [N, 3, H, W], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def of_classes(self, classes: torch.Tensor | list[int]) -> ImageSet:
        mask = torch.isin(self.labels, torch.as_tensor(classes, dtype=torch.long))
        return self.subset(mask.nonzero().squeeze(1))

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Images as float in [0, 1]."""
        imgs = self.images if index is None else self.images[index]
        return imgs.float().div_(255.0)


@dataclass
class FaceData:
    """Private identities (train/test split) and, optionally, public images for the prior.

    ``attributes`` maps an attribute name to a long tensor [num_classes] of the private
    identities' true values (built-in data only); ``public_attributes`` holds the same for the
    public identities, whose labels index it; ``attribute_cardinality`` the number of values.
    """

    train: ImageSet
    test: ImageSet
    class_names: list[str]
    public: ImageSet | None = None
    attributes: dict[str, torch.Tensor] | None = None
    public_attributes: dict[str, torch.Tensor] | None = None
    attribute_cardinality: dict[str, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def save(self, path: Path | str) -> None:
        obj: dict[str, Any] = {
            "train_images": self.train.images,
            "train_labels": self.train.labels,
            "test_images": self.test.images,
            "test_labels": self.test.labels,
            "class_names": list(self.class_names),
            "meta": self.meta,
        }
        if self.public is not None:
            obj["public_images"], obj["public_labels"] = self.public.images, self.public.labels
        for key in ("attributes", "public_attributes", "attribute_cardinality"):
            if getattr(self, key) is not None:
                obj[key] = getattr(self, key)
        save_torch(obj, path)

    @classmethod
    def load(cls, path: Path | str) -> FaceData:
        obj = load_torch(path, what="prepared data set", fix="run 'lsmia data' first")
        try:
            public = ImageSet(obj["public_images"], obj["public_labels"]) if "public_images" in obj else None
            data = cls(
                train=ImageSet(obj["train_images"], obj["train_labels"]),
                test=ImageSet(obj["test_images"], obj["test_labels"]),
                class_names=list(obj["class_names"]),
                public=public,
                attributes=obj.get("attributes"),
                public_attributes=obj.get("public_attributes"),
                attribute_cardinality=obj.get("attribute_cardinality"),
                meta=obj.get("meta", {}),
            )
        except (KeyError, ValueError) as err:
            raise LsmiaError(f"{path} is not a prepared lsmia data set ({err}): re-run 'lsmia data'") from None
        require_study_classes(data, path)
        return data


def require_study_classes(data: FaceData, source: Path | str) -> None:
    """At least 2 identities, each with training and test images: what training, the attack and metrics need."""
    fix = "prepare data with at least 2 identities, each with several images, and re-run 'lsmia data'"
    if data.num_classes < 2:
        raise LsmiaError(
            f"{source} holds {data.num_classes} identity; a classifier, the attack and its metrics "
            f"need at least 2: {fix}"
        )
    for split, images in (("training", data.train), ("test", data.test)):
        counts = torch.bincount(images.labels, minlength=data.num_classes)
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        if empty:
            raise LsmiaError(f"{source}: identity '{data.class_names[empty[0]]}' has no {split} images: {fix}")


def split_per_identity(
    labels: torch.Tensor, test_fraction: float, seed: int, min_per_identity: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/test split within each identity (at least one image on each side).

    Raises LsmiaError naming the identity that has too few images.
    """
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for cls in torch.unique(labels).tolist():
        idx = (labels == cls).nonzero().squeeze(1)
        if len(idx) < min_per_identity:
            raise LsmiaError(
                f"identity {cls} has {len(idx)} image(s), fewer than the {min_per_identity} a train/test split needs: "
                "add images or drop the identity"
            )
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = min(len(idx) - 1, max(1, round(len(idx) * test_fraction)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values

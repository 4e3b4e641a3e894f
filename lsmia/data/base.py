"""The one in-memory form of every data set: uint8 image tensors with labels and splits."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsmia.errors import LsmiaError, printable
from lsmia.utils import load_torch, save_torch

# control, line-breaking and undecodable (surrogate-escaped) characters: identity names are written into
# file names, report lines and JSON, where such a character breaks or fails the stage that writes them
UNSAFE_NAME_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
IMAGE_KEYS = ("train_images", "test_images", "public_images")
LABEL_KEYS = ("train_labels", "test_labels", "public_labels")
REQUIRED_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")
EXPECTED_TYPES: dict[str, tuple[type, str]] = {
    **{key: (torch.Tensor, "a uint8 image tensor [N, 3, S, S]") for key in IMAGE_KEYS},
    **{key: (torch.Tensor, "an integer label tensor [N]") for key in LABEL_KEYS},
    "class_names": (list, "a list of identity names"),
    "meta": (dict, "a dict"),
    "attributes": (dict, "a dict of attribute name -> tensor"),
    "public_attributes": (dict, "a dict of attribute name -> tensor"),
    "attribute_cardinality": (dict, "a dict of attribute name -> count"),
}
OPTIONAL_TABLES = ("attributes", "public_attributes", "attribute_cardinality")


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
        require_prepared_layout(obj, path)
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
        require_consistent(data, path)
        require_study_classes(data, path)
        return data


def not_prepared(path: Path | str, problem: str) -> LsmiaError:
    return LsmiaError(
        f"{path} is not a prepared lsmia data set: {problem}: re-run 'lsmia data' and pass its dataset.pt"
    )


def require_prepared_layout(obj: Any, path: Path | str) -> None:
    """The keys and value types ``FaceData.save`` writes, so a foreign file is named, not a TypeError."""
    if not isinstance(obj, dict):
        raise not_prepared(path, f"it holds a {type(obj).__name__}, expected a dict of image and label tensors")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise not_prepared(path, f"it lacks {', '.join(missing)}")
    if ("public_images" in obj) != ("public_labels" in obj):
        raise not_prepared(path, "it holds only one of public_images and public_labels")
    for key, (kind, expected) in EXPECTED_TYPES.items():
        value = obj.get(key)
        if key in obj and not isinstance(value, kind) and not (value is None and key in OPTIONAL_TABLES):
            raise not_prepared(path, f"'{key}' is a {type(value).__name__}, expected {expected}")
    for key in LABEL_KEYS:
        labels = obj.get(key)
        if labels is not None and (labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool):
            raise not_prepared(path, f"'{key}' is a {labels.dtype} tensor {tuple(labels.shape)}, expected integers [N]")
    if not all(isinstance(name, str) for name in obj["class_names"]):
        raise not_prepared(path, "'class_names' holds a value that is not a string, expected identity names")


def require_consistent(data: FaceData, path: Path | str) -> None:
    """Square images of one size, labels in range, attribute tables covering them and printable names."""
    size = data.image_size
    for split, images in data_splits(data).items():
        if tuple(images.images.shape[-2:]) != (size, size):
            raise not_prepared(
                path, f"its {split} images are {tuple(images.images.shape[-2:])}, expected ({size}, {size})"
            )
        top = data.num_classes if split != "public" else None
        labels = images.labels
        if len(labels) and (labels.min() < 0 or (top is not None and labels.max() >= top)):
            span = f"0..{top - 1} (one per class name)" if top is not None else "0 or more"
            raise not_prepared(path, f"its {split} labels leave {span}")
    require_attribute_tables(data, path)
    require_printable_names(data.class_names, f"{path}: identity", "rename that identity and re-run 'lsmia data'")


def data_splits(data: FaceData) -> dict[str, ImageSet]:
    return {"train": data.train, "test": data.test, **({"public": data.public} if data.public is not None else {})}


def require_attribute_tables(data: FaceData, path: Path | str) -> None:
    """Each attribute table has a value per identity: the private ones, or every public label."""
    public_count = int(data.public.labels.max()) + 1 if data.public is not None and len(data.public) else 0
    for key, needed in (("attributes", data.num_classes), ("public_attributes", public_count)):
        for name, values in (getattr(data, key) or {}).items():
            if not isinstance(values, torch.Tensor) or values.ndim != 1 or len(values) < needed:
                raise not_prepared(path, f"'{key}' entry '{name}' is not a tensor of at least {needed} values")
    for name, count in (data.attribute_cardinality or {}).items():
        if not isinstance(count, int) or count < 1:
            raise not_prepared(path, f"'attribute_cardinality' entry '{name}' is not a positive count")


def unsafe_character(name: str) -> str | None:
    """The first control, line-breaking or undecodable character of ``name``; None if it has none."""
    return next((char for char in name if unicodedata.category(char) in UNSAFE_NAME_CATEGORIES), None)


def require_printable_names(names: list[str], what: str, fix: str) -> None:
    """Refuse identity names that later stages cannot write on one line (a newline crashed the attack stage)."""
    for name in names:
        char = unsafe_character(name)
        if char is not None:
            raise LsmiaError(
                f"{what} '{printable(name)}' holds '{printable(char)}', a control, line-break or undecodable "
                f"character: {fix}"
            )


def require_study_classes(data: FaceData, source: Path | str) -> None:
    """At least 2 identities, each with training images and (except under PPA's global split, where an identity
    may land wholly in training) test images: what training, the attack and metrics need."""
    fix = "prepare data with at least 2 identities, each with several images, and re-run 'lsmia data'"
    if data.num_classes < 2:
        raise LsmiaError(
            f"{source} holds {data.num_classes} identity; a classifier, the attack and its metrics "
            f"need at least 2: {fix}"
        )
    if data.meta.get("split") == "ppa" and len(data.test) == 0:
        raise LsmiaError(f"{source}: data.split=ppa left no test images: raise data.test_fraction or add images")
    splits: tuple[tuple[str, ImageSet], ...] = (("training", data.train), ("test", data.test))
    if data.meta.get("split") == "ppa":
        splits = splits[:1]
        fix = (
            "PPA's global shuffle (data.split=ppa) put all its images in the test split: add images or set "
            "data.split=stratified"
        )
    for split, images in splits:
        counts = torch.bincount(images.labels, minlength=data.num_classes)
        empty = (counts == 0).nonzero().squeeze(1).tolist()
        if empty:
            raise LsmiaError(f"{source}: identity '{data.class_names[empty[0]]}' has no {split} images: {fix}")


def split_ppa(count: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PPA's train/test split of ``count`` images listed in data-set order: ``np.random.seed(seed)``, a shuffle of
    the positions, the first ``int((1 - test_fraction) * count)`` for training (PPA datasets/facescrub.py:71-76,
    datasets/celeba.py:37-42; NumPy's legacy RandomState, whose shuffle of a list and of an array agree).

    Returns sorted positions (train, test)."""
    order = list(range(count))
    np.random.RandomState(seed).shuffle(order)
    train_size = int((1 - test_fraction) * count)
    train = torch.tensor(sorted(order[:train_size]), dtype=torch.long)
    test = torch.tensor(sorted(order[train_size:]), dtype=torch.long)
    return train, test


def split_indices(
    labels: torch.Tensor,
    split: str,
    test_fraction: float,
    seed: int,
    listed: int | None = None,
    kept: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices into ``labels`` by ``split`` (``stratified``: per identity; ``ppa``: PPA's global
    shuffle). For ``ppa``, ``listed`` images were listed and ``kept`` (positions among them) are the ``labels``:
    the shuffle runs over every listed image, as PPA's does, and unreadable ones leave both sides."""
    if split != "ppa":
        return split_per_identity(labels, test_fraction, seed)
    listed = len(labels) if listed is None else listed
    kept = torch.arange(len(labels)) if kept is None else kept
    position = torch.full((listed,), -1, dtype=torch.long)
    position[kept] = torch.arange(len(kept))
    train, test = (position[side] for side in split_ppa(listed, test_fraction, seed))
    return train[train >= 0], test[test >= 0]


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

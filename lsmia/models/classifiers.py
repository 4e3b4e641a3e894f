"""Target, evaluation and student classifiers.

Every classifier takes float images in [0, 1] at its ``image_size`` and normalises them
itself (PPA's Normalize(0.5, 0.5)), so data, attack and metrics never disagree on scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from lsmia.config import ClassifierConfig
from lsmia.errors import LsmiaError
from lsmia.models.bottleneck import VariationalBottleneck, bottleneck_dim
from lsmia.utils import load_torch, save_torch

SMALL_INPUT = 96  # below this, torchvision stems lose their stride-2 conv and max-pool
M = TypeVar("M", bound=nn.Module)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(width: int) -> tuple[nn.Module, int]:
    """A three-stage ResNet for small images; width 32 gives about 0.3 M parameters."""
    body = nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        BasicBlock(width, width, 1),
        BasicBlock(width, 2 * width, 2),
        BasicBlock(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return body, 4 * width


def small_vgg(width: int) -> tuple[nn.Module, int]:
    """A plain conv net (no skip connections): a different architecture for the evaluation model."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    layers = [
        *block(3, width),
        *block(width, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        *block(2 * width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        *block(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers), 4 * width


def _layer(net: nn.Module, name: str, kind: type[M]) -> M:
    """``net``'s submodule at the dotted path ``name``, checked to be a ``kind`` (torchvision has no type hints)."""
    layer = net.get_submodule(name)
    if not isinstance(layer, kind):
        raise LsmiaError(
            f"{type(net).__name__}.{name} is a {type(layer).__name__}, not a {kind.__name__}: "
            "this torchvision version builds the network differently; report it as an lsmia bug"
        )
    return layer


def _tv_resnet(factory: Callable[..., nn.Module]) -> Callable[[int, int], tuple[nn.Module, int]]:
    def build(image_size: int, num_classes: int) -> tuple[nn.Module, int]:
        net = factory(weights=None)
        if image_size < SMALL_INPUT:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        dim = _layer(net, "fc", nn.Linear).in_features
        net.fc = nn.Identity()
        return net, dim

    return build


def _tv_densenet(factory: Callable[..., nn.Module]) -> Callable[[int, int], tuple[nn.Module, int]]:
    def build(image_size: int, num_classes: int) -> tuple[nn.Module, int]:
        net = factory(weights=None)
        if image_size < SMALL_INPUT:
            features = _layer(net, "features", nn.Sequential)
            out = _layer(features, "conv0", nn.Conv2d).out_channels
            features.conv0 = nn.Conv2d(3, out, 3, 1, 1, bias=False)
            features.pool0 = nn.Identity()
        dim = _layer(net, "classifier", nn.Linear).in_features
        net.classifier = nn.Identity()
        return net, dim

    return build


def _tv_inception(image_size: int, num_classes: int, transform_input: bool = False) -> tuple[nn.Module, int]:
    net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=transform_input)
    net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, num_classes)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


TORCHVISION: dict[str, Callable[[int, int], tuple[nn.Module, int]]] = {
    "resnet18": _tv_resnet(tvm.resnet18),
    "resnet34": _tv_resnet(tvm.resnet34),
    "resnet50": _tv_resnet(tvm.resnet50),
    "resnet101": _tv_resnet(tvm.resnet101),
    "resnet152": _tv_resnet(tvm.resnet152),
    "resnext50_32x4d": _tv_resnet(tvm.resnext50_32x4d),
    "densenet121": _tv_densenet(tvm.densenet121),
    "densenet169": _tv_densenet(tvm.densenet169),
    "densenet201": _tv_densenet(tvm.densenet201),
    "inception_v3": _tv_inception,
}
SMALL = {"smallresnet": small_resnet, "smallvgg": small_vgg}
ARCHITECTURES = sorted([*SMALL, *TORCHVISION])
INCEPTION_MIN_SIZE = 299  # its auxiliary head needs the 17x17 map of 299 px inputs


def _starts_block(name: str, child: nn.Module) -> bool:
    return isinstance(child, (nn.Conv2d, BasicBlock)) or name.startswith(("layer", "denseblock", "Mixed_"))


def backbone_blocks(backbone: nn.Module) -> list[list[nn.Module]]:
    """The backbone's top-level modules grouped into blocks, input first: a block starts at a plain conv (the
    small nets and torchvision stems), a residual block, a ResNet ``layerN``, a DenseNet ``denseblockN`` or an
    Inception ``Mixed_*``; pooling, transitions and auxiliary heads join the block before them."""
    features = getattr(backbone, "features", None)  # DenseNet: the blocks lie in ``features``
    root = features if isinstance(features, nn.Sequential) else backbone
    blocks: list[list[nn.Module]] = []
    for name, child in root.named_children():
        if not blocks or _starts_block(name, child):
            blocks.append([])
        blocks[-1].append(child)
    return blocks


class Classifier(nn.Module):
    """Normalisation, backbone (penultimate features), an optional variational bottleneck (MID) and a linear head.

    ``bottleneck`` puts a :class:`VariationalBottleneck` of half the feature size between backbone and head.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        image_size: int,
        width: int = 32,
        bottleneck: bool = False,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise LsmiaError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHITECTURES)}")
        if transform_input and arch != "inception_v3":
            raise LsmiaError(f"transform_input applies to inception_v3 only, not {arch}: set it to false")
        self.arch, self.num_classes, self.image_size, self.width = arch, num_classes, image_size, width
        self.transform_input = transform_input
        if arch in SMALL:
            self.backbone, dim = SMALL[arch](width)
        elif arch == "inception_v3":
            self.backbone, dim = _tv_inception(image_size, num_classes, transform_input)
        else:
            self.backbone, dim = TORCHVISION[arch](image_size, num_classes)
        self.bottleneck = VariationalBottleneck(dim, bottleneck_dim(dim)) if bottleneck else None
        self.feature_dim = bottleneck_dim(dim) if bottleneck else dim
        self.head = nn.Linear(self.feature_dim, num_classes)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "inception_v3" and x.shape[-1] < INCEPTION_MIN_SIZE:
            x = F.interpolate(x, size=(INCEPTION_MIN_SIZE, INCEPTION_MIN_SIZE), mode="bilinear", align_corners=False)
        return (x - 0.5) / 0.5

    def _bottlenecked(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.bottleneck is None else self.bottleneck(h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the linear head: z of the bottleneck when there is one)."""
        out = self.backbone(self._prepare(x))
        return self._bottlenecked(out.logits if hasattr(out, "logits") else out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, for inception_v3 in training mode, the auxiliary logits."""
        out = self.backbone(self._prepare(x))
        if hasattr(out, "aux_logits"):
            return self.head(self._bottlenecked(out.logits)), out.aux_logits
        return self.head(self._bottlenecked(out)), None

    def blocks(self) -> list[list[nn.Module]]:
        """The network in blocks from input to output, the head (with the bottleneck) last: what TL-DMI freezes
        and whose outputs BiDO constrains."""
        return [*backbone_blocks(self.backbone), [m for m in (self.bottleneck, self.head) if m is not None]]

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "width": self.width,
        }
        if self.bottleneck is not None:
            spec["bottleneck"] = True
        if self.transform_input:  # only when set, so other checkpoints keep their bytes
            spec["transform_input"] = True
        return spec


def build_classifier(
    arch: str,
    num_classes: int,
    image_size: int,
    width: int = 32,
    pretrained_path: Path | None = None,
    bottleneck: bool = False,
    transform_input: bool = False,
) -> Classifier:
    model = Classifier(arch, num_classes, image_size, width, bottleneck, transform_input)
    if pretrained_path is not None:
        load_pretrained_backbone(model, Path(pretrained_path))
    return model


def imagenet_weights_file(arch: str) -> str | None:
    """The file name of torchvision's default ImageNet weights for ``arch`` (what PPA's ``pretrained: true`` loads,
    e.g. ``resnet152-f82ba261.pth``); None for lsmia's small networks."""
    if arch not in TORCHVISION:
        return None
    url: str = tvm.get_model_weights(arch).DEFAULT.url
    return url.rsplit("/", 1)[-1]


def require_pretrained_weights(cfg: ClassifierConfig, section: str) -> None:
    """With ``{section}.pretrained`` true, ``{section}.pretrained_path`` must name an existing file: a one-line error
    naming torchvision's weight file to place there (no download: lsmia reads weights from disk only)."""
    if not cfg.pretrained:
        return
    name = imagenet_weights_file(cfg.arch)
    if name is None:
        raise LsmiaError(
            f"{section}.pretrained is true but {cfg.arch} has no ImageNet weights: set {section}.pretrained to false"
        )
    place = f"place torchvision's ImageNet weights {name} (https://download.pytorch.org/models/{name})"
    if cfg.pretrained_path is None:
        raise LsmiaError(
            f"{section}.pretrained is true but {section}.pretrained_path is not set: {place} on disk and set "
            f"{section}.pretrained_path to it"
        )
    if not Path(cfg.pretrained_path).is_file():
        raise LsmiaError(
            f"{section}.pretrained_path {cfg.pretrained_path} does not exist ({section}.pretrained is true): {place} "
            "there"
        )


def load_pretrained_backbone(model: Classifier, path: Path) -> None:
    """Load local backbone weights (e.g. torchvision ImageNet weights); heads and mismatched stems stay fresh."""
    state = load_torch(path, what="pretrained weights")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LsmiaError(
            f"pretrained weights {path} hold a {type(state).__name__}, not a state dict (parameter name -> tensor): "
            "pass weights saved with torch.save(model.state_dict())"
        )
    own = model.backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and own[k].shape == v.shape}
    if not usable:
        raise LsmiaError(
            f"pretrained weights {path} share no tensors with {model.arch}: pass weights of that architecture"
        )
    model.backbone.load_state_dict(usable, strict=False)


def save_classifier(model: Classifier, path: Path | str, extra: dict[str, Any] | None = None) -> None:
    save_torch({**model.spec(), "state_dict": model.state_dict(), **(extra or {})}, path)


def load_classifier(
    path: Path | str, num_classes: int | None = None, arch: str | None = None, what: str = "classifier checkpoint"
) -> Classifier:
    """Load a checkpoint written by save_classifier; a mismatch with the expectation is a one-line error."""
    ckpt = load_torch(path, what=what, fix="train it first with 'lsmia train'")
    _require_classifier_checkpoint(ckpt, path)
    if arch is not None and ckpt["arch"] != arch:
        raise LsmiaError(f"{path} holds a {ckpt['arch']} but {arch} was expected: retrain or fix the arch setting")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise LsmiaError(
            f"{path} has {ckpt['num_classes']} classes but the data has {num_classes}: retrain it on this data set"
        )
    model = Classifier(
        ckpt["arch"],
        ckpt["num_classes"],
        ckpt["image_size"],
        ckpt.get("width", 32),
        bool(ckpt.get("bottleneck", False)),
        bool(ckpt.get("transform_input", False)),
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise LsmiaError(f"{path} does not match architecture {ckpt['arch']}: retrain it") from None
    return model.eval()


CHECKPOINT_FIELDS = {"arch": str, "num_classes": int, "image_size": int, "width": int, "state_dict": dict}
KIND_NAMES = {str: "a name", int: "a whole number", dict: "a state dict"}


def _require_classifier_checkpoint(ckpt: Any, path: Path | str) -> None:
    """What save_classifier writes: a mapping with the architecture, its sizes and a state dict."""
    fix = "pass a file written by 'lsmia train'"
    if not isinstance(ckpt, dict):
        raise LsmiaError(f"{path} holds a {type(ckpt).__name__}, not an lsmia classifier checkpoint: {fix}")
    for key, kind in CHECKPOINT_FIELDS.items():
        value = ckpt.get(key, 32 if key == "width" else None)  # files from before width was stored: 32
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if key not in ckpt else f"a {type(value).__name__}"
            raise LsmiaError(
                f"{path} is not an lsmia classifier checkpoint ({key!r}: {found}, expected {KIND_NAMES[kind]}): {fix}"
            )

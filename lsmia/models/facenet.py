"""FaceNet's Inception-ResNet-v1 (Szegedy et al. 2017; Schroff et al. 2015), for PPA's δ_face.

The module and parameter names and shapes are facenet-pytorch's (2.6.0), so its released VGGFace2 weights
``20180402-114759-vggface2.pt`` load with ``load_state_dict(strict=True)``; tests/test_comparable_metrics.py holds
the state dict to a key/shape list taken from facenet-pytorch. facenet-pytorch itself is not a dependency: it pins
torch < 2.3. Weights come from a local file only (``metrics.facenet_path``), never from the network.

The embedding is facenet-pytorch's default output (``classify=False``): the L2-normalised 512-d output of
``last_bn``. The classification layer ``logits`` (8631 VGGFace2 identities) is kept only so the file loads whole.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lsmia.models.published import FACENET
from lsmia.utils import load_torch

FACENET_SIZE = 160  # the face crops FaceNet was trained on (PPA resizes to 160, attack.py:372)
VGGFACE2_CLASSES = 8631
EMBEDDING_DIM = 512
BN_EPS = 1e-3  # TensorFlow's epsilon, kept by the port

# A conv layer of a branch: (out channels, kernel, stride, padding); kernels and paddings may be (h, w) pairs.
Conv = tuple[int, int | tuple[int, int], int, int | tuple[int, int]]


class ConvBN(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: submodules ``conv`` and ``bn``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def branch(c_in: int, convs: list[Conv]) -> nn.Module:
    """A chain of ConvBN layers; a single layer stands alone (its parameters are ``branchN.conv...``, a chain's
    ``branchN.0.conv...``), as in the released weights."""
    layers: list[nn.Module] = []
    for c_out, kernel, stride, padding in convs:
        layers.append(ConvBN(c_in, c_out, kernel, stride, padding))
        c_in = c_out
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def out_channels(convs: list[Conv]) -> int:
    return convs[-1][0]


class Residual(nn.Module):
    """An Inception-ResNet block: parallel branches, concatenated, a 1x1 convolution (with bias) back to
    ``channels``, scaled and added to the input, then ReLU unless ``last``."""

    def __init__(self, channels: int, branches: list[list[Conv]], scale: float, last: bool = False):
        super().__init__()
        self.scale, self.last = scale, last
        for i, convs in enumerate(branches):
            self.add_module(f"branch{i}", branch(channels, convs))
        self.num_branches = len(branches)
        self.conv2d = nn.Conv2d(sum(out_channels(c) for c in branches), channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], dim=1)
        out = x + self.scale * self.conv2d(mixed)
        return out if self.last else F.relu(out)


class Reduction(nn.Module):
    """A grid reduction: convolution branches and a last branch of 3x3 max pooling (stride 2), concatenated."""

    def __init__(self, channels: int, branches: list[list[Conv]]):
        super().__init__()
        for i, convs in enumerate(branches):
            self.add_module(f"branch{i}", branch(channels, convs))
        self.num_branches = len(branches) + 1
        self.add_module(f"branch{len(branches)}", nn.MaxPool2d(3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], dim=1)


# Branches per block type (Inception-ResNet-v1, Szegedy et al. 2017, figures 10-12 and 7, 10 of the paper's v1 net)
BLOCK35: list[list[Conv]] = [  # 35x35 grid, 256 channels
    [(32, 1, 1, 0)],
    [(32, 1, 1, 0), (32, 3, 1, 1)],
    [(32, 1, 1, 0), (32, 3, 1, 1), (32, 3, 1, 1)],
]
BLOCK17: list[list[Conv]] = [  # 17x17 grid, 896 channels
    [(128, 1, 1, 0)],
    [(128, 1, 1, 0), (128, (1, 7), 1, (0, 3)), (128, (7, 1), 1, (3, 0))],
]
BLOCK8: list[list[Conv]] = [  # 8x8 grid, 1792 channels
    [(192, 1, 1, 0)],
    [(192, 1, 1, 0), (192, (1, 3), 1, (0, 1)), (192, (3, 1), 1, (1, 0))],
]
REDUCTION_A: list[list[Conv]] = [  # 256 -> 384 + 256 + 256 channels
    [(384, 3, 2, 0)],
    [(192, 1, 1, 0), (192, 3, 1, 1), (256, 3, 2, 0)],
]
REDUCTION_B: list[list[Conv]] = [  # 896 -> 384 + 256 + 256 + 896 channels
    [(256, 1, 1, 0), (384, 3, 2, 0)],
    [(256, 1, 1, 0), (256, 3, 2, 0)],
    [(256, 1, 1, 0), (256, 3, 1, 1), (256, 3, 2, 0)],
]


class InceptionResnetV1(nn.Module):
    """FaceNet's embedding network. ``forward`` takes standardised images (``fixed_standardisation``) at 160 px and
    returns L2-normalised 512-d embeddings; ``features`` takes [0, 1] images (the input ``extract_features``
    gives, resized to ``image_size``) and standardises them first."""

    image_size = FACENET_SIZE

    def __init__(self, num_classes: int = VGGFACE2_CLASSES, dropout: float = 0.6):
        super().__init__()
        self.conv2d_1a = ConvBN(3, 32, 3, stride=2)
        self.conv2d_2a = ConvBN(32, 32, 3)
        self.conv2d_2b = ConvBN(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = ConvBN(64, 80, 1)
        self.conv2d_4a = ConvBN(80, 192, 3)
        self.conv2d_4b = ConvBN(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(Residual(256, BLOCK35, 0.17) for _ in range(5)))
        self.mixed_6a = Reduction(256, REDUCTION_A)
        self.repeat_2 = nn.Sequential(*(Residual(896, BLOCK17, 0.10) for _ in range(10)))
        self.mixed_7a = Reduction(896, REDUCTION_B)
        self.repeat_3 = nn.Sequential(*(Residual(1792, BLOCK8, 0.20) for _ in range(5)))
        self.block8 = Residual(1792, BLOCK8, 1.0, last=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, EMBEDDING_DIM, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=BN_EPS, momentum=0.1)
        self.logits = nn.Linear(EMBEDDING_DIM, num_classes)  # unused by the embedding; part of the released file

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stem in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b):
            x = stem(x)
        x = self.conv2d_4b(self.conv2d_4a(x))
        x = self.repeat_3(self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x)))))
        x = self.dropout(self.avgpool_1a(self.block8(x)).flatten(1))
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of [0, 1] images at 160 px (``lsmia.metrics.features.extract_features`` resizes them)."""
        return self(fixed_standardisation(images))


def fixed_standardisation(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to FaceNet's input: pixel values p in [0, 255] become (p - 127.5) / 128, facenet-pytorch's
    ``fixed_image_standardization``. (PPA feeds 2x - 1 instead, [-1, 1]: 0.4 % larger.)"""
    return (images * 255.0 - 127.5) / 128.0


def load_facenet(path: Path | str) -> InceptionResnetV1:
    """FaceNet with the VGGFace2 weights of facenet-pytorch from the local file ``path``, in eval mode; a missing or
    foreign file is a one-line LsmiaError naming the file to place there and where it comes from."""
    state = load_torch(FACENET.require(path), what=f"FaceNet weights (metrics.{FACENET.key})")
    if not isinstance(state, dict):
        raise FACENET.wrong(path)
    net = InceptionResnetV1()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:  # missing, unexpected or mis-shaped tensors
        raise FACENET.wrong(path) from None
    return net.eval()

"""Fréchet distances between two sets of images, in three feature spaces.

``feature_fid`` uses the evaluation model's penultimate features. It is NOT the Inception
FID of the literature; its key in the metrics JSON is ``fid_eval_features``. ``inception_fid``
(key ``inception_fid``) uses torchvision's Inception-v3 pool3 features with ImageNet weights from a
local file; its numbers are not comparable to published FIDs. ``tf_inception_fid`` (key
``fid_tf_inception``) is the FID of the literature and of PPA: pytorch-fid's port of TensorFlow's
FID Inception (``pt_inception-2015-12-05-6726825d.pth``) with pytorch-fid's own preprocessing, weights
from a local file.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torchvision.models as tvm
from scipy import linalg

from lsmia.data.augment import resize
from lsmia.errors import LsmiaError
from lsmia.metrics.features import extract_features, image_batches
from lsmia.models.published import FID_INCEPTION
from lsmia.utils import load_torch

INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_sets(feats_a: torch.Tensor, feats_b: torch.Tensor) -> None:
    if feats_a.shape[1:] != feats_b.shape[1:]:
        raise LsmiaError(
            f"feature sets differ in dimension ({feats_a.shape[1]} vs {feats_b.shape[1]}): "
            "extract both with the same model"
        )
    for what, feats in (("first", feats_a), ("second", feats_b)):
        if len(feats) < 2:
            raise LsmiaError(
                f"FID needs at least 2 images in the {what} set, got {len(feats)}: attack more samples or classes"
            )


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, eps: float = 1e-6) -> float:
    """||μa-μb||² + tr(Σa) + tr(Σb) - 2 tr((Σa Σb)^½) between Gaussians fitted to two feature sets.

    With at most as many samples as dimensions (singular covariances, e.g. 2048-d Inception
    features of a few hundred images) tr((Σa Σb)^½) is computed exactly and fast from the
    samples (``trace_sqrt_from_samples``); otherwise with scipy's sqrtm as pytorch-fid does.
    """
    _check_sets(feats_a, feats_b)
    a, b = feats_a.double().cpu().numpy(), feats_b.double().cpu().numpy()
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    centred_a, centred_b = a - mu_a, b - mu_b
    trace_a = (centred_a**2).sum() / (len(a) - 1)
    trace_b = (centred_b**2).sum() / (len(b) - 1)
    if max(len(a), len(b)) <= a.shape[1]:
        trace_sqrt = trace_sqrt_from_samples(centred_a, centred_b)
    else:
        trace_sqrt = trace_sqrt_from_covariances(
            np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False)), eps
        )
    diff = mu_a - mu_b
    return float(max(diff @ diff + trace_a + trace_b - 2.0 * trace_sqrt, 0.0))


def trace_sqrt_from_samples(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """tr((Σa Σb)^½) from centred samples: with A = Xa/√(na-1), B = Xb/√(nb-1), Σa Σb = AᵀA BᵀB
    shares its non-zero eigenvalues with (ABᵀ)(ABᵀ)ᵀ, so the trace is the nuclear norm of ABᵀ."""
    cross = centred_a @ centred_b.T / np.sqrt((len(centred_a) - 1) * (len(centred_b) - 1))
    return float(np.linalg.svd(cross, compute_uv=False).sum())


def trace_sqrt_from_covariances(sigma_a: np.ndarray, sigma_b: np.ndarray, eps: float) -> float:
    """tr((Σa Σb)^½) via scipy's sqrtm, as pytorch-fid: when the root is not finite or has a
    large imaginary part, ``eps`` is added to both diagonals; small imaginary parts are dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular input is handled below
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all() or not _nearly_real(covmean):
            offset = np.eye(len(sigma_a)) * eps
            covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    return float(np.trace(np.real(covmean)))


def _nearly_real(matrix: np.ndarray, atol: float = 1e-3) -> bool:
    return not np.iscomplexobj(matrix) or bool(np.allclose(np.diagonal(matrix).imag, 0, atol=atol))


def feature_fid(eval_model: nn.Module, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 256) -> float:
    """FID in the evaluation model's penultimate feature space (not Inception FID)."""
    return frechet_distance(
        extract_features(eval_model, fake, batch_size), extract_features(eval_model, real, batch_size)
    )


def load_inception(weights_path: Path | str) -> nn.Module:
    """torchvision Inception-v3 returning 2048-d pool3 features, weights from a local state_dict only.

    The file holds the state_dict of torchvision's ImageNet inception_v3 (auxiliary-head
    tensors are ignored). ``transform_input=True`` as torchvision uses with those weights, so
    inputs are ImageNet-normalised (see ``inception_features``).
    """
    state = load_torch(weights_path, what="Inception-v3 weights")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LsmiaError(f"{weights_path} is not a state_dict: save torchvision's inception_v3 state_dict()")
    state = {k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("AuxLogits.")}
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        raise LsmiaError(
            f"{weights_path} does not hold torchvision inception_v3 weights: "
            "save torchvision.models.inception_v3(weights='IMAGENET1K_V1').state_dict()"
        ) from None
    net.fc = nn.Identity()
    return net.eval()


def inception_features(net: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pool3 features of [0, 1] (or uint8) images, resized to 299 and ImageNet-normalised.

    The reference fed [-1, 1] images to a tool expecting [0, 1]; here [0, 1] is normalised
    exactly as the weights were trained for.
    """
    param = next(net.parameters())
    mean = torch.tensor(IMAGENET_MEAN, device=param.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=param.device).view(1, 3, 1, 1)
    outs = []
    with torch.no_grad():
        for batch in image_batches(images, batch_size, param.device):
            outs.append(net((resize(batch, INCEPTION_SIZE) - mean) / std).float().cpu())
    return torch.cat(outs)


FID_BLOCK = 3  # pytorch-fid's output block: the final average pool, 2048-d (its BLOCK_INDEX_BY_DIM; PPA: dims=2048)
_LOADER_LOCK = threading.Lock()  # the swapped loader below is module state of pytorch_fid.inception


def load_fid_inception(weights_path: Path | str) -> nn.Module:
    """pytorch-fid's FID Inception (2048-d pool3 features), its weights read from the local file ``weights_path``.

    Built by pytorch-fid itself, ``InceptionV3([3], resize_input=True, normalize_input=True,
    use_fid_inception=True)``, so the network and its preprocessing are exactly pytorch-fid's. Its constructor
    fetches the weights with ``load_state_dict_from_url(FID_WEIGHTS_URL)`` (pytorch_fid/inception.py,
    ``fid_inception_v3``); for the construction that module-level name is swapped for a function handing over the
    state dict already read from ``weights_path``, so nothing is downloaded and no cache folder is read or written.
    A missing or foreign file is a one-line LsmiaError naming the file to place there.
    """
    from pytorch_fid import inception as pytorch_fid_inception

    state = load_torch(FID_INCEPTION.require(weights_path), what=f"FID Inception weights (metrics.{FID_INCEPTION.key})")
    if not isinstance(state, dict):
        raise FID_INCEPTION.wrong(weights_path)

    def local_weights(url: str, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if url != FID_INCEPTION.url:  # another pytorch-fid version fetching other weights
            raise LsmiaError(f"pytorch-fid asked for {url}, not {FID_INCEPTION.url}: install pytorch-fid==0.3.0")
        return state

    with _LOADER_LOCK:
        download = pytorch_fid_inception.load_state_dict_from_url
        pytorch_fid_inception.load_state_dict_from_url = local_weights
        try:
            net = pytorch_fid_inception.InceptionV3(
                [FID_BLOCK], resize_input=True, normalize_input=True, use_fid_inception=True
            )
        except RuntimeError:  # load_state_dict: missing, unexpected or mis-shaped tensors
            raise FID_INCEPTION.wrong(weights_path) from None
        finally:
            pytorch_fid_inception.load_state_dict_from_url = download
    return net.eval()


def fid_inception_features(net: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """FID Inception pool3 features [N, 2048] of uint8 or [0, 1] float images at their stored size.

    The network resizes to 299 (bilinear) and maps [0, 1] to the [-1, 1] its TensorFlow weights expect, as
    pytorch-fid does for its own image files. PPA fed it images already in [-1, 1] (Normalize(0.5, 0.5), attack.py
    276-280), so they were mapped to [-3, 1]; here the input is [0, 1] as pytorch-fid expects, hence lsmia's FID
    is pytorch-fid's FID of the images, not PPA's shifted one.
    """
    device = next(net.parameters()).device
    outs = []
    with torch.no_grad():
        for batch in image_batches(images, batch_size, device):
            outs.append(net(batch)[0].flatten(1).float().cpu())
    if not outs:
        raise LsmiaError("no images for FID: the attack result or data split is empty; re-run the attack")
    return torch.cat(outs)


@dataclass(frozen=True)
class FidNetwork:
    """An Inception network for FID: how to load it from a local weight file and how it reads features."""

    load: Callable[[Path | str], nn.Module]
    features: Callable[[nn.Module, torch.Tensor, int], torch.Tensor]

    def fid(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        weights_path: Path | str,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
    ) -> float:
        """The Fréchet distance (``frechet_distance``: with at most 2048 images per set, singular covariances, its
        matrix root is exact from the samples) of the two sets' features."""
        net = self.load(weights_path).to(device)
        return frechet_distance(self.features(net, fake, batch_size), self.features(net, real, batch_size))


# The literature's FID: pytorch-fid's FID Inception (TensorFlow's weights), comparable with PPA's and published FIDs.
tf_inception_fid = FidNetwork(load_fid_inception, fid_inception_features).fid
# torchvision's ImageNet Inception-v3: another network, so its FID is not comparable with published ones.
inception_fid = FidNetwork(load_inception, inception_features).fid

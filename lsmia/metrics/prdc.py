"""Precision, recall, density and coverage (Naeem et al., ICML 2020).

Definitions follow the official ``prdc`` package: Euclidean distances; each point's radius
is the distance to its k-th nearest neighbour within its own set, self excluded; a point
lies in a ball when its distance is strictly smaller than the radius.
"""

from __future__ import annotations

import warnings

import torch

from lsmia.errors import LsmiaError


def _knn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    # the (k+1)-th smallest distance of each row is the k-th neighbour, since self is at 0
    return torch.cdist(feats, feats).kthvalue(k + 1, dim=1).values


def prdc(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int) -> dict[str, float]:
    """PRDC of ``fake_feats`` against ``real_feats`` with ``k`` nearest neighbours.

    precision: share of fakes inside some real k-NN ball; recall: share of reals inside some
    fake k-NN ball; density: mean number of real balls containing a fake, divided by k;
    coverage: share of reals whose own ball contains at least one fake.
    """
    if k < 1 or len(real_feats) <= k or len(fake_feats) <= k:
        raise LsmiaError(
            f"PRDC with k={k} needs more than k real ({len(real_feats)}) and fake "
            f"({len(fake_feats)}) samples: lower metrics.prdc_k or attack more samples"
        )
    real, fake = real_feats.double(), fake_feats.double()
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    real_fake = torch.cdist(real, fake)  # [n_real, n_fake]
    in_real_balls = real_fake < real_radii.unsqueeze(1)
    return {
        "precision": in_real_balls.any(dim=0).double().mean().item(),
        "recall": (real_fake < fake_radii.unsqueeze(0)).any(dim=1).double().mean().item(),
        "density": in_real_balls.sum(dim=0).double().mean().item() / k,
        "coverage": (real_fake.min(dim=1).values < real_radii).double().mean().item(),
    }


def prdc_per_class(
    real_feats: torch.Tensor,
    real_labels: torch.Tensor,
    fake_feats: torch.Tensor,
    fake_labels: torch.Tensor,
    classes: list[int],
    k: int,
) -> dict[str, float]:
    """PRDC computed within each of ``classes`` (exactly those, e.g. the attack's targets), then averaged.

    A class with k or fewer real or fake samples uses k clamped to (smaller count - 1); a class
    with fewer than 2 samples on either side has no k-NN radius and is left out with a warning.
    Raises LsmiaError when no class is usable.
    """
    per_class: list[dict[str, float]] = []
    for cls in classes:
        real = real_feats[real_labels == cls]
        fake = fake_feats[fake_labels == cls]
        k_used = min(k, len(real) - 1, len(fake) - 1)
        if k_used < 1:
            warnings.warn(
                f"PRDC skips class {cls}: {len(real)} real and {len(fake)} fake samples (need 2 each)", stacklevel=2
            )
            continue
        per_class.append(prdc(real, fake, k_used))
    if not per_class:
        raise LsmiaError(
            "no targeted class has 2 real and 2 reconstructed samples for PRDC: set attack.final_samples >= 2"
        )
    return {key: sum(m[key] for m in per_class) / len(per_class) for key in per_class[0]}

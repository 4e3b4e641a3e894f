"""BiDO-HSIC (Peng et al., KDD 2022): bilateral dependency optimisation on the hidden representations.

loss = CE + lambda_x * sum_j dep(x, z_j) - lambda_y * sum_j dep(y, z_j): each hidden representation z_j should
depend little on the input x (what an inversion recovers) and much on the label y (what the task needs). Here
z_j is the output of each block of the network (lsmia.models.classifiers.Classifier.blocks) as the next block
receives it, the last being the head's input; x the flattened input in [0, 1], y the one-hot label.

Kernels as in the reference code (BiDO repository ``hsic.py``, MIBench ``BiDO/kernel.py``): Gaussian on x and
z_j, k(a, b) = exp(-||a - b||^2 / (2 sigma^2 d)) with sigma = 5 and d the vector's size (bandwidth sigma * sqrt(d)),
and by default a linear kernel on the one-hot labels (the reference's ``ktype='linear'``). dep is

- ``nhsic`` (default, the reference code's estimator, for which its lambdas are tuned): the normalised HSIC
  tr(R_K R_L) with R_K = K~ (K~ + eps n I)^-1, K~ = H K H, eps = 1e-5 (the reference centres on one side, K H);
- ``hsic``: the biased empirical HSIC of Gretton et al. (2005), tr(K H L H) / (n - 1)^2, H = I - 11^T / n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lsmia.config import BidoSettings
from lsmia.defenses.base import Defense, DefenseSpec, SearchParam

SIGMA = 5.0  # the reference's Gaussian bandwidth factor
EPSILON = 1e-5  # the reference's regulariser of the normalised HSIC
Kernel = Callable[[torch.Tensor], torch.Tensor]
Measure = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def squared_distances(a: torch.Tensor) -> torch.Tensor:
    """||a_i - a_j||^2 for the rows of ``a`` [n, d], as a float64 [n, n] matrix."""
    norms = a.pow(2).sum(dim=1, keepdim=True)
    return (norms - 2.0 * a @ a.T + norms.T).clamp_min(0.0).double()


def gaussian_kernel(a: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """k_ij = exp(-||a_i - a_j||^2 / (2 sigma^2 d)), d = a.shape[1] (the reference's bandwidth sigma * sqrt(d))."""
    return torch.exp(-squared_distances(a) / (2.0 * sigma**2 * a.shape[1]))


def linear_kernel(a: torch.Tensor) -> torch.Tensor:
    """k_ij = <a_i, a_j>: for one-hot labels, 1 where two rows share their class."""
    return (a @ a.T).double()


def centred(k: torch.Tensor) -> torch.Tensor:
    """H K H with H = I - 11^T / n: rows and columns of ``k`` minus their means."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def hsic(k: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The biased empirical HSIC tr(K H Q H) / (n - 1)^2 of two [n, n] kernel matrices (Gretton et al., 2005)."""
    n = k.shape[0]
    return (centred(k) * centred(q)).sum() / (n - 1) ** 2


def normalized_hsic(k: torch.Tensor, q: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """tr(R_K R_Q), R_K = K~ (K~ + eps n I)^-1 with K~ = H K H: HSIC of the kernels' regularised projections."""
    n = k.shape[0]
    ridge = eps * n * torch.eye(n, dtype=k.dtype, device=k.device)

    def projection(m: torch.Tensor) -> torch.Tensor:
        mc = centred(m)
        return torch.linalg.solve(mc + ridge, mc)  # = mc (mc + ridge)^-1: both are functions of mc, so they commute

    return (projection(k) * projection(q).T).sum()


MEASURES: dict[str, Measure] = {"nhsic": normalized_hsic, "hsic": hsic}
KERNELS: dict[str, Kernel] = {"linear": linear_kernel, "gaussian": gaussian_kernel}


class BidoDefense(Defense):
    """loss = CE + lambda_x * sum_j dep(x, z_j) - lambda_y * sum_j dep(y, z_j) over the blocks' outputs z_j."""

    name = "bido"

    def __init__(
        self,
        blocks: Sequence[Sequence[nn.Module]],
        num_classes: int,
        lambda_x: float,
        lambda_y: float,
        measure: str = "nhsic",
        label_kernel: str = "linear",
    ) -> None:
        super().__init__()
        self.num_classes, self.lambda_x, self.lambda_y = num_classes, lambda_x, lambda_y
        self.measure, self.label_kernel = MEASURES[measure], KERNELS[label_kernel]
        self.hidden: list[torch.Tensor] = []
        self.capture_inputs([block[0] for block in blocks[1:]], self.hidden)  # block j's output enters block j + 1

    def dependences(
        self, x: torch.Tensor, y: torch.Tensor, hidden: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(dep(x, z_j), dep(y, z_j)) per hidden representation z_j."""
        k_x = gaussian_kernel(x.flatten(1).float())
        k_y = self.label_kernel(F.one_hot(y, self.num_classes).float())
        out = []
        for z in hidden:
            k_z = gaussian_kernel(z.flatten(1).float())
            out.append((self.measure(k_x, k_z), self.measure(k_y, k_z)))
        return out

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hidden = list(self.hidden)
        self.hidden.clear()
        terms = [self.lambda_x * dx - self.lambda_y * dy for dx, dy in self.dependences(x, y, hidden)]
        return torch.stack(terms).sum().float()


def build(settings: BidoSettings, model: Any) -> BidoDefense:
    return BidoDefense(
        model.blocks(),
        model.num_classes,
        settings.bido_lambda_x,
        settings.bido_lambda_y,
        settings.bido_measure,
        settings.bido_label_kernel,
    )


SPEC = DefenseSpec(
    "bido",
    build,
    (SearchParam("bido_lambda_x", 0.005, 0.5, symbol="λx"), SearchParam("bido_lambda_y", 0.05, 5.0, symbol="λy")),
    strength="λx={bido_lambda_x:g}, λy={bido_lambda_y:g}",
)

"""What an inversion attack returns: latents, images and the target class of each."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lsmia.errors import LsmiaError
from lsmia.utils import load_torch, save_torch


def interned(value: Any) -> Any:
    """``value`` with every string (dict keys included) interned, containers copied, everything else as is."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {interned(k): interned(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(interned(v) for v in value)
    return value


@dataclass
class AttackResult:
    """Images are uint8 [N, 3, H, W] at ``attack.render_size`` (default: the target's input size); targets int64 [N].

    ``all_*`` hold every optimised candidate (``candidates`` per target); ``final_*`` the
    ``final_samples`` per target kept by the final selection, with ``final_scores`` their
    mean target confidence under random transforms.
    """

    targets: list[int]
    all_latents: torch.Tensor
    all_images: torch.Tensor
    all_targets: torch.Tensor
    final_latents: torch.Tensor
    final_images: torch.Tensor
    final_targets: torch.Tensor
    final_scores: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path | str) -> None:
        """Everything but the wall-clock timings (they differ per run; see utils.timings_path).

        Strings are interned, so equal results are equal bytes (pickle memoises strings by identity: a result
        loaded from disk and merged would otherwise differ from one computed in memory)."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields["meta"] = interned({k: v for k, v in self.meta.items() if k != "timings"})
        save_torch(fields, path)

    @classmethod
    def load(cls, path: Path | str) -> AttackResult:
        """The result saved at ``path``; a file of another kind is a one-line LsmiaError naming what it lacks."""
        fix = "pass the attack.pt of 'lsmia attack' or re-run it"
        obj = load_torch(path, what="attack result", keys=tuple(cls.__dataclass_fields__), fix=fix)
        wrong = [k for k in TENSOR_FIELDS if not isinstance(obj[k], torch.Tensor)]
        if wrong or not isinstance(obj["meta"], dict) or not isinstance(obj["targets"], list):
            field_name = wrong[0] if wrong else "meta" if not isinstance(obj["meta"], dict) else "targets"
            raise LsmiaError(f"attack result {path} holds a {type(obj[field_name]).__name__} as {field_name}: {fix}")
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__})


TENSOR_FIELDS = (
    "all_latents",
    "all_images",
    "all_targets",
    "final_latents",
    "final_images",
    "final_targets",
    "final_scores",
)

"""How PPA's rows are cut into optimisation batches, and the per-step diagnostics recorded per batch: what an
attack and the merge of its shards (lsmia.attack.shards) share."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from lsmia.infra import distributed

Schedule = Literal["batched", "per_class"]
SCHEDULES = ("batched", "per_class")
REFERENCE_BATCH = 25  # PPA's latents per GPU batch, used by the per_class schedule


def row_batches(num_targets: int, candidates: int, batch_size: int, schedule: Schedule) -> list[torch.Tensor]:
    """Row indices per optimisation batch; rows are ordered target-major."""
    rows = torch.arange(num_targets * candidates)
    if schedule == "batched":
        return list(rows.split(batch_size))
    return [chunk for per_class in rows.split(candidates) for chunk in per_class.split(REFERENCE_BATCH)]


class StepDiagnostics:
    """Per (batch, step) sums over rows of the loss, the target confidence and the gradient cosine.

    Each entry is written only by the rank that optimised the batch, so merging the ranks' tables copies
    every entry exactly and the curves are the same for any number of ranks.
    """

    def __init__(self, batches: list[torch.Tensor], steps: int) -> None:
        self.sums = torch.zeros(len(batches), steps, 3, dtype=torch.float64)
        self.rows = torch.tensor([len(batch) for batch in batches], dtype=torch.float64)
        self._batch: list[torch.Tensor] = []
        self._previous_grad: torch.Tensor | None = None

    def record_step(
        self, step: int, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor
    ) -> None:
        """One step's sums, kept on the device until the batch ends (no synchronisation per step)."""
        with torch.no_grad():
            confidence = torch.softmax(logits.detach().float(), dim=1).gather(1, labels.view(-1, 1)).sum()
            grad = grad.detach().flatten(1).float()
            if step == 0 or self._previous_grad is None:
                cosine = torch.zeros((), device=grad.device)
            else:
                cosine = F.cosine_similarity(grad, self._previous_grad, dim=1).sum()
            self._batch.append(torch.stack([loss.detach().float(), confidence, cosine]))
        self._previous_grad = grad.clone()

    def end_batch(self, index: int) -> None:
        self.sums[index] = torch.stack(self._batch).double().cpu()
        self._batch, self._previous_grad = [], None

    def merge_ranks(self) -> None:
        self.take_owned(distributed.all_gather(self.sums))

    def take_owned(self, parts: list[torch.Tensor]) -> None:
        """Batch ``i``'s entries from ``parts[i % len(parts)]``, the rank that recorded them."""
        for index in range(len(self.sums)):
            self.sums[index] = parts[index % len(parts)][index]

    def curves(self) -> dict[str, list[float]]:
        """Means over all rows per step, rounded to 6 decimals so saved results are byte-stable."""
        means = self.sums.sum(0) / self.rows.sum()
        rounded = [[round(float(v), 6) for v in column] for column in means.T]
        return {"loss": rounded[0], "target_confidence": rounded[1], "grad_cosine": rounded[2][1:]}

"""Per-epoch training curves in DVCLive's layout, so ``dvc plots show`` draws them (MLflow keeps the live curves).

Written once from the finished training history, not epoch by epoch: a training resumed from its checkpoint then
writes the same files as one that ran through, with no duplicated or missing steps.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from lsmia.utils import atomic_dir

NOT_CURVES = ("epoch",)  # the step itself


def write_training_curves(history: Sequence[dict[str, float]], out_dir: Path) -> Path:
    """One TSV per metric (``plots/metrics/<name>.tsv``, columns step and value) from ``history``'s rows."""
    with atomic_dir(out_dir) as tmp:
        live = _live(tmp)
        for row in history:
            live.step = int(row["epoch"])
            for name, value in row.items():
                if name not in NOT_CURVES:
                    live.log_metric(name, float(value), plot=True)
    return out_dir


def _live(directory: Path):
    os.environ.setdefault("DVCLIVE_LOGLEVEL", "WARNING")  # no banner per stage; DVCLive reads it at import
    logging.getLogger("dvclive").setLevel(logging.WARNING)
    from dvclive import Live  # a few seconds to import: only the stages that write curves pay

    # save_dvc_exp/dvcyaml off: the stage is already a DVC stage; DVCLive must neither commit nor edit dvc.yaml
    return Live(str(directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)

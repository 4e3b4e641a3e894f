"""Per-epoch training curves in DVCLive's layout (what `dvc plots show` draws for each classifier)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lsmia.config import load_config
from lsmia.reporting.curves import write_training_curves
from tests.helpers.paths import TINY


def read_curve(folder: Path, name: str) -> list[tuple[int, float]]:
    with open(folder / "plots" / "metrics" / f"{name}.tsv", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["step", name]
    return [(int(step), float(value)) for step, value in rows[1:]]


def history(epochs: int) -> list[dict[str, float]]:
    return [{"epoch": e, "loss": 2.0 / (e + 1), "test_acc": 0.1 * e, "alpha": -0.05 * (e > 1)} for e in range(epochs)]


def test_each_metric_gets_one_row_per_epoch(tmp_path: Path) -> None:
    out = write_training_curves(history(4), tmp_path / "curves")
    assert read_curve(out, "loss") == [(0, 2.0), (1, 1.0), (2, 2.0 / 3), (3, 0.5)]
    assert read_curve(out, "test_acc") == [(e, 0.1 * e) for e in range(4)]
    assert read_curve(out, "alpha") == [(0, 0.0), (1, 0.0), (2, -0.05), (3, -0.05)]
    assert not (out / "plots" / "metrics" / "epoch.tsv").exists()  # the step itself is no curve


def test_rewriting_after_a_resumed_training_replaces_the_curves(tmp_path: Path) -> None:
    """A training resumed from its checkpoint hands over its whole history: the curves are that history, with no
    step twice (DVCLive's own resume would append to the rows of the interrupted run)."""
    out = tmp_path / "curves"
    write_training_curves(history(2), out)
    write_training_curves(history(5), out)
    assert [step for step, _ in read_curve(out, "loss")] == [0, 1, 2, 3, 4]


def test_a_failure_while_writing_leaves_the_earlier_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvclive import Live

    out = write_training_curves(history(3), tmp_path / "curves")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(self: Live, name: str, value: float, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Live, "log_metric", broken)
    with pytest.raises(OSError):
        write_training_curves(history(6), out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves"]  # no staging folder left behind


def test_the_train_stage_writes_the_curves_of_its_history(tmp_path: Path) -> None:
    from lsmia.stages.data import stage_data
    from lsmia.stages.train import stage_train

    torch.set_num_threads(1)
    cfg = load_config(TINY, {"run.out_dir": str(tmp_path / "out"), "target.epochs": 3})
    data = tmp_path / "dataset.pt"
    stage_data(cfg, data, tmp_path / "summary.json")
    curves = tmp_path / "curves" / "target"
    result = stage_train(cfg, "target", data, tmp_path / "target", torch.device("cpu"), 0, curves_dir=curves)
    assert read_curve(curves, "test_acc") == [(e, row["test_acc"]) for e, row in enumerate(result.history)]
    assert [step for step, _ in read_curve(curves, "loss")] == [0, 1, 2]

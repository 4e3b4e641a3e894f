"""The study's summary.json: DVC's metrics file, per alpha over seeds, a few columns in dvc exp show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lsmia.paths import StudyPaths
from lsmia.reporting.report import summary_metrics, write_summary
from tests.helpers.paths import ROOT

ROWS = [
    {"alpha": 0.0, "seed": 0, "final_acc1": 0.30, "test_acc": 0.96, "delta_eval": 70.0, "epochs": 40.0},
    {"alpha": 0.0, "seed": 1, "final_acc1": 0.34, "test_acc": 0.97, "delta_eval": 72.0, "epochs": 40.0},
    {"alpha": -0.05, "seed": 0, "final_acc1": 0.20, "test_acc": 0.95, "final_target_acceptance_raw": 0.5},
]


def test_per_alpha_means_counts_and_the_acc1_interval() -> None:
    summary = summary_metrics(ROWS)
    assert list(summary) == ["alpha=0", "alpha=-0,05"]
    zero = summary["alpha=0"]
    assert zero["n"] == 2 and zero["final_acc1"] == pytest.approx(0.32) and zero["delta_eval"] == pytest.approx(71.0)
    assert zero["final_acc1_ci95"] == pytest.approx(12.706 * 0.02, rel=1e-3)  # t(0.975, 1) * s / sqrt(2), s = 0.0283
    assert "final_target_acceptance_raw" not in zero  # never measured at alpha 0 here: no column of NaN
    one_seed = summary["alpha=-0,05"]
    assert one_seed == {"n": 1, "final_acc1": 0.2, "test_acc": 0.95, "final_target_acceptance_raw": 0.5}
    assert not {"alpha", "seed", "epochs"} & {key for entry in summary.values() for key in entry}


def test_written_from_the_study_s_own_cells_only(tmp_path: Path) -> None:
    paths = StudyPaths(tmp_path)
    paths.metrics_dir.mkdir()
    for row in ROWS:
        paths.metrics_file(row["alpha"], int(row["seed"])).write_text(json.dumps(row))
    write_summary(paths, cells=[(0.0, 0), (-0.05, 0)])  # seed 1 of alpha 0 belongs to no cell of this study
    assert json.loads(paths.summary_file.read_text())["alpha=0"]["n"] == 1


def test_dvc_reads_the_summary_as_the_only_metrics_file() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = {next(iter(m)) for stage in stages.values() for m in stage.get("metrics", [])}
    assert metrics == {"${run.out_dir}/summary.json"}

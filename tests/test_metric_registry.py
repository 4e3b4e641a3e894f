"""One reporting vocabulary: every table and list selects its metrics from lsmia.reporting.metric_registry, and every number
is written by lsmia.reporting.formatting in the strings the committed tables hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from lsmia.cli import experiments as cli_experiments
from lsmia.config import Config
from lsmia.experiments import ablation, sweep
from lsmia.reporting import ablation_tables, formatting, metric_registry, report
from lsmia.reporting.metric_registry import Metric
from lsmia.reporting.stats import per_alpha
from lsmia.tracking.client import NullTracker
from lsmia.tracking.stages import StageLog

NEW = Metric("new_leak", "a new leakage metric", metric_registry.MORE_LEAKAGE, column="new", headline=True)
NEW_EVERYWHERE = Metric(
    NEW.name, NEW.label, NEW.higher, column=NEW.column, headline=True, summarised=True, front=True, dvc_summary=True
)


def rows(**extra: float) -> list[dict[str, Any]]:
    return [
        {"alpha": alpha, "seed": seed, "test_acc": 0.9 - seed / 100, "final_acc1": 0.5 + alpha, **extra}
        for alpha in (0.0, -0.05)
        for seed in (0, 1, 2)
    ]


def test_the_formatter_writes_the_committed_strings() -> None:
    assert formatting.mean_ci(0.4321, 0.0123) == "0.432 ± 0.012"  # the report: interval to 2 significant digits
    assert formatting.mean_ci(0.4321, 0.0123, 3) == "0.432 ± 0.012"  # the markdown tables: fixed decimals
    assert formatting.mean_ci(0.4321, 0.0123, 2) == "0.43 ± 0.01"
    assert formatting.mean_ci(25.8366, 2.04, 1) == "25.8 ± 2.0"
    assert formatting.mean_ci(0.857, 0.0, 3) == "0.857 ± 0.000"
    assert formatting.mean_ci(0.99, 0.0) == "0.99 ± 0"
    assert formatting.mean_ci(0.4321, math.nan) == "0.4321" and formatting.mean_ci(0.4321, math.nan, 3) == "0.432"
    assert formatting.mean_ci(math.nan, 0.1) == "—" == formatting.stat_text(None)
    assert formatting.stat_text({"mean": 0.554, "ci95": 0.0649, "n": 3}) == "0.554 ± 0.065"
    assert formatting.number(0.123456) == "0.1235" and formatting.number(1234567.0) == "1.235e+06"
    assert formatting.number(0.96, 3) == "0.960"
    assert formatting.number(None) == formatting.number(True) == formatting.number(math.inf) == "—"
    assert formatting.cell(math.nan) == "nan" and formatting.cell(0.05) == "0.05" and formatting.cell(7) == "7"
    assert formatting.cell(None) == "" and formatting.cell(None, none="None") == "None"


def test_each_consumer_uses_the_registrys_selection() -> None:
    assert report.metric_keys(rows(ece=0.1, zz_unknown=1.0)) == ["test_acc", "ece", "final_acc1", "zz_unknown"]
    assert set(ablation.summarise(rows())[0]["metrics"]) == set(metric_registry.summarised())
    columns = ablation_tables.summary_columns()
    assert [c for c in columns if c not in (*ablation_tables.PAIRED_COLUMNS, "variant", "α")] == [
        m.column for m in metric_registry.table_columns()
    ]
    assert cli_experiments.study_lines([])[0].split("\t") == ["alpha", "seed", *metric_registry.headline()]
    assert sweep.point_metrics() == ("test_acc", *metric_registry.front())
    assert set(report.summary_metrics(rows())["alpha=0"]) <= {"n", "final_acc1_ci95", *metric_registry.dvc_summary()}


class HeadlineTracker(NullTracker):
    """Records the metrics copied onto the attack run."""

    def __init__(self) -> None:
        super().__init__()
        self.headline: dict[str, float] = {}

    def annotate_run(self, run_id: str | None, metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        self.headline = dict(metrics)


def mlflow_headline(metrics: dict[str, float], tmp_path: Path) -> dict[str, float]:
    tracker = HeadlineTracker()
    stage = StageLog(tracker, Config(), "evaluate", data_file=tmp_path / "absent.pt")
    stage.attack_run = "attack-run"
    stage.log_metrics(metrics)
    return tracker.headline


def sweep_trial(**attrs: float) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={"alpha": -0.05},
        distributions={"alpha": optuna.distributions.FloatDistribution(-0.2, 0.2)},
        values=[0.9, 0.5],
        user_attrs=attrs,
    )


def test_one_registry_line_reaches_every_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(metric_registry, "METRICS", (*metric_registry.METRICS, NEW_EVERYWHERE))
    measured = rows(new_leak=0.25)
    keys = report.metric_keys(measured)
    assert keys[-1] == NEW.name  # a labelled metric: in the registry's order, not among the unknown ones
    assert NEW.label in report.summary_table(report.aggregate(measured), keys)
    variants = {"v": {"summary": ablation.summarise(measured), "effects": []}}
    assert ablation_tables.summary_columns()[-1] == NEW.column
    assert ablation_tables.summary_rows(variants)[0][-1] == "0.250 ± 0.000"
    assert cli_experiments.study_lines(measured)[0].endswith("\tnew_leak") and cli_experiments.study_lines(measured)[
        1
    ].endswith("\t0.25")
    assert mlflow_headline({"final_acc1": 0.5, "new_leak": 0.25}, tmp_path) == {"final_acc1": 0.5, "new_leak": 0.25}
    assert sweep.trial_row(sweep_trial(new_leak=0.25))[NEW.name] == 0.25
    assert sweep.point_metrics()[-1] == NEW.name  # points.json and the defense comparison's per-attack metrics
    assert report.summary_metrics(measured)["alpha=0"][NEW.name] == 0.25


def test_per_alpha_counts_only_numbers_and_keeps_empty_metrics_on_request() -> None:
    found = per_alpha([{"alpha": 0.0, "seed": 0, "a": 1.0, "b": None}, {"alpha": 0.0, "seed": 1, "a": 3.0}], "ab")
    assert found[0]["seeds"] == [0, 1] and found[0]["metrics"]["a"]["mean"] == 2.0 and "b" not in found[0]["metrics"]
    kept = per_alpha([{"alpha": 0.0, "seed": 0}], ["b"], keep_missing=True)[0]["metrics"]["b"]
    assert kept["n"] == 0 and math.isnan(kept["mean"])

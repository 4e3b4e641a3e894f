"""What users see, checked in headless Chromium: `dvc plots show` and the HTML report.

Skipped, with the reason, where Chromium (apt-get install chromium) or the Vega scripts that DVC's page loads
(fetched once with npm, or LSMIA_VEGA_DIR) are missing. bench/browser_check.py takes the same pages' screenshots.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lsmia.reporting.curves import write_training_curves
from tests.helpers import browser
from tests.helpers.committed import export_committed

DVC = str(Path(sys.executable).parent / "dvc")
CHARTS = {"accuracy_vs_alpha", "tradeoff", "delta_eval_vs_alpha", "xi_vs_alpha"}

needs_chromium = pytest.mark.skipif(
    browser.chromium() is None, reason="needs headless Chromium: apt-get install chromium"
)


@pytest.fixture(scope="module")
def vega() -> Path:
    folder = browser.vega_dir()
    if folder is None:
        pytest.skip("needs the Vega scripts of DVC's plot page: npm on PATH (npm pack vega) or LSMIA_VEGA_DIR")
    return folder


def plots_repo(repo: Path) -> Path:
    """A git + DVC repository with the project's pipeline, its plot templates and the committed plot data."""
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", "out/plots"):
        export_committed(name, repo)  # as committed, whatever a user's dvc repro left in the workspace
    for folder in curve_folders(repo):  # DVC-cached, not committed: what each training stage writes
        write_training_curves(TRAINING_HISTORY, repo / "out" / "curves" / folder)
    return repo


TRAINING_HISTORY = [{"epoch": e, "loss": 3.0 / (e + 1), "test_acc": 0.2 + 0.15 * e, "lr": 0.1} for e in range(4)]


def curve_folders(repo: Path) -> list[str]:
    study = yaml.safe_load((repo / "params.yaml").read_text())["study"]
    return ["eval", *(f"target_alpha{float(a)}_seed{s}" for s in study["seeds"] for a in study["alphas"])]


def numbers(labels: list[str]) -> list[float]:
    return [float(label.replace("−", "-")) for label in labels]


def axis(chart: dict, title_start: str) -> dict:
    return next(a for a in chart["axes"] if a["title"].startswith(title_start))


@needs_chromium
def test_dvc_plots_show_draws_each_plot_readably_without_warnings(tmp_path: Path, vega: Path) -> None:
    repo = plots_repo(tmp_path / "repo")
    page, printed = browser.dvc_plots_page(repo, tmp_path / "plots", dvc=DVC)
    assert "WARNING" not in printed and "failed" not in printed and "error" not in printed.lower()
    facts = browser.page_facts(browser.offline_copy(page, vega))
    charts = {chart["id"]: chart for chart in facts["charts"]}
    curves = {name: chart for name, chart in charts.items() if name.startswith("out_curves_")}
    assert set(charts) - set(curves) == CHARTS  # no stray default chart of study.json against step
    for folder in curve_folders(repo):  # each classifier's training, one chart per metric, drawn against the epoch
        for metric in ("loss", "test_acc", "lr"):
            chart = curves[re.sub(r"[/.]", "_", f"out/curves/{folder}/plots/metrics/{metric}.tsv")]  # DVC's id
            assert axis(chart, "step")["labels"] and metric in chart["texts"], chart["texts"]
    assert facts["errors"] == [] and not any("â" in t for c in charts.values() for t in c["texts"])  # UTF-8 page
    tradeoff = charts["tradeoff"]
    assert {"α = 0.1", "α = 0", "α = −0.05"} <= set(tradeoff["texts"])  # every point labelled with its alpha
    assert min(numbers(axis(tradeoff, "target test accuracy")["labels"])) > 0.5  # the x axis fits the data
    delta, xi = charts["delta_eval_vs_alpha"], charts["xi_vs_alpha"]
    assert axis(delta, "δ_eval")["labels"] and axis(xi, "ξ")["labels"]  # one quantity per axis ...
    assert "xi" not in delta["texts"] and "delta_eval" not in xi["texts"]  # ... and per chart
    assert min(numbers(axis(delta, "δ_eval")["labels"])) > 1  # δ_eval (~27) is not squashed by a zero baseline
    assert axis(charts["accuracy_vs_alpha"], "label smoothing α")["labels"]
    assert {"test_acc", "final_acc1", "final_acc5"} <= set(charts["accuracy_vs_alpha"]["texts"])
    grids = sorted((repo / "out" / "plots" / "reconstructions").glob("*.png"))
    assert len(facts["images"]) == len(grids) and all(image["width"] > 0 for image in facts["images"])
    browser.screenshot(browser.offline_copy(page, vega, probe=False), tmp_path / "dvc_plots.png", 1280, 2400)
    assert (tmp_path / "dvc_plots.png").stat().st_size > 10_000


@needs_chromium
def test_report_page_is_no_wider_than_the_window(tmp_path: Path) -> None:
    from lsmia.reporting import report
    from tests.helpers.study import make_study

    paths = make_study(tmp_path / "out")
    ablations = []
    for plan in ("factors", "alpha", "data"):
        folder = paths.ablation_dir(plan)
        shutil.copytree(export_committed(f"out/ablations/{plan}", tmp_path / "committed"), folder)
        ablations.append(folder / "results.md")
    index = report.write_report(paths, tmp_path / "report", torch.device("cpu"), ablation_files=ablations)
    facts = browser.page_facts(browser.with_probe(index), width=1280)
    assert facts["errors"] == []
    assert facts["scrollWidth"] <= facts["clientWidth"] <= 1280  # wide tables scroll in their own box

"""Screenshots of what users look at, taken in headless Chromium, for a person to check by eye.

    python bench/browser_check.py [--out out/screenshots] [--mlflow-db mlflow.db] [--sweep-journal JOURNAL]

- ``dvc_plots.png``: `dvc plots show` of this repository's workspace (the page made offline: Vega from the npm
  registry's packages instead of the CDN), with the charts' axes and labels printed;
- ``report.png``: out/report/index.html, its whole height, with the page's width against the window's;
- ``mlflow_runs.png``, ``mlflow_run.png``, ``mlflow_registry.png``: the MLflow UI (``mlflow ui`` on the store,
  started and stopped here): the runs list with its Datasets column, an evaluate run with its links, the
  registered target model with its aliases and description;
- ``optuna_dashboard.png`` with ``--sweep-journal``: optuna-dashboard on a sweep's journal.

Needs Chromium (apt-get install chromium). tests/test_browser.py checks the DVC page and the report the same way.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import browser  # noqa: E402

BIN = Path(sys.executable).parent


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "screenshots", help="folder for the PNGs")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the DVC repository whose plots are shown")
    parser.add_argument("--report", type=Path, default=ROOT / "out" / "report" / "index.html")
    parser.add_argument("--mlflow-db", type=Path, default=ROOT / "mlflow.db", help="MLflow sqlite store")
    parser.add_argument("--sweep-journal", type=Path, default=None, help="out/sweep/<study>/journal.log")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def server(command: list[str], ready_url: str, timeout: float = 90.0) -> Iterator[None]:
    """A web server started for the block: waits until ``ready_url`` answers, stops it after."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{command[0]} did not start: {ready_url}") from None
                time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def check_dvc_plots(repo: Path, out: Path) -> None:
    scripts = browser.vega_dir()
    if scripts is None:
        print("dvc plots: skipped (no Vega scripts: npm pack needs the npm registry, or set LSMIA_VEGA_DIR)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        page, printed = browser.dvc_plots_page(repo, Path(tmp) / "plots", dvc=str(BIN / "dvc"))
        facts = browser.page_facts(browser.offline_copy(page, scripts))
        browser.screenshot(
            browser.offline_copy(page, scripts, probe=False),
            out / "dvc_plots.png",
            1280,
            max(1200, facts["height"] + 40),
        )
    print(
        f"dvc plots: {'no warnings' if 'WARNING' not in printed else printed.strip()}; "
        f"{len(facts['images'])} images; page {facts['scrollWidth']} px wide"
    )
    for chart in facts["charts"]:
        axes = [f"{a['title']}: {a['labels'][0]} .. {a['labels'][-1]}" for a in chart["axes"] if a["labels"]]
        labels = [t for t in chart["texts"] if t.startswith("α =")]
        print(f"  {chart['id']}: {'; '.join(axes)}" + (f"; points {', '.join(labels)}" if labels else ""))


def check_report(report: Path, out: Path) -> None:
    if not report.is_file():
        print(f"report: skipped ({report} does not exist: dvc repro)")
        return
    facts = browser.page_facts(browser.with_probe(report))
    browser.screenshot(report, out / "report.png", 1280, facts["height"] + 40)
    print(f"report: {facts['scrollWidth']} px wide in a {facts['clientWidth']} px window, {facts['height']} px high")


def mlflow_pages(db: Path) -> dict[str, str]:
    """Fragment URLs of the runs list, an evaluate run and the registered target model."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db.resolve()}")
    experiment = client.get_experiment_by_name("lsmia")
    if experiment is None:
        return {}
    ml = "workflowType=machine_learning"  # MLflow 3's UI opens on GenAI views unless told (remembered per browser)
    pages = {"mlflow_runs": f"#/experiments/{experiment.experiment_id}?{ml}"}
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'", max_results=1)
    if runs:
        pages["mlflow_run"] = f"#/experiments/{experiment.experiment_id}/runs/{runs[0].info.run_id}?{ml}"
    pages["mlflow_registry"] = f"#/models/lsmia-target?{ml}"
    return pages


def check_mlflow(db: Path, out: Path) -> None:
    if not db.is_file():
        print(f"mlflow: skipped (no store {db})")
        return
    pages = mlflow_pages(db)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        str(BIN / "mlflow"),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{db.resolve()}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with server(command, f"{base}/health"):
        for name, fragment in pages.items():
            browser.screenshot(f"{base}/{fragment}", out / f"{name}.png", 1500, 1000)
            print(f"mlflow: {name}.png <- {fragment}")


def check_optuna_dashboard(journal: Path | None, out: Path) -> None:
    if journal is None:
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with server(
        [str(BIN / "optuna-dashboard"), str(journal), "--host", "127.0.0.1", "--port", str(port)], f"{base}/api/studies"
    ):
        with urllib.request.urlopen(f"{base}/api/studies/0", timeout=10) as answer:
            names = json.load(answer).get("objective_names")
        browser.screenshot(f"{base}/dashboard/studies/0", out / "optuna_dashboard.png", 1500, 1000)
    print(f"optuna-dashboard: objectives {names}")


def main() -> None:
    args = parse()
    if browser.chromium() is None:
        sys.exit("no Chromium: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    check_dvc_plots(args.repo, args.out)
    check_report(args.report, args.out)
    check_mlflow(args.mlflow_db, args.out)
    check_optuna_dashboard(args.sweep_journal, args.out)
    print(f"screenshots: {args.out}")


if __name__ == "__main__":
    main()

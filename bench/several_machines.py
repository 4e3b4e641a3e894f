"""Several machines' services, measured: sweep throughput on PostgreSQL vs the journal file, and MLflow tracking
over an HTTP server vs a local sqlite store.

Starts a throwaway PostgreSQL cluster and ``mlflow server`` (backend PostgreSQL, served artifacts) on 127.0.0.1 in a
temporary folder (as ``lsmia server`` does), builds the tiny study's shared stages (tests/tiny_params.yaml), then:

* ``sweep``: ``lsmia sweep --n-trials T --no-track`` with 1 and 2 workers (``--n-workers``), on the journal file
  (default storage) and on ``--storage postgresql://…``; trials per hour from the wall time of the whole command
  (process start and study summary included, as a user sees it).
* ``tracking``: the per-cell stages ``lsmia train`` (target), ``lsmia attack`` and ``lsmia evaluate`` with
  ``--no-track``, with a local sqlite store (``MLFLOW_TRACKING_URI=sqlite:///…``) and with the HTTP server; each
  stage's tracking overhead is its tracked wall time minus the untracked one (median of ``--repeats``, interleaved).

Each command is a fresh process, as DVC runs it. Prints a table per part and ``RATIO`` lines.

    .venv/bin/python bench/several_machines.py [--quick] [--trials 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchutil

from lsmia.config import Config, load_config
from lsmia.infra import services
from lsmia.paths import StudyPaths
from lsmia.stages.attributes import stage_attribute_predictor
from lsmia.stages.data import stage_data
from lsmia.stages.prior import stage_prior
from lsmia.stages.train import stage_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tiny_params.yaml"
STAGES = {
    "train": ["train", "--role", "target", "--alpha", "0.1"],
    "attack": ["attack", "--alpha", "0.1"],
    "evaluate": ["evaluate", "--alpha", "0.1"],
}


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0], repeats=2)
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep (default 4)")
    return benchutil.parse(parser, trials=2, repeats=1)


def lsmia(folder: Path, args: list[str], tracking: str | None, threads: int) -> tuple[float, str]:
    """Wall seconds and output of one ``lsmia`` command on the tiny config in ``folder``; exits on failure."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    command = [sys.executable, "-m", "lsmia", *args, "--params", str(TINY), "-S", f"run.out_dir={folder / 'out'}"]
    command += ["-S", f"run.threads={threads}", "--device", "cpu", "--track" if tracking else "--no-track"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or "MLflow tracking:" in done.stderr:
        raise SystemExit(f"{' '.join(args)} failed or did not track:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def machine(root: Path, name: str, shared: Path) -> Path:
    folder = root / name
    shutil.copytree(shared, folder / "out")
    return folder


def sweeps(root: Path, shared: Path, pg: services.Postgres, args: argparse.Namespace) -> dict[str, float]:
    """Trials per hour for each storage x workers."""
    rates: dict[str, float] = {}
    warm = machine(root, "sweep_warmup", shared)  # untimed: the first command pays for cold caches
    lsmia(warm, ["sweep", "--study-name", "warmup", "--n-trials", "1"], None, args.threads)
    for workers in (1, 2):
        for storage in ("journal", "postgresql"):
            name = f"{storage}_{workers}w"
            folder = machine(root, f"sweep_{name}", shared)
            flags = ["--study-name", name, "--n-trials", str(args.trials), "--n-workers", str(workers)]
            flags += ["--storage", pg.url()] if storage == "postgresql" else []
            seconds, out = lsmia(folder, ["sweep", *flags, "-S", "sweep.min_test_acc=0"], None, args.threads)
            if f"{args.trials} trials ({args.trials} complete" not in out:
                raise SystemExit(f"sweep {name} did not complete {args.trials} trials:\n{out[-2000:]}")
            rates[name] = args.trials * 3600 / seconds
            print(f"  sweep {name}: {args.trials} trials in {seconds:.1f} s = {rates[name]:.0f} trials/h", flush=True)
    return rates


def tracking(root: Path, shared: Path, server_uri: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median wall seconds per stage and tracking mode (off, sqlite, http), the modes interleaved."""
    uris = {"off": None, "sqlite": f"sqlite:///{root / 'mlflow.db'}", "http": server_uri}
    times: dict[str, dict[str, list[float]]] = {stage: {mode: [] for mode in uris} for stage in STAGES}
    for round_index in range(args.repeats):  # fresh folders each round: no stage resumes a finished checkpoint
        folders = {mode: machine(root, f"track_{mode}_{round_index}", shared) for mode in uris}
        for stage, stage_args in STAGES.items():
            for mode, uri in uris.items():
                times[stage][mode].append(lsmia(folders[mode], stage_args, uri, args.threads)[0])
                print(
                    f"  round {round_index + 1}/{args.repeats} {stage} {mode}: {times[stage][mode][-1]:.1f} s",
                    flush=True,
                )
    return {stage: {mode: statistics.median(v) for mode, v in modes.items()} for stage, modes in times.items()}


def main() -> None:
    args = parse_args()
    benchutil.setup(args.threads, "several machines: Optuna on PostgreSQL vs journal file, MLflow over HTTP vs sqlite")
    load = os.getloadavg()[0]
    print(f"# load average at start: {load:.2f} on {os.cpu_count()} cores")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lsmia-bench-", dir="/tmp") as temporary:
        root = Path(temporary)
        root.chmod(0o755)  # as root, PostgreSQL runs as 'postgres', who must reach its folder
        shared = root / "shared" / "out"
        cfg = load_config(TINY, {"run.out_dir": str(shared)})
        build(cfg, shared)
        with services.running_services(root / "services", log=lambda line: print(f"# {line}")) as team:
            rates = sweeps(root, shared, team.postgres, args)
            stage_times = tracking(root, shared, team.tracking.uri, args)
    print("\n| storage | 1 worker (trials/h) | 2 workers (trials/h) | 2 / 1 |")
    print("|---|---|---|---|")
    for storage in ("journal", "postgresql"):
        one, two = rates[f"{storage}_1w"], rates[f"{storage}_2w"]
        print(f"| {storage} | {one:.0f} | {two:.0f} | {two / one:.2f}x |")
    print("\n| stage | untracked s | sqlite s (overhead) | HTTP server s (overhead) |")
    print("|---|---|---|---|")
    for stage, t in stage_times.items():
        print(
            f"| {stage} | {t['off']:.1f} | {t['sqlite']:.1f} (+{t['sqlite'] - t['off']:.1f}) "
            f"| {t['http']:.1f} (+{t['http'] - t['off']:.1f}) |"
        )
    print(f"\n# total {time.perf_counter() - started:.0f} s; load average at end: {os.getloadavg()[0]:.2f}")
    for workers in (1, 2):  # > 1: PostgreSQL is faster
        journal, pg = (args.trials * 3600 / rates[f"{s}_{workers}w"] for s in ("journal", "postgresql"))
        print(
            f"RATIO sweep_postgresql_vs_journal_{workers}w: {journal / pg:.2f}x "
            f"(journal {args.trials} trials {journal:.1f} s / postgresql {args.trials} trials {pg:.1f} s)"
        )
    http, sqlite = (sum(t[mode] for t in stage_times.values()) for mode in ("http", "sqlite"))
    print(  # > 1: the HTTP server costs more than local sqlite
        f"RATIO tracking_http_vs_sqlite: {http / sqlite:.2f}x "
        f"(HTTP server 3 stages {http:.1f} s / sqlite 3 stages {sqlite:.1f} s)"
    )


def build(cfg: Config, shared: Path) -> None:
    import torch

    paths, device = StudyPaths(shared), torch.device("cpu")
    stage_data(cfg, paths.data_file)
    stage_prior(cfg, paths.data_file, paths.prior_dir, device)
    stage_train(cfg, "eval", paths.data_file, paths.eval_dir, device)
    stage_attribute_predictor(cfg, paths.data_file, paths.attribute_dir / "predictor.pt", device)


if __name__ == "__main__":
    main()

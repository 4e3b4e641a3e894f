"""Where a study's wall time goes: the stage timings an lsmia run records, as a table with shares.

Reads the wall-clock sidecars (``*.timings``, outside what git and DVC track) that each
stage writes beside its output: data/dataset.pt, prior/prior.pt, models/*/model.pt,
attacks/*/attack.pt (selection_s, optimisation_s, final_selection_s) and metrics/*.json. With ``--run`` it first runs ``lsmia study`` on a
params file and also prints the stage wall times the study logs (which include the stages
that record no timing: attribute predictor, report, loading files).

    .venv/bin/python bench/study_stages.py --out out                   # an existing run
    .venv/bin/python bench/study_stages.py --run --params params.yaml  # run the study first (long)
    .venv/bin/python bench/study_stages.py --quick                     # tests/tiny_params.yaml, temp dir
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import benchutil

from lsmia.errors import LsmiaError
from lsmia.utils import TIMINGS_SUFFIX, load_timings

REPO = Path(__file__).resolve().parent.parent
TINY_PARAMS = REPO / "tests" / "tiny_params.yaml"
ATTACK_PHASES = ("selection_s", "optimisation_s", "final_selection_s")
LOG_LINE = re.compile(r"^(?P<stage>[^:\n]+): (?P<seconds>\d+(?:\.\d+)?) s$", re.MULTILINE)
Row = tuple[str, str, float]  # (group, stage, seconds)


def parse_args() -> argparse.Namespace:
    parser = benchutil.base_parser(__doc__.splitlines()[0], repeats=1)
    parser.add_argument("--out", type=Path, default=None, help="the run's out dir (default: out; temp with --run)")
    parser.add_argument("--run", action="store_true", help="run 'lsmia study' first")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file for --run")
    return benchutil.parse(parser, run=True, params=TINY_PARAMS)


def timing(output: Path, key: str) -> float | None:
    value = load_timings(output).get(key)
    return None if value is None else float(value)


def outputs_with_timings(folder: Path, pattern: str) -> list[Path]:
    """The outputs under ``folder`` matching ``pattern`` that have a timings sidecar."""
    sidecars = folder.glob(pattern + TIMINGS_SUFFIX)
    return sorted(p.with_name(p.name.removesuffix(TIMINGS_SUFFIX)) for p in sidecars)


def data_rows(out: Path) -> list[Row]:
    seconds = timing(out / "data" / "dataset.pt", "data_s")
    return [] if seconds is None else [("data", "data", seconds)]


def prior_rows(out: Path) -> list[Row]:
    seconds = timing(out / "prior" / "prior.pt", "train_s")
    return [] if seconds is None else [("prior", "prior", seconds)]


def training_rows(out: Path) -> list[Row]:
    rows = []
    for model in outputs_with_timings(out / "models", "*/model.pt"):
        seconds = timing(model, "train_s")
        if seconds is not None:
            group = "eval model" if model.parent.name == "eval" else "target training"
            rows.append((group, f"train {model.parent.name}", seconds))
    return rows


def attack_rows(out: Path) -> list[Row]:
    rows = []
    for attack_file in outputs_with_timings(out / "attacks", "*/attack.pt"):
        recorded = load_timings(attack_file)
        for phase in ATTACK_PHASES:
            if phase in recorded:
                rows.append(
                    (
                        f"attack {phase.removesuffix('_s')}",
                        f"attack {attack_file.parent.name} {phase}",
                        float(recorded[phase]),
                    )
                )
    return rows


def evaluate_rows(out: Path) -> list[Row]:
    rows = []
    for metrics in outputs_with_timings(out / "metrics", "*.json"):
        seconds = timing(metrics, "evaluate_s")
        if seconds is not None:
            rows.append(("evaluate", f"evaluate {metrics.stem}", seconds))
    return rows


def recorded_rows(out: Path) -> list[Row]:
    rows = [*data_rows(out), *prior_rows(out), *training_rows(out), *attack_rows(out), *evaluate_rows(out)]
    if not rows:
        raise SystemExit(f"no stage timings under {out}: pass --out with a finished run's out dir, or use --run")
    return rows


def print_shares(title: str, items: list[tuple[str, float]]) -> None:
    total = sum(seconds for _, seconds in items)
    width = max(len(name) for name, _ in items)
    print(f"\n{title}")
    print(f"{'stage':<{width}}  {'seconds':>10}  {'share':>7}")
    for name, seconds in items:
        print(f"{name:<{width}}  {seconds:>10.2f}  {100 * seconds / total if total else 0:>6.1f}%")
    print(f"{'total':<{width}}  {total:>10.2f}  {100.0:>6.1f}%")


def grouped(rows: list[Row]) -> list[tuple[str, float]]:
    sums: dict[str, float] = {}
    for group, _, seconds in rows:
        sums[group] = sums.get(group, 0.0) + seconds
    return sorted(sums.items(), key=lambda item: -item[1])


def run_study(params: Path, out: Path, threads: int) -> list[tuple[str, float]]:
    """Run ``lsmia study`` (no tracking, CPU) and return the stage wall times it logs."""
    command = [
        sys.executable,
        "-m",
        "lsmia",
        "study",
        "--params",
        str(params.resolve()),
        "--device",
        "cpu",
        "--no-track",
        "--set",
        f"run.out_dir={out.resolve()}",
        "--set",
        f"run.threads={threads}",
    ]
    print(f"# running: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=out.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lsmia study failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return [(m["stage"], float(m["seconds"])) for m in LOG_LINE.finditer(done.stderr)]


def report(out: Path, logged: list[tuple[str, float]] | None) -> None:
    rows = recorded_rows(out)
    print_shares(f"recorded stage timings under {out}", [(stage, seconds) for _, stage, seconds in rows])
    print_shares("recorded timings by stage kind", grouped(rows))
    if logged:
        print_shares("stage wall times logged by 'lsmia study' (everything, incl. unrecorded stages)", logged)
    train = sum(seconds for group, _, seconds in rows if group == "target training")
    attack = sum(seconds for group, _, seconds in rows if group.startswith("attack"))
    if train > 0 and attack > 0:
        benchutil.print_ratio(
            "study_train_vs_attack", train, attack, "target training", "attack", note="recorded seconds"
        )
    else:
        print("RATIO study_train_vs_attack: n/a (no target training or attack timings recorded yet)")


def main() -> None:
    args = parse_args()
    benchutil.setup(args.threads, "study: wall time by stage")
    try:
        if not args.run:
            report(args.out or Path("out"), None)
            return
        with tempfile.TemporaryDirectory(prefix="lsmia-study-bench-") as scratch:
            out = args.out or Path(scratch) / "out"
            out.mkdir(parents=True, exist_ok=True)
            report(out, run_study(args.params, out, args.threads))
    except LsmiaError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()

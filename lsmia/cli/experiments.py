"""The experiment commands: many stages or cells at once (study, ablate, sweep, repro), and what reads their
results (verdict, ranking-check, logit-geometry, compare-defenses); the paper's 2-D toy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lsmia.cli.common import (
    NO_VALUE,
    PARAMS,
    CommandGroup,
    DeviceOpt,
    ParamsOpt,
    SetOpt,
    TrackOpt,
    device_of,
    echo_err,
    fail,
    resolve,
    study_paths,
    writing,
)
from lsmia.errors import LsmiaError
from lsmia.reporting import metric_registry
from lsmia.reporting.formatting import cell

group = CommandGroup("Experiments")

CachedPlanArg = Annotated[Path, typer.Argument(help="Ablation file whose trained targets to read.")]
StudyNameOpt = Annotated[str | None, typer.Option("--study-name", help="Study (default: sweep.study_name).")]
TrialsOpt = Annotated[int | None, typer.Option("--n-trials", help="Total trial budget over all workers.")]
WorkersOpt = Annotated[int | None, typer.Option("--n-workers", help="Worker processes on this machine.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="LSMIA_STORAGE",
        help="postgresql://, mysql:// or redis:// URL (default: a journal file in out/sweep/<study>). Export it "
        "as LSMIA_STORAGE instead of passing it: a password on the command line shows in every process list.",
    ),
]
WorkerOpt = Annotated[
    bool,
    typer.Option(
        "--worker",
        metavar=NO_VALUE,
        help="Only run trials of an existing study (e.g. on another machine sharing --storage).",
    ),
]
SharedRemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--shared-remote",
        help="DVC remote to pull data/prior/eval model from (or train and push them under a lock); "
        "'default': the default remote (sweep.shared_remote).",
    ),
]


@group.command()
def study(params: ParamsOpt = PARAMS, sets: SetOpt = None, device: DeviceOpt = None, track: TrackOpt = None) -> None:
    """Run the whole study in one process (without DVC): every stage for every alpha and seed."""
    from lsmia.experiments.study import run_study
    from lsmia.tracking.stages import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    with writing(study_paths(cfg).root):  # the whole out dir: one study at a time
        result = run_study(cfg, device_of(cfg), log=echo_err, observe=tracked_stage)
    typer.echo("\n".join(study_lines(result.metrics)))


def study_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """The study's console table: tab-separated, one row per cell, its headline metrics (lsmia.reporting.metric_registry)."""
    keys = ["alpha", "seed", *metric_registry.headline()]
    return ["\t".join(keys), *("\t".join(cell(row.get(k), none="None") for k in keys) for row in metrics)]


@group.command()
def ablate(
    plan_file: Annotated[Path, typer.Argument(help="Ablation file, e.g. configs/ablations.yaml.")],
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
    device: DeviceOpt = None,
    track: TrackOpt = None,
    finished_only: Annotated[
        bool,
        typer.Option(
            "--finished-only",
            metavar=NO_VALUE,
            help="Run nothing: tabulate the cells already finished, list the others (a long run's results so far).",
        ),
    ] = False,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="STAGE",
            help="Build each cell only up to this stage (e.g. target: train the targets first); writes no results.",
        ),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=1,
            help="Processes building the cells together (e.g. 2 on 2 cores; each takes the next stage nobody is "
            "building; run.threads auto splits the cores among them).",
        ),
    ] = 1,
    verdict: Annotated[
        bool,
        typer.Option(
            "--verdict",
            metavar=NO_VALUE,
            help="Then judge each defense as 'lsmia verdict' does (PPA as published beside the adaptive attacker).",
        ),
    ] = False,
    seeds: Annotated[
        list[int] | None,
        typer.Option(
            "--seed",
            metavar="SEED",
            help="Run these seeds instead of the plan's (repeatable: --seed 0 --seed 1 --seed 2).",
        ),
    ] = None,
) -> None:
    """Run named config variants × alphas × seeds (stages cached and shared) and test the paper's effect."""
    from lsmia.experiments import ablation
    from lsmia.tracking.stages import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    plan = ablation.load_plan(plan_file)
    if seeds:
        plan = plan.model_copy(update={"seeds": sorted(set(seeds))})
    if until is not None:
        built = ablation.prepare_ablation(cfg, plan, device_of(cfg), until, log=echo_err, jobs=jobs)
        typer.echo(f"{built} cells built up to stage {until}; run without --until for the results")
        return
    result = ablation.run_ablation(cfg, plan, device_of(cfg), log=echo_err, finished_only=finished_only, jobs=jobs)
    with tracked_stage(cfg, "ablation", f"ablation {plan.name}", role="ablation") as tracker:
        tracker.log_metrics(ablation.effect_metrics(result))
        tracker.tracker.log_artifact(result.out_dir, "ablation")
    typer.echo(ablation.markdown(result), nl=False)
    typer.echo(f"results: {result.md_file}")
    if verdict:
        verdict_command([result.json_file], out_dir=None)


@group.command()
def sweep(
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
    device: DeviceOpt = None,
    study_name: StudyNameOpt = None,
    n_trials: TrialsOpt = None,
    n_workers: WorkersOpt = None,
    storage: StorageOpt = None,
    worker: WorkerOpt = False,
    defense: Annotated[
        str | None,
        typer.Option(
            "--defense",
            help="What is searched: ls (alpha and warm-up), mid (beta), bido (lambda_x, lambda_y), tl (trained "
            "layers) or none (the undefended model); default: sweep.defense.",
        ),
    ] = None,
    shared_remote: SharedRemoteOpt = None,
    track: TrackOpt = None,
) -> None:
    """Optuna search over label smoothing (alpha, warm-up) or a defense's strength for the best accuracy-privacy
    trade-off; writes the front (fronts.png, points.json for 'lsmia compare-defenses') beside the trials."""
    from lsmia.experiments import sweep as sweeps

    flags = {
        "sweep.defense": ("--defense", defense),
        "sweep.study_name": ("--study-name", study_name),
        "sweep.n_trials": ("--n-trials", n_trials),
        "sweep.n_workers": ("--n-workers", n_workers),
        "sweep.storage": ("--storage", storage),
        "sweep.shared_remote": ("--shared-remote", shared_remote),
    }
    cfg = resolve(params, sets, device, track=track, flags=flags)
    sweeps.SweepPaths.of(cfg)  # a study name that is no folder name fails before anything else is checked
    if worker:
        ran = sweeps.run_worker(cfg, log=echo_err)
        typer.echo(f"worker done: {ran} trials run here")
        return
    sweeps.run_sweep(cfg, log=typer.echo)


@group.command("verdict")
def verdict_command(
    results: Annotated[
        list[Path], typer.Argument(help="Ablation results.json files (a plan and, e.g., its negative controls).")
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Where verdict.{md,json,png} go (default: beside the first file).")
    ] = None,
) -> None:
    """One verdict per defense: PPA as published beside the adaptive attacker, with the target's acceptance."""
    from lsmia.reporting import verdict

    for path in results:
        if not path.is_file():
            fail(f"{path} does not exist: pass the results.json that 'lsmia ablate PLAN' wrote")
    verdict.check_sources(out_dir or results[0].parent, results)
    rows = verdict.build(results)
    if not rows:
        fail(f"no defense with alpha != 0 or negative control in {', '.join(map(str, results))}: nothing to judge")
    path = verdict.write(rows, out_dir or results[0].parent, results)
    typer.echo(verdict.markdown(rows), nl=False)
    typer.echo(f"verdict: {path}")


@group.command("ranking-check")
def ranking_check(
    plan_file: CachedPlanArg,
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
    device: DeviceOpt = None,
) -> None:
    """How far PPA's float32 softmax ranking ties on each finished target of a plan (runs no training)."""
    from lsmia.experiments import ablation, ranking_check

    cfg = resolve(params, sets, device, track=False)
    plan = ablation.load_plan(plan_file)
    rows = _cached_rows(plan_file, ranking_check.target_rows(cfg, plan, device_of(cfg)))
    typer.echo("\n".join(ranking_check.lines(rows)))


def _cached_rows(plan_file: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` read from a plan's cached targets, or the one-line error that there are none yet."""
    if not rows:
        fail(f"no target of {plan_file} is in the cache for the current code: run 'lsmia ablate {plan_file}' first")
    return rows


@group.command("logit-geometry")
def logit_geometry(
    plan_file: CachedPlanArg,
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
) -> None:
    """How each finished target's true-class logit stands out among the others (runs no training)."""
    from lsmia.experiments import ablation
    from lsmia.reporting.ablation_tables import logit_geometry_lines

    cfg = resolve(params, sets, None, track=False)
    plan = ablation.load_plan(plan_file)
    rows = _cached_rows(plan_file, ablation.logit_geometry_rows(cfg, plan))
    path = ablation.write_logit_geometry(cfg, plan, rows)
    typer.echo("\n".join(logit_geometry_lines(rows)))
    typer.echo(f"results: {path}")


@group.command()
def compare_defenses(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="An ablation's results.json (e.g. of configs/defenses.yaml) and/or sweep folders "
            "(out/sweep/<study> of 'lsmia sweep --defense ...'), overlaid on one figure.",
            metavar="RESULTS_JSON|SWEEP_DIR...",
        ),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Folder for compare.{md,json} and fronts.png (default: beside a single input; needed for several).",
        ),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(
            "--levels",
            help="Test accuracies to match, e.g. 0.6,0.7 (default: the undefended accuracy less 0, 1, 2, 5, 10, 20 points).",
        ),
    ] = None,
) -> None:
    """Defenses at equal test accuracy, each against its strongest attack loss: fronts, table and figure."""
    from lsmia.reporting.defense_comparison import compare_many, markdown, parse_levels

    comparison, folder = compare_many(sources, out_dir, parse_levels(levels))
    typer.echo(markdown(comparison), nl=False)
    typer.echo(f"results: {folder / 'compare.md'}, {folder / 'compare.json'}, {folder / 'fronts.png'}")


@group.command()
def toy(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for toy.png and toy.json.")] = Path("out/toy"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data and the initial weights.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Attack steps (default: 300).")] = None,
) -> None:
    """The paper's 2-D toy: one small classifier per alpha, one gradient attack each, from the same start."""
    from lsmia.experiments.toy import ATTACK_STEPS, run_toy

    result = run_toy(seed=seed, steps=ATTACK_STEPS if steps is None else steps, out_dir=out_dir)
    typer.echo("alpha\tend_distance\tconfidence\tgrad_cosine")
    for row in result.rows:
        typer.echo(
            f"{row['alpha']:+.3g}\t{row['end_distance']:.4g}\t{row['end_confidence']:.4f}\t{row['grad_cosine']:.3f}"
        )
    typer.echo(f"figure: {result.figure}")


@group.command()
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="DVC stages (default: all).")] = None,
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
) -> None:
    """Run the DVC pipeline: `dvc repro`, or `dvc exp run -S ...` when --set overrides are given.

    This is what `mlflow run . -e main` runs, so every stage's MLflow run nests under the project run and
    `dvc status` is clean afterwards.
    """
    import shutil
    import subprocess

    from lsmia.config import split_overrides

    resolve(params, sets)  # a bad override is a one-line error before DVC starts anything
    dvc = shutil.which("dvc")
    if dvc is None:
        raise LsmiaError("dvc is not on PATH: install lsmia's dependencies (pip install -e .) or activate its venv")
    overrides = split_overrides(sets)
    if params != Path("params.yaml"):
        raise LsmiaError(f"the DVC pipeline reads params.yaml, not {params}: pass overrides with --set instead")
    command = [dvc, "exp", "run", *(a for o in overrides for a in ("-S", o))] if overrides else [dvc, "repro"]
    done = subprocess.run([*command, *(targets or [])])
    if done.returncode != 0:
        raise LsmiaError(f"'{' '.join(command[1:])}' failed (exit {done.returncode}): see DVC's output above")

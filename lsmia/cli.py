"""The ``lsmia`` command line: a thin Typer shell over lsmia.pipeline.

Every command reads ``params.yaml`` (``--params``), applies ``--set section.key=value``
overrides and its own flags, records the resolved config beside its outputs, and turns
bad input into a one-line error with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from lsmia.config import Config, build_config, load_config, parse_overrides
from lsmia.errors import LsmiaError
from lsmia.paths import StudyPaths

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Label smoothing vs. model inversion: data, training, PPA attack, metrics.")

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file (one typed schema).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-S", help="Override: section.key=value (repeatable).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda (overrides run.device).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Study seed (default: run.seed).")]
AlphaOpt = Annotated[Optional[float], typer.Option("--alpha", help="Label smoothing factor of the target.")]
TrackOpt = Annotated[Optional[bool], typer.Option("--track/--no-track", help="MLflow tracking (default: run.tracking).")]


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input: one line on stderr, exit 2. Ctrl-C: exit 130, outputs stay resumable."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LsmiaError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: re-run the same command to resume", err=True)
            raise typer.Exit(130) from None
    return wrapper


def resolve(params: Path, sets: list[str] | None, device: str | None = None, alpha: float | None = None,
            track: bool | None = None) -> Config:
    overrides = parse_overrides(sets)
    if device is not None:
        overrides["run.device"] = device
    if alpha is not None:
        overrides["target.smoothing.alpha"] = alpha
    if track is not None:
        overrides["run.tracking"] = track
    cfg = load_config(params, overrides)
    from lsmia.utils import resolve_device, set_threads

    resolve_device(cfg.run.device)  # a missing GPU is bad input: fail before any run starts
    set_threads(cfg.run.threads)
    return cfg


def _device(cfg: Config):
    from lsmia.utils import resolve_device

    return resolve_device(cfg.run.device)


def _paths(cfg: Config) -> StudyPaths:
    return StudyPaths(cfg.run.out_dir)


def _echo_json(obj: dict[str, Any]) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command()
@cli_errors
def config(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None) -> None:
    """Print the fully resolved configuration as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(resolve(params, sets).to_dict(), sort_keys=False))


@app.command()
@cli_errors
def data(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
         out: Annotated[Optional[Path], typer.Option(help="Prepared data file.")] = None,
         track: TrackOpt = None) -> None:
    """Render the built-in identities or load FaceScrub / CelebA / an image folder."""
    from lsmia import pipeline
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, track=track)
    out = out or _paths(cfg).data_file
    with tracked_stage(cfg, "data", "data") as tracker:
        summary = pipeline.stage_data(cfg, out, out.with_name("summary.json"))
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    _echo_json(summary)


@app.command("train-prior")
@cli_errors
def train_prior(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
                data_file: Annotated[Optional[Path], typer.Option("--data")] = None,
                out_dir: Annotated[Optional[Path], typer.Option("--out-dir")] = None, track: TrackOpt = None) -> None:
    """Train the GAN prior on the public images only."""
    from lsmia import pipeline
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    paths = _paths(cfg)
    out_dir = out_dir or paths.prior_dir
    with tracked_stage(cfg, "prior", "prior", role="prior", system_metrics=True) as tracker:
        result = pipeline.stage_prior(cfg, data_file or paths.data_file, out_dir, _device(cfg),
                                      on_epoch=tracker.epoch_logger())
        tracker.log_prior(result)
    _echo_json(result.metrics)


@app.command()
@cli_errors
def train(role: Annotated[str, typer.Option(help="target or eval")] = "target",
          alpha: AlphaOpt = None, seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
          device: DeviceOpt = None, data_file: Annotated[Optional[Path], typer.Option("--data")] = None,
          out_dir: Annotated[Optional[Path], typer.Option("--out-dir")] = None, track: TrackOpt = None) -> None:
    """Train a target classifier with label smoothing --alpha, or the evaluation model (--role eval)."""
    from lsmia import pipeline
    from lsmia.distributed import is_main
    from lsmia.tracked import tracked_stage

    if role not in ("target", "eval"):
        raise LsmiaError(f"unknown role '{role}': use --role target or --role eval")
    cfg = resolve(params, sets, device, alpha if role == "target" else None, track)
    seed = cfg.run.seed if seed is None else seed
    paths = _paths(cfg)
    alpha_value = cfg.target.smoothing.alpha if role == "target" else 0.0
    out_dir = out_dir or (paths.target_dir(alpha_value, seed) if role == "target" else paths.eval_dir)
    with pipeline.launched_stage(cfg, _device(cfg), tracked_stage, "train", f"train-{role}", role=role,
                                 alpha=alpha_value if role == "target" else None, seed=seed,
                                 system_metrics=True) as (tracker, rank_device):  # torchrun: DDP, rank 0 tracks
        result = pipeline.stage_train(cfg, role, data_file or paths.data_file, out_dir, rank_device, seed,
                                      on_epoch=tracker.epoch_logger())
        tracker.log_classifier(result, role, alpha_value, seed)
    if is_main():
        _echo_json(result.metrics)


@app.command()
@cli_errors
def attack(alpha: AlphaOpt = None, seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None,
           device: DeviceOpt = None, data_file: Annotated[Optional[Path], typer.Option("--data")] = None,
           target: Annotated[Optional[Path], typer.Option(help="Target model file.")] = None,
           prior: Annotated[Optional[Path], typer.Option(help="Prior file (dcgan).")] = None,
           out_dir: Annotated[Optional[Path], typer.Option("--out-dir")] = None, track: TrackOpt = None) -> None:
    """Invert a target with Plug & Play Attacks."""
    from lsmia import pipeline
    from lsmia.distributed import is_main
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, alpha, track)
    seed = cfg.run.seed if seed is None else seed
    paths = _paths(cfg)
    a = cfg.target.smoothing.alpha
    target = target or paths.target_dir(a, seed) / "model.pt"
    prior = prior or (paths.prior_dir / "prior.pt" if cfg.prior.kind == "dcgan" else None)
    out_dir = out_dir or paths.attack_dir(a, seed)
    with pipeline.launched_stage(cfg, _device(cfg), tracked_stage, "attack", "attack", role="target", alpha=a,
                                 seed=seed, system_metrics=True) as (tracker, rank_device):  # torchrun: batches split
        result = pipeline.stage_attack(cfg, data_file or paths.data_file, target, prior, out_dir, rank_device, seed)
        tracker.log_attack(result, out_dir, a, seed)
    if is_main():
        typer.echo(f"attack: {len(result.final_targets)} final samples for {len(result.targets)} targets -> {out_dir}")


@app.command()
@cli_errors
def evaluate(alpha: AlphaOpt = None, seed: SeedOpt = None, params: ParamsOpt = Path("params.yaml"),
             sets: SetOpt = None, device: DeviceOpt = None,
             data_file: Annotated[Optional[Path], typer.Option("--data")] = None,
             attack_file: Annotated[Optional[Path], typer.Option("--attack")] = None,
             eval_model: Annotated[Optional[Path], typer.Option("--eval-model")] = None,
             target_dir: Annotated[Optional[Path], typer.Option("--target-dir")] = None,
             attributes: Annotated[Optional[Path], typer.Option("--attributes", help="Attribute predictor file.")] = None,
             out: Annotated[Optional[Path], typer.Option(help="Metrics JSON.")] = None, track: TrackOpt = None) -> None:
    """Measure what the attack leaked: attack accuracy, delta_eval, FID, PRDC, xi, attribute leakage."""
    from lsmia import pipeline
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, alpha, track)
    seed = cfg.run.seed if seed is None else seed
    paths = _paths(cfg)
    a = cfg.target.smoothing.alpha
    with tracked_stage(cfg, "evaluate", "evaluate", role="target", alpha=a, seed=seed) as tracker:
        metrics = pipeline.stage_evaluate(
            cfg, data_file or paths.data_file, attack_file or paths.attack_dir(a, seed) / "attack.pt",
            eval_model or paths.eval_dir / "model.pt", target_dir or paths.target_dir(a, seed),
            out or paths.metrics_file(a, seed), _device(cfg), a, seed,
            attributes or paths.attribute_dir / "predictor.pt")
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    _echo_json(metrics)


@app.command("train-attributes")
@cli_errors
def train_attributes(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
                     data_file: Annotated[Optional[Path], typer.Option("--data")] = None,
                     out: Annotated[Optional[Path], typer.Option(help="Predictor file.")] = None,
                     track: TrackOpt = None) -> None:
    """Train the attribute predictor on the public identities (built-in data) for attribute leakage."""
    from lsmia import pipeline
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    paths = _paths(cfg)
    out = out or paths.attribute_dir / "predictor.pt"
    with tracked_stage(cfg, "attributes", "train-attributes", role="attributes"):
        trained = pipeline.stage_attribute_predictor(cfg, data_file or paths.data_file, out, _device(cfg))
    if not trained:
        out.parent.mkdir(parents=True, exist_ok=True)
        typer.echo("no attributes in this data set: attribute leakage is skipped")


@app.command()
@cli_errors
def report(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
           out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Report folder.")] = None,
           plots_dir: Annotated[Optional[Path], typer.Option("--plots-dir", help="DVC plot data folder.")] = None,
           ablations: Annotated[Optional[list[Path]], typer.Option(
               "--ablation", help="Include an 'lsmia ablate' results.md, e.g. out/ablations/factors/results.md "
                                  "(repeatable).")] = None,
           track: TrackOpt = None) -> None:
    """Write the HTML report (figures, tables, reconstructions) of every evaluated alpha and seed."""
    from lsmia.report import write_plot_data, write_report
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    paths = _paths(cfg)
    with tracked_stage(cfg, "report", "report", role="report") as tracker:
        missing = [str(f) for f in ablations or [] if not f.is_file()]
        if missing:
            raise LsmiaError(f"no ablation results at {missing[0]}: run 'lsmia ablate' for that plan or drop --ablation")
        index = write_report(paths, out_dir or paths.report_dir, _device(cfg), ablation_files=ablations or [])
        write_plot_data(paths, plots_dir or paths.root / "plots")
        tracker.log_report(index.parent)
    typer.echo(f"report: {index}")


@app.command()
@cli_errors
def study(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
          track: TrackOpt = None) -> None:
    """Run the whole study in one process (without DVC): every stage for every alpha and seed."""
    from lsmia import pipeline
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    result = pipeline.run_study(cfg, _device(cfg), log=lambda line: typer.echo(line, err=True), observe=tracked_stage)
    keys = ["alpha", "seed", "test_acc", "final_acc1", "final_acc5", "delta_eval", "fid_eval_features", "xi",
            "attribute_acc"]
    typer.echo("\t".join(keys))
    for row in result.metrics:
        typer.echo("\t".join(f"{row.get(k, float('nan')):.4g}" if isinstance(row.get(k), float) else str(row.get(k))
                             for k in keys))


@app.command()
@cli_errors
def ablate(plan_file: Annotated[Path, typer.Argument(help="Ablation file, e.g. configs/ablations.yaml.")],
           params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
           track: TrackOpt = None) -> None:
    """Run named config variants × alphas × seeds (stages cached and shared) and test the paper's effect."""
    from lsmia import ablation
    from lsmia.tracked import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    plan = ablation.load_plan(plan_file)
    result = ablation.run_ablation(cfg, plan, _device(cfg), log=lambda line: typer.echo(line, err=True))
    with tracked_stage(cfg, "ablation", f"ablation {plan.name}", role="ablation") as tracker:
        tracker.log_metrics(ablation.effect_metrics(result))
        tracker.tracker.log_artifact(result.out_dir, "ablation")
    typer.echo(ablation.markdown(result), nl=False)
    typer.echo(f"results: {result.out_dir / 'results.md'}")


StudyNameOpt = Annotated[Optional[str], typer.Option("--study-name", help="Study (default: sweep.study_name).")]
TrialsOpt = Annotated[Optional[int], typer.Option("--n-trials", help="Total trial budget over all workers.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--n-workers", help="Worker processes on this machine.")]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", help="postgresql://, mysql:// or redis:// URL (default: a journal file in out/sweep/<study>).")]
WorkerOpt = Annotated[bool, typer.Option(
    "--worker", help="Only run trials of an existing study (e.g. on another machine sharing --storage).")]


@app.command()
@cli_errors
def sweep(params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None,
          study_name: StudyNameOpt = None, n_trials: TrialsOpt = None, n_workers: WorkersOpt = None,
          storage: StorageOpt = None, worker: WorkerOpt = False, track: TrackOpt = None) -> None:
    """Optuna search over label smoothing (alpha, warm-up) for the best accuracy-privacy trade-off."""
    from lsmia import sweep as sweeps

    overrides = {"sweep.study_name": study_name, "sweep.n_trials": n_trials, "sweep.n_workers": n_workers,
                 "sweep.storage": storage}
    cfg = resolve(params, sets, device, track=track)
    if any(value is not None for value in overrides.values()):
        cfg = build_config(cfg.to_dict(), {k: v for k, v in overrides.items() if v is not None}, source="command line")
    if worker:
        ran = sweeps.run_worker(cfg, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"worker done: {ran} trials run here")
        return
    sweeps.run_sweep(cfg, log=typer.echo)


def main() -> None:
    app(prog_name="lsmia")


if __name__ == "__main__":
    sys.exit(main())

"""The ``lsmia`` command line: a thin Typer shell over lsmia.experiments.study.

Every command reads ``params.yaml`` (``--params``), applies ``--set section.key=value``
overrides and its own flags, records the resolved config beside its outputs, and turns
bad input into a one-line error with exit code 2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from lsmia import metric_registry
from lsmia.config import Config, check_seed, load_config, parse_overrides
from lsmia.errors import LsmiaError, from_os_error
from lsmia.formatting import cell
from lsmia.paths import StudyPaths

NO_VALUE = ""  # the metavar of an on/off flag: typer would show <bool> as if it took a value ("--worker true")
try:  # typer 0.29 parses with its own copy of click, whose exceptions are not click's
    from typer._click.exceptions import UsageError as _TyperUsageError
except ImportError:  # pragma: no cover - a typer that uses click itself
    _TyperUsageError = click.UsageError  # type: ignore[misc,assignment]
USAGE_ERRORS = (click.UsageError, _TyperUsageError)


class _OneLineErrors:
    """Usage errors (a bad option value, a missing option, an unknown command) as the one line ``error: ...``
    with exit code 2, like every other bad input; ``--help`` shown without a value."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except USAGE_ERRORS as err:
            _usage_error(ctx, err)
            raise  # unreachable: _usage_error exits

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)  # type: ignore[misc]
        except USAGE_ERRORS as err:
            _usage_error(ctx, err)
            raise

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = NO_VALUE
        return option


def _usage_error(ctx: Any, err: Exception) -> None:
    message = " ".join(getattr(err, "format_message", err.__str__)().split()).rstrip(".")
    command = " ".join(["lsmia", *ctx.command_path.split()[1:]])  # the program name, also under a test runner
    typer.echo(f"error: {message} (see '{command} --help')", err=True)
    raise typer.Exit(2) from None


class LsmiaCommand(_OneLineErrors, TyperCommand):
    pass


class LsmiaGroup(_OneLineErrors, TyperGroup):
    pass


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Role(StrEnum):
    target = "target"
    eval = "eval"


app = typer.Typer(
    cls=LsmiaGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Label smoothing vs. model inversion: data, training, PPA attack, metrics.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Params file (one typed schema).")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Prepared data file (default: under run.out_dir).")]
OutDirOpt = Annotated[Path | None, typer.Option("--out-dir", help="Output folder (default: under run.out_dir).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", metavar="KEY=VALUE", help="Override: section.key=value (repeatable)."),
]
DeviceOpt = Annotated[Device | None, typer.Option("--device", help="Overrides run.device.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Study seed (default: run.seed).")]
AlphaOpt = Annotated[float | None, typer.Option("--alpha", help="Label smoothing factor of the target.")]
TrackOpt = Annotated[
    bool | None,
    typer.Option("--track/--no-track", metavar=NO_VALUE, help="MLflow tracking (default: run.tracking)."),
]


def _print_version(value: bool) -> None:
    if value:
        from lsmia import __version__

        typer.echo(f"lsmia {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", metavar=NO_VALUE, callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Label smoothing vs. model inversion: data, training, PPA attack, metrics."""


def os_failure(err: OSError) -> str | None:
    """One line for an operating-system failure the user can fix: lsmia.errors' cases, and paths the system
    refuses (too long, a symbolic-link loop, a folder that cannot exist such as one under /proc)."""
    import errno

    translated = from_os_error(err)
    if translated is not None:
        return str(translated)
    path = err.filename or "a path"
    if err.errno == errno.ENAMETOOLONG:
        return f"{path}: the path is too long for the file system: use a shorter path"
    if err.errno == errno.ELOOP:
        return f"{path}: its symbolic links form a loop: fix the links or use another path"
    if err.errno == errno.ENOENT:
        return f"{path} does not exist and cannot be created there (a system folder such as /proc?): use another path"
    return None


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input: one line on stderr, exit 2. Ctrl-C: exit 130, outputs stay resumable."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LsmiaError as err:
            _fail(str(err))
        except OSError as err:  # full disk, read-only folder, a file where a folder should be
            message = os_failure(err)
            if message is None:
                raise
            _fail(message)
        except KeyboardInterrupt:
            typer.echo("interrupted: re-run the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2) from None


FLAG_KEYS = {"run.device": "--device", "target.smoothing.alpha": "--alpha", "run.tracking": "--track/--no-track"}


def _set_sources(sets: list[str] | None) -> dict[str, str]:
    """Each ``--set`` key -> the option that set it, for error messages naming the source of a bad value."""
    return {item.partition("=")[0].strip(): f"--set {item}" for item in sets or [] if "=" in item}


def resolve(
    params: Path,
    sets: list[str] | None,
    device: str | None = None,
    alpha: float | None = None,
    track: bool | None = None,
    seed: int | None = None,
    flags: dict[str, tuple[str, Any]] | None = None,
    runs: bool = True,
) -> Config:
    """The config of ``params`` with ``--set`` overrides and flags; a bad value names the flag or file it came from.

    ``flags``: a command's own options that set config keys, ``{key: (flag, value)}``; None values are not set.
    ``runs``: the command computes, so the device must exist and the thread count is applied (not for printing)."""
    overrides = parse_overrides(sets)
    sources = _set_sources(sets)
    named = {
        key: (FLAG_KEYS[key], value)
        for key, value in (("run.device", device), ("target.smoothing.alpha", alpha), ("run.tracking", track))
    }
    for key, (flag, value) in {**named, **(flags or {})}.items():
        if value is not None:
            overrides[key] = value.value if isinstance(value, StrEnum) else value
            sources[key] = f"the {flag} flag"
    if seed is not None:
        check_seed(seed, "the --seed flag")
    _regular_params_file(params)
    cfg = load_config(params, overrides, sources)
    if not runs:
        return cfg
    from lsmia.infra.threads import set_threads
    from lsmia.utils import resolve_device

    resolve_device(cfg.run.device)  # a missing GPU is bad input: fail before any run starts
    set_threads(cfg.run.threads)  # the choice is tagged on the stage's MLflow run (lsmia.infra.threads)
    return cfg


def _regular_params_file(params: Path | None) -> None:
    """A FIFO or a device (/dev/zero) as the params file hung or filled memory: only a regular file is read."""
    import stat

    if params is None or not params.exists() or params.is_dir():
        return  # missing or a folder: load_config names the problem
    mode = params.stat().st_mode
    if not stat.S_ISREG(mode):
        raise LsmiaError(f"params file {params} is not a regular file (a pipe or a device): pass a YAML file")
    if params.stat().st_size > MAX_PARAMS_BYTES:
        raise LsmiaError(f"params file {params} is over {MAX_PARAMS_BYTES // 2**20} MiB: pass the YAML params file")


MAX_PARAMS_BYTES = 16 * 2**20


def _device(cfg: Config):
    from lsmia.utils import resolve_device

    return resolve_device(cfg.run.device)


def output_folder(path: Path, setting: str) -> Path:
    """``path`` checked as an output folder: neither it nor a parent may be an existing file."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise LsmiaError(
                    f"{setting} {path} cannot be a folder: {part} is a file; move it away or set {setting} to a folder"
                )
            return path
    return path


def output_file(path: Path, setting: str) -> Path:
    """``path`` checked as an output file: not an existing folder, in a folder that can exist."""
    if path.is_dir():
        raise LsmiaError(f"{setting} {path} is a folder: name a file")
    output_folder(path.parent, f"the folder of {setting}")
    return path


def _paths(cfg: Config) -> StudyPaths:
    return StudyPaths(output_folder(Path(cfg.run.out_dir), "run.out_dir"))


def _writing(*targets: Path | None):
    """The write locks of a stage's outputs (rank 0 alone writes under torchrun)."""
    from lsmia.infra.distributed import is_main
    from lsmia.infra.locks import output_locks

    return output_locks(*targets, enabled=is_main())


def _echo_json(obj: dict[str, Any]) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


@app.command()
@cli_errors
def config(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the YAML to this file (atomically: a failure leaves it as it was) instead of printing it.",
        ),
    ] = None,
) -> None:
    """Print the fully resolved configuration as YAML (no device needed: a GPU config prints on a laptop)."""
    import yaml

    from lsmia.utils import atomic_path

    text = yaml.safe_dump(resolve(params, sets, runs=False).to_dict(), sort_keys=False)
    if out is None:
        typer.echo(text, nl=False)
        return
    with atomic_path(output_file(out, "--out")) as tmp:
        tmp.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}", err=True)


# The graph's stages (lsmia.experiments.graph.STAGES; a test keeps the two equal): named here so that `lsmia --help` need
# not import torch.
STAGE_NAMES = ("data", "prior", "eval-model", "attributes", "target", "attack", "evaluate", "toy", "report")


def run_graph_stage(
    name: str,
    cfg: Config,
    seed: int | None = None,
    pinned: dict[str, Path] | None = None,
    side: dict[str, Path] | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """Run stage ``name`` of the graph for the cell (``target.smoothing.alpha``, ``seed``) in the study layout,
    some files pinned elsewhere: :func:`lsmia.experiments.graph.run_stage` under MLflow tracking, its outputs locked."""
    from lsmia.experiments import graph
    from lsmia.tracking.stages import tracked_stage

    stage = graph.stage(name)
    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed) if stage.per_cell else None
    layout = graph.PinnedLayout(graph.StudyLayout(_paths(cfg)), pinned or {}, side or {})
    with _writing(*graph.written_by(stage, cell, layout)):
        return graph.run_stage(stage, cfg, cell, layout, _device(cfg), tracked_stage, options)


def _echo_result(name: str, result: Any, out: Path) -> None:
    """What a stage command prints: its metrics as JSON, or a line naming what it wrote (rank 0 only)."""
    from lsmia.infra.distributed import is_main

    if not is_main():
        return
    if name == "attack":
        what = "shard" if "shard" in result.meta else "attack"
        typer.echo(
            f"{what}: {len(result.final_targets)} final samples for {len(result.targets)} targets -> {out.parent}"
        )
    elif name == "report":
        typer.echo(f"report: {result}")
    elif name == "attributes":
        typer.echo(
            f"attribute predictor: {out}" if result else "no attributes in this data set: attribute leakage is skipped"
        )
    elif name == "toy":
        typer.echo(f"toy: {result.figure}")
    elif isinstance(result, dict):
        _echo_json(result)
    else:
        _echo_json(result.metrics)


def _out_dir_output(name: str, cfg: Config, seed: int | None, out_dir: Path | None) -> dict[str, Path]:
    """``--out-dir``: the stage's output file, under its usual name, in that folder."""
    if out_dir is None:
        return {}
    from lsmia.experiments import graph

    stage = graph.stage(name)
    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed) if stage.per_cell else None
    return {name: output_folder(out_dir, "--out-dir") / graph.StudyLayout(_paths(cfg)).output(stage, cell).name}


def _attack_classes(cfg: Config, classes: str | None, shard: str | None) -> tuple[list[int] | None, str | None]:
    """``--classes``/``--shard``: the shard's classes and the leaf of its folder (None: the whole attack)."""
    from lsmia.attack import shards

    if classes is not None and shard is not None:
        raise LsmiaError("--classes and --shard both choose the shard's classes: pass one of them")
    if classes is not None:
        chosen = shards.parse_classes(classes, shards.class_limit(cfg.attack.targets))
        return chosen, shards.compact(chosen)
    if shard is not None:
        index, count = shards.parse_shard(shard)
        return shards.shard_classes(shards.target_list(cfg.attack.targets), index, count), str(index)
    return None, None


ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes", help="Attack only these classes of attack.targets, e.g. 0-9,20: a shard (lsmia merge-attack)."
    ),
]
ShardOpt = Annotated[
    str | None, typer.Option("--shard", help="I/N: the I-th of N equal class ranges of attack.targets (a shard).")
]


@app.command()
@cli_errors
def stage(
    name: Annotated[str, typer.Argument(help=f"The stage: {', '.join(STAGE_NAMES)}.", metavar="NAME")],
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Folder for the stage's output (default: under run.out_dir).")
    ] = None,
    track: TrackOpt = None,
    classes: ClassesOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Run one stage of the study graph (what `dvc repro` runs for each stage, and `lsmia study` for all):
    --alpha/--seed name the cell of a per-cell stage (target, attack, evaluate)."""
    if name not in STAGE_NAMES:
        raise LsmiaError(f"no stage '{name}': name one of {', '.join(STAGE_NAMES)}")
    per_cell = name in ("target", "attack", "evaluate")
    if alpha is not None and not per_cell:
        raise LsmiaError(
            f"stage {name} has no smoothing factor: drop --alpha (it names a cell of target, attack, evaluate)"
        )
    if (classes is not None or shard is not None) and name != "attack":
        raise LsmiaError(f"--classes and --shard choose an attack's classes: drop them for stage {name}")
    flags = {} if per_cell or seed is None else {"run.seed": ("--seed", seed)}
    cfg = resolve(params, sets, device, alpha, track, seed if per_cell else None, flags=flags)
    pinned = {"data": data_file} if data_file is not None else {}
    chosen, leaf = _attack_classes(cfg, classes, shard) if name == "attack" else (None, None)
    if leaf is not None and out_dir is None:
        cell_seed = cfg.run.seed if seed is None else seed
        out_dir = _paths(cfg).attack_shard_dir(cfg.target.smoothing.alpha, cell_seed, leaf)
    pinned.update(_out_dir_output(name, cfg, seed, out_dir))
    _run_alias(name, cfg, seed, pinned, options={"classes": chosen})


def _run_alias(
    name: str,
    cfg: Config,
    seed: int | None,
    pinned: dict[str, Path],
    side: dict[str, Path] | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """A stage command: the stage through the one door, then its summary printed."""
    from lsmia.experiments import graph

    log = {"log": lambda line: typer.echo(line, err=True)}
    result = run_graph_stage(name, cfg, seed, pinned, side, {**log, **(options or {})})
    stage_ = graph.stage(name)
    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed) if stage_.per_cell else None
    _echo_result(name, result, graph.PinnedLayout(graph.StudyLayout(_paths(cfg)), pinned).output(stage_, cell))


@app.command()
@cli_errors
def data(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Prepared data file.")] = None,
    track: TrackOpt = None,
) -> None:
    """Render the built-in identities or load FaceScrub / CelebA / an image folder (`lsmia stage data`)."""
    cfg = resolve(params, sets, track=track)
    _run_alias("data", cfg, None, {"data": output_file(out, "--out")} if out else {})


@app.command("train-prior")
@cli_errors
def train_prior(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    out_dir: OutDirOpt = None,
    track: TrackOpt = None,
) -> None:
    """Train the GAN prior on the public images only (with prior.kind torchscript: record the exported generator)
    (`lsmia stage prior`)."""
    cfg = resolve(params, sets, device, track=track)
    pinned = {"data": data_file} if data_file else {}
    _run_alias("prior", cfg, None, {**pinned, **_out_dir_output("prior", cfg, None, out_dir)})


@app.command()
@cli_errors
def train(
    role: Annotated[Role, typer.Option(help="The target (smoothed by --alpha) or the evaluation model.")] = Role.target,
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    out_dir: OutDirOpt = None,
    curves_dir: Annotated[
        Path | None, typer.Option("--curves-dir", help="Per-epoch curves for `dvc plots` (default: under run.out_dir).")
    ] = None,
    track: TrackOpt = None,
) -> None:
    """Train a target classifier with label smoothing --alpha, or the evaluation model (--role eval)
    (`lsmia stage target` / `lsmia stage eval-model`)."""
    name = "target" if role == "target" else "eval-model"
    flags = {"run.seed": ("--seed", seed)} if role == "eval" and seed is not None else {}
    cfg = resolve(params, sets, device, alpha if role == "target" else None, track, seed, flags=flags)
    pinned = {"data": data_file} if data_file else {}
    side = {"curves": output_folder(curves_dir, "--curves-dir")} if curves_dir else {}
    _run_alias(name, cfg, seed, {**pinned, **_out_dir_output(name, cfg, seed, out_dir)}, side)


@app.command()
@cli_errors
def attack(
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    target: Annotated[Path | None, typer.Option(help="Target model file.")] = None,
    prior: Annotated[Path | None, typer.Option(help="Prior file (dcgan).")] = None,
    out_dir: OutDirOpt = None,
    track: TrackOpt = None,
    classes: ClassesOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Invert a target with Plug & Play Attacks (all of attack.targets, or one shard of them) (`lsmia stage
    attack`)."""
    cfg = resolve(params, sets, device, alpha, track, seed)
    chosen, leaf = _attack_classes(cfg, classes, shard)
    if leaf is not None and out_dir is None:
        out_dir = _paths(cfg).attack_shard_dir(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed, leaf)
    given = {"data": data_file, "target": target, "prior": prior}
    pinned = {key: path for key, path in given.items() if path is not None}
    _run_alias(
        "attack", cfg, seed, {**pinned, **_out_dir_output("attack", cfg, seed, out_dir)}, options={"classes": chosen}
    )


@app.command("merge-attack")
@cli_errors
def merge_attack(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard folders (lsmia attack --classes/--shard outputs).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the merged attack.pt.")],
    data_file: DataOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Merge attack shards covering every target into one attack.pt (identical to an unsharded run)."""
    from lsmia.stages.attack import require_separate_output, stage_merge_attack

    cfg = resolve(params, sets)
    out_dir = output_folder(out_dir, "--out-dir")
    require_separate_output(shard_dirs, out_dir)  # before the lock: it must not touch a shard folder either
    with _writing(out_dir):
        result = stage_merge_attack(
            data_file or _paths(cfg).data_file, shard_dirs, out_dir, log=lambda line: typer.echo(line, err=True)
        )
    typer.echo(f"merged {len(shard_dirs)} shards: {len(result.targets)} targets -> {out_dir / 'attack.pt'}")


@app.command()
@cli_errors
def evaluate(
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    attack_file: Annotated[Path | None, typer.Option("--attack")] = None,
    eval_model: Annotated[Path | None, typer.Option("--eval-model")] = None,
    target_dir: Annotated[Path | None, typer.Option("--target-dir")] = None,
    attributes: Annotated[Path | None, typer.Option("--attributes", help="Attribute predictor file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Metrics JSON.")] = None,
    track: TrackOpt = None,
) -> None:
    """Measure what the attack leaked: attack accuracy, delta_eval, FID, PRDC, xi, attribute leakage (`lsmia stage
    evaluate`)."""
    cfg = resolve(params, sets, device, alpha, track, seed)
    given = {
        "data": data_file,
        "attack": attack_file,
        "eval-model": eval_model,
        "target": target_dir / "model.pt" if target_dir else None,
        "attributes": attributes,
        "evaluate": output_file(out, "--out") if out else None,
    }
    _run_alias("evaluate", cfg, seed, {key: path for key, path in given.items() if path is not None})


@app.command("train-attributes")
@cli_errors
def train_attributes(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    data_file: DataOpt = None,
    out: Annotated[Path | None, typer.Option(help="Predictor file.")] = None,
    track: TrackOpt = None,
) -> None:
    """Train the attribute predictor on the public identities (built-in data) for attribute leakage (`lsmia stage
    attributes`)."""
    cfg = resolve(params, sets, device, track=track)
    given = {"data": data_file, "attributes": output_file(out, "--out") if out else None}
    _run_alias("attributes", cfg, None, {key: path for key, path in given.items() if path is not None})


@app.command()
@cli_errors
def report(
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Report folder.")] = None,
    plots_dir: Annotated[Path | None, typer.Option("--plots-dir", help="DVC plot data folder.")] = None,
    ablations: Annotated[
        list[Path] | None,
        typer.Option(
            "--ablation",
            help="Include an 'lsmia ablate' plan's results (its results.json, or the results.md "
            "beside it), e.g. out/ablations/factors/results.json (repeatable; default: the committed ablations "
            "the DVC report stage lists).",
        ),
    ] = None,
    defenses: Annotated[
        Path | None,
        typer.Option(
            "--defenses",
            help="The defense comparison: compare.json of 'lsmia compare-defenses' (or the ablation's results.json); "
            "default: <run.out_dir>/ablations/defenses/compare.json. Absent: the section says how to make it.",
        ),
    ] = None,
    track: TrackOpt = None,
) -> None:
    """Write the HTML report (figures, tables, reconstructions) of the study's alphas x seeds (study.alphas,
    study.seeds); cells not evaluated yet are named in the report and skipped (`lsmia stage report`)."""
    cfg = resolve(params, sets, device, track=track)
    missing = [str(f) for f in ablations or [] if not f.is_file()]
    if missing:
        raise LsmiaError(f"no ablation results at {missing[0]}: run 'lsmia ablate' for that plan or drop --ablation")
    side = {"plots": output_folder(plots_dir, "--plots-dir")} if plots_dir else {}
    options = {"ablations": ablations, "defenses": defenses}
    _run_alias("report", cfg, None, _out_dir_output("report", cfg, None, out_dir), side, options)


@app.command()
@cli_errors
def repro(
    targets: Annotated[list[str] | None, typer.Argument(help="DVC stages (default: all).")] = None,
    params: ParamsOpt = Path("params.yaml"),
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


@app.command("dvc-yaml")
@cli_errors
def dvc_yaml(
    check: Annotated[
        bool,
        typer.Option("--check", metavar=NO_VALUE, help="Exit 1 if dvc.yaml or MLproject differs instead of writing."),
    ] = False,
    path: Annotated[Path, typer.Option("--path", help="The dvc.yaml to write or check.")] = Path("dvc.yaml"),
    mlproject_path: Annotated[Path, typer.Option("--mlproject", help="The MLproject to write or check.")] = Path(
        "MLproject"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write dvc.yaml and MLproject from the stage graph (lsmia/experiments/graph.py), or --check that the committed ones match.

    ``attack.shards`` > 1 in the params splits every attack into class shards plus a merge stage; a ``prior.path``
    makes the generator file there a dependency of the prior and attack stages."""
    from lsmia.experiments.graph import dvc_yaml as render
    from lsmia.experiments.graph import mlproject
    from lsmia.utils import atomic_path

    cfg = load_config(params) if params.is_file() else None
    texts = {
        path: render(cfg.attack.shards if cfg else 1, generator=cfg is not None and cfg.prior.path is not None),
        mlproject_path: mlproject(),
    }
    for target, text in texts.items():
        if check:
            current = target.read_text(encoding="utf-8") if target.is_file() else ""
            if current != text:
                typer.echo(
                    f"error: {target} differs from the stage graph: run 'lsmia dvc-yaml' and commit it", err=True
                )
                raise typer.Exit(1)
            typer.echo(f"{target} matches the stage graph")
            continue
        with atomic_path(target) as tmp:
            tmp.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {target}")


@app.command()
@cli_errors
def study(
    params: ParamsOpt = Path("params.yaml"), sets: SetOpt = None, device: DeviceOpt = None, track: TrackOpt = None
) -> None:
    """Run the whole study in one process (without DVC): every stage for every alpha and seed."""
    from lsmia.experiments.study import run_study
    from lsmia.tracking.stages import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    with _writing(_paths(cfg).root):  # the whole out dir: one study at a time
        result = run_study(cfg, _device(cfg), log=lambda line: typer.echo(line, err=True), observe=tracked_stage)
    typer.echo("\n".join(study_lines(result.metrics)))


def study_lines(metrics: list[dict[str, Any]]) -> list[str]:
    """The study's console table: tab-separated, one row per cell, its headline metrics (lsmia.metric_registry)."""
    keys = ["alpha", "seed", *metric_registry.headline()]
    return ["\t".join(keys), *("\t".join(cell(row.get(k), none="None") for k in keys) for row in metrics)]


@app.command()
@cli_errors
def ablate(
    plan_file: Annotated[Path, typer.Argument(help="Ablation file, e.g. configs/ablations.yaml.")],
    params: ParamsOpt = Path("params.yaml"),
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
) -> None:
    """Run named config variants × alphas × seeds (stages cached and shared) and test the paper's effect."""
    from lsmia.experiments import ablation
    from lsmia.tracking.stages import tracked_stage

    cfg = resolve(params, sets, device, track=track)
    plan = ablation.load_plan(plan_file)
    if until is not None:
        built = ablation.prepare_ablation(cfg, plan, _device(cfg), until, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"{built} cells built up to stage {until}; run without --until for the results")
        return
    result = ablation.run_ablation(
        cfg, plan, _device(cfg), log=lambda line: typer.echo(line, err=True), finished_only=finished_only
    )
    with tracked_stage(cfg, "ablation", f"ablation {plan.name}", role="ablation") as tracker:
        tracker.log_metrics(ablation.effect_metrics(result))
        tracker.tracker.log_artifact(result.out_dir, "ablation")
    typer.echo(ablation.markdown(result), nl=False)
    typer.echo(f"results: {result.md_file}")


@app.command("verdict")
@cli_errors
def verdict_command(
    results: Annotated[
        list[Path], typer.Argument(help="Ablation results.json files (a plan and, e.g., its negative controls).")
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Where verdict.{md,json} go (default: beside the first file).")
    ] = None,
) -> None:
    """One verdict per defense: PPA as published beside the adaptive attacker, with the target's acceptance."""
    from lsmia import verdict

    for path in results:
        if not path.is_file():
            _fail(f"{path} does not exist: pass the results.json that 'lsmia ablate PLAN' wrote")
    rows = verdict.build(results)
    if not rows:
        _fail(f"no defense with alpha != 0 or negative control in {', '.join(map(str, results))}: nothing to judge")
    path = verdict.write(rows, out_dir or results[0].parent, results)
    typer.echo(verdict.markdown(rows), nl=False)
    typer.echo(f"verdict: {path}")


CachedPlanArg = Annotated[Path, typer.Argument(help="Ablation file whose trained targets to read.")]


@app.command("ranking-check")
@cli_errors
def ranking_check(
    plan_file: CachedPlanArg,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
    device: DeviceOpt = None,
) -> None:
    """How far PPA's float32 softmax ranking ties on each finished target of a plan (runs no training)."""
    from lsmia.experiments import ablation, ranking_check

    cfg = resolve(params, sets, device, track=False)
    plan = ablation.load_plan(plan_file)
    rows = _cached_rows(plan_file, ranking_check.target_rows(cfg, plan, _device(cfg)))
    typer.echo("\n".join(ranking_check.lines(rows)))


def _cached_rows(plan_file: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` read from a plan's cached targets, or the one-line error that there are none yet."""
    if not rows:
        _fail(f"no target of {plan_file} is in the cache for the current code: run 'lsmia ablate {plan_file}' first")
    return rows


@app.command("logit-geometry")
@cli_errors
def logit_geometry(
    plan_file: CachedPlanArg,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """How each finished target's true-class logit stands out among the others (runs no training)."""
    from lsmia.ablation_tables import logit_geometry_lines
    from lsmia.experiments import ablation

    cfg = resolve(params, sets, None, track=False)
    plan = ablation.load_plan(plan_file)
    rows = _cached_rows(plan_file, ablation.logit_geometry_rows(cfg, plan))
    path = ablation.write_logit_geometry(cfg, plan, rows)
    typer.echo("\n".join(logit_geometry_lines(rows)))
    typer.echo(f"results: {path}")


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


@app.command()
@cli_errors
def sweep(
    params: ParamsOpt = Path("params.yaml"),
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
        ran = sweeps.run_worker(cfg, log=lambda line: typer.echo(line, err=True))
        typer.echo(f"worker done: {ran} trials run here")
        return
    sweeps.run_sweep(cfg, log=typer.echo)


@app.command("pull-shared")
@cli_errors
def pull_shared(
    remote: Annotated[
        str | None, typer.Option("--remote", help="DVC remote name (default: sweep.shared_remote, else the default).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    sets: SetOpt = None,
) -> None:
    """Get the shared stages (data, prior, eval model, attributes) from a DVC remote, or train and push those it
    lacks under a lock, so machines sharing the remote never train them twice (run in the project's clone)."""
    from lsmia.experiments.remote import ensure_shared

    cfg = resolve(params, sets)
    name = remote or cfg.sweep.shared_remote
    ensure_shared(cfg, None if name in (None, "default") else name, Path.cwd(), log=typer.echo)


@app.command()
@cli_errors
def toy(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for toy.png and toy.json.")] = Path("out/toy"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data and the initial weights.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Attack steps (default: 300).")] = None,
) -> None:
    """The paper's 2-D toy: one small classifier per alpha, one gradient attack each, from the same start."""
    from lsmia.toy import ATTACK_STEPS, run_toy

    result = run_toy(seed=seed, steps=ATTACK_STEPS if steps is None else steps, out_dir=out_dir)
    typer.echo("alpha\tend_distance\tconfidence\tgrad_cosine")
    for row in result.rows:
        typer.echo(
            f"{row['alpha']:+.3g}\t{row['end_distance']:.4g}\t{row['end_confidence']:.4f}\t{row['grad_cosine']:.3f}"
        )
    typer.echo(f"figure: {result.figure}")


@app.command()
@cli_errors
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
    from lsmia.defenses.compare import compare_many, markdown, parse_levels

    comparison, folder = compare_many(sources, out_dir, parse_levels(levels))
    typer.echo(markdown(comparison), nl=False)
    typer.echo(f"results: {folder / 'compare.md'}, {folder / 'compare.json'}, {folder / 'fronts.png'}")


@app.command()
@cli_errors
def server(
    folder: Annotated[
        Path, typer.Option("--dir", help="Where PostgreSQL's data, the password and the served artifacts live.")
    ] = Path("services"),
    host: Annotated[
        str, typer.Option("--host", help="Address both services listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    pg_port: Annotated[int, typer.Option("--pg-port", help="PostgreSQL's port.")] = 5432,
    port: Annotated[int, typer.Option("--port", help="The MLflow tracking server's port.")] = 5000,
) -> None:
    """Start PostgreSQL (Optuna's storage, MLflow's backend) and an MLflow tracking server with served artifacts for
    workers on several machines; prints what to export on them. Ctrl-C stops both."""
    from lsmia.infra.services import serve

    serve(output_folder(folder, "--dir"), host, pg_port, port, log=lambda line: typer.echo(line))


for _command in app.registered_commands:  # every command: one-line usage errors, --help without a value
    if _command.cls in (None, TyperCommand):
        _command.cls = LsmiaCommand


def main() -> None:
    app(prog_name="lsmia")


if __name__ == "__main__":
    main()

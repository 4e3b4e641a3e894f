"""What every ``lsmia`` command shares, declared once: the one-line error handling, the config resolution, the
output checks and the common options.

Every command reads ``params.yaml`` (``--params``), applies ``--set section.key=value`` overrides and its own
flags, records the resolved config beside its outputs, and turns bad input into a one-line error with exit code 2.
Nothing here imports torch: ``lsmia --help`` stays fast.
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

from lsmia.config import Config, check_seed, load_config, parse_overrides
from lsmia.errors import LsmiaError, from_os_error
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
            fail(str(err))
        except OSError as err:  # full disk, read-only folder, a file where a folder should be
            message = os_failure(err)
            if message is None:
                raise
            fail(message)
        except KeyboardInterrupt:
            typer.echo("interrupted: re-run the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


def fail(message: str) -> None:
    """Bad input found by a command itself: the one line ``error: ...`` on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2) from None


class CommandGroup:
    """A group of commands, listed under its own panel in ``lsmia --help``; lsmia.cli merges each group's
    commands into the one ``lsmia`` app (``add_typer`` without a name)."""

    def __init__(self, panel: str) -> None:
        self.panel = panel
        self.app = typer.Typer()

    def command(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a command: one-line usage errors and bad input (:func:`cli_errors`), ``--help`` without a
        value, listed under the group's panel."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            return self.app.command(name, cls=LsmiaCommand, rich_help_panel=self.panel)(cli_errors(fn))

        return register


def echo_err(line: str) -> None:
    """A progress line: on stderr, so that stdout carries only a command's result."""
    typer.echo(line, err=True)


def echo_json(obj: dict[str, Any]) -> None:
    import json

    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# The common options, declared once.
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
PARAMS = Path("params.yaml")  # --params' default


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


def device_of(cfg: Config):
    """The torch device of ``run.device`` (imports torch: only commands that compute call it)."""
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


def study_paths(cfg: Config) -> StudyPaths:
    """The study layout under ``run.out_dir``, checked as an output folder."""
    return StudyPaths(output_folder(Path(cfg.run.out_dir), "run.out_dir"))


def writing(*targets: Path | None):
    """The write locks of a stage's outputs (rank 0 alone writes under torchrun)."""
    from lsmia.infra.distributed import is_main
    from lsmia.infra.locks import output_locks

    return output_locks(*targets, enabled=is_main())

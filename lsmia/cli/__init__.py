"""The ``lsmia`` command line: a thin Typer shell over lsmia.experiments, in three groups of commands.

- :mod:`lsmia.cli.stages`: ``lsmia stage NAME`` (DVC's command for every stage) and its aliases;
- :mod:`lsmia.cli.experiments`: study, ablate, sweep, verdict, ranking-check, logit-geometry, compare-defenses,
  toy, repro;
- :mod:`lsmia.cli.project`: config, dvc-yaml, server, pull-shared;

with what they share (one-line errors, config resolution, the common options) in :mod:`lsmia.cli.common`.
``lsmia --help`` and ``--version`` import no torch: the commands import the science when they run.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lsmia.cli import experiments, project, stages
from lsmia.cli.common import NO_VALUE, LsmiaGroup

__all__ = ["app", "main"]

app = typer.Typer(
    cls=LsmiaGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Label smoothing vs. model inversion: data, training, PPA attack, metrics.",
)
for _group in (stages.group, experiments.group, project.group):  # their commands, each group under its panel
    app.add_typer(_group.app)


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


def main() -> None:
    app(prog_name="lsmia")


if __name__ == "__main__":
    main()

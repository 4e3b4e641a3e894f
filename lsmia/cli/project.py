"""The project and service commands: the resolved config, the generated dvc.yaml and MLproject, the shared
stages on a DVC remote, and the PostgreSQL + MLflow server for several machines."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lsmia.cli.common import NO_VALUE, PARAMS, CommandGroup, ParamsOpt, SetOpt, output_file, output_folder, resolve
from lsmia.config import load_config

group = CommandGroup("Project and services")


@group.command()
def config(
    params: ParamsOpt = PARAMS,
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


@group.command("dvc-yaml")
def dvc_yaml(
    check: Annotated[
        bool,
        typer.Option("--check", metavar=NO_VALUE, help="Exit 1 if dvc.yaml or MLproject differs instead of writing."),
    ] = False,
    path: Annotated[Path, typer.Option("--path", help="The dvc.yaml to write or check.")] = Path("dvc.yaml"),
    mlproject_path: Annotated[Path, typer.Option("--mlproject", help="The MLproject to write or check.")] = Path(
        "MLproject"
    ),
    params: ParamsOpt = PARAMS,
) -> None:
    """Write dvc.yaml and MLproject from the stage graph (lsmia/experiments/graph.py), or --check that the committed ones match.

    ``attack.shards`` > 1 in the params splits every attack into class shards plus a merge stage; a ``prior.path``
    makes the generator file there a dependency of the prior and attack stages."""
    from lsmia.experiments.render import dvc_yaml as render
    from lsmia.experiments.render import mlproject
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


@group.command()
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

    serve(output_folder(folder, "--dir"), host, pg_port, port, log=typer.echo)


@group.command("pull-shared")
def pull_shared(
    remote: Annotated[
        str | None, typer.Option("--remote", help="DVC remote name (default: sweep.shared_remote, else the default).")
    ] = None,
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
) -> None:
    """Get the shared stages (data, prior, eval model, attributes) from a DVC remote, or train and push those it
    lacks under a lock, so machines sharing the remote never train them twice (run in the project's clone)."""
    from lsmia.experiments.remote import ensure_shared

    cfg = resolve(params, sets)
    name = remote or cfg.sweep.shared_remote
    ensure_shared(cfg, None if name in (None, "default") else name, Path.cwd(), log=typer.echo)

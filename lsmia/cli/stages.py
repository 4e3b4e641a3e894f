"""The stage commands: ``lsmia stage NAME`` (what DVC's dvc.yaml runs) and its aliases with today's names and
flags (data, train-prior, train, attack, merge-attack, evaluate, train-attributes, report), each one stage of the
graph through :func:`lsmia.experiments.graph.run_stage`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from lsmia.cli.common import (
    PARAMS,
    AlphaOpt,
    CommandGroup,
    DataOpt,
    DeviceOpt,
    OutDirOpt,
    ParamsOpt,
    SeedOpt,
    SetOpt,
    TrackOpt,
    device_of,
    echo_err,
    echo_json,
    output_file,
    output_folder,
    resolve,
    study_paths,
    writing,
)
from lsmia.config import Config
from lsmia.errors import LsmiaError

group = CommandGroup("Stages")

# The graph's stages (lsmia.experiments.graph.STAGES; a test keeps the two equal): named here so that `lsmia --help` need
# not import torch.
STAGE_NAMES = ("data", "prior", "eval-model", "attributes", "target", "attack", "evaluate", "toy", "report")


class Role(StrEnum):
    target = "target"
    eval = "eval"


ClassesOpt = Annotated[
    str | None,
    typer.Option(
        "--classes", help="Attack only these classes of attack.targets, e.g. 0-9,20: a shard (lsmia merge-attack)."
    ),
]
ShardOpt = Annotated[
    str | None, typer.Option("--shard", help="I/N: the I-th of N equal class ranges of attack.targets (a shard).")
]


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
    layout = graph.PinnedLayout(graph.StudyLayout(study_paths(cfg)), pinned or {}, side or {})
    with writing(*graph.written_by(stage, cell, layout)):
        return graph.run_stage(stage, cfg, cell, layout, device_of(cfg), tracked_stage, options)


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
        echo_json(result)
    else:
        echo_json(result.metrics)


def _out_dir_output(name: str, cfg: Config, seed: int | None, out_dir: Path | None) -> dict[str, Path]:
    """``--out-dir``: the stage's output file, under its usual name, in that folder."""
    if out_dir is None:
        return {}
    from lsmia.experiments import graph

    stage = graph.stage(name)
    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed) if stage.per_cell else None
    return {name: output_folder(out_dir, "--out-dir") / graph.StudyLayout(study_paths(cfg)).output(stage, cell).name}


def _attack_classes(
    cfg: Config, seed: int | None, classes: str | None, shard: str | None, out_dir: Path | None
) -> tuple[list[int] | None, Path | None]:
    """``--classes``/``--shard``: the shard's classes (None: the whole attack) and its output folder (``--out-dir``,
    else the shard's folder of the cell in the study layout)."""
    from lsmia.attack import shards

    if classes is not None and shard is not None:
        raise LsmiaError("--classes and --shard both choose the shard's classes: pass one of them")
    if classes is not None:
        chosen = shards.parse_classes(classes, shards.class_limit(cfg.attack.targets))
        leaf = shards.compact(chosen)
    elif shard is not None:
        index, count = shards.parse_shard(shard)
        chosen, leaf = shards.shard_classes(shards.target_list(cfg.attack.targets), index, count), str(index)
    else:
        return None, out_dir
    if out_dir is None:
        cell_seed = cfg.run.seed if seed is None else seed
        out_dir = study_paths(cfg).attack_shard_dir(cfg.target.smoothing.alpha, cell_seed, leaf)
    return chosen, out_dir


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

    result = run_graph_stage(name, cfg, seed, pinned, side, {"log": echo_err, **(options or {})})
    stage_ = graph.stage(name)
    cell = graph.Cell(cfg.target.smoothing.alpha, cfg.run.seed if seed is None else seed) if stage_.per_cell else None
    _echo_result(name, result, graph.PinnedLayout(graph.StudyLayout(study_paths(cfg)), pinned).output(stage_, cell))


@group.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"The stage: {', '.join(STAGE_NAMES)}.", metavar="NAME")],
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = PARAMS,
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
    chosen, out_dir = _attack_classes(cfg, seed, classes, shard, out_dir) if name == "attack" else (None, out_dir)
    pinned.update(_out_dir_output(name, cfg, seed, out_dir))
    _run_alias(name, cfg, seed, pinned, options={"classes": chosen})


@group.command()
def data(
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Prepared data file.")] = None,
    track: TrackOpt = None,
) -> None:
    """Render the built-in identities or load FaceScrub / CelebA / an image folder (`lsmia stage data`)."""
    cfg = resolve(params, sets, track=track)
    _run_alias("data", cfg, None, {"data": output_file(out, "--out")} if out else {})


@group.command("train-prior")
def train_prior(
    params: ParamsOpt = PARAMS,
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


@group.command()
def train(
    role: Annotated[Role, typer.Option(help="The target (smoothed by --alpha) or the evaluation model.")] = Role.target,
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = PARAMS,
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


@group.command()
def attack(
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = PARAMS,
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
    chosen, out_dir = _attack_classes(cfg, seed, classes, shard, out_dir)
    given = {"data": data_file, "target": target, "prior": prior}
    pinned = {key: path for key, path in given.items() if path is not None}
    _run_alias(
        "attack", cfg, seed, {**pinned, **_out_dir_output("attack", cfg, seed, out_dir)}, options={"classes": chosen}
    )


@group.command("merge-attack")
def merge_attack(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard folders (lsmia attack --classes/--shard outputs).")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the merged attack.pt.")],
    data_file: DataOpt = None,
    params: ParamsOpt = PARAMS,
    sets: SetOpt = None,
) -> None:
    """Merge attack shards covering every target into one attack.pt (identical to an unsharded run)."""
    from lsmia.stages.attack import require_separate_output, stage_merge_attack

    cfg = resolve(params, sets)
    out_dir = output_folder(out_dir, "--out-dir")
    require_separate_output(shard_dirs, out_dir)  # before the lock: it must not touch a shard folder either
    with writing(out_dir):
        result = stage_merge_attack(data_file or study_paths(cfg).data_file, shard_dirs, out_dir, log=echo_err)
    typer.echo(f"merged {len(shard_dirs)} shards: {len(result.targets)} targets -> {out_dir / 'attack.pt'}")


@group.command()
def evaluate(
    alpha: AlphaOpt = None,
    seed: SeedOpt = None,
    params: ParamsOpt = PARAMS,
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


@group.command("train-attributes")
def train_attributes(
    params: ParamsOpt = PARAMS,
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


@group.command()
def report(
    params: ParamsOpt = PARAMS,
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

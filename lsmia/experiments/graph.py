"""The study's stage graph, declared once, and the one door that runs a stage.

Each :class:`Stage` names the library module that computes it, the runner that calls it, the params it reads,
the stages whose outputs it reads, where its output lies (a :mod:`lsmia.paths` method) and how it is tracked.
From this one declaration:

- lsmia.experiments.render writes ``dvc.yaml`` (every stage's command is ``lsmia stage NAME``, the same
  :func:`run_stage` that ``lsmia study`` runs; its paths are :class:`~lsmia.paths.StudyPaths` rendered in DVC's
  template syntax) and the ``MLproject``;
- lsmia.experiments.code finds each stage's code (every ``lsmia`` file its module reaches through imports, and
  the package-data folders they read), so editing e.g. ``lsmia/attack/losses.py`` re-runs exactly the stages whose
  code reaches it;
- ``lsmia stage``, ``lsmia study``, ``lsmia ablate`` and ``lsmia sweep`` execute it (:func:`run_stage`), each
  with its own :class:`Layout` (where a stage's output lies) and observer (what is tracked);
- lsmia.experiments.keys keys a stage by its params, its code and the keys of the stages it reads (the ablation
  cache), so a code edit invalidates exactly what it can change.

This package, the CLI shell and the tracking modules are not code dependencies: they change what is logged and
where, never what a stage computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lsmia.config import Config, build_config
from lsmia.experiments.code import code_digest
from lsmia.paths import Alpha, Seed, StudyPaths, run_tag

OUT = "${run.out_dir}"
ITEM: tuple[str, str] = ("${item.alpha}", "${item.seed}")  # a cell of DVC's matrix
TEMPLATE = StudyPaths(Path(OUT))  # the study layout in DVC's template syntax: dvc.yaml's paths are lsmia.paths'
CELL = run_tag(*ITEM)


def dvc_path(path: Path) -> str:
    return path.as_posix()


@dataclass(frozen=True)
class Cell:
    """One (alpha, seed) of the study matrix."""

    alpha: float
    seed: int

    @property
    def tag(self) -> str:
        return run_tag(self.alpha, self.seed)


# --------------------------------------------------------------------------- observers and layouts


class Observer(Protocol):
    """What a stage reports while it runs (MLflow through lsmia.tracking.stages, a sweep trial, or nothing)."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def epoch_logger(self) -> Callable[[int, dict[str, float]], None] | None: ...
    def log_prior(self, result: Any) -> None: ...
    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None: ...
    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...
    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None: ...


# Opens an observer for one stage run: ``observe(cfg, kind, run_name, role=, alpha=, seed=, system_metrics=, run_dir=,
# data_file=)``; lsmia.tracking.stages.tracked_stage takes them all, other observers ignore what they need not.
Observe = Callable[..., AbstractContextManager[Any]]


class QuietStage:
    """The stage observer used without tracking: every hook is a no-op."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def epoch_logger(self) -> Callable[[int, dict[str, float]], None] | None:
        return None

    def log_prior(self, result: Any) -> None: ...
    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None: ...
    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...
    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None: ...


@contextmanager
def quiet_stage(cfg: Config, stage: str, run_name: str, **tags: Any) -> Iterator[QuietStage]:
    yield QuietStage()


class Layout(Protocol):
    """Where each stage's output file lies for a cell (``None`` for stages outside the matrix), and its side
    outputs: named extra folders a stage writes in this layout (a classifier's ``curves``, the report's ``plots``)."""

    def output(self, stage_: Stage, cell: Cell | None) -> Path: ...
    def side_outputs(self, stage_: Stage, cell: Cell | None) -> dict[str, Path]: ...


@dataclass
class StageRun:
    """Everything one stage run gets: its config (with the cell's alpha), inputs, output, side outputs, observer
    and the options of a single run (``lsmia stage``'s flags: an attack's classes, the report's ablations)."""

    stage: Stage
    cfg: Config
    cell: Cell | None
    output: Path
    inputs: dict[str, Path]
    device: torch.device
    observer: Observer
    side: dict[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def log(self) -> Callable[[str], None] | None:
        return self.options.get("log")


# --------------------------------------------------------------------------- runners: a stage's library call


def _run_data(run: StageRun) -> Any:
    from lsmia.stages.data import stage_data

    summary = stage_data(run.cfg, run.output, run.output.with_name("summary.json"))
    run.observer.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def _run_prior(run: StageRun) -> Any:
    if run.cfg.prior.kind != "dcgan":  # DVC's prior stage of an exported generator: record it, nothing to train
        return record_exported_prior(run.cfg, run.output.parent)
    from lsmia.stages.prior import stage_prior

    result = stage_prior(
        run.cfg,
        run.inputs["data"],
        run.output.parent,
        run.device,
        on_epoch=run.observer.epoch_logger(),
        code_version=code_digest(run.stage),
    )
    run.observer.log_prior(result)
    return result


def record_exported_prior(cfg: Config, out_dir: Path) -> dict[str, Any]:
    """``out_dir/prior.json``: the exported generator's path and digest (what the DVC prior stage outputs for it)."""
    from lsmia.errors import LsmiaError
    from lsmia.utils import file_digest, save_json

    path = Path(cfg.prior.path) if cfg.prior.path is not None else None
    if path is None or not path.is_file():
        raise LsmiaError(
            f"prior.kind is {cfg.prior.kind} but prior.path ({path}) is not a file: export the generator "
            "(README: 'Exporting a StyleGAN2-ADA generator') and set prior.path to it"
        )
    record = {"kind": cfg.prior.kind, "path": str(path), "sha256": file_digest(path, length=64)}
    save_json(record, out_dir / "prior.json")
    return record


def _run_train(run: StageRun) -> Any:
    from lsmia.stages.train import stage_train

    role = "target" if run.stage.name == "target" else "eval"
    seed = run.cell.seed if run.cell is not None else run.cfg.run.seed
    alpha = run.cell.alpha if run.cell is not None else 0.0
    result = stage_train(
        run.cfg,
        role,
        run.inputs["data"],
        run.output.parent,
        run.device,
        seed,
        on_epoch=run.observer.epoch_logger(),
        code_version=code_digest(run.stage),
        curves_dir=run.side.get("curves"),
    )
    run.observer.log_classifier(result, role, alpha, seed)
    return result


def _run_attributes(run: StageRun) -> Any:
    from lsmia.stages.attributes import stage_attribute_predictor

    trained = stage_attribute_predictor(run.cfg, run.inputs["data"], run.output, run.device)
    if not trained:
        run.output.parent.mkdir(parents=True, exist_ok=True)  # DVC's output folder exists, empty
    return trained


def _run_attack(run: StageRun) -> Any:
    from lsmia.stages.attack import stage_attack

    assert run.cell is not None
    if run.cfg.attack.shards > 1 and run.options.get("classes") is None:
        result = _run_attack_shards(run)
    else:
        result = stage_attack(
            run.cfg,
            run.inputs["data"],
            run.inputs["target"],
            run.inputs.get("prior"),
            run.output.parent,
            run.device,
            run.cell.seed,
            classes=run.options.get("classes"),
            code_version=code_digest(run.stage),
            log=run.log,
        )
    run.observer.log_attack(result, run.output.parent, run.cell.alpha, run.cell.seed)
    return result


def _run_attack_shards(run: StageRun) -> Any:
    """``attack.shards`` class shards one after another (each resumable; a finished one is kept), then the merge:
    what the DVC matrix of ``attack-shard`` stages runs as separate jobs."""
    from lsmia.attack.shards import shard_classes, shard_dir, target_list
    from lsmia.stages.attack import input_digests, stage_attack, stage_merge_attack

    assert run.cell is not None
    count, targets = run.cfg.attack.shards, target_list(run.cfg.attack.targets)
    dirs = [shard_dir(run.output.parent, index) for index in range(count)]
    digests = input_digests(run.cfg, run.cell.seed, run.inputs["target"], run.inputs.get("prior"))
    for index, folder in enumerate(dirs):
        classes = shard_classes(targets, index, count)
        if _finished_shard(folder, classes, run.cfg, run.cell.seed, digests):
            continue
        stage_attack(
            run.cfg,
            run.inputs["data"],
            run.inputs["target"],
            run.inputs.get("prior"),
            folder,
            run.device,
            run.cell.seed,
            classes=classes,
            code_version=code_digest(run.stage),
            log=run.log,
        )
    return stage_merge_attack(run.inputs["data"], dirs, run.output.parent, log=run.log)


def _finished_shard(folder: Path, classes: list[int], cfg: Config, seed: int, digests: dict[str, str]) -> bool:
    """Whether ``folder`` holds this shard's finished result for the current attack config and inputs (a shard
    of another target model or prior, or one without digests, is run again)."""
    from lsmia.attack.ppa import RUN_ONLY_KEYS
    from lsmia.attack.result import AttackResult

    if not (folder / "attack.pt").is_file() or (folder / "checkpoint.pt").exists():
        return False
    meta = AttackResult.load(folder / "attack.pt").meta
    wanted = cfg.attack.model_copy(update={"seed": cfg.attack.seed + seed}).model_dump(
        mode="json", exclude=set(RUN_ONLY_KEYS)
    )
    shard = meta.get("shard", {})
    return shard.get("classes") == classes and shard.get("digests") == digests and meta.get("config") == wanted


def _run_evaluate(run: StageRun) -> Any:
    from lsmia.stages.evaluate import stage_evaluate

    assert run.cell is not None
    metrics = stage_evaluate(
        run.cfg,
        run.inputs["data"],
        run.inputs["attack"],
        run.inputs["eval-model"],
        run.inputs["target"].parent,
        run.output,
        run.device,
        run.cell.alpha,
        run.cell.seed,
        run.inputs.get("attributes"),
    )
    run.observer.log_evaluation(metrics, run.inputs["attack"], run.inputs["eval-model"])
    return metrics


def _run_toy(run: StageRun) -> Any:
    from lsmia.experiments.toy import run_toy

    return run_toy(out_dir=run.output.parent)


def _run_report(run: StageRun) -> Any:
    from lsmia.stages.report import stage_report

    ablations = run.options.get("ablations")
    if ablations is None:  # the committed ablations DVC lists as the stage's dependencies, where they exist
        ablations = [Path(path) for path in REPORT_ABLATIONS if Path(path).is_file()]
    index = stage_report(
        run.cfg,
        StudyPaths(run.cfg.run.out_dir),
        run.output.parent,
        run.device,
        ablation_files=ablations,
        plots_dir=run.side.get("plots"),
        defenses_file=run.options.get("defenses"),
    )
    run.observer.log_report(index.parent)
    return index


# --------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class Stage:
    """One stage: what computes it, what it reads, what it writes and how its run is tracked.

    ``locate`` puts its ``output`` (the file whose presence marks it done; its name in a cache folder) in the study
    layout; ``outs`` and ``reads`` are DVC paths (what it writes; what stages of the same cell read of it),
    ``collected`` what a stage outside the matrix reads of a per-cell stage. ``folder``: its DVC output is the
    folder of ``output``, locked as one while it runs."""

    name: str
    module: str  # the lsmia module whose import closure is the stage's code
    runner: Callable[[StageRun], Any]
    params: tuple[str, ...]
    needs: tuple[str, ...]
    output: str
    locate: Callable[[StudyPaths, Alpha, Seed], Path]
    outs: tuple[str, ...]
    reads: tuple[str, ...] = ()
    collected: tuple[str, ...] = ()
    folder: bool = True
    per_cell: bool = False
    # DVC keeps the outputs while the stage re-runs: a killed training resumes from its checkpoint, and the MLflow
    # run it left open is continued (a marker beside the checkpoint holds its id)
    persist: bool = False
    file_deps: tuple[str, ...] = ()  # extra data inputs, besides the outputs of ``needs``
    # inputs the stage reads only when they exist: listed in dvc.yaml while they exist in the repository (DVC
    # fails on a missing dependency), so `lsmia dvc-yaml` adds them once they are committed
    optional_deps: tuple[str, ...] = ()
    uncached_outs: tuple[str, ...] = ()  # small files kept in git rather than DVC's cache
    metrics: tuple[str, ...] = ()
    plots: tuple[
        str, ...
    ] = ()  # DVCLive folders of per-epoch curves (lsmia.reporting.curves): `dvc plots show` draws them
    role: str | None = None  # the MLflow runs' role tag
    kind: str = ""  # the MLflow runs' stage tag (both classifiers: train); default: the name
    run_name: str = ""  # the MLflow run's name; default: the name
    system_metrics: bool = False  # CPU/GPU/memory sampled during the run (the long stages)
    resumable: bool = False  # a killed run resumes from its checkpoint; its open MLflow run is continued
    # named extra folders it writes in the study layout (a classifier's DVCLive curves, the report's plot data)
    side: Callable[[StudyPaths, Alpha | None, Seed | None], dict[str, Path]] = field(
        default=lambda p, a, s: {}, compare=False
    )
    distributed: bool = False  # runs under torchrun as DDP ranks (rank 0 writes and tracks)
    # how heavy a run is, roughly (a target trains longest, then the prior and the evaluation model, then an attack):
    # processes sharing a plan take the heaviest stage ready first, so none idles at the end while one trains
    cost: int = 0
    applies: Callable[[Config], bool] = field(default=lambda cfg: True, compare=False)

    @property
    def cmd(self) -> str:
        """DVC's command: the one door every executor uses."""
        return f"lsmia stage {self.name}" + (f" --alpha {ITEM[0]} --seed {ITEM[1]}" if self.per_cell else "")

    @property
    def tracking_kind(self) -> str:
        return self.kind or self.name

    @property
    def tracking_name(self) -> str:
        return self.run_name or self.name

    def template(self) -> Path:
        """``output`` in DVC's template syntax."""
        return self.locate(TEMPLATE, *ITEM)


# Committed ablation results the report includes.
REPORT_ABLATIONS = tuple(
    f"out/ablations/{name}/results.json"
    for name in (
        "factors",
        "alpha",
        "data",
        "converged",
        "screen",
        "confirm_identities_200",
        "screen_identities_200_attacks",
        "screen_identities_200_constant",
        "adaptive_identities_200",
        "adaptive_budget_200",
        "adaptive_defenses_200",
    )
)
DEFENSE_COMPARISON = "out/ablations/defenses/compare.json"
T = TEMPLATE

STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        "lsmia.stages.data",
        _run_data,
        ("data",),
        (),
        "dataset.pt",
        lambda p, a, s: p.data_file,
        outs=(dvc_path(T.data_file),),
        reads=(dvc_path(T.data_file),),
        folder=False,
        uncached_outs=(dvc_path(T.data_summary),),
    ),
    Stage(
        "prior",
        "lsmia.stages.prior",
        _run_prior,
        ("prior", "run.seed"),
        ("data",),
        "prior.pt",
        lambda p, a, s: p.prior_dir / "prior.pt",
        outs=(dvc_path(T.prior_dir),),
        reads=(dvc_path(T.prior_dir),),
        persist=True,
        resumable=True,
        role="prior",
        system_metrics=True,
        applies=lambda cfg: cfg.prior.kind == "dcgan",
        cost=2,
    ),
    Stage(
        "eval-model",
        "lsmia.stages.train",
        _run_train,
        ("eval_model", "run.seed"),
        ("data",),
        "model.pt",
        lambda p, a, s: p.eval_dir / "model.pt",
        outs=(dvc_path(T.eval_dir),),
        reads=(dvc_path(T.eval_dir / "model.pt"),),
        persist=True,
        resumable=True,
        plots=(dvc_path(T.curves_dir(None, None)),),
        side=lambda p, a, s: {"curves": p.curves_dir(None, None)},
        role="eval",
        kind="train",
        run_name="train-eval",
        system_metrics=True,
        distributed=True,
        cost=2,
    ),
    Stage(
        "attributes",
        "lsmia.stages.attributes",
        _run_attributes,
        ("metrics.attribute_epochs", "run.seed"),
        ("data",),
        "predictor.pt",
        lambda p, a, s: p.attribute_dir / "predictor.pt",
        outs=(dvc_path(T.attribute_dir),),
        reads=(dvc_path(T.attribute_dir),),
        role="attributes",
        run_name="train-attributes",
        cost=1,
    ),
    Stage(
        "target",
        "lsmia.stages.train",
        _run_train,
        ("target",),
        ("data",),
        "model.pt",
        lambda p, a, s: p.target_dir(a, s) / "model.pt",
        outs=(dvc_path(T.target_dir(*ITEM)),),
        reads=(dvc_path(T.target_dir(*ITEM) / "model.pt"), dvc_path(T.target_dir(*ITEM) / "metrics.json")),
        collected=(dvc_path(T.root / "models"),),
        per_cell=True,
        persist=True,
        resumable=True,
        plots=(dvc_path(T.curves_dir(*ITEM)),),
        side=lambda p, a, s: {"curves": p.curves_dir(a, s)},
        role="target",
        kind="train",
        run_name="train-target",
        system_metrics=True,
        distributed=True,
        cost=3,
    ),
    Stage(
        "attack",
        "lsmia.stages.attack",
        _run_attack,
        ("attack", "prior.kind", "prior.path"),
        ("data", "target", "prior"),
        "attack.pt",
        lambda p, a, s: p.attack_dir(a, s) / "attack.pt",
        outs=(dvc_path(T.attack_dir(*ITEM)),),
        reads=(dvc_path(T.attack_dir(*ITEM)),),
        collected=(dvc_path(T.root / "attacks"),),
        per_cell=True,
        resumable=True,
        role="target",
        system_metrics=True,
        distributed=True,
        cost=1,
    ),
    Stage(
        "evaluate",
        "lsmia.stages.evaluate",
        _run_evaluate,
        ("metrics",),
        ("data", "attack", "eval-model", "attributes", "target"),
        "metrics.json",
        lambda p, a, s: p.metrics_file(a, s),
        outs=(),
        collected=(dvc_path(T.metrics_dir),),
        folder=False,
        per_cell=True,
        uncached_outs=(dvc_path(T.metrics_file(*ITEM)),),  # every metric of a run; DVC's metrics: summary.json
        role="target",
    ),
    Stage(
        "toy",
        "lsmia.experiments.toy",
        _run_toy,
        (),
        (),
        "toy.json",
        lambda p, a, s: p.toy_dir / "toy.json",
        outs=(dvc_path(T.toy_dir),),
        reads=(dvc_path(T.toy_dir),),
    ),
    Stage(
        "report",
        "lsmia.stages.report",
        _run_report,
        ("study",),
        ("data", "target", "attack", "evaluate", "toy"),
        "index.html",
        lambda p, a, s: p.report_dir / "index.html",
        outs=(dvc_path(T.report_dir),),
        file_deps=(dvc_path(T.data_summary), *REPORT_ABLATIONS),
        optional_deps=(
            DEFENSE_COMPARISON,
            "out/ablations/defenses/fronts.png",
            "out/ablations/defenses/results.json",
            *(path.replace("results.json", "verdict.json") for path in REPORT_ABLATIONS),
        ),
        uncached_outs=(dvc_path(T.plots_dir),),  # plot data, drawn by the top-level PLOTS only (no stray default chart)
        metrics=(dvc_path(T.summary_file),),  # per alpha over seeds: a few columns in dvc exp show / metrics diff
        side=lambda p, a, s: {"plots": p.plots_dir},
        role="report",
    ),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    return BY_NAME[name]


# --------------------------------------------------------------------------- execution


@dataclass(frozen=True)
class StudyLayout:
    """The DVC layout under ``run.out_dir`` (lsmia.paths), as each stage's ``locate`` puts it."""

    paths: StudyPaths

    def output(self, stage_: Stage, cell: Cell | None) -> Path:
        assert cell is not None or not stage_.per_cell, f"stage {stage_.name} runs per cell"
        return stage_.locate(self.paths, *((cell.alpha, cell.seed) if cell is not None else (0.0, 0)))

    def side_outputs(self, stage_: Stage, cell: Cell | None) -> dict[str, Path]:
        return stage_.side(self.paths, *((cell.alpha, cell.seed) if cell is not None else (None, None)))


@dataclass(frozen=True)
class PinnedLayout:
    """``base`` with some stages' output files pinned elsewhere (``lsmia stage``'s --data, --out-dir, ...) and the
    running stage's side outputs replaced."""

    base: Layout
    pinned: Mapping[str, Path] = field(default_factory=dict)
    side: Mapping[str, Path] = field(default_factory=dict)

    def output(self, stage_: Stage, cell: Cell | None) -> Path:
        return self.pinned.get(stage_.name) or self.base.output(stage_, cell)

    def side_outputs(self, stage_: Stage, cell: Cell | None) -> dict[str, Path]:
        return {**self.base.side_outputs(stage_, cell), **self.side}


def written_by(stage_: Stage, cell: Cell | None, layout: Layout) -> list[Path]:
    """What a run of the stage writes in ``layout``: its output (or its folder) and its side outputs, e.g. to lock."""
    output = layout.output(stage_, cell)
    return [output.parent if stage_.folder else output, *layout.side_outputs(stage_, cell).values()]


def cell_config(cfg: Config, cell: Cell | None) -> Config:
    """The config a stage of ``cell`` runs with: the cell's smoothing factor (validated like any value)."""
    if cell is None or cfg.target.smoothing.alpha == cell.alpha:
        return cfg
    return build_config(cfg.to_dict(), {"target.smoothing.alpha": cell.alpha})


def upstream_of(name: str) -> set[str]:
    """``name`` and every stage whose output it reads, directly or not."""
    found, pending = set(), [name]
    while pending:
        current = pending.pop()
        if current not in found:
            found.add(current)
            pending.extend(BY_NAME[current].needs)
    return found


def params_shaping(name: str) -> tuple[str, ...]:
    """The config keys (sections or dotted keys) that shape stage ``name``'s output and its inputs'."""
    keys = {key for stage_name in upstream_of(name) for key in BY_NAME[stage_name].params}
    return tuple(sorted(keys | {"run.seed"}))


def stages_for(cfg: Config, names: Iterable[str] | None = None) -> list[Stage]:
    """The stages that apply to ``cfg`` (no prior stage for a TorchScript prior), in graph order."""
    wanted = set(names) if names is not None else None
    return [s for s in STAGES if s.applies(cfg) and (wanted is None or s.name in wanted)]


def inputs_of(stage_: Stage, cfg: Config, cell: Cell | None, layout: Layout) -> dict[str, Path]:
    """The output files of the stages ``stage_`` reads that apply to ``cfg``."""
    needs = [
        BY_NAME[n] for n in stage_.needs if BY_NAME[n].applies(cfg) and (cell is not None or not BY_NAME[n].per_cell)
    ]
    return {need.name: layout.output(need, cell if need.per_cell else None) for need in needs}


def tracking_tags(stage_: Stage, cell: Cell | None, output: Path, inputs: dict[str, Path]) -> dict[str, Any]:
    """What the observer of a stage run is told: its role, cell, system metrics, data file, and the folder whose
    checkpoint makes a killed run resumable (its open MLflow run is continued)."""
    tags: dict[str, Any] = {"system_metrics": stage_.system_metrics}
    if stage_.role is not None:
        tags["role"] = stage_.role
    if cell is not None:
        tags.update(alpha=cell.alpha, seed=cell.seed)
    if "data" in inputs:
        tags["data_file"] = inputs["data"]
    if stage_.resumable:
        tags["run_dir"] = output.parent
    return tags


def run_stage(
    stage_: Stage,
    cfg: Config,
    cell: Cell | None,
    layout: Layout,
    device: torch.device,
    observe: Observe,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Run one stage of the graph under ``observe``; returns what its library function returns. The one door:
    ``lsmia stage`` (DVC's command), ``study``, ``ablate`` and ``sweep`` all come through here. Under torchrun a
    distributed stage runs in the process group, observed by rank 0 alone."""
    from lsmia.infra import distributed

    run_cfg = cell_config(cfg, cell)
    output = layout.output(stage_, cell)
    inputs = inputs_of(stage_, cfg, cell, layout)
    tags = tracking_tags(stage_, cell, output, inputs)
    group = distributed.process_group(use_cuda=device.type == "cuda") if stage_.distributed else _no_group()
    with group:
        watch = observe if distributed.is_main() else quiet_stage
        with watch(run_cfg, stage_.tracking_kind, stage_.tracking_name, **tags) as observer:
            side = layout.side_outputs(stage_, cell)
            run = StageRun(
                stage_, run_cfg, cell, output, inputs, distributed.rank_device(device), observer, side, options or {}
            )
            return stage_.runner(run)


@contextmanager
def _no_group() -> Iterator[None]:
    yield


def cells_of(cfg: Config, alphas: Iterable[float] | None = None, seeds: Iterable[int] | None = None) -> list[Cell]:
    """The study matrix, seed-major like DVC's: every alpha of seed 0, then of seed 1, ..."""
    alphas = list(cfg.study.alphas if alphas is None else alphas)
    return [Cell(float(a), int(s)) for s in (cfg.study.seeds if seeds is None else seeds) for a in alphas]


def schedule(cfg: Config, cells: list[Cell], names: Iterable[str] | None = None) -> Iterator[tuple[Stage, Cell | None]]:
    """Every (stage, cell) to run, in an order that respects the graph: shared stages first, then per cell
    its target, attack and evaluation (so a long study yields finished cells early), then the report."""
    chosen = stages_for(cfg, names)
    for s in chosen:
        if not s.per_cell and s.name != "report":
            yield s, None
    for cell in cells:
        for s in chosen:
            if s.per_cell:
                yield s, cell
    for s in chosen:
        if s.name == "report":
            yield s, None

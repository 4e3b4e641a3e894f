"""The study's stage graph, declared once.

Each :class:`Stage` names the library module that computes it, the params it reads, the stages whose
outputs it reads and the files it writes. From this one declaration:

- ``dvc.yaml`` is generated (``lsmia dvc-yaml``; a test fails when the committed file differs), with
  code dependencies complete by construction: every ``lsmia`` file the stage's module imports,
  directly or through other ``lsmia`` modules (function-level imports and package ``__init__`` files
  included), found by reading the source, so editing e.g. ``lsmia/losses.py`` re-runs exactly the
  stages whose code reaches it; a module's ``PACKAGE_DATA`` folders (the report's templates) count as its code;
- ``lsmia study``, ``lsmia ablate`` and ``lsmia sweep`` execute it (:func:`execute`), each with its own
  :class:`Layout` (where a stage's output lies) and observer (what is tracked);
- the ablation cache keys a stage by its params, its code (:func:`code_digest`) and the keys of the
  stages it reads (:func:`stage_keys`), so a code edit invalidates exactly what it can change.

The CLI shell (``lsmia/cli.py``) and the tracking modules are not code dependencies: they change
what is logged, never what a stage writes.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import torch

from lsmia import metric_registry
from lsmia.config import Config, build_config
from lsmia.paths import StudyPaths, run_tag

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
OUT = "${run.out_dir}"
CELL = "alpha${item.alpha}_seed${item.seed}"


@dataclass(frozen=True)
class Cell:
    """One (alpha, seed) of the study matrix."""

    alpha: float
    seed: int

    @property
    def tag(self) -> str:
        return run_tag(self.alpha, self.seed)


@dataclass(frozen=True)
class Stage:
    """One stage: what computes it, what it reads and what it writes (paths in DVC's template syntax).

    ``output`` is the file whose presence marks the stage as done in a cache; ``outs`` what DVC tracks.
    """

    name: str
    module: str  # the lsmia module whose import closure is the stage's code
    params: tuple[str, ...]
    needs: tuple[str, ...]
    cmd: str
    outs: tuple[str, ...]
    output: str
    per_cell: bool = False
    persist: bool = (
        False  # DVC keeps the outputs while the stage re-runs: a killed training resumes from its checkpoint
    )
    file_deps: tuple[str, ...] = ()  # extra data inputs, besides the outputs of ``needs``
    # inputs the stage reads only when they exist: listed in dvc.yaml while they exist in the repository (DVC
    # fails on a missing dependency), so `lsmia dvc-yaml` adds them once they are committed
    optional_deps: tuple[str, ...] = ()
    uncached_outs: tuple[str, ...] = ()  # small files kept in git rather than DVC's cache
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()  # DVCLive folders of per-epoch curves (lsmia.curves): `dvc plots show` draws them
    applies: Callable[[Config], bool] = field(default=lambda cfg: True, compare=False)

    @property
    def role(self) -> str | None:
        return {
            "target": "target",
            "eval-model": "eval",
            "prior": "prior",
            "attributes": "attributes",
            "report": "report",
        }.get(self.name)


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

STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        "lsmia.stages.data",
        ("data",),
        (),
        f"lsmia data --out {OUT}/data/dataset.pt",
        (f"{OUT}/data/dataset.pt",),
        "dataset.pt",
        uncached_outs=(f"{OUT}/data/summary.json",),
    ),
    Stage(
        "prior",
        "lsmia.stages.prior",
        ("prior", "run.seed"),
        ("data",),
        f"lsmia train-prior --data {OUT}/data/dataset.pt --out-dir {OUT}/prior",
        (f"{OUT}/prior",),
        "prior.pt",
        persist=True,
        applies=lambda cfg: cfg.prior.kind == "dcgan",
    ),
    Stage(
        "eval-model",
        "lsmia.stages.train",
        ("eval_model", "run.seed"),
        ("data",),
        f"lsmia train --role eval --data {OUT}/data/dataset.pt --out-dir {OUT}/models/eval "
        f"--curves-dir {OUT}/curves/eval",
        (f"{OUT}/models/eval",),
        "model.pt",
        persist=True,
        plots=(f"{OUT}/curves/eval",),
    ),
    Stage(
        "attributes",
        "lsmia.stages.attributes",
        ("metrics.attribute_epochs", "run.seed"),
        ("data",),
        f"lsmia train-attributes --data {OUT}/data/dataset.pt --out {OUT}/models/attributes/predictor.pt",
        (f"{OUT}/models/attributes",),
        "predictor.pt",
    ),
    Stage(
        "target",
        "lsmia.stages.train",
        ("target",),
        ("data",),
        f"lsmia train --role target --alpha ${{item.alpha}} --seed ${{item.seed}} --data {OUT}/data/dataset.pt "
        f"--out-dir {OUT}/models/target_{CELL} --curves-dir {OUT}/curves/target_{CELL}",
        (f"{OUT}/models/target_{CELL}",),
        "model.pt",
        per_cell=True,
        persist=True,
        plots=(f"{OUT}/curves/target_{CELL}",),
    ),
    Stage(
        "attack",
        "lsmia.stages.attack",
        ("attack", "prior.kind", "prior.path"),
        ("data", "target", "prior"),
        f"lsmia attack --alpha ${{item.alpha}} --seed ${{item.seed}} --data {OUT}/data/dataset.pt "
        f"--target {OUT}/models/target_{CELL}/model.pt --prior {OUT}/prior/prior.pt --out-dir {OUT}/attacks/{CELL}",
        (f"{OUT}/attacks/{CELL}",),
        "attack.pt",
        per_cell=True,
    ),
    Stage(
        "evaluate",
        "lsmia.stages.evaluate",
        ("metrics",),
        ("data", "attack", "eval-model", "attributes", "target"),
        f"lsmia evaluate --alpha ${{item.alpha}} --seed ${{item.seed}} --data {OUT}/data/dataset.pt "
        f"--attack {OUT}/attacks/{CELL}/attack.pt --eval-model {OUT}/models/eval/model.pt "
        f"--target-dir {OUT}/models/target_{CELL} --attributes {OUT}/models/attributes/predictor.pt "
        f"--out {OUT}/metrics/{CELL}.json",
        (),
        "metrics.json",
        per_cell=True,
        uncached_outs=(f"{OUT}/metrics/{CELL}.json",),  # every metric of a run; DVC's metrics: summary.json
    ),
    Stage("toy", "lsmia.toy", (), (), f"lsmia toy --out-dir {OUT}/toy", (f"{OUT}/toy",), "toy.json"),
    Stage(
        "report",
        "lsmia.stages.report",
        ("study",),
        ("data", "target", "attack", "evaluate", "toy"),
        f"lsmia report --out-dir {OUT}/report --plots-dir {OUT}/plots "
        + " ".join(f"--ablation {path}" for path in REPORT_ABLATIONS)
        + " --defenses out/ablations/defenses/compare.json",
        (f"{OUT}/report",),
        "index.html",
        file_deps=(f"{OUT}/data/summary.json", *REPORT_ABLATIONS),
        optional_deps=(
            "out/ablations/defenses/compare.json",
            "out/ablations/defenses/fronts.png",
            "out/ablations/defenses/results.json",
            *(path.replace("results.json", "verdict.json") for path in REPORT_ABLATIONS),
        ),
        uncached_outs=(f"{OUT}/plots",),
        metrics=(f"{OUT}/summary.json",),  # per alpha over seeds: a few columns in dvc exp show / metrics diff
    ),  # plot data, drawn by the top-level PLOTS only (no stray default chart)
)
BY_NAME = {stage.name: stage for stage in STAGES}

# The files of a stage's outputs that downstream stages of the same cell read (DVC deps), by stage name.
READS: dict[str, tuple[str, ...]] = {
    "data": (f"{OUT}/data/dataset.pt",),
    "prior": (f"{OUT}/prior",),
    "eval-model": (f"{OUT}/models/eval/model.pt",),
    "attributes": (f"{OUT}/models/attributes",),
    "target": (f"{OUT}/models/target_{CELL}/model.pt", f"{OUT}/models/target_{CELL}/metrics.json"),
    "toy": (f"{OUT}/toy",),
    "attack": (f"{OUT}/attacks/{CELL}",),
}
# What a stage outside the matrix (the report) reads of a per-cell stage: the folder of all its cells.
COLLECTED: dict[str, tuple[str, ...]] = {
    "target": (f"{OUT}/models",),
    "attack": (f"{OUT}/attacks",),
    "evaluate": (f"{OUT}/metrics",),
}


def stage(name: str) -> Stage:
    return BY_NAME[name]


# --------------------------------------------------------------------------- code dependencies


def _module_file(module: str) -> Path | None:
    """The source file of an lsmia module or package, or None for a name that is not a module."""
    parts = module.split(".")
    if parts[0] != "lsmia":
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every lsmia module ``path`` imports anywhere (top level, inside functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lsmia")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "lsmia"
        ):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from lsmia import pipeline`
    return found


def _with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def code_files(module: str) -> tuple[Path, ...]:
    """The source files of ``module`` and of every lsmia module it reaches through imports, sorted."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        for name in _with_parents(pending.pop()):
            path = _module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            pending.extend(_imported_modules(path))
    return tuple(sorted(seen))


def _package_data(path: Path) -> tuple[str, ...]:
    """The folders under ``lsmia/`` that the module at ``path`` reads at run time: its top-level
    ``PACKAGE_DATA = ("templates/report", ...)`` (string literals), empty without one."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "PACKAGE_DATA" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    return ()


@cache
def data_folders(module: str) -> tuple[Path, ...]:
    """The package-data folders of ``module`` and of every lsmia module it reaches through imports, sorted."""
    return tuple(sorted({PACKAGE_ROOT / folder for path in code_files(module) for folder in _package_data(path)}))


def code_deps(stage_: Stage) -> list[str]:
    """The stage's code files and package-data folders relative to the repository, as DVC lists them (a folder
    as one dependency, so a template added to it re-runs the stage too)."""
    found = sorted([*code_files(stage_.module), *data_folders(stage_.module)])
    return [path.relative_to(REPO_ROOT).as_posix() for path in found]


def code_digest(stage_: Stage) -> str:
    """A hash of the stage's code files, for cache keys: of their syntax trees without comments and docstrings,
    so an edit of the prose around the code keeps hours of cached models while any edit of the code drops them;
    and of every file in its package-data folders, byte for byte."""
    digest = hashlib.sha256()
    for path in code_files(stage_.module):
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(_code_only(path.read_bytes()).encode())
    for folder in data_folders(stage_.module):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _code_only(source: bytes) -> str:
    """The module's syntax tree, docstrings removed, as text (comments never reach the tree)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


# --------------------------------------------------------------------------- dvc.yaml


GENERATOR = "${prior.path}"  # an exported generator (prior.kind torchscript): what the prior stage records
GENERATOR_READERS = ("prior", "attack")


def dvc_stage(stage_: Stage, generator: bool = False) -> dict[str, Any]:
    """``generator``: the params set ``prior.path``, so the file there is a dependency of the stages that read it
    (replacing the generator in place re-runs them)."""
    deps: list[str] = []
    for need in stage_.needs:
        reads = COLLECTED[need] if BY_NAME[need].per_cell and not stage_.per_cell else READS[need]
        deps += [d for d in reads if d not in deps]
    deps += [d for d in stage_.file_deps if d not in deps]
    deps += [d for d in stage_.optional_deps if d not in deps and (REPO_ROOT / d).exists()]
    if generator and stage_.name in GENERATOR_READERS:
        deps.append(GENERATOR)
    deps += code_deps(stage_)
    entry: dict[str, Any] = {}
    if stage_.per_cell:
        entry["matrix"] = {"alpha": "${study.alphas}", "seed": "${study.seeds}"}
    entry["cmd"] = stage_.cmd
    entry["deps"] = deps
    if stage_.params:
        entry["params"] = list(stage_.params)
    outs: list[Any] = [{o: {"persist": True}} if stage_.persist else o for o in stage_.outs]
    outs += [{o: {"cache": False}} for o in stage_.uncached_outs]
    if outs:
        entry["outs"] = outs
    metrics = [{m: {"cache": False}} for m in stage_.metrics]
    if metrics:
        entry["metrics"] = metrics
    if stage_.plots:
        entry["plots"] = [{p: {"x": "step"}} for p in stage_.plots]
    return entry


STUDY_PLOT = f"{OUT}/plots/study.json"  # one row per run (lsmia.report.write_plot_data)
ALPHA_AXIS = {"x": "alpha", "x_label": "label smoothing α", "template": "lsmia_by_alpha"}
# Templates lsmia_by_alpha / lsmia_tradeoff and the page (UTF-8) live in .dvc/plots/ (.dvc/config plots.html_template):
# axes fitted to the data, the mean over seeds per alpha, points labelled with their alpha.
PLOTS: list[dict[str, Any] | str] = [
    {
        "accuracy_vs_alpha": {
            **ALPHA_AXIS,
            "title": "accuracy vs α (mean over seeds; faint points: runs)",
            "y": {STUDY_PLOT: ["test_acc", "final_acc1", "final_acc5"]},
            "y_label": "accuracy",
        }
    },
    {
        "tradeoff": {
            "template": "lsmia_tradeoff",
            "title": "accuracy–privacy trade-off (one point per run)",
            "x": "test_acc",
            "y": {STUDY_PLOT: "final_acc1"},
            "x_label": "target test accuracy (utility)",
            "y_label": "attack acc@1 (leakage)",
        }
    },
    {
        "delta_eval_vs_alpha": {
            **ALPHA_AXIS,
            "title": f"δ_eval vs α (higher = {metric_registry.higher_means('delta_eval')})",
            "y": {STUDY_PLOT: "delta_eval"},
            "y_label": metric_registry.label("delta_eval"),
        }
    },
    {
        "xi_vs_alpha": {
            **ALPHA_AXIS,
            "title": f"ξ vs α (higher = {metric_registry.higher_means('xi')})",
            "y": {STUDY_PLOT: "xi"},
            "y_label": metric_registry.label("xi"),
        }
    },
    f"{OUT}/plots/reconstructions",  # labelled grids (PNG): real vs reconstruction, framed by the evaluation model
]

HEADER = """\
# GENERATED by `lsmia dvc-yaml` from the stage graph in lsmia/graph.py: edit that, not this file.
# Every stage calls the lsmia CLI; deps list the data it reads and every lsmia source file its code imports,
# params the keys it reads, so `dvc repro` rebuilds exactly what a change of data, params or code can affect.
# `dvc exp run -S attack.steps=80` sweeps a parameter.
"""


ATTACK_SHARD = f"{OUT}/attack-shards/{CELL}/${{item.shard}}"  # beside out/attacks: DVC outputs must not overlap


def dvc_attack_shards(shards: int, generator: bool = False) -> dict[str, dict[str, Any]]:
    """``attack.shards`` > 1: the attack of a cell as ``shards`` class shards (a matrix: separate jobs or GPUs,
    each resumable, its outputs persisted while it re-runs) and a merge into the usual attack output."""
    attack = BY_NAME["attack"]
    shard = dvc_stage(attack, generator)
    cells = dict(shard["matrix"])
    shard["matrix"]["shard"] = list(range(shards))
    shard_flag = f"--shard ${{item.shard}}/{shards} --out-dir {ATTACK_SHARD}"
    shard["cmd"] = attack.cmd.replace(f"--out-dir {OUT}/attacks/{CELL}", shard_flag)
    shard["outs"] = [{ATTACK_SHARD: {"persist": True}}]
    dirs = [ATTACK_SHARD.replace("${item.shard}", str(i)) for i in range(shards)]
    merge = {
        "matrix": cells,
        "cmd": f"lsmia merge-attack {' '.join(dirs)} --data {OUT}/data/dataset.pt --out-dir {OUT}/attacks/{CELL}",
        "deps": [f"{OUT}/data/dataset.pt", *dirs, *code_deps(attack)],
        "outs": [f"{OUT}/attacks/{CELL}"],
    }
    return {"attack-shard": shard, "attack": merge}


def dvc_yaml(shards: int = 1, generator: bool = False) -> str:
    """The pipeline; ``shards`` (``attack.shards``) > 1 splits every cell's attack into class shards;
    ``generator`` (``prior.path`` set) makes the generator file a dependency of the prior and attack stages."""
    import yaml

    stages: dict[str, Any] = {}
    for s in STAGES:
        if s.name == "attack" and shards > 1:
            stages.update(dvc_attack_shards(shards, generator))
        else:
            stages[s.name] = dvc_stage(s, generator)
    document = {"stages": stages, "plots": PLOTS}
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=1000, allow_unicode=True)


# --------------------------------------------------------------------------- execution


class Observer(Protocol):
    """What a stage reports while it runs (MLflow through lsmia.tracked, a sweep trial, or nothing)."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def epoch_logger(self) -> Callable[[int, dict[str, float]], None] | None: ...
    def log_prior(self, result: Any) -> None: ...
    def log_classifier(self, result: Any, role: str, alpha: float, seed: int) -> None: ...
    def log_attack(self, result: Any, out_dir: Path, alpha: float, seed: int) -> None: ...
    def log_report(self, report_dir: Path) -> None: ...
    def log_evaluation(self, metrics: dict[str, Any], attack_file: Path, eval_model_file: Path) -> None: ...


class Observe(Protocol):
    """Opens an observer for one stage run: ``observe(cfg, stage, run_name, role=, alpha=, seed=, system_metrics=)``."""

    def __call__(self, cfg: Config, stage: str, run_name: str, **tags: Any) -> AbstractContextManager[Observer]: ...


class Layout(Protocol):
    """Where each stage's output file lies for a cell (``None`` for stages outside the matrix)."""

    def output(self, stage_: Stage, cell: Cell | None) -> Path: ...


@dataclass(frozen=True)
class StudyLayout:
    """The DVC layout under ``run.out_dir`` (lsmia.paths)."""

    paths: StudyPaths

    def output(self, stage_: Stage, cell: Cell | None) -> Path:
        p = self.paths
        fixed = {
            "data": p.data_file,
            "prior": p.prior_dir / "prior.pt",
            "eval-model": p.eval_dir / "model.pt",
            "attributes": p.attribute_dir / "predictor.pt",
            "toy": p.root / "toy" / "toy.json",
            "report": p.report_dir / "index.html",
        }
        if stage_.name in fixed:
            return fixed[stage_.name]
        assert cell is not None, f"stage {stage_.name} runs per cell"
        return {
            "target": p.target_dir(cell.alpha, cell.seed) / "model.pt",
            "attack": p.attack_dir(cell.alpha, cell.seed) / "attack.pt",
            "evaluate": p.metrics_file(cell.alpha, cell.seed),
        }[stage_.name]


@dataclass
class StageRun:
    """Everything one stage run gets: its config (with the cell's alpha), inputs, output and observer."""

    stage: Stage
    cfg: Config
    cell: Cell | None
    output: Path
    inputs: dict[str, Path]
    device: torch.device
    observer: Observer


def cell_config(cfg: Config, cell: Cell | None) -> Config:
    """The config a stage of ``cell`` runs with: the cell's smoothing factor (validated like any value)."""
    if cell is None or cfg.target.smoothing.alpha == cell.alpha:
        return cfg
    return build_config(cfg.to_dict(), {"target.smoothing.alpha": cell.alpha})


def _run_data(run: StageRun) -> Any:
    from lsmia.stages.data import stage_data

    summary = stage_data(run.cfg, run.output, run.output.with_name("summary.json"))
    run.observer.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def _run_prior(run: StageRun) -> Any:
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
    )
    run.observer.log_classifier(result, role, alpha, seed)
    return result


def _run_attributes(run: StageRun) -> Any:
    from lsmia.stages.attributes import stage_attribute_predictor

    return stage_attribute_predictor(run.cfg, run.inputs["data"], run.output, run.device)


def _run_attack(run: StageRun) -> Any:
    from lsmia.stages.attack import stage_attack

    assert run.cell is not None
    if run.cfg.attack.shards > 1:
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
            code_version=code_digest(run.stage),
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
        )
    return stage_merge_attack(run.inputs["data"], dirs, run.output.parent)


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
    from lsmia.toy import run_toy

    return run_toy(out_dir=run.output.parent)


def _run_report(run: StageRun) -> Any:
    from lsmia.stages.report import stage_report

    index = stage_report(run.cfg, StudyPaths(run.cfg.run.out_dir), run.output.parent, run.device)
    run.observer.log_report(index.parent)
    return index


RUNNERS: dict[str, Callable[[StageRun], Any]] = {
    "data": _run_data,
    "prior": _run_prior,
    "eval-model": _run_train,
    "attributes": _run_attributes,
    "target": _run_train,
    "attack": _run_attack,
    "evaluate": _run_evaluate,
    "toy": _run_toy,
    "report": _run_report,
}


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


def run_stage(
    stage_: Stage, cfg: Config, cell: Cell | None, layout: Layout, device: torch.device, observe: Observe
) -> Any:
    """Run one stage of the graph under ``observe``; returns what its library function returns."""
    run_cfg = cell_config(cfg, cell)
    tags: dict[str, Any] = {"role": stage_.role}
    if cell is not None:
        tags.update(role="target", alpha=cell.alpha, seed=cell.seed)
    elif stage_.name == "eval-model":
        tags["seed"] = cfg.run.seed
    stage_kind = {"eval-model": "train", "target": "train"}.get(stage_.name, stage_.name)
    run_name = {"eval-model": "train-eval", "target": "train-target", "attributes": "train-attributes"}.get(
        stage_.name, stage_.name
    )
    system_metrics = stage_.name in ("prior", "eval-model", "target", "attack")
    with observe(
        run_cfg, stage_kind, run_name, system_metrics=system_metrics, **{k: v for k, v in tags.items() if v is not None}
    ) as observer:
        run = StageRun(
            stage_, run_cfg, cell, layout.output(stage_, cell), inputs_of(stage_, cfg, cell, layout), device, observer
        )
        return RUNNERS[stage_.name](run)


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


# --------------------------------------------------------------------------- cache keys


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _param_values(cfg: Config, keys: Iterable[str]) -> dict[str, Any]:
    dump = cfg.to_dict()
    values = {}
    for key in keys:
        node: Any = dump
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def _key_params(stage_: Stage, cfg: Config, cell: Cell | None) -> dict[str, Any]:
    """The params that shape the stage's output; a target's smoothing enters as its per-epoch alpha, so
    alpha >= 0 models are shared across warm-up schedules that never apply to them."""
    if stage_.name == "attack":  # how the attack runs (shards, checkpoints) does not change what it computes
        from lsmia.attack.ppa import RUN_ONLY_KEYS

        values = _param_values(cfg, stage_.params)
        values["attack"] = {k: v for k, v in values["attack"].items() if k not in RUN_ONLY_KEYS}
        return values
    if stage_.name != "target":
        return _param_values(cfg, stage_.params)
    from lsmia.schedules import alpha_trajectory

    assert cell is not None
    target = {k: v for k, v in cfg.to_dict()["target"].items() if k != "smoothing"}
    smoothing = cfg.target.smoothing.model_copy(update={"alpha": cell.alpha})
    return {"target": target, "alpha_per_epoch": alpha_trajectory(smoothing, cfg.target.epochs)}


def code_digests() -> dict[str, str]:
    """Every stage's :func:`code_digest` now: a long run takes them once, at its start, and keys every cell with
    them, so an edit made while it runs neither splits its cells across two code versions nor files outputs of
    the code it has loaded under the edited code's key."""
    return {s.name: code_digest(s) for s in STAGES}


def stage_keys(cfg: Config, cell: Cell, code: Mapping[str, str] | None = None) -> dict[str, str]:
    """A cache key per stage of ``cell``: its params, its code (``code``, from :func:`code_digests`, or read
    now) and the keys of the stages it reads."""
    keys: dict[str, str] = {}
    for s in STAGES:
        if s.name not in upstream_of("evaluate"):
            continue
        upstream = [keys[need] for need in s.needs if need in keys and BY_NAME[need].applies(cfg)]
        seed = cell.seed if s.per_cell else None
        source = code[s.name] if code is not None else code_digest(s)
        keys[s.name] = digest(s.name, _key_params(s, cfg, cell if s.per_cell else None), source, upstream, seed)
    return keys

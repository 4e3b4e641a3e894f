"""Measured ablations: named config variants × alphas × seeds, with the paper's effect tested per variant.

Every stage's output is cached under a key made of exactly the inputs that stage reads (its config
slice, a hash of its code and the keys of the stages it consumes: lsmia.experiments.cache_keys.stage_keys), so a code
edit invalidates exactly the stages it can change and variants share what they have in common: an
attack-loss variant reuses the baseline's targets, a prior variant reuses its data and targets,
and an interrupted ablation resumes where it stopped. The effect is measured *paired by seed*:
each seed's smoothed model is compared with the hard-label model of the same seed, data and
attack randomness, and the mean difference carries a 95 % t-interval over seeds.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lsmia.config import Config, build_config, load_yaml
from lsmia.errors import LsmiaError
from lsmia.experiments import graph
from lsmia.experiments import keys as cache_keys
from lsmia.experiments.stage_cache import CacheLayout, StageCache, build_cell, build_plan, plan_tasks
from lsmia.paths import StudyPaths
from lsmia.reporting import ablation_tables as tables
from lsmia.reporting import metric_registry
from lsmia.reporting.stats import effects, per_alpha
from lsmia.utils import load_json, save_json

Log = Callable[[str], None]


class AblationPlan(BaseModel):
    """An ablation file: ``variants`` maps a name to dotted overrides of the base params."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("ablation", pattern=r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # not '.' or '..'
    alphas: list[float] | None = None  # default: the base config's study.alphas
    seeds: list[int] | None = None  # default: the base config's study.seeds
    variants: dict[str, dict[str, Any]] = Field(min_length=1)


def load_plan(path: Path) -> AblationPlan:
    if not Path(path).exists():
        raise LsmiaError(f"ablation file {path} does not exist: pass one like configs/ablations.yaml")
    try:
        return AblationPlan.model_validate(load_yaml(Path(path).read_text(), f"ablation file {path}") or {})
    except yaml.YAMLError as err:
        raise LsmiaError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix its syntax") from None
    except ValidationError as err:
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a misspelt key explains the rest
        key = ".".join(str(p) for p in errors[0]["loc"])
        if errors[0]["type"] == "extra_forbidden":
            raise LsmiaError(
                f"unknown key '{key}' in ablation file {path}: use name, alphas, seeds and variants"
            ) from None
        raise LsmiaError(f"invalid ablation file {path} at '{key}': {errors[0]['msg']}") from None


def variant_configs(base: Config, plan: AblationPlan) -> dict[str, Config]:
    """Each variant's validated config; a bad override names its variant."""
    return {
        name: build_config(base.to_dict(), overrides, source=f"ablation variant '{name}'")
        for name, overrides in plan.variants.items()
    }


def variant_alphas(plan: AblationPlan, name: str, cfg: Config, alphas: list[float]) -> list[float]:
    """The plan's ``alphas``, or the variant's own ``study.alphas`` override (e.g. one smoothing variant among
    defenses trained at alpha 0 only); alpha 0, the reference of the paired effect, must be among them."""
    own = cfg.study.alphas if "study.alphas" in plan.variants[name] else alphas
    if 0.0 not in own:
        where = f"the study.alphas of variant '{name}'" if own is not alphas else "the plan's alphas"
        raise LsmiaError(f"an ablation needs alpha 0 as the reference: add 0.0 to {where}")
    return own


def variant_seeds(plan: AblationPlan, name: str, cfg: Config, seeds: list[int]) -> list[int]:
    """The plan's ``seeds``, or the variant's own ``study.seeds`` override (e.g. the seeds one defense still lacks
    while the others of the plan have them all)."""
    return cfg.study.seeds if "study.seeds" in plan.variants[name] else seeds


def run_cell(cache: StageCache, cfg: Config, alpha: float, seed: int) -> dict[str, Any]:
    """Every stage one (alpha, seed) needs, each taken from the cache when done; the metrics row."""
    outputs = build_cell(cache, cfg, graph.Cell(float(alpha), int(seed)))
    fix = "delete it and re-run the ablation (its stage runs again)"
    row = load_json(outputs["evaluate"], what="ablation metrics", keys=(), fix=fix)
    eval_metrics = outputs["eval-model"].parent / "metrics.json"
    row["eval_test_acc"] = load_json(eval_metrics, what="eval metrics", keys=("test_acc",), fix=fix)["test_acc"]
    row["machine"] = cell_machine(outputs.values())
    row["eval_model_key"] = outputs["eval-model"].parent.name  # the judge: acc@1 compares only under one
    return row


def cell_machine(outputs: Iterable[Path]) -> str:
    """The machine(s) that built a cell's stages (lsmia.infra.machine), " + "-joined when several did (e.g. a data
    stage pulled from a shared remote); "" where no stage recorded one (markers from before the fingerprints)."""
    return " + ".join(sorted({m for m in map(StageCache.machine, outputs) if m}))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per alpha, largest first: every summarised metric of the registry, mean ± CI over seeds (NaN without one)."""
    found = per_alpha(rows, metric_registry.summarised(), descending=True, keep_missing=True)
    return [{"alpha": s["alpha"], "metrics": s["metrics"]} for s in found]


# --------------------------------------------------------------------------- running and writing


@dataclass
class AblationResult:
    plan: AblationPlan
    rows: list[dict[str, Any]]
    variants: dict[str, dict[str, Any]]
    out_dir: Path
    missing: list[dict[str, Any]] = field(default_factory=list)  # cells left out by ``finished_only``
    stem: str = "results"  # results.partial: a table that would have dropped cells of the results.json there

    @property
    def json_file(self) -> Path:
        return self.out_dir / f"{self.stem}.json"

    @property
    def md_file(self) -> Path:
        return self.out_dir / f"{self.stem}.md"


def plan_cells(base: Config, plan: AblationPlan) -> list[tuple[str, Config, graph.Cell]]:
    """Every (variant, its config, cell) of the plan, seed-major: the first seeds of every variant finish first."""
    configs = variant_configs(base, plan)
    alphas = plan.alphas if plan.alphas is not None else base.study.alphas
    seeds = plan.seeds if plan.seeds is not None else base.study.seeds
    return [
        (name, cfg, graph.Cell(float(alpha), int(seed)))
        for seed in sorted({s for name, cfg in configs.items() for s in variant_seeds(plan, name, cfg, seeds)})
        for name, cfg in configs.items()
        if seed in variant_seeds(plan, name, cfg, seeds)
        for alpha in variant_alphas(plan, name, cfg, alphas)
    ]


def prepare_ablation(
    base: Config, plan: AblationPlan, device: torch.device, until: str, log: Log = print, jobs: int = 1
) -> int:
    """Build every cell of the plan only up to stage ``until`` (e.g. ``target``: train the targets while the
    attack is still being changed, since the cache keys hash the code); writes no results. The cells built."""
    if until not in graph.upstream_of("evaluate"):
        raise LsmiaError(f"unknown stage '{until}': use one of {', '.join(sorted(graph.upstream_of('evaluate')))}")
    cells = plan_cells(base, plan)
    if jobs > 1:
        build_together(base, plan, device, until, jobs, log)
        return len(cells)
    cache = StageCache(StudyPaths(Path(base.run.out_dir)).ablation_cache, device, log)
    for name, cfg, cell in cells:
        log(f"{name}: alpha={cell.alpha} seed={cell.seed} (up to {until})")
        build_cell(cache, cfg, cell, until)
    return len(cells)


def build_together(base: Config, plan: AblationPlan, device: torch.device, until: str, jobs: int, log: Log) -> None:
    """Build every cell up to ``until`` in this process and ``jobs - 1`` spawned ones, sharing the cache: each
    takes the next stage nobody is building (lsmia.experiments.stage_cache.build_plan)."""
    context = multiprocessing.get_context("spawn")
    helpers = [
        context.Process(
            target=_job_process,
            args=(base.to_dict(), plan, str(device), until, jobs, index, os.getpid()),
            name=f"lsmia ablate job {index + 1}",
        )
        for index in range(1, jobs)
    ]
    for helper in helpers:
        helper.start()
    try:
        _build_share(base, plan, device, until, jobs, log)
        for helper in helpers:
            helper.join()
    except BaseException:  # a stage failed here, or Ctrl-C: stop the others (their writes are atomic, they resume)
        for helper in helpers:
            helper.terminate()
            helper.join()
        raise
    failed = [helper.name for helper in helpers if helper.exitcode != 0]
    if failed:
        raise LsmiaError(f"{', '.join(failed)} failed (its error is above): run the same command again to resume")


def _build_share(base: Config, plan: AblationPlan, device: torch.device, until: str, jobs: int, log: Log) -> None:
    from lsmia.infra.threads import set_threads

    set_threads(base.run.threads, share=jobs)
    cache = StageCache(StudyPaths(Path(base.run.out_dir)).ablation_cache, device, log)
    build_plan(cache, plan_tasks(cache, [(cfg, cell) for _, cfg, cell in plan_cells(base, plan)], until))


def _job_process(
    config: dict[str, Any], plan: AblationPlan, device: str, until: str, jobs: int, index: int, parent: int
) -> None:
    """Entry point of a spawned job of ``lsmia ablate --jobs``; ``parent``: the pid of the ``lsmia ablate`` that
    spawned it (passed, not read here: it may have died while this process was starting)."""
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        _build_share(build_config(config), plan, torch.device(device), until, jobs, _job_log(index))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except LsmiaError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Stop this job once the ``lsmia ablate`` that spawned it is gone (killed by a signal it could not handle):
    an orphan would go on building alone. What it leaves is what a kill leaves (atomic writes, resumable stages)."""
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(143)


def _job_log(index: int) -> Log:
    return lambda line: print(f"[job {index + 1}] {line}", file=sys.stderr, flush=True)


def run_ablation(
    base: Config,
    plan: AblationPlan,
    device: torch.device,
    log: Log = print,
    finished_only: bool = False,
    jobs: int = 1,
) -> AblationResult:
    """Run (or take from the cache) every cell of the plan; write ``results.json`` and ``results.md``.

    ``finished_only``: run nothing, tabulate the cells already finished and list the others as missing,
    to read a long ablation's results so far while it runs or after it was interrupted. Neither replaces a
    results.json with cells this table lacks (:func:`keep_fuller_results`). ``jobs`` > 1: build the
    cells in that many processes first (:func:`build_together`), then tabulate them here."""
    configs = variant_configs(base, plan)  # validate every variant before any work starts
    if jobs > 1 and not finished_only:
        build_together(base, plan, device, "evaluate", jobs, log)
    alphas = plan.alphas if plan.alphas is not None else base.study.alphas
    seeds = plan.seeds if plan.seeds is not None else base.study.seeds
    alphas_of = {name: variant_alphas(plan, name, cfg, alphas) for name, cfg in configs.items()}
    paths = StudyPaths(Path(base.run.out_dir))
    cache = StageCache(paths.ablation_cache, device, log)
    rows: list[dict[str, Any]] = []
    variants: dict[str, dict[str, Any]] = {}
    result = AblationResult(plan, rows, variants, paths.ablation_dir(plan.name))
    for name, cfg in configs.items():
        variant_rows = []
        for seed in variant_seeds(plan, name, cfg, seeds):
            for alpha in alphas_of[name]:
                if finished_only and not cache.finished(cfg, graph.Cell(float(alpha), int(seed))):
                    result.missing.append({"variant": name, "alpha": alpha, "seed": seed})
                    continue
                log(f"{name}: alpha={alpha} seed={seed}")
                variant_rows.append({"variant": name, **run_cell(cache, cfg, alpha, seed)})
        if not variant_rows:
            continue
        rows += variant_rows
        variants[name] = {
            "overrides": plan.variants[name],
            "summary": summarise(variant_rows),
            "effects": effects(variant_rows),
            "eval_test_acc": variant_rows[0]["eval_test_acc"],
        }
        if not finished_only:  # after every variant: a long ablation shows what it has so far
            keep_fuller_results(result, log=None)
            write_results(result)
    keep_fuller_results(result, log)
    write_results(result)  # listing the cells of trailing variants with nothing finished too
    if result.stem == "results":
        for stale in (result.out_dir / "results.partial.json", result.out_dir / "results.partial.md"):
            stale.unlink(missing_ok=True)
    return result


def _cells(rows: list[dict[str, Any]]) -> set[tuple[str, float, int]]:
    return {(str(r["variant"]), float(r["alpha"]), int(r["seed"])) for r in rows}


def keep_fuller_results(result: AblationResult, log: Log | None) -> None:
    """A table never replaces a results.json holding cells it lacks (the committed results read on a fresh clone
    whose stage cache is empty, a run of fewer seeds, a long run's table after its first variants): it goes to
    results.partial.{json,md} instead; ``log`` says so."""
    result.stem = "results"
    existing = result.out_dir / "results.json"
    if not existing.is_file():
        return
    try:
        kept = _cells(load_json(existing, what="ablation results").get("rows", []))
    except (LsmiaError, AttributeError, KeyError, TypeError, ValueError):
        return  # unreadable: nothing worth keeping
    lost = kept - _cells(result.rows)
    if lost:
        result.stem = "results.partial"
        if log is not None:
            log(
                f"kept {existing} ({len(lost)} of its cells are not in this table); the table is in "
                f"{result.md_file}: delete {existing.name} to replace it"
            )


def effect_lines(result: AblationResult) -> list[str]:
    """One row per (variant, non-zero alpha): the paired effect against alpha = 0 and the paper's claim."""
    return tables.markdown_table(tables.EFFECT_COLUMNS, tables.effect_rows(result.variants))


def markdown(result: AblationResult) -> str:
    """The paper's claims per variant, then one row per (variant, alpha) with every summary metric."""
    lines = [
        *effect_lines(result),
        "",
        *tables.markdown_table(tables.summary_columns(), tables.summary_rows(result.variants)),
        "",
        tables.seeds_note(sorted({row["seed"] for row in result.rows})),
    ]
    if result.missing:
        lines += ["", tables.missing_note(result.missing)]
    return "\n".join(lines) + "\n"


def write_results(result: AblationResult) -> None:
    from lsmia.utils import atomic_path

    save_json(
        {
            "plan": result.plan.model_dump(mode="json"),
            "variants": result.variants,
            "rows": result.rows,
            "missing": result.missing,
        },
        result.json_file,
    )
    with atomic_path(result.md_file) as tmp:
        tmp.write_text(markdown(result))


def effect_metrics(result: AblationResult) -> dict[str, float]:
    """Flat ``<variant>.<effect>.alpha<α>`` means, for tracking."""
    out = {}
    for name, variant in result.variants.items():
        for effect in variant["effects"]:
            for key in ("acc1_gain", "acc1_ratio", "test_acc_cost"):
                out[f"{name}.{key}.alpha{effect['alpha']}"] = effect[key]["mean"]
    return out


# --------------------------------------------------------------------------- the targets' logit geometry


@dataclass
class FinishedTarget:
    variant: str
    cfg: Config
    alpha: float
    seed: int
    layout: CacheLayout

    @property
    def model(self) -> Path:
        return self.layout.output(graph.BY_NAME["target"], None)

    @property
    def cell(self) -> dict[str, Any]:
        return {"variant": self.variant, "alpha": self.alpha, "seed": self.seed}

    def done(self, stage: str) -> bool:
        return (self.layout.output(graph.BY_NAME[stage], None).parent / StageCache.DONE).exists()


def finished_targets(base: Config, plan: AblationPlan) -> Iterator[FinishedTarget]:
    """Every target of the plan the stage cache holds for the current code, once (under the first variant that
    names it); cells whose target is not trained yet are left out. Runs nothing."""
    configs = variant_configs(base, plan)
    alphas = plan.alphas if plan.alphas is not None else base.study.alphas
    seeds = plan.seeds if plan.seeds is not None else base.study.seeds
    cache_root = StudyPaths(Path(base.run.out_dir)).ablation_cache
    code = cache_keys.code_digests()
    seen: set[str] = set()
    for name, cfg in configs.items():
        for seed in variant_seeds(plan, name, cfg, seeds):
            for alpha in variant_alphas(plan, name, cfg, alphas):
                layout = CacheLayout(cache_root, cache_keys.stage_keys(cfg, graph.Cell(float(alpha), int(seed)), code))
                target = FinishedTarget(name, cfg, alpha, seed, layout)
                if layout.keys["target"] not in seen and target.done("target"):
                    seen.add(layout.keys["target"])
                    yield target


def logit_geometry_rows(base: Config, plan: AblationPlan) -> list[dict[str, Any]]:
    """:func:`lsmia.metrics.logits.logit_geometry` of every finished target of the plan on its private test
    images, one row per (variant, alpha, seed); a target shared by several variants appears once, under the
    first. Runs nothing: cells whose target is not trained yet are left out."""
    from lsmia.data.base import FaceData
    from lsmia.metrics.logits import logit_geometry
    from lsmia.models.classifiers import load_classifier
    from lsmia.models.inference import predict_logits

    rows: list[dict[str, Any]] = []
    datasets: dict[str, FaceData] = {}  # many targets read one data set: load it once
    for target in finished_targets(base, plan):
        data_key = target.layout.keys["data"]
        if data_key not in datasets:
            datasets[data_key] = FaceData.load(target.layout.output(graph.BY_NAME["data"], None))
        data = datasets[data_key]
        logits = predict_logits(load_classifier(target.model), data.test.images)
        rows.append({**target.cell, **logit_geometry(logits, data.test.labels)})
    return rows


def write_logit_geometry(base: Config, plan: AblationPlan, rows: list[dict[str, Any]]) -> Path:
    """``logit_geometry.{json,md}`` beside the plan's results; the markdown's path."""
    from lsmia.utils import atomic_path

    out_dir = StudyPaths(Path(base.run.out_dir)).ablation_dir(plan.name)
    save_json({"plan": plan.model_dump(mode="json"), "rows": rows}, out_dir / "logit_geometry.json")
    with atomic_path(out_dir / "logit_geometry.md") as tmp:
        tmp.write_text("\n".join(tables.logit_geometry_lines(rows)) + "\n")
    return out_dir / "logit_geometry.md"

"""The stage cache of ablations: each stage's output under a key of exactly what it reads, built once and shared.

Processes share the cache through a lock per stage folder. One process builds a plan stage by stage
(:func:`build_cell`); several build it together (:func:`build_plan` in each, e.g. ``lsmia ablate --jobs 2``): each
takes the first stage whose inputs are finished and which no other process is building, so two processes on two
cores train two targets at once instead of one waiting on the other's lock.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from lsmia.config import Config
from lsmia.experiments import graph
from lsmia.experiments import keys as cache_keys
from lsmia.experiments.graph import quiet_stage
from lsmia.infra import machine

Log = Callable[[str], None]
POLL_SECONDS = 2.0  # how often a process with nothing to start looks again (every stage it waits on runs minutes)


class CacheLayout:
    """``root/<stage>/<key>/<output>``: the key is the stage's params, code and inputs (lsmia.experiments.cache_keys.stage_keys)."""

    def __init__(self, root: Path, keys: dict[str, str]) -> None:
        self.root, self.keys = Path(root), keys

    def output(self, stage: graph.Stage, cell: graph.Cell | None) -> Path:
        return self.root / stage.name / self.keys[stage.name] / stage.output

    def side_outputs(self, stage: graph.Stage, cell: graph.Cell | None) -> dict[str, Path]:
        return {}  # no curves or plot data per cached or trial stage


@dataclass(frozen=True)
class Task:
    """One stage of one cell in the cache, and the outputs of the stages it reads."""

    stage: graph.Stage
    cfg: Config
    cell: graph.Cell | None
    layout: CacheLayout
    needs: tuple[Path, ...]

    @property
    def output(self) -> Path:
        return self.layout.output(self.stage, self.cell)


class StageCache:
    """Runs a stage into its cache folder unless a finished run is there; a ``.done`` marker, written after
    the stage returns, marks it finished (a stage may legitimately write no output file, e.g. attributes)."""

    DONE = ".done"

    def __init__(self, root: Path, device: torch.device, log: Log) -> None:
        self.root, self.device, self.log = Path(root), device, log
        self.code = cache_keys.code_digests()  # the code this run has loaded: one version for all its cells

    def ensure(self, stage: graph.Stage, cfg: Config, cell: graph.Cell | None, layout: CacheLayout) -> Path:
        """The stage's output path, built first unless done; a lock lets parallel ablations share the work."""
        path = layout.output(stage, cell)
        if not self.done(path):
            with self._lock(path) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process building this stage: wait, then reuse its output
                self._build(stage, cfg, cell, layout)
        return path

    def try_build(self, task: Task) -> bool:
        """Build ``task`` unless it is done; False, at once, while another process is building it."""
        if self.done(task.output):
            return True
        with self._lock(task.output) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._build(task.stage, task.cfg, task.cell, task.layout)
        return True

    def done(self, output: Path) -> bool:
        return self._done(output.parent, output)

    def _lock(self, output: Path) -> IO[str]:
        output.parent.mkdir(parents=True, exist_ok=True)
        return open(output.parent / ".lock", "w")

    def _build(self, stage: graph.Stage, cfg: Config, cell: graph.Cell | None, layout: CacheLayout) -> None:
        """Run the stage (its folder's lock held) unless another process finished it meanwhile."""
        folder = layout.output(stage, cell).parent
        if not self._done(folder, layout.output(stage, cell)):
            self.log(f"  {stage.name} {folder.name}: running")
            graph.run_stage(stage, cfg, cell, layout, self.device, quiet_stage)
            (folder / self.DONE).write_text(machine.fingerprint(self.device) + "\n")

    def _done(self, folder: Path, output: Path) -> bool:
        """Finished, and its output still there: a deleted output (e.g. a corrupt file removed as an error
        advised) is built again rather than reported missing for good."""
        marker = folder / self.DONE
        wrote_nothing = all(p.name in (self.DONE, ".lock") for p in folder.iterdir()) if marker.exists() else False
        if marker.exists() and (output.exists() or wrote_nothing):
            return True
        marker.unlink(missing_ok=True)
        return False

    @classmethod
    def machine(cls, output: Path) -> str:
        """The fingerprint of the machine that built ``output`` (lsmia.infra.machine), "" when its marker predates
        them."""
        marker = Path(output).parent / cls.DONE
        return marker.read_text(encoding="utf-8").strip() if marker.is_file() else ""

    def finished(self, cfg: Config, cell: graph.Cell) -> bool:
        """Whether every stage the cell's metrics need is done (nothing would run)."""
        layout = CacheLayout(self.root, cache_keys.stage_keys(cfg, cell, self.code))
        stages = graph.schedule(cfg, [cell], names=graph.upstream_of("evaluate"))
        return all((layout.output(stage, None).parent / self.DONE).exists() for stage, _ in stages)


def build_cell(cache: StageCache, cfg: Config, cell: graph.Cell, until: str = "evaluate") -> dict[str, Path]:
    """Every stage up to ``until`` that ``cell`` needs, each taken from the cache when done; their outputs."""
    layout = CacheLayout(cache.root, cache_keys.stage_keys(cfg, cell, cache.code))
    return {
        stage.name: cache.ensure(stage, cfg, stage_cell, layout)
        for stage, stage_cell in graph.schedule(cfg, [cell], names=graph.upstream_of(until))
    }


def plan_tasks(cache: StageCache, work: Iterable[tuple[Config, graph.Cell]], until: str = "evaluate") -> list[Task]:
    """Every stage up to ``until`` of every (config, cell), each once (cells share their common stages), in the
    order given: a process takes the first it can."""
    tasks: dict[Path, Task] = {}
    for cfg, cell in work:
        layout = CacheLayout(cache.root, cache_keys.stage_keys(cfg, cell, cache.code))
        scheduled = list(graph.schedule(cfg, [cell], names=graph.upstream_of(until)))
        outputs = {stage.name: layout.output(stage, stage_cell) for stage, stage_cell in scheduled}
        for stage, stage_cell in scheduled:
            needs = tuple(outputs[name] for name in stage.needs if name in outputs)
            tasks.setdefault(outputs[stage.name].parent, Task(stage, cfg, stage_cell, layout, needs))
    return list(tasks.values())


def build_plan(cache: StageCache, tasks: list[Task], poll: float = POLL_SECONDS) -> None:
    """Build every task with the other processes running this on the same tasks: each time, the heaviest task
    (``Stage.cost``; the first of the list among equals) whose inputs are done and whose lock is free: the targets
    before the attacks, so that no process waits at the end while the last target trains.

    Ends when every task is done: each pass either builds one, or sleeps while another process builds the ones
    it waits for (a process that dies frees its locks, and its task is taken over here)."""
    remaining = list(tasks)
    while remaining:
        remaining = [task for task in remaining if not cache.done(task.output)]
        ready = sorted(
            (task for task in remaining if all(cache.done(need) for need in task.needs)),
            key=lambda task: -task.stage.cost,
        )
        if not any(cache.try_build(task) for task in ready) and remaining:
            time.sleep(poll)

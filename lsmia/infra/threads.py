"""How many CPU threads a process uses: ``run.threads: auto`` takes the cores this process may run on, less
the machine's load, so a stage started beside other jobs does not oversubscribe them (measured: a prior epoch
took 8x longer with torch's default of every core on a machine kept at load 5-7 by other processes)."""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Threads = int | Literal["auto"]


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # 0: torch's default (every core)
    usable: int  # cores this process may run on
    load: float  # the other processes' load when chosen (load_average)

    def note(self) -> str | None:
        """A line for the user when the load took cores away, else None."""
        if self.threads == 0 or self.threads >= self.usable:
            return None
        return (
            f"run.threads auto: {self.threads} of {self.usable} cores (load {self.load:.1f}); set run.threads to choose"
        )


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


LOAD_SAMPLES = 9  # readings of the runnable count, LOAD_INTERVAL apart: about a second at a stage's start
LOAD_INTERVAL = 0.1


def load_average() -> float:
    """The other processes' demand for CPU now: the median number of runnable threads over about a second (Linux's
    /proc/loadavg), less this process; elsewhere the one-minute load average.

    Not the one-minute average on Linux: it still counts a pipeline's previous stage for a minute after that stage
    ended, so on an idle machine every stage of `dvc repro` after the first took one core of two."""
    samples = [_runnable() for _ in _spaced(LOAD_SAMPLES, LOAD_INTERVAL)]
    known = [count for count in samples if count is not None]
    if not known:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0
    return float(max(0.0, statistics.median(known) - 1))  # this process is running while it reads


def _spaced(count: int, interval: float):
    for index in range(count):
        if index:
            time.sleep(interval)
        yield index


def _runnable() -> int | None:
    """Threads runnable right now, machine-wide (the R of /proc/loadavg's R/T field), or None where unreadable."""
    try:
        fields = Path("/proc/loadavg").read_text(encoding="ascii").split()
        return int(fields[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def choose_threads(setting: Threads, share: int = 1) -> ThreadChoice:
    """The thread count for ``setting``: a number as given (0: torch's default); ``auto``: OMP_NUM_THREADS where
    the user set it, else the usable cores less the load (rounded), split among ``share`` local processes."""
    usable, load = usable_cores(), load_average()
    if setting != "auto":
        return ThreadChoice(int(setting), usable, load)
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return ThreadChoice(int(explicit), usable, load)
    free = min(usable, math.floor(usable - load + 0.5))
    return ThreadChoice(max(1, free // max(1, share)), usable, load)


def set_threads(setting: Threads, share: int = 1) -> ThreadChoice:
    """Apply :func:`choose_threads` to torch (intra-op threads) and return the choice."""
    import torch

    global LAST_CHOICE
    choice = choose_threads(setting, share)
    if choice.threads > 0:
        torch.set_num_threads(choice.threads)
    LAST_CHOICE = choice
    return choice


LAST_CHOICE: ThreadChoice | None = None  # what this process chose, for its runs' tags


def describe() -> str | None:
    """This process's thread choice in words (e.g. '1 of 2 cores, load 1.6'), or None before any."""
    if LAST_CHOICE is None:
        return None
    used = "torch's default" if LAST_CHOICE.threads == 0 else str(LAST_CHOICE.threads)
    return f"{used} of {LAST_CHOICE.usable} cores, load {LAST_CHOICE.load:.1f}"

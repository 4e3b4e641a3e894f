"""How many CPU threads a process uses: ``run.threads: auto`` takes the cores this process may run on, less
the machine's load, so a stage started beside other jobs does not oversubscribe them (measured: a prior epoch
took 8x longer with torch's default of every core on a machine kept at load 5-7 by other processes)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

Threads = int | Literal["auto"]


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # 0: torch's default (every core)
    usable: int  # cores this process may run on
    load: float  # the machine's one-minute load average when chosen

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


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


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

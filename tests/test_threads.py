"""run.threads: auto takes the usable cores less the machine's load; OpenMP's idle threads sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from lsmia.config import RunConfig
from lsmia.infra import threads
from tests.helpers.poll import wait_until


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """A machine with ``cores`` usable cores and one-minute load ``load``."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, load: float) -> None:
        monkeypatch.setattr(threads, "usable_cores", lambda: cores)
        monkeypatch.setattr(threads, "load_average", lambda: load)

    return set_machine


@pytest.mark.parametrize(
    ("cores", "load", "share", "expected"),
    [(2, 0.0, 1, 2), (2, 0.4, 1, 2), (2, 1.3, 1, 1), (2, 6.5, 1, 1), (16, 3.2, 1, 13), (16, 0.0, 4, 4), (4, 0.0, 8, 1)],
)
def test_auto_takes_the_free_cores(machine, cores: int, load: float, share: int, expected: int) -> None:
    machine(cores, load)
    assert threads.choose_threads("auto", share).threads == expected


def test_a_number_is_kept_and_omp_num_threads_wins_over_auto(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(8, 7.0)
    assert threads.choose_threads(3).threads == 3 and threads.choose_threads(0).threads == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose_threads("auto").threads == 5


def test_the_choice_is_described_for_the_run_s_tags(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(2, 1.6)
    monkeypatch.setattr(threads, "LAST_CHOICE", None)
    assert threads.describe() is None
    threads.set_threads("auto")
    assert threads.describe() == "1 of 2 cores, load 1.6"
    threads.set_threads(0)
    assert threads.describe() == "torch's default of 2 cores, load 1.6"


def test_the_load_is_the_median_runnable_count_less_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([3, 1, 3, 3, 2, 3, 3, 9, 3])  # a brief dip and a spike do not move the median
    monkeypatch.setattr(threads, "_runnable", lambda: next(readings))
    monkeypatch.setattr(threads, "LOAD_INTERVAL", 0.0)
    assert threads.load_average() == 2.0


def test_without_proc_loadavg_the_one_minute_average_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_runnable", lambda: None)
    monkeypatch.setattr(threads, "LOAD_INTERVAL", 0.0)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 0.5, 0.2))
    assert threads.load_average() == 1.5


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="reads Linux's /proc/loadavg")
def test_busy_processes_count_while_they_run_and_not_after() -> None:
    """The one-minute average still counted a pipeline's finished stage, so on an idle 2-core machine every later
    stage took one core; the runnable count forgets a process once it has ended."""
    before = threads.load_average()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        wait_until(lambda: threads.load_average() >= before + 1.5, timeout=60, what="two busy processes counted")
    finally:
        for process in busy:
            process.kill()
            process.wait()
    wait_until(lambda: threads.load_average() <= before + 0.5, timeout=60, what="the ended processes forgotten")


def test_the_schema_takes_auto_or_a_count() -> None:
    assert RunConfig().threads == "auto" and RunConfig(threads=2).threads == 2
    for bad in (-1, "many"):
        with pytest.raises(ValidationError):
            RunConfig(threads=bad)


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (
        {"OMP_WAIT_POLICY": given} if given else {}
    )
    code = "import lsmia, os; print(os.environ['OMP_WAIT_POLICY'])"
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == expected
    )

"""run.threads: auto takes the usable cores less the machine's load; OpenMP's idle threads sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from lsmia import threads
from lsmia.config import RunConfig


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

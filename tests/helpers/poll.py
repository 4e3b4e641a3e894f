"""Waiting for something another process or thread does: poll until it holds, never a fixed sleep.

The timeout bounds a wait that would otherwise hang; it is no speed check (speed is measured by the scripts under
bench/), so give it room for a loaded machine.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``condition`` every ``interval`` s until it returns something true, and return that; fail the test,
    naming ``what`` it waited for, once ``timeout`` s have passed. ``condition`` may itself fail the test early (an
    assert that the process it waits on is still alive)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout:g} s for {what}")
        time.sleep(interval)


def kill_once_written(
    command: list[str], cwd: Path, env: dict[str, str], written: Path, how: int, timeout: float
) -> None:
    """Start ``command`` and send it signal ``how`` as soon as it has written ``written`` (a first checkpoint); fail
    the test if it never does."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: written.exists() or proc.poll() is not None, timeout, f"{written.name}", interval=0.01)
    finally:
        proc.send_signal(how)
        proc.wait()
    assert written.exists(), f"{' '.join(command[3:])} never wrote {written}"

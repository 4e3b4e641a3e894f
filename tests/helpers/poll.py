"""Waiting for something another process or thread does: poll until it holds, never a fixed sleep.

The timeout bounds a wait that would otherwise hang; it is no speed check (speed is measured by the scripts under
bench/), so give it room for a loaded machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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

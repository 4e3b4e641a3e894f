"""The lsmia CLI run in-process from a folder, as a user runs it there."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner, Result

from lsmia.cli import app


def invoke_in(cwd: Path, *args: str) -> Result:
    """``lsmia ARGS`` run from ``cwd`` (the working folder restored after)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(old)


def succeed_in(cwd: Path, *args: str) -> str:
    """``lsmia ARGS`` from ``cwd``, which must succeed; its output."""
    result = invoke_in(cwd, *args)
    assert result.exit_code == 0, result.output
    return result.output

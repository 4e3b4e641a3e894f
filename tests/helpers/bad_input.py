"""Running the CLI on bad input: the one line ``error: ...``, exit code 2, and earlier outputs left as they were."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from typer.testing import CliRunner, Result

from lsmia.cli import app

runner = CliRunner()


def cli(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_one_line_error(result: Result, *needles: str, absent: tuple[str, ...] = ()) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # progress lines may come first
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    for needle in absent:
        assert needle not in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (locks excluded) and the digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lsmia.lock")
    }


def working_copy(earlier: Path, tmp_path: Path, monkeypatch, symlinks: bool = False) -> Path:
    """A copy of an earlier study as the working directory, so each test starts from the same outputs."""
    root = tmp_path / "study"
    shutil.copytree(earlier, root, symlinks=symlinks)
    monkeypatch.chdir(root)
    return root

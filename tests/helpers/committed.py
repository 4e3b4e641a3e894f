"""The repository's committed files, not the live workspace: a user's `dvc exp run -S ...` or `dvc repro` rewrites
params.yaml, out/metrics and out/plots, and tests must not change their verdict with it."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from tests.helpers.paths import ROOT


def _in_git() -> bool:
    done = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def committed_text(path: str) -> str:
    """The file at ``path`` (relative to the repository) as committed at HEAD; the working copy outside git."""
    if not _in_git():
        return (ROOT / path).read_text()
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def export_committed(path: str, dest: Path) -> Path:
    """Write the file or folder ``path`` as committed at HEAD under ``dest`` (same relative path); its new path."""
    if not _in_git():
        import shutil

        source, target = ROOT / path, dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
        return target
    archive = subprocess.run(["git", "archive", "HEAD", path], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / path

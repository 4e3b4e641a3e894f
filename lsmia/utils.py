"""Small shared helpers: devices, seeding, atomic file output, progress."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from lsmia.errors import LsmiaError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LsmiaError("--device cuda was asked for but no CUDA device is available: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise LsmiaError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_torch(obj: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path | str, what: str = "file", fix: str = "run the stage that writes it first") -> Any:
    path = Path(path)
    if not path.exists():
        raise LsmiaError(f"{what} {path} does not exist: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign pickle
        raise LsmiaError(f"{what} {path} cannot be read ({type(err).__name__}): delete it and re-run its stage") from None


def save_json(obj: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: Path | str, what: str = "file", fix: str = "run the stage that writes it first") -> Any:
    path = Path(path)
    if not path.exists():
        raise LsmiaError(f"{what} {path} does not exist: {fix}")
    return json.loads(path.read_text())


def progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
    """A progress bar on a terminal; plain occasional lines otherwise."""
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return _plain_progress(iterable, total, desc)


def _plain_progress(iterable: Iterable, total: int | None, desc: str) -> Iterator:
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    every = max(1, (total or 10) // 10)
    for i, item in enumerate(iterable):
        yield item
        if total and ((i + 1) % every == 0 or i + 1 == total):
            print(f"{desc}: {i + 1}/{total}", file=sys.stderr, flush=True)

"""Small shared helpers: devices, seeding, atomic file output, progress."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from lsmia.errors import DISK_FULL, LsmiaError, disk_full_error, from_os_error

T = TypeVar("T")
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, metrics) after each training epoch


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


LOW_DISK_SPACE = 1 << 20  # bytes: a write that fails with less than this left failed for want of space


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(folder: bool = False) -> int:
    """The mode a plain ``open`` (0666) or ``mkdir`` (0777) would give under the umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _out_of_space(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return True
    try:  # torch.save reports a short write as RuntimeError("unexpected pos ...")
        return shutil.disk_usage(folder).free < LOW_DISK_SPACE
    except OSError:
        return False


def write_error(err: BaseException, path: Path) -> LsmiaError | None:
    """The one-line error for a failed write of ``path`` (full disk, read-only, wrong kind); None if unknown."""
    if _out_of_space(err, path.parent):
        return disk_full_error(path)
    return from_os_error(err, path) if isinstance(err, OSError) else None


def _temporary_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise (write_error(err, path) or err) from None
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp's files are 0600
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def removed_on_sigterm(tmp_path: Path) -> Iterator[None]:
    """Delete ``tmp_path`` if SIGTERM arrives in the block, then let the signal act as it would have.

    SIGTERM's default action ends the process without running ``finally`` blocks, which would leave the
    temporary file inside an output folder (a DVC output) for good. Only the main thread can handle signals;
    elsewhere, or where SIGTERM is ignored or handled outside Python, the block runs unchanged."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return

    def remove_then_resend(signum: int, frame: object) -> None:
        tmp_path.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)  # the default action ends the process; a Python handler runs

    signal.signal(signal.SIGTERM, remove_then_resend)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is remove_then_resend:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The file gets the umask's permissions; a full disk, a read-only folder or a file where a folder
    should be is a one-line LsmiaError naming ``path``, and an earlier ``path`` stays as it was. The
    temporary file is removed on an exception and on SIGTERM.
    """
    path = Path(path)
    tmp_path = _temporary_beside(path)
    try:
        with removed_on_sigterm(tmp_path):
            yield tmp_path
            os.replace(tmp_path, path)
    except (OSError, RuntimeError) as err:
        translated = write_error(err, path)
        if translated is None:
            raise
        raise translated from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; swap it in for ``path`` only if the block succeeds.

    Renames only, so a reader sees the old folder or the new one, never a half-written one; the staging folder
    is removed on an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    staging.chmod(new_file_mode(folder=True))  # mkdtemp makes it private: give it the umask's mode like mkdir
    try:
        yield staging
        swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(staging: Path, path: Path) -> None:
    """Replace the folder ``path`` by ``staging`` with renames only (os.replace cannot replace a full folder)."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, old / path.name)
    try:
        os.replace(staging, path)
    except OSError:
        os.replace(old / path.name, path)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def save_torch(obj: Any, path: Path | str) -> None:
    # through an open handle: torch.save(obj, name) stores the (random) temp file name in the zip archive,
    # so two saves of the same object would differ in bytes and DVC would see every re-run as a change
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def load_torch(
    path: Path | str,
    what: str = "file",
    fix: str = "run the stage that writes it first",
    keys: Sequence[str] | None = None,
) -> Any:
    """A torch file's contents (tensors and plain data only); ``keys``: it must be a mapping holding them."""
    path = Path(path)
    if not path.exists():
        raise LsmiaError(f"{what} {path} does not exist: {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign pickle
        raise LsmiaError(
            f"{what} {path} cannot be read ({type(err).__name__}): delete it and re-run its stage"
        ) from None
    return obj if keys is None else require_keys(obj, keys, f"{what} {path}", fix)


def require_keys(obj: Any, keys: Sequence[str], where: str, fix: str) -> dict[str, Any]:
    """``obj`` if it is a mapping holding ``keys``; else a one-line LsmiaError naming what ``where`` holds instead
    (a valid file of another kind: a list, a metrics file where results are expected)."""
    expected = f"a mapping with {', '.join(repr(k) for k in keys)}" if keys else "a mapping"
    if not isinstance(obj, dict):
        raise LsmiaError(f"{where} holds a {type(obj).__name__}, not {expected}: {fix}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise LsmiaError(f"{where} has no {missing[0]!r} (a file of another kind?), expected {expected}: {fix}")
    return obj


def save_json(obj: Any, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


TIMINGS_SUFFIX = ".timings"  # JSON content; no .json suffix, so no *.json glob picks a sidecar up


def timings_path(output: Path | str) -> Path:
    """The wall-clock sidecar of an output file or folder: ``<output>.timings`` beside it.

    Seconds differ on every run, so they never go into an output itself (DVC would see each re-run as a
    change); git and DVC ignore ``*.timings`` (.gitignore, .dvcignore).
    """
    output = Path(output)
    return output.parent / f"{output.name}{TIMINGS_SUFFIX}"


def save_timings(output: Path | str, seconds: dict[str, float]) -> None:
    save_json({k: round(float(v), 3) for k, v in seconds.items()}, timings_path(output))


def load_timings(output: Path | str) -> dict[str, float]:
    path = timings_path(output)
    return json.loads(path.read_text()) if path.exists() else {}


def file_digest(path: Path | str, length: int = 16) -> str:
    """The first ``length`` hex digits of the file's sha256 (read in 1 MiB chunks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def load_json(
    path: Path | str,
    what: str = "file",
    fix: str = "run the stage that writes it first",
    keys: Sequence[str] | None = None,
) -> Any:
    """A JSON file's contents; ``keys``: it must be an object holding them."""
    path = Path(path)
    if not path.exists():
        raise LsmiaError(f"{what} {path} does not exist: {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise LsmiaError(f"{what} {path} cannot be read as JSON ({reason}): delete it and re-run its stage") from None
    return obj if keys is None else require_keys(obj, keys, f"{what} {path}", fix)


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str, fix: str) -> None:
    """Fail before allocating: ``what`` needs ``nbytes``, more than the memory available."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise LsmiaError(
            f"{what} needs about {human_bytes(nbytes)} of memory but only {human_bytes(available)} is available: {fix}"
        )


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
    """A progress bar on a terminal; plain occasional lines otherwise."""
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False)
    return _plain_progress(iterable, total, desc)


def _plain_progress(iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """``desc: i/total (elapsed, about N s left)`` about ten times, the last item included."""
    import time

    total = total if total is not None else (len(iterable) if isinstance(iterable, Sized) else None)
    every = max(1, (total or 10) // 10)
    started = time.perf_counter()
    for i, item in enumerate(iterable):
        yield item
        if total and ((i + 1) % every == 0 or i + 1 == total):
            print(
                f"{desc}: {i + 1}/{total} ({time_left(time.perf_counter() - started, i + 1, total)})",
                file=sys.stderr,
                flush=True,
            )


def time_left(elapsed: float, done: int, total: int) -> str:
    """``12 s, about 30 s left`` from the mean time per item so far; ``12 s, done`` at the end."""
    if done >= total:
        return f"{_seconds(elapsed)}, done"
    return f"{_seconds(elapsed)}, about {_seconds(elapsed / done * (total - done))} left"


def _seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"

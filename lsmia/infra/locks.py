"""Output locks: one writer per output folder or file at a time.

A stage holds an exclusive ``flock`` on ``.<name>.lsmia.lock`` beside its output (outside the output,
so DVC never hashes it; .dvcignore and .gitignore list the pattern anyway) while it writes. A second
writer fails at once with a one-line error naming the holder's pid and command, instead of
silently overwriting the first one's results. The lock file is removed on release; the kernel drops
the lock of a killed process, so a stale file never blocks anyone.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lsmia.errors import LsmiaError, from_os_error

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lsmia.lock"
MAX_COMMAND = 200


def lock_file(target: Path | str) -> Path:
    """The lock file of an output folder or file: ``.<name>.lsmia.lock`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def holder_text() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    return f"pid {os.getpid()}: {command[:MAX_COMMAND]}"


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder the stage wrote into is not empty and stays
        try:
            folder.rmdir()
        except OSError:
            return


def _open_lock(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise (from_os_error(err, path.parent) or err) from None


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "pid unknown"
    except OSError:
        return "pid unknown"


def _still_linked(fd: int, path: Path) -> bool:
    """False when the lock file was removed (and maybe re-created) between our open and our lock."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(target: Path, path: Path) -> int:
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LsmiaError(
                f"{target} is being written by another lsmia process ({holder}): wait for it to end "
                "or write elsewhere (--out-dir, run.out_dir)"
            ) from None
        if _still_linked(fd, path):
            return fd
        os.close(fd)


def _write_holder(fd: int) -> None:
    """Who holds the lock, for the error a second writer gets (best effort: on a full disk it stays empty)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode("utf-8"), 0)
    except OSError:
        pass


STALE_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # lsmia.utils.atomic_path: mkstemp adds 8 characters


def remove_stale_temporaries(target: Path | str) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left in (or beside) ``target``.

    Only safe while holding ``target``'s output lock (lsmia.infra.locks.output_lock): no other writer is then
    using them. A folder is searched throughout; for a file, its own temporaries beside it."""
    target = Path(target)
    beside = target.parent.glob(f".{glob.escape(target.name)}.*.tmp")
    candidates = target.rglob("*.tmp") if target.is_dir() else beside
    removed = []
    for candidate in candidates:
        if STALE_TEMPORARY.match(candidate.name) and candidate.is_file() and not candidate.is_symlink():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextmanager
def output_lock(target: Path | str) -> Iterator[Path]:
    """Hold the write lock of ``target`` (a folder or a file) for the block; yields the lock file's path."""
    path = lock_file(target)
    if fcntl is None:
        yield path
        return
    created = _missing_folders(path.parent)
    fd = _acquire(Path(target), path)
    try:
        _write_holder(fd)
        _check_nesting(Path(target))  # after taking ours: of two nested writers, the second always sees the first
        remove_stale_temporaries(target)  # of a writer killed (SIGKILL) mid-write; no other writer uses them now
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # while still holding it: a waiting opener sees the unlink and retries
        finally:
            os.close(fd)
            _remove_if_empty(created)  # a stage that failed before writing leaves no empty folders


def _held_by_other(path: Path) -> str | None:
    """The holder of the write lock ``path`` when another process holds it now, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _check_nesting(target: Path) -> None:
    """One writer per folder *tree*: a study writing ``out`` and a training writing ``out/models/x`` took two
    different locks and both wrote. Refuse when a folder above ``target`` or a file or folder inside it is being
    written by another process."""
    for parent in target.resolve().parents:
        holder = _held_by_other(lock_file(parent))
        if holder is not None:
            raise LsmiaError(
                f"{target} is inside {parent}, which another lsmia process is writing ({holder}): wait for it to "
                "end or write elsewhere (--out-dir, run.out_dir)"
            )
    if target.is_dir():
        for inner in target.rglob(f".*{LOCK_SUFFIX}"):
            holder = _held_by_other(inner)
            if holder is not None:
                written = inner.parent / inner.name[1 : -len(LOCK_SUFFIX)]
                raise LsmiaError(
                    f"{written} inside {target} is being written by another lsmia process ({holder}): wait for it "
                    "to end or write elsewhere (--out-dir, run.out_dir)"
                )


@contextmanager
def output_locks(*targets: Path | str | None, enabled: bool = True) -> Iterator[None]:
    """Hold the locks of every given target (None skipped); a no-op when not ``enabled`` (e.g. torchrun rank > 0)."""
    with ExitStack() as stack:
        for target in targets if enabled else ():
            if target is not None:
                stack.enter_context(output_lock(target))
        yield


@contextmanager
def wait_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` for the block, waiting for another holder (another
    process or, on a shared file system, another machine) to release it; the file stays (it may be re-used)."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)

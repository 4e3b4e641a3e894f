"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations

import errno

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
WRONG_KIND = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
OUTPUT_FIX = "or write elsewhere (run.out_dir, --out-dir, --out)"


class LsmiaError(Exception):
    """An error caused by bad input; the CLI prints it on one line and exits with code 2."""


class DivergenceError(LsmiaError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


def disk_full_error(path: object) -> LsmiaError:
    return LsmiaError(f"the disk is full: no space left to write {path}: free space on it {OUTPUT_FIX}")


def os_error_message(err: OSError, path: object = None) -> str | None:
    """One line naming an operating-system failure of reading or writing ``path`` and its fix; None if unknown."""
    path = path if path is not None else (err.filename or "a file")
    code = err.errno
    if code in DISK_FULL:
        return str(disk_full_error(path))
    if code == errno.EROFS:
        return f"cannot write {path}: the file system is read-only: remount it writable {OUTPUT_FIX}"
    if code in NOT_WRITABLE:
        return f"permission denied for {path}: give this user access to it {OUTPUT_FIX}"
    if code == errno.EISDIR:
        return f"{path} is a folder where a file is needed: move it away or name a file"
    if code in WRONG_KIND:
        return f"{path}: a file stands where a folder is needed: move that file away {OUTPUT_FIX}"
    return None


def from_os_error(err: OSError, path: object = None) -> LsmiaError | None:
    """The LsmiaError for an operating-system failure the user can fix (full disk, read-only, wrong kind)."""
    message = os_error_message(err, path)
    return None if message is None else LsmiaError(message)


def printable(value: object) -> str:
    """``value`` as text with its control characters escaped (``\\n``), so a message naming it stays one line."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(value))

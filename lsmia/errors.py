"""User-facing errors: one line naming the problem and the fix, exit code 2."""


class LsmiaError(Exception):
    """An error caused by bad input; the CLI prints it on one line and exits with code 2."""


class DivergenceError(LsmiaError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

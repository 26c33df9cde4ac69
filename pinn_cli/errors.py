"""Errors that the CLI reports as one line, without a traceback."""


class PinnError(Exception):
    """A problem the user can fix; the CLI prints its message alone and exits non-zero."""


class PinnConfigError(PinnError, ValueError):
    """A configuration value that is out of range or not known."""


class SweepStopped(BaseException):
    """A signal stopped a job of a local sweep: once the job has saved, the sweep ends (a BaseException,
    so Hydra's launcher, which records an Exception as a failed job and goes on, lets it through)."""

"""Errors that the CLI reports as one line, without a traceback."""


class PinnError(Exception):
    """A problem the user can fix; the CLI prints its message alone and exits non-zero."""


class PinnConfigError(PinnError, ValueError):
    """A configuration value that is out of range or not known."""

"""Errors that the CLI reports as one line, without a traceback."""


class PinnError(Exception):
    """A problem the user can fix; the CLI prints its message alone and exits non-zero."""


class PinnConfigError(PinnError, ValueError):
    """A configuration value that is out of range or not known."""


class RunDirInUse(PinnConfigError):
    """A fresh run was refused because its run directory holds another run's checkpoints; it wrote nothing
    there (a sweep whose every job met this puts its earlier ``multirun.yaml`` back, see sweep.py)."""


class SweepFailed(Exception):
    """Jobs of a sweep failed. ``jobs`` holds each failed job's label (number and swept overrides) and its
    error, in job order: the CLI says one line for each, where Hydra's sweeper would raise only the first."""

    def __init__(self, jobs: list[tuple[str, BaseException]]) -> None:
        super().__init__(f"{len(jobs)} job(s) of the sweep failed")
        self.jobs = jobs


class SweepStopped(BaseException):
    """A signal stopped a job of a local sweep: once the job has saved, the sweep ends (a BaseException,
    so Hydra's launcher, which records an Exception as a failed job and goes on, lets it through)."""


RANK_GRACE_S = 15.0


def say_once(line: str) -> None:
    """Print an error line to stderr once across torchrun ranks. Every rank usually meets the same bad
    value; rank 0 says it. A rank > 0 waits first: torchrun ends every rank as soon as one exits, so if
    it exited at once rank 0 could be killed before saying anything. If rank 0 did not fail (the
    problem is this rank's own), the line comes after the wait, naming the rank."""
    import os
    import signal
    import sys
    import time

    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    if rank != "0" and world.isdigit() and int(world) > 1:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(RANK_GRACE_S)
        line = f"{line} (rank {rank})"
    print(line, file=sys.stderr, flush=True)

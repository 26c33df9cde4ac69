"""The parent process of a sweep (``pinn train -m``): what it keeps of its jobs and says at the end.

Hydra's launchers hand every job's return (status, overrides, the error of a failed job) back to the
sweeper, which then raises the first failure alone. :func:`kept_job_returns` keeps those returns as the
launcher hands them over, so that :func:`end_failed_sweep` can name every failed job, and can tell a
re-run whose every job was refused (nothing of it trained) from one that trained something.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf

from .errors import RunDirInUse, SweepFailed
from .hydra_record import restore_earlier_multirun


@dataclass
class SweepReturns:
    """The sweep directory and every job return a launcher has handed back so far, in job order."""

    sweep_dir: Path | None = None
    returns: list[JobReturn] = field(default_factory=list)


class _KeepReturns(Launcher):
    """The sweeper's launcher, passing each batch's job returns to ``kept`` as well. It wraps the launcher
    the config names rather than changing it: submitit pickles that launcher into every job."""

    def __init__(self, launcher: Launcher, kept: SweepReturns) -> None:
        self._launcher, self._kept = launcher, kept

    def setup(self, *args, **kwargs) -> None:
        self._launcher.setup(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        results = self._launcher.launch(job_overrides, initial_job_idx)
        self._kept.returns.extend(results)
        return results

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._launcher, name)


@contextmanager
def kept_job_returns() -> Iterator[SweepReturns]:
    """While inside, every launcher a sweeper gets from Hydra (``Plugins.instantiate_launcher``, which the
    basic and Optuna sweepers call in their setup) hands its job returns to the yielded record too. The
    sweep directory is read from the same config object the sweeper then writes ``multirun.yaml`` from,
    so a ``${now:...}`` in it resolves to the same folder."""
    kept = SweepReturns()
    original = Plugins.instantiate_launcher

    def instantiate(self: Plugins, hydra_context, task_function, config: DictConfig) -> Launcher:
        launcher = original(self, hydra_context=hydra_context, task_function=task_function, config=config)
        sweep = OmegaConf.select(config, "hydra.sweep.dir")
        kept.sweep_dir = Path(str(sweep)) if sweep else None
        return _KeepReturns(launcher, kept)

    Plugins.instantiate_launcher = instantiate
    try:
        yield kept
    finally:
        Plugins.instantiate_launcher = original


def job_error(ret: JobReturn) -> BaseException:
    """The exception a failed job raised (``JobReturn.return_value`` would raise it, and print Hydra's
    "Error executing job" line besides)."""
    return ret._return_value


def swept_overrides(returns: Sequence[JobReturn]) -> list[list[str]]:
    """Each job's overrides minus those every job shares: what tells the jobs apart."""
    lists = [list(r.overrides or []) for r in returns]
    common = set.intersection(*map(set, lists)) if lists else set()
    return [[o for o in overrides if o not in common] for overrides in lists]


def job_label(ret: JobReturn, position: int, swept: list[str]) -> str:
    """``job 2 (trainer.steps=-2)``: the job's number (its folder under the sweep directory by default) and
    the overrides that set it apart."""
    num = OmegaConf.select(ret.hydra_cfg, "hydra.job.num", default=position) if ret.hydra_cfg else position
    return f"job {num} ({' '.join(swept)})" if swept else f"job {num}"


def failed_jobs(returns: Sequence[JobReturn]) -> list[tuple[str, BaseException]]:
    """(label, error) of each failed job, in job order."""
    swept = swept_overrides(returns)
    return [(job_label(r, i, swept[i]), job_error(r)) for i, r in enumerate(returns) if r.status == JobStatus.FAILED]


def all_refused(returns: Sequence[JobReturn]) -> bool:
    """Whether every job of the sweep was refused for a run directory that holds checkpoints."""
    return bool(returns) and all(r.status == JobStatus.FAILED and isinstance(job_error(r), RunDirInUse)
                                 for r in returns)


def end_failed_sweep(kept: SweepReturns) -> SweepFailed | None:
    """The :class:`SweepFailed` that names every failed job of a sweep Hydra ended with an error (its
    first failed job's), or None when no job failed (the error came from elsewhere).

    ``multirun.yaml`` is put back from the copy taken at the start (hydra_record.py) only when every job
    was refused: that re-run trained nothing and each job's ``.hydra/`` record was restored, so the earlier
    file describes everything the directory holds. When some jobs ran, the new file stays: it is the only
    description of the sweep that trained those jobs, the earlier one is kept under ``.earlier/``, and each
    job's own ``.hydra/`` record (what ``pinn summarize`` reads) holds its settings either way."""
    failed = failed_jobs(kept.returns)
    if not failed:
        return None
    if kept.sweep_dir is not None and all_refused(kept.returns):
        restore_earlier_multirun(kept.sweep_dir)
    return SweepFailed(failed)


def run_sweep_aware(main: Callable[[], object]) -> None:
    """Run Hydra's entry point ``main``; a sweep with failed jobs ends in :class:`SweepFailed` naming them
    all, raised from Hydra's error (the first failure) so that its traceback stays in the chain."""
    with kept_job_returns() as kept:
        try:
            main()
        except Exception as err:
            failure = end_failed_sweep(kept)
            if failure is None:
                raise
            raise failure from err
    say_tolerated(kept)


def say_tolerated(kept: SweepReturns) -> None:
    """Jobs that failed in a sweep that still succeeded (a sweeper such as Optuna's tolerates failed trials
    up to its ``max_failure_rate``): one warning line each on stderr, since Hydra's own line is hidden."""
    import sys

    from .cli import error_line

    for label, err in failed_jobs(kept.returns):
        print(f"pinn train: warning: {label} failed (the sweep went on): {error_line(err)[0]}", file=sys.stderr)

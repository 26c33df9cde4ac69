"""A Hydra callback that keeps a run directory's earlier record when a run reuses the directory.

Hydra rewrites ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` at every start, so a
resume into the same directory (``trainer.resume=auto``), failed or not, would replace the record
of the run that wrote the checkpoint. Before that happens the old files are copied to
``.hydra/earlier/<time they were written>/`` (for a sweep: every job folder already in the sweep
directory, and the sweep's own ``multirun.yaml`` to ``.earlier/<time>/``). A fresh run that is then
refused, because the directory holds another run's checkpoints, puts that record back
(:func:`restore_earlier_record`; a sweep whose every job was refused, :func:`restore_earlier_multirun`).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")
MULTIRUN = ("multirun.yaml",)
SWEEP_EARLIER = ".earlier"


def keep_earlier(folder: Path, names: tuple[str, ...], earlier: Path) -> Path | None:
    """Copy ``folder``'s files ``names`` into ``earlier/<mtime of the first>/``; that copy's folder, or None
    when the first is missing (nothing to keep)."""
    first = folder / names[0]
    if not first.is_file():
        return None
    dest = earlier / time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(first.stat().st_mtime))
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (folder / name).is_file():
            shutil.copy2(folder / name, dest / name)
    return dest


def restore_earlier(folder: Path, names: tuple[str, ...], earlier: Path) -> None:
    """Put the newest copy under ``earlier/`` (the one taken when this start began) back into ``folder``;
    nothing when there is none."""
    copies = sorted(p for p in earlier.glob("*") if (p / names[0]).is_file())
    if copies:
        for name in names:
            if (copies[-1] / name).is_file():
                shutil.copy2(copies[-1] / name, folder / name)


def keep_earlier_record(record: Path) -> Path | None:
    """Copy ``record``'s files into ``record/earlier/<mtime>/``; the copy's folder, or None if none."""
    return keep_earlier(record, RECORD, record / "earlier")


def restore_earlier_record(record: Path) -> None:
    """Put the newest copy under ``record/earlier/`` back into ``record``: the record of the run whose
    checkpoints the directory holds, after a refused start rewrote it."""
    restore_earlier(record, RECORD, record / "earlier")


def keep_earlier_multirun(sweep: Path) -> Path | None:
    """Copy ``sweep/multirun.yaml`` into ``sweep/.earlier/<mtime>/`` before Hydra's sweeper rewrites it."""
    return keep_earlier(sweep, MULTIRUN, sweep / SWEEP_EARLIER)


def restore_earlier_multirun(sweep: Path) -> None:
    """Put the newest copy of ``multirun.yaml`` back: the description of the sweep that trained the jobs,
    after a re-run whose every job was refused rewrote it."""
    restore_earlier(sweep, MULTIRUN, sweep / SWEEP_EARLIER)


class KeepEarlierRecord(Callback):
    """``hydra.callbacks``: runs before Hydra writes the new record of a single run or of a sweep's jobs."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir, sub = OmegaConf.select(config, "hydra.run.dir"), OmegaConf.select(config, "hydra.output_subdir")
        if run_dir and sub:
            keep_earlier_record(Path(run_dir) / sub)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep, sub = OmegaConf.select(config, "hydra.sweep.dir"), OmegaConf.select(config, "hydra.output_subdir")
        if sweep and Path(sweep).is_dir():
            keep_earlier_multirun(Path(sweep))
            if sub:
                for record in Path(sweep).glob(f"*/{sub}"):
                    keep_earlier_record(record)

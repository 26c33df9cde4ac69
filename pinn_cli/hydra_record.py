"""A Hydra callback that keeps a run directory's earlier record when a run reuses the directory.

Hydra rewrites ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` at every start, so a
resume into the same directory (``trainer.resume=auto``), failed or not, would replace the record
of the run that wrote the checkpoint. Before that happens the old files are copied to
``.hydra/earlier/<time they were written>/`` (for a sweep: every job folder already in the sweep
directory). A fresh run that is then refused, because the directory holds another run's
checkpoints, puts that record back (:func:`restore_earlier_record`).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")


def keep_earlier_record(record: Path) -> Path | None:
    """Copy ``record``'s files into ``record/earlier/<mtime>/``; the copy's folder, or None if none."""
    first = record / "config.yaml"
    if not first.is_file():
        return None
    dest = record / "earlier" / time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(first.stat().st_mtime))
    dest.mkdir(parents=True, exist_ok=True)
    for name in RECORD:
        if (record / name).is_file():
            shutil.copy2(record / name, dest / name)
    return dest


def restore_earlier_record(record: Path) -> None:
    """Put the newest copy under ``record/earlier/`` back into ``record``: the record of the run whose
    checkpoints the directory holds, after a refused start rewrote it."""
    copies = sorted(p for p in (record / "earlier").glob("*") if (p / "config.yaml").is_file())
    if copies:
        for name in RECORD:
            if (copies[-1] / name).is_file():
                shutil.copy2(copies[-1] / name, record / name)


class KeepEarlierRecord(Callback):
    """``hydra.callbacks``: runs before Hydra writes the new record of a single run or of a sweep's jobs."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir, sub = OmegaConf.select(config, "hydra.run.dir"), OmegaConf.select(config, "hydra.output_subdir")
        if run_dir and sub:
            keep_earlier_record(Path(run_dir) / sub)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep, sub = OmegaConf.select(config, "hydra.sweep.dir"), OmegaConf.select(config, "hydra.output_subdir")
        if sweep and sub and Path(sweep).is_dir():
            for record in Path(sweep).glob(f"*/{sub}"):
                keep_earlier_record(record)

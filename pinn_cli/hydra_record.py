"""A Hydra callback that keeps a run directory's earlier record when a run reuses the directory.

Hydra rewrites ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` at every start, so a
resume into the same directory (``trainer.resume=auto``), failed or not, would replace the record
of the run that wrote the checkpoint. Before that happens the old files are copied to
``.hydra/earlier/<time they were written>/``.
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


class KeepEarlierRecord(Callback):
    """``hydra.callbacks``: runs before Hydra writes the new record of a single run."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        run_dir, sub = OmegaConf.select(config, "hydra.run.dir"), OmegaConf.select(config, "hydra.output_subdir")
        if run_dir and sub:
            keep_earlier_record(Path(run_dir) / sub)

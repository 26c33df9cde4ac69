"""Atomic checkpoint files: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from .errors import PinnError


def write_json(obj: dict, path: Path) -> None:
    """Write ``obj`` as JSON so a reader sees either the old or the new file, never a torn one."""
    import json

    _atomic(path, "w", lambda fh: fh.write(json.dumps(obj, indent=2) + "\n"))


def save(obj: dict, path: Path) -> None:
    """Write ``obj`` to ``path`` so a reader sees either the old or the new file, never a torn one."""
    _atomic(path, "wb", lambda fh: torch.save(obj, fh))


def _atomic(path: Path, mode: str, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, synced, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; run files are as readable as the others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path: Path, map_location="cpu") -> dict:
    """Read a checkpoint, with a one-line error when it is missing or not a pinn checkpoint."""
    path = Path(path)
    if path.is_dir():
        hint = f"; its checkpoints are in {path / 'checkpoints'}" if (path / "checkpoints").is_dir() else ""
        raise PinnError(f"checkpoint {path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise PinnError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise PinnError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__})") from None
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise PinnError(f"checkpoint {path} is not a pinn checkpoint")
    return obj


def last_good(ckpt_dir: Path) -> str:
    """The end of a divergence message: where the last good checkpoint is, or that none was saved."""
    path = ckpt_dir / "last.pt"
    if path.is_file():
        return f"the last good checkpoint is {path}"
    return "no checkpoint was saved before it (trainer.checkpoint_every sets how often one is)"

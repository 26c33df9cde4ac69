"""Where the Hydra configs live: the packaged copy when installed, the repository's configs/ in a checkout."""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Absolute path of the configs directory (absolute so it works from any working directory)."""
    packaged = _PKG / "configs"
    if (packaged / "train.yaml").is_file():
        return packaged
    return _PKG.parent / "configs"

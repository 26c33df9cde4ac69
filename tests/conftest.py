"""Shared fixtures: configs built with Hydra's compose API, as the CLI would build them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from pinn_cli.paths import config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = config_dir()
EQUATIONS = sorted(p.stem for p in (CONFIGS / "equation").glob("*.yaml"))


def make_cfg(*overrides: str) -> DictConfig:
    """The composed train config with ``overrides``, progress bar off."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.progress=false", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield

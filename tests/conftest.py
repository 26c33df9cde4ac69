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


def signal_at_adam_step(monkeypatch, n: int, signum: int | None = None) -> None:
    """Make the n-th Adam step of the runs that follow send this process ``signum`` (SIGUSR1): a
    preemption at an exact step."""
    import signal

    from pinn_cli.optim import OptimizerSchedule

    real, calls = OptimizerSchedule.adam_step, []

    def step(self, loss_fn):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signum or signal.SIGUSR1)
        return real(self, loss_fn)

    monkeypatch.setattr(OptimizerSchedule, "adam_step", step)

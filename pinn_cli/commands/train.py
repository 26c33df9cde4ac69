"""``pinn train``: the Hydra entry point that runs one training job per config."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..errors import PinnError
from ..paths import config_dir

log = logging.getLogger("pinn")


def train_task(cfg: DictConfig) -> float:
    """Run one job in Hydra's output directory; returns rel L2 (what sweepers minimise)."""
    from ..training import run_training
    from ..summary import print_summary

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_training(cfg, run_dir)
    except PinnError as err:
        log.error("%s", err)
        raise
    print_summary(metrics, run_dir)
    return float(metrics["rel_l2"])


main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(train_task)

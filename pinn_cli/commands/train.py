"""``pinn train``: the Hydra entry point that runs one training job per config."""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ..errors import PinnError
from ..paths import config_dir

log = logging.getLogger("pinn")


def train_task(cfg: DictConfig) -> float:
    """Run one job in Hydra's output directory; returns rel L2 (what sweepers minimise)."""
    from .. import distributed
    from ..config import check_keys
    from ..summary import print_summary
    from ..training import run_training

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choice = hc.runtime.choices.get("equation")
    if cfg.equation.get("name") == "custom" and choice not in (None, "custom"):
        with open_dict(cfg):  # a YAML equation (defaults: [custom]) is named after its file
            cfg.equation.name = choice
    try:
        check_keys(cfg, config_dir())
        if cfg.trainer.get("ensemble", 1) != 1 or cfg.trainer.get("ensemble_param"):
            from ..ensemble import run_ensemble  # N members vectorised with torch.func (ensemble.py)

            metrics = run_ensemble(cfg, run_dir)
        else:
            metrics = run_training(cfg, run_dir)
    except PinnError as err:
        log.error("%s", err)
        raise
    except Exception as err:  # into train.log too, so `pinn summarize` can show why a sweep job failed
        log.error("%s: %s", type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "")
        raise
    if distributed.is_main():
        print_summary(metrics, run_dir)
    return float(metrics["rel_l2"])


_hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(train_task)


def main() -> None:
    """Hydra's entry point; under torchrun every rank joins the process group first (see distributed.py)."""
    from .. import distributed

    distributed.prepare_launch()
    try:
        _hydra_main()
    finally:
        distributed.shutdown()

"""``pinn train``: the Hydra entry point that runs one training job per config."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from ..errors import PinnError, SweepStopped
from ..paths import config_dir

log = logging.getLogger("pinn")


FILE_ONLY = {"file_only": True}


def _console_skips_file_only() -> None:
    """Console handlers (Hydra's, on stdout/stderr) drop records marked ``FILE_ONLY``."""
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler and _skip_file_only not in h.filters:
            h.addFilter(_skip_file_only)


def _skip_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def train_task(cfg: DictConfig) -> float:
    """Run one job in Hydra's output directory; returns rel L2 (what sweepers minimise)."""
    from .. import distributed
    from ..config import added_params, check_added_params, check_keys, declared_params
    from ..summary import print_summary
    from ..training import inside_submitit, run_training

    _console_skips_file_only()
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    choice = hc.runtime.choices.get("equation")
    if cfg.equation.get("name") == "custom" and choice not in (None, "custom"):
        with open_dict(cfg):  # a YAML equation (defaults: [custom]) is named after its file
            cfg.equation.name = choice
    # a single run's error line is printed once by pinn's entry point; in a sweep each failing job says
    # its own as it fails, and the entry point names every failed job again once all have run
    quiet = FILE_ONLY if hc.mode != RunMode.MULTIRUN else {}
    try:
        check_keys(cfg, config_dir())
        task = list(hc.overrides.task)
        check_added_params(cfg, added_params(task), added_params(task, force=True),
                           lambda: declared_params(hc.job.config_name, [*hc.overrides.hydra, *task]))
        members = cfg.trainer.get("ensemble", 1)
        if members != 1 or isinstance(members, bool) or cfg.trainer.get("ensemble_param"):
            from ..ensemble import run_ensemble  # N members vectorised with torch.func (ensemble.py)

            metrics = run_ensemble(cfg, run_dir)
        else:
            metrics = run_training(cfg, run_dir)
    except PinnError as err:  # into train.log (`pinn summarize` shows why a sweep job failed)
        log.error("%s", err, extra=quiet)
        raise
    except Exception as err:
        log.error("%s: %s", type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "",
                  extra=quiet)
        raise
    if distributed.is_main():
        print_summary(metrics, run_dir)
    if metrics.get("stopped_by") and hc.mode == RunMode.MULTIRUN and not inside_submitit():
        raise SweepStopped(f"stopped by {metrics['stopped_by']} in job {hc.job.num} ({run_dir}); later jobs of "
                           f"the sweep did not run: run it again with trainer.resume=auto to go on")
    return float(metrics["rel_l2"])


_hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(train_task)


def main() -> None:
    """Hydra's entry point; under torchrun every rank joins the process group first (see distributed.py).
    A sweep with failed jobs ends in ``SweepFailed``, naming them all (sweep.py)."""
    from .. import distributed
    from ..sweep import run_sweep_aware

    distributed.prepare_launch()
    finished = False
    try:
        run_sweep_aware(_hydra_main)
        finished = True
    except SweepStopped as stop:
        print(f"pinn train: {stop}", file=sys.stderr)
    except ValueError as err:  # Hydra's own usage error for two run modes at once (-m with --cfg)
        if str(err).startswith("Only one of --run"):
            raise PinnError(f"{err}; -m cannot be combined with --cfg or --info") from None
        raise
    finally:
        distributed.shutdown(finished)

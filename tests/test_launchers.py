"""Sweeps through Hydra's launchers and sweepers: joblib (parallel, local), submitit for SLURM (the sbatch script
captured; real submitit_local multiruns are in test_resume.py and test_ddp.py), Optuna; configs compose."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pinn_cli.summarize import summarize

FAST = ["equation=ode_decay", "device=cpu", "trainer.steps=6", "trainer.log_every=2", "trainer.eval_every=3",
        "trainer.checkpoint_every=3", "sampler.n_interior=32", "optimizer.adam_steps=4", "trainer.eval_points=100",
        "network.width=8"]


def pinn(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pinn_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.mark.parametrize("name", ["slurm_gpu", "slurm_cpu"])
def test_launcher_configs_compose_and_instantiate(name):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={name}", "hydra.launcher.partition=p1"],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["tasks_per_node"] == 1 and launcher.params["timeout_min"] > 0
    assert launcher.params["partition"] == "p1" and launcher.params["max_num_timeout"] == 3
    assert launcher.params["gpus_per_node"] == (1 if name == "slurm_gpu" else None)


def test_optuna_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["+hparams_search=heat_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optimizer.lr", "network.width", "network.depth"}
    assert cfg.equation.name == "heat" and cfg.trainer.steps == 1500


def test_joblib_sweep_runs_in_parallel_and_summarize_shows_the_failure(tmp_path, capsys):
    """Two jobs at once through joblib; the one with a bad value fails, the sweep exits non-zero, and
    `pinn summarize` lists it as failed with its error line next to the job that finished."""
    res = pinn("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}",
               "sampler.n_interior=32,-5", *[o for o in FAST if not o.startswith("sampler.n_interior")])
    assert res.returncode != 0  # a failed job fails the sweep
    assert (tmp_path / "0" / "metrics.json").is_file() and not (tmp_path / "1" / "metrics.json").exists()
    launcher = yaml.safe_load((tmp_path / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2
    jobs = {j.name: j for j in summarize(tmp_path)}  # the CLI itself: tests/test_summarize.py
    assert jobs["0"].status == "done" and jobs["0"].metrics["steps"] == 6
    assert jobs["1"].status == "failed" and "sampler.n_interior=-5 is invalid" in jobs["1"].note
    out = capsys.readouterr().out
    assert "sampler.n_interior=-5 is invalid" in out and "2 jobs (1 done, 1 failed)" in out
    assert (tmp_path / "summary.csv").is_file() and (tmp_path / "summary.png").is_file()


_CAPTURE = r"""
import json, os, sys
import submitit.slurm.slurm as slurm

def capture(self, command):
    # write what sbatch would get, then stop: no SLURM here
    text = self._make_submission_file_text(command, "uid")
    with open(os.environ["PINN_TEST_CAPTURE"], "w") as fh:
        json.dump({"sbatch": text, "max_num_timeout": self.max_num_timeout}, fh)
    raise RuntimeError("captured the sbatch script")

slurm.SlurmExecutor._submit_command = capture
from pinn_cli.cli import main
main(sys.argv[1:])
"""


def _sbatch(tmp_path: Path, *overrides: str) -> tuple[dict, set[str]]:
    out = tmp_path / "capture.json"
    fake_bin = tmp_path / "bin"  # submitit's SlurmExecutor wants an srun on PATH
    fake_bin.mkdir(parents=True)
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    res = subprocess.run(
        [sys.executable, "-c", _CAPTURE, "train", "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides, *FAST],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PINN_TEST_CAPTURE": str(out),
             "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert "captured the sbatch script" in res.stderr, res.stderr[-3000:]
    got = json.loads(out.read_text())
    return got, {ln.strip() for ln in got["sbatch"].splitlines()}


def test_slurm_gpu_parameters_reach_sbatch(tmp_path):
    # one problem on 4 GPUs of a node: 4 tasks, each a DDP rank (pinn joins them through submitit's env)
    got, lines = _sbatch(tmp_path, "hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu",
                         "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=4",
                         "hydra.launcher.tasks_per_node=4", "seed=1,2,3")
    for want in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=30", "#SBATCH --nodes=1",
                 "#SBATCH --signal=USR2@120", "#SBATCH --array=0-2%3", "#SBATCH --job-name=train"):
        assert want in lines, (want, got["sbatch"])
    assert got["max_num_timeout"] == 3
    assert any("submitit.core._submit" in ln for ln in lines)


def test_slurm_cpu_parameters_reach_sbatch(tmp_path):
    _, lines = _sbatch(tmp_path, "hydra/launcher=slurm_cpu", "hydra.launcher.partition=cpu", "seed=1,2")
    assert "#SBATCH --partition=cpu" in lines and "#SBATCH --cpus-per-task=4" in lines
    assert not any("gpus" in ln for ln in lines) and "export OMP_NUM_THREADS=4" in lines
    assert "#SBATCH --array=0-1%2" in lines and "#SBATCH --mem=8GB" in lines


def test_optuna_sweep_minimises_the_returned_rel_l2(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    res = pinn("train", "-m", "+hparams_search=heat_optuna", "hydra.sweeper.n_trials=2",
               "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={tmp_path}",
               *[o for o in FAST if not o.startswith(("equation", "network"))],
               "sampler.n_boundary=16", "sampler.n_initial=16")
    assert res.returncode == 0, res.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    rel = [_metrics(tmp_path / j)["rel_l2"] for j in ("0", "1")]
    assert best["best_value"] == pytest.approx(min(rel), rel=1e-12)  # what `pinn train` returned
    assert set(best["best_params"]) == {"optimizer.lr", "network.width", "network.depth"}
    assert _metrics(tmp_path / "0")["equation"] == "heat"
    res = pinn("summarize", str(tmp_path))
    assert res.returncode == 0 and "optuna best:" in res.stdout

"""`pinn summarize`: one table of every job of a sweep, from the files the jobs left (no training here)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pinn_cli.errors import PinnError
from pinn_cli.summarize import find_jobs, sort_jobs, summarize, swept_keys

COMMON = ["trainer.steps=6", "device=cpu"]


def _job(root: Path, name: str, overrides: list[str], metrics: dict | None = None, log: list[str] = ()) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    stamp = "[2026-01-01 00:00:00,000]"
    (d / "train.log").write_text("".join(f"{stamp}{line}\n" for line in log))
    return d


def _metrics(rel: float, steps: int = 6, status: str = "done") -> dict:
    return {"rel_l2": rel, "max_abs_error": 2 * rel, "rmse": rel / 2, "steps": steps, "wall_time_s": 1.25,
            "final_loss": rel ** 2, "equation": "heat", "status": status}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Six jobs of `network.width=8,16 optimizer.lr=1e-3,1e-2,1e-1`: 3 done, 1 preempted, 1 failed, 1 running."""
    root = tmp_path / "multirun"
    ok = "[pinn][INFO] - step 6 loss 1.0e-01 rel_l2 5.0e-01 lr 1.00e-03 100 it/s"
    _job(root, "0", ["network.width=8", "optimizer.lr=1e-3", *COMMON], _metrics(0.3), [ok])
    _job(root, "1", ["network.width=8", "optimizer.lr=1e-2", *COMMON], _metrics(0.05), [ok])
    _job(root, "2", ["network.width=8", "optimizer.lr=1e-1", *COMMON], None,
         ["[pinn][INFO] - step 2 loss 3.0e+00 lr 1.00e-01 100 it/s",
          "[pinn][ERROR] - training diverged at step 3 (loss is not finite); the last good checkpoint is x/last.pt"])
    _job(root, "3", ["network.width=16", "optimizer.lr=1e-3", *COMMON], _metrics(0.2, 4, "preempted"), [ok])
    _job(root, "4", ["network.width=16", "optimizer.lr=1e-2", *COMMON], None,
         ["[pinn][INFO] - step 4 loss 2.5e-01 rel_l2 4.0e-01 lr 1.00e-02 100 it/s"])
    _job(root, "10", ["network.width=16", "optimizer.lr=1e-1", *COMMON], _metrics(0.01), [ok])
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_status_of_each_job(sweep):
    jobs = {j.name: j for j in find_jobs(sweep)}
    assert [j for j in jobs] == ["0", "1", "2", "3", "4", "10"]  # natural order, not 0, 1, 10, 2
    assert {n: j.status for n, j in jobs.items()} == {
        "0": "done", "1": "done", "2": "failed", "3": "preempted", "4": "running", "10": "done"}
    assert jobs["2"].note.startswith("training diverged at step 3")
    assert jobs["2"].metrics["steps"] == 2  # last logged step
    assert jobs["4"].metrics["steps"] == 4 and "rel L2 4.0e-01" in jobs["4"].note


def test_sorted_by_rel_l2_then_running_then_failed(sweep):
    assert [j.name for j in sort_jobs(find_jobs(sweep))] == ["10", "1", "0", "3", "4", "2"]


def test_swept_keys_and_common_overrides(sweep):
    swept, common = swept_keys(find_jobs(sweep))
    assert swept == ["network.width", "optimizer.lr"]
    assert common == {"trainer.steps": "6", "device": "cpu"}


def test_writes_csv_and_png(sweep, capsys):
    summarize(sweep)
    out = capsys.readouterr().out
    assert "6 jobs" in out and "failed" in out and "training diverged at step 3" in out
    rows = list(csv.DictReader((sweep / "summary.csv").read_text().splitlines()))
    assert [r["job"] for r in rows] == ["10", "1", "0", "3", "4", "2"]
    assert rows[0]["network.width"] == "16" and rows[0]["optimizer.lr"] == "1e-1"
    assert float(rows[0]["rel_l2"]) == 0.01 and rows[0]["status"] == "done"
    assert rows[-1]["status"] == "failed" and rows[-1]["rel_l2"] == "" and "diverged" in rows[-1]["note"]
    assert list(rows[0])[:6] == ["job", "status", "network.width", "optimizer.lr", "trainer.steps", "device"]
    png = sweep / "summary.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_failed_sweep_still_summarizes(tmp_path, capsys):
    _job(tmp_path, "0", ["sampler.n_interior=-5"], None,
         ["[pinn][ERROR] - sampler.n_interior=-5 is invalid; it must be a positive integer"])
    _job(tmp_path, "1", ["sampler.n_interior=-6"], None, ["[pinn][ERROR] - RuntimeError: boom"])
    jobs = summarize(tmp_path)
    assert [j.status for j in jobs] == ["failed", "failed"]
    assert (tmp_path / "summary.csv").is_file() and not (tmp_path / "summary.png").exists()
    assert "RuntimeError: boom" in capsys.readouterr().out


def test_unreadable_metrics_is_a_failed_job_not_a_crash(tmp_path):
    d = _job(tmp_path, "0", ["seed=1"], None)
    (d / "metrics.json").write_text("{not json")
    (job,) = find_jobs(tmp_path)
    assert job.status == "failed" and "metrics.json unreadable" in job.note


def test_optuna_results_line(sweep, capsys):
    (sweep / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  optimizer.lr: 0.01\n  network.width: 16\nbest_value: 0.01\n")
    summarize(sweep, make_plot=False)
    assert "optuna best: optimizer.lr=0.01 network.width=16 -> 0.01" in capsys.readouterr().out
    assert not (sweep / "summary.png").exists()


def test_missing_or_empty_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(PinnError, match="is not a directory"):
        find_jobs(tmp_path / "nope")
    with pytest.raises(PinnError, match="no runs under"):
        find_jobs(tmp_path)


def test_cli(sweep):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "pinn_cli", "summarize", str(sweep)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "network.width" in res.stdout and "summary.csv" in res.stdout
    res = subprocess.run([sys.executable, "-m", "pinn_cli", "summarize", str(sweep / "missing")], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "is not a directory" in res.stderr

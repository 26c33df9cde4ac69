"""Data-parallel training (torchrun, gloo on CPU): points sharded per rank, rank 0 writes, same result as one process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_cfg

from pinn_cli import checkpoint
from pinn_cli.distributed import Context, Shards
from pinn_cli.training import build

# heat: interior, boundary and initial points; odd counts so the two shards differ in size; resampling
# every 10 Adam steps and the Adam -> L-BFGS switch at step 30, so L-BFGS runs under DDP too.
BASE = ["equation=heat", "device=cpu", "precision=float64", "trainer.steps=40", "optimizer.adam_steps=30",
        "sampler.n_interior=65", "sampler.n_boundary=17", "sampler.n_initial=9", "sampler.resample_every=10",
        "trainer.log_every=10", "trainer.eval_every=20", "trainer.checkpoint_every=20", "trainer.eval_points=400",
        "network.width=8", "trainer.progress=false"]
# Both runs minimise the same objective (the per-term factors make the rank-averaged loss the loss over
# all points), so they differ only by floating-point summation order: measured ~1e-13 relative.
RTOL = 1e-6


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PINN_DIST_BACKEND": "gloo"}


def _pythonpath() -> str:
    """The repo first, then whatever PYTHONPATH this test run already had."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _history(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "history.csv")))


def test_shards_partition_the_points_and_keep_the_loss():
    """Each rank's slice is disjoint, together they are all points, and the factor-weighted mean of the
    per-rank losses is the loss over all points (also for a term smaller than the world, which is not split)."""
    cfg = make_cfg(*BASE, "sampler.n_initial=1")
    setup = build(cfg)
    import numpy as np

    setup.problem.sample(np.random.default_rng(0))
    full_loss, _ = setup.problem.loss()
    full = {t.name: t.x.clone() for t in setup.problem.terms}
    world, pieces, weighted = 3, {}, torch.zeros(())
    for rank in range(world):
        setup.problem.sample(np.random.default_rng(0))
        shards = Shards(Context(world, rank), setup.problem)
        shards.update()
        for t in setup.problem.terms:
            pieces.setdefault(t.name, []).append(t.x)
        _, parts = setup.problem.loss()
        weighted = weighted + sum(t.weight * f * p for t, f, p in zip(setup.problem.terms, shards.factors, parts))
        assert torch.equal(shards.state()["pde"][0], full["pde"].cpu())
    for name, x in full.items():
        if len(x) >= world:
            assert torch.equal(torch.cat(pieces[name]), x), name
        else:
            assert all(torch.equal(p, x) for p in pieces[name]), name
    assert torch.allclose(weighted / world, full_loss.detach(), rtol=1e-12, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["sampler.adaptive=rad"]], ids=["resample", "rad"])
def test_torchrun_two_ranks_match_one_process(tmp_path, extra):
    """Same losses, error and points as one process; with RAD every rank draws the same points."""
    ddp_cwd = tmp_path / "ddp"
    ddp_cwd.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pinn_cli", "train", *BASE, *extra],
        cwd=ddp_cwd, capture_output=True, text=True, timeout=300, env={**_env(), "PYTHONPATH": _pythonpath()},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p.parent for p in ddp_cwd.glob("outputs/*/*/metrics.json")]
    assert len(list(ddp_cwd.glob("outputs/*/*"))) == 1 and len(runs) == 1  # both ranks: one run directory
    run = runs[0]
    assert res.stdout.count("run dir:") == 1  # rank 0 alone prints the summary
    log = (run / "train.log").read_text()
    assert log.count("] - step 10 loss") == 1 and log.count("equation=heat") == 1  # rank 0 alone logs

    from pinn_cli.training import run_training

    single = tmp_path / "single"
    run_training(make_cfg(*BASE, *extra), single)

    m2, m1 = (json.loads((r / "metrics.json").read_text()) for r in (run, single))
    assert m2["steps"] == m1["steps"] == 40 and m2["status"] == "done"
    assert m2["rel_l2"] == pytest.approx(m1["rel_l2"], rel=RTOL)
    h2, h1 = _history(run), _history(single)
    assert [r["step"] for r in h2] == [r["step"] for r in h1]
    for a, b in zip(h2, h1):
        for key in ("loss", "loss_pde", "loss_ic", "loss_bc"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=RTOL), (a["step"], key)
    # checkpoints hold all points, not rank 0's half: they resume on any number of ranks
    points = checkpoint.load(run / "checkpoints" / "last.pt")["points"]
    assert points["pde"][0].shape[0] == 65 and points["bc"][0].shape[0] == 17
    alone = checkpoint.load(single / "checkpoints" / "last.pt")["points"]
    assert torch.equal(points["pde"][0], alone["pde"][0])


@pytest.mark.slow
def test_torchrun_without_steps_reports_the_global_loss(tmp_path):
    """trainer.steps=0 logs no row: final_loss is the loss over all points, not rank 0's share."""
    from pinn_cli.training import run_training

    args = [*BASE, "trainer.steps=0"]
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pinn_cli", "train", *args, f"hydra.run.dir={tmp_path / 'ddp'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**_env(), "PYTHONPATH": _pythonpath()},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (tmp_path / "single").mkdir()
    single = run_training(make_cfg(*args), tmp_path / "single")
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["final_loss"] == pytest.approx(single["final_loss"], rel=RTOL)


@pytest.mark.slow
def test_torchrun_bad_input_is_said_once(tmp_path):
    """Every rank meets a bad value; only rank 0 says it, on stderr and in train.log."""
    run = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pinn_cli", "train", *BASE, "optimizer.lr=bad", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**_env(), "PYTHONPATH": _pythonpath()},
    )
    assert res.returncode != 0
    said = "optimizer.lr='bad' is invalid"
    assert res.stderr.count(f"pinn train: error: {said}") == 1, res.stderr[-3000:]
    assert (run / "train.log").read_text().count(said) == 1


@pytest.mark.parametrize("rank, expect, waits", [("0", "pinn train: error: bad\n", []),
                                                  ("1", "pinn train: error: bad (rank 1)\n", [15.0])])
def test_rank_above_zero_waits_before_it_says_an_error(monkeypatch, capsys, rank, expect, waits):
    """A rank > 0 exiting at once let torchrun kill rank 0 before it said the error (CI saw no line at
    all): it waits, and if still alive after the wait (rank 0 did not fail), says it with its rank."""
    import signal
    import time

    from pinn_cli import errors

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        errors.say_once("pinn train: error: bad")
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert capsys.readouterr().err == expect
    assert slept == waits


def test_a_sweep_under_torchrun_is_refused_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pinn_cli", "train", "-m", "seed=0,1", *BASE, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**_env(), "PYTHONPATH": _pythonpath()},
    )
    assert res.returncode != 0 and not (tmp_path / "sweep").exists()
    assert res.stderr.count("pinn train: error: a sweep (-m) does not run under torchrun") == 1


@pytest.mark.slow
def test_submitit_job_with_two_tasks_trains_one_problem(tmp_path):
    """`hydra.launcher.tasks_per_node=2` (here with submitit's local executor): the two tasks of the job join one
    process group through submitit's environment and train together, as `srun` tasks do on SLURM."""
    from pinn_cli.training import run_training

    base = ["equation=ode_decay", "device=cpu", "trainer.steps=40", "optimizer.adam_steps=30",
            "sampler.n_interior=33", "trainer.log_every=10", "trainer.eval_every=20", "trainer.eval_points=200",
            "network.width=8", "trainer.progress=false"]
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, "-m", "pinn_cli", "train", "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", *base],
        cwd=REPO, capture_output=True, text=True, timeout=660, env=_env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    logs = {p.name: p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")}
    assert any("global_rank=1(2)" in t and "Job completed successfully" in t for t in logs.values()), logs
    assert (sweep / "0" / "train.log").read_text().count("] - step 10 loss") == 1
    ddp = json.loads((sweep / "0" / "metrics.json").read_text())
    single = run_training(make_cfg(*base), tmp_path / "single")
    assert ddp["steps"] == 40 and ddp["rel_l2"] == pytest.approx(single["rel_l2"], rel=RTOL)


@pytest.mark.parametrize("gpus, local_ranks, visible, expected", [
    (0, 1, None, "gloo"), (1, 1, None, "cpu:gloo,cuda:nccl"), (2, 2, None, "cpu:gloo,cuda:nccl"),
    (1, 2, None, "gloo"), (1, 4, "2", "cpu:gloo,cuda:nccl")])
def test_backend_is_gloo_when_ranks_share_a_gpu(monkeypatch, gpus, local_ranks, visible, expected):
    """NCCL refuses two ranks on one GPU (torchrun --nproc_per_node=2 on a one-GPU machine); a rank
    that sees one GPU of its own through CUDA_VISIBLE_DEVICES (SLURM per-task binding) keeps NCCL."""
    from pinn_cli import distributed

    monkeypatch.delenv("PINN_DIST_BACKEND", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert distributed.backend() == expected

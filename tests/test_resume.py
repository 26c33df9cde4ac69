"""Preemption-safe training: SIGKILL never leaves a torn checkpoint, a preempted L-BFGS phase resumes bit for bit,
and a submitit job preempted with its signal writes last.pt, is requeued and finishes from there."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_cfg

from pinn_cli import checkpoint
from pinn_cli.errors import PinnError
from pinn_cli.training import run_training

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

_SLOW_WRITER = r"""
import sys, torch
from pathlib import Path
from pinn_cli import checkpoint
path = Path(sys.argv[1])
checkpoint.save({"model": {}, "config": {}, "v": 1}, path)
(path.parent / "first.done").touch()
big = torch.zeros(int(sys.argv[2]), dtype=torch.float64)
while True:  # keep rewriting a large checkpoint until killed
    checkpoint.save({"model": {"w": big}, "config": {}, "v": 2}, path)
"""


def _wait_for(predicate, timeout: float = 240.0, every: float = 0.002, proc=None) -> bool:
    """Poll ``predicate`` until true; False after ``timeout`` or once ``proc`` has exited without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(every)
    return False


def _size(paths) -> int:
    """Largest size among ``paths`` (0 if none; a file renamed away meanwhile counts 0)."""
    sizes = [0]
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            sizes.append(p.stat().st_size)
    return max(sizes)


def test_sigkill_while_writing_keeps_the_previous_checkpoint(tmp_path):
    """Kill the writer with SIGKILL while a large checkpoint is half written: the file it replaces still loads."""
    path = tmp_path / "last.pt"
    for _ in range(5):
        for p in tmp_path.iterdir():
            p.unlink()
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path), str(8_000_000)], cwd=REPO, env=ENV)
        try:
            assert _wait_for(lambda: (tmp_path / "first.done").exists(), proc=proc)
            assert _wait_for(lambda: _size(tmp_path.glob("last.pt.*.tmp")) > 1_000_000, proc=proc)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        partial = [p for p in tmp_path.glob("last.pt.*.tmp")]
        if partial and partial[0].stat().st_size < 8_000_000 * 8:
            break  # killed in the middle of a write
    else:
        pytest.skip("could not kill the writer in the middle of a write")
    state = checkpoint.load(path)  # the last complete checkpoint: v1, or a v2 that was fully written
    assert state["v"] in (1, 2)
    if state["v"] == 2:
        assert state["model"]["w"].shape == (8_000_000,)
    with pytest.raises(PinnError, match="corrupt or unreadable"):  # the torn file really is torn
        checkpoint.load(partial[0])


def test_sigkill_during_training_then_resume_auto(tmp_path):
    """A run killed with SIGKILL (checkpoints every step) continues with trainer.resume=auto to the end."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "pinn_cli", "train", "equation=ode_decay", "device=cpu", "optimizer=adam",
            "trainer.steps=600", "trainer.log_every=1", "trainer.eval_every=100", "trainer.checkpoint_every=1",
            "sampler.n_interior=32", "network.width=8", "trainer.eval_points=100", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        last = run / "checkpoints" / "last.pt"
        assert _wait_for(lambda: last.exists() and checkpoint.load(last)["step"] >= 10, every=0.02, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = checkpoint.load(run / "checkpoints" / "last.pt")["step"]
    assert 10 <= killed_at < 600 and not (run / "metrics.json").exists()
    res = subprocess.run([*args, "trainer.resume=auto", "trainer.checkpoint_every=100"], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / 'last.pt'}" in (run / "train.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 600 and metrics["status"] == "done"
    steps = [int(r["step"]) for r in csv.DictReader((run / "history.csv").read_text().splitlines())]
    assert steps == list(range(1, 601))  # no step lost or repeated in the history


def lbfgs_preempt_and_resume(tmp_path: Path, monkeypatch, base: list[str]) -> tuple[dict, dict, dict, list[dict]]:
    """Run ``base`` whole, and again with SIGUSR1 during its second L-BFGS block, then resumed; assert the
    two end with the same parameters and history.csv. Returns (full, preempted, resumed metrics, history)."""
    from pinn_cli.optim import OptimizerSchedule

    full = run_training(make_cfg(*base), tmp_path / "full")
    real, calls = OptimizerSchedule.lbfgs_steps, []

    def preempt_in_second_chunk(self, loss_fn, n, **kw):
        calls.append(n)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(self, loss_fn, n, **kw)

    monkeypatch.setattr(OptimizerSchedule, "lbfgs_steps", preempt_in_second_chunk)
    part = run_training(make_cfg(*base), tmp_path / "part")
    monkeypatch.setattr(OptimizerSchedule, "lbfgs_steps", real)
    resumed = run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path / "part")
    a = checkpoint.load(tmp_path / "full/checkpoints/last.pt")["model"]
    b = checkpoint.load(tmp_path / "part/checkpoints/last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = lambda p: [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader((p / "history.csv").read_text().splitlines())]
    assert hist(tmp_path / "full") == hist(tmp_path / "part")
    return full, part, resumed, hist(tmp_path / "full")


def test_preempted_during_lbfgs_resumes_bit_for_bit(tmp_path, monkeypatch):
    """SIGUSR1 in the L-BFGS phase (after the Adam -> L-BFGS switch, with resampling during Adam): the resumed
    run ends with the same parameters and history.csv as an uninterrupted one."""
    base = ["equation=ode_decay", "optimizer.adam_steps=30", "sampler.n_interior=64", "sampler.resample_every=10",
            "trainer.log_every=10", "trainer.eval_every=20", "trainer.checkpoint_every=20", "device=cpu",
            "precision=float64", "trainer.eval_points=200", "trainer.steps=60", "network.width=16"]
    full, part, resumed, _ = lbfgs_preempt_and_resume(tmp_path, monkeypatch, base)
    assert part["status"] == "preempted" and part["steps"] == 40 and part["stopped_by"] == "SIGUSR1"  # block 40-50 undone
    assert resumed["steps"] == full["steps"] == 60
    assert resumed["rel_l2"] == full["rel_l2"]


def _submitit_pids(folder: Path) -> list[int]:
    """Processes running submitit's job runner for ``folder`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and str(folder) in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job's process through /proc")
def test_submitit_preemption_requeues_and_resumes(tmp_path):
    """submitit's preemption signal (USR2) mid-run: pinn writes last.pt and hands over to submitit, which
    requeues the job; the requeued job starts again with trainer.resume=auto and finishes from that step."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinn_cli", "train", "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "trainer.resume=auto", "equation=ode_decay",
         "device=cpu", "optimizer=adam", "trainer.steps=2000", "trainer.log_every=20", "trainer.eval_every=1000",
         "trainer.checkpoint_every=1000", "sampler.n_interior=32", "network.width=8", "trainer.eval_points=100"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        log = sweep / "0" / "train.log"
        started = _wait_for(lambda: log.exists() and "] - step 40 " in log.read_text(), timeout=300, every=0.05,
                            proc=proc)
        assert started, (log.read_text() if log.exists() else "") + (proc.communicate()[0] if proc.poll() else "")
        pids = _submitit_pids(sweep)
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGUSR2)
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out[-3000:]
    text = log.read_text()
    resumed = [ln for ln in text.splitlines() if "resumed from" in ln]
    assert len(resumed) == 1 and str(sweep / "0" / "checkpoints" / "last.pt") in resumed[0]
    at = int(resumed[0].rsplit("at step", 1)[1])
    assert 40 <= at < 2000  # the step it was preempted at, not the last periodic checkpoint (step 0 or 1000)
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in out + submitit_logs and "Job completed successfully" in submitit_logs
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["steps"] == 2000


def test_a_resumed_run_is_not_reported_preempted_while_it_runs(tmp_path, monkeypatch):
    """The preempted segment's metrics.json goes when the run resumes: a resumed run that fails (or is
    still running) is summarised from its train.log, not from the stale figures."""
    from conftest import signal_at_adam_step

    from pinn_cli.optim import OptimizerSchedule
    from pinn_cli.summarize import load_job

    base = ["equation=ode_decay", "optimizer=adam", "sampler.n_interior=32", "device=cpu", "trainer.steps=20",
            "trainer.log_every=5", "trainer.eval_points=100", "network.width=8"]
    signal_at_adam_step(monkeypatch, 7)
    run_training(make_cfg(*base), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "preempted"

    def broken(self, loss_fn):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(OptimizerSchedule, "adam_step", broken)
    with pytest.raises(RuntimeError):
        run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
    (tmp_path / ".hydra").mkdir(exist_ok=True)
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    (tmp_path / "train.log").write_text("[2026-01-01 00:00:00,000][pinn][ERROR] - RuntimeError: out of memory\n")
    assert load_job(tmp_path, tmp_path).status == "failed"


def test_inside_submitit_sigterm_is_left_to_submitit(monkeypatch):
    """submitit ignores SIGTERM and requeues on its own signal; taking SIGTERM would end the job "completed"."""
    import signal as sig

    from pinn_cli.training import _preemption_handler

    for executor, caught in (("", True), ("slurm", False)):
        monkeypatch.setenv("SUBMITIT_EXECUTOR", executor)
        with _preemption_handler() as stop:
            assert (sig.getsignal(sig.SIGTERM) is stop) == caught
            assert sig.getsignal(sig.SIGUSR1) is stop


def test_a_resumed_run_weighs_only_the_steps_left_for_compile_auto(tmp_path, monkeypatch):
    from conftest import signal_at_adam_step

    from pinn_cli.problem import Problem

    base = ["equation=ode_decay", "optimizer=adam", "sampler.n_interior=32", "device=cpu", "trainer.steps=20",
            "trainer.log_every=5", "trainer.eval_points=100", "network.width=8", "trainer.compile=auto"]
    signal_at_adam_step(monkeypatch, 7)
    part = run_training(make_cfg(*base), tmp_path)
    monkeypatch.undo()  # no signal in the resumed run
    seen, real = [], Problem.expect_calls
    monkeypatch.setattr(Problem, "expect_calls", lambda self, n: seen.append(n) or real(self, n))
    run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path)
    assert seen == [20 - part["steps"]] and part["steps"] < 20


def test_a_resume_names_the_settings_changed_since_its_checkpoint(tmp_path, caplog):
    """The checkpoint's points and optimizer state carry on, so a changed sampler size or lr would be
    silently ineffective: the resume says which settings differ (not steps, which a resume extends)."""
    import logging

    base = ["equation=ode_decay", "optimizer=adam", "sampler.n_interior=32", "device=cpu", "trainer.steps=10",
            "trainer.log_every=5", "trainer.eval_points=100", "network.width=8"]
    with caplog.at_level(logging.INFO, logger="pinn"):
        run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path)
        assert any("trainer.resume=auto: no checkpoint in" in r.message for r in caplog.records)
        caplog.clear()
        run_training(make_cfg(*base, "trainer.resume=auto", "trainer.steps=20", "sampler.n_interior=64",
                              "optimizer.lr=0.01"), tmp_path)
    (warning,) = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert "changed since the checkpoint: optimizer.lr 0.001 -> 0.01, sampler.n_interior 32 -> 64;" in warning
    assert "trainer.steps" not in warning


def test_a_signal_inside_an_lbfgs_block_stops_at_once_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A signal during a long L-BFGS block (trainer.log_every=200 iterations) used to wait for the whole
    block; it now undoes the block, saves its start, and the resumed run repeats it exactly."""
    from pinn_cli.optim import OptimizerSchedule

    base = ["equation=ode_decay", "device=cpu", "precision=float64", "optimizer=adam_lbfgs", "optimizer.adam_steps=20",
            "trainer.steps=420", "trainer.log_every=200", "trainer.eval_every=200", "trainer.checkpoint_every=200",
            "sampler.n_interior=32", "network.width=8", "trainer.eval_points=100", "trainer.progress=false"]
    full = run_training(make_cfg(*base), tmp_path / "full")
    real, evals = OptimizerSchedule.lbfgs_steps, []

    def signal_mid_block(self, loss_fn, n, **kw):
        def counted():
            evals.append(1)
            if len(evals) == 5:  # the 5th loss evaluation of the first block
                os.kill(os.getpid(), signal.SIGUSR1)
            return loss_fn()
        return real(self, counted, n, **kw)

    monkeypatch.setattr(OptimizerSchedule, "lbfgs_steps", signal_mid_block)
    part = run_training(make_cfg(*base), tmp_path / "part")
    assert part["status"] == "preempted" and part["steps"] == 20 and len(evals) <= 6
    evals.clear()  # signalled again in the same block after the resume: that block now runs to its end
    again = run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path / "part")
    assert again["status"] == "preempted" and again["steps"] == 200  # the block 20-200, to the next row
    monkeypatch.setattr(OptimizerSchedule, "lbfgs_steps", real)
    resumed = run_training(make_cfg(*base, "trainer.resume=auto"), tmp_path / "part")
    assert resumed["steps"] == full["steps"] and resumed["rel_l2"] == full["rel_l2"]
    a = checkpoint.load(tmp_path / "full/checkpoints/last.pt")["model"]
    b = checkpoint.load(tmp_path / "part/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

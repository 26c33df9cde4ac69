"""Short training runs reach a stated error against the exact solution; checkpoints resume exactly."""
from __future__ import annotations

import csv
import json
import re
import sys

import pytest
import torch
from conftest import make_cfg, signal_at_adam_step

from pinn_cli import checkpoint
from pinn_cli.errors import PinnError
from pinn_cli.training import run_training

SHORT = ["device=cpu", "precision=float64", "trainer.eval_points=2000", "trainer.log_every=50",
         "trainer.eval_every=100", "trainer.checkpoint_every=100"]

# (equation, overrides, rel L2 bound): small budgets, a few seconds each on one core
CASES = [
    ("heat", ["trainer.steps=700", "optimizer.adam_steps=300", "sampler.n_interior=500",
              "sampler.n_boundary=100", "sampler.n_initial=100", "network.width=20"], 3e-3),
    ("poisson2d", ["trainer.steps=600", "optimizer.adam_steps=300", "sampler.n_interior=400",
                   "sampler.n_boundary=100", "network.width=20"], 3e-3),
    ("ode_decay", ["trainer.steps=600", "optimizer.adam_steps=300", "sampler.n_interior=200",
                   "network.width=20"], 1e-3),
    ("ode_bvp", ["trainer.steps=400", "optimizer.adam_steps=200", "sampler.n_interior=200",
                 "network.width=20"], 1e-3),
]


@pytest.mark.slow
@pytest.mark.parametrize("equation, overrides, bound", CASES, ids=[c[0] for c in CASES])
def test_short_training_reaches_bound(tmp_path, equation, overrides, bound):
    metrics = run_training(make_cfg(f"equation={equation}", *SHORT, *overrides), tmp_path)
    assert metrics["rel_l2"] < bound, metrics
    assert metrics["equation"] == equation
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["rel_l2"] == metrics["rel_l2"]


def test_linear_network_on_bvp_reports_its_error(tmp_path):
    """u'' of a linear net is 0, so y''=-2 cannot be fitted: the run finishes and says how wrong it is."""
    cfg = make_cfg("equation=ode_bvp", "network.activation=identity", "trainer.steps=60",
                   "optimizer.adam_steps=40", *SHORT)
    metrics = run_training(cfg, tmp_path)
    assert metrics["status"] == "done"
    assert 0.05 < metrics["rel_l2"] < 10
    rows = list(csv.DictReader((tmp_path / "history.csv").read_text().splitlines()))
    assert abs(float(rows[-1]["loss_pde"]) - 4.0) < 1e-9  # residual y''+2 = 2 everywhere


def test_float32_and_adam_only(tmp_path):
    cfg = make_cfg("equation=ode_decay", "precision=float32", "optimizer=adam", "trainer.steps=300",
                   "optimizer.lr=5e-3", "sampler.n_interior=100", *SHORT[:1], *SHORT[2:])
    metrics = run_training(cfg, tmp_path)
    assert metrics["rel_l2"] < 5e-2
    assert metrics["precision"] == "float32"


def _params(path):
    return checkpoint.load(path)["model"]


@pytest.mark.parametrize("optimizer", ["optimizer=adam", "optimizer.adam_steps=30"])
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch, optimizer):
    """Preempt (SIGUSR1) at step 20, resume with trainer.resume=auto: same weights and history as one run."""

    from pinn_cli.optim import OptimizerSchedule

    base = ["equation=ode_decay", optimizer, "sampler.n_interior=64",
            "sampler.resample_every=10", "trainer.log_every=10", "trainer.eval_every=20",
            "trainer.checkpoint_every=20", "device=cpu", "precision=float64", "trainer.eval_points=200"]
    run_training(make_cfg(*base, "trainer.steps=60"), tmp_path / "full")
    real = OptimizerSchedule.adam_step
    signal_at_adam_step(monkeypatch, 20)
    part = run_training(make_cfg(*base, "trainer.steps=60"), tmp_path / "part")
    assert part["status"] == "preempted" and part["steps"] == 20
    monkeypatch.setattr(OptimizerSchedule, "adam_step", real)
    run_training(make_cfg(*base, "trainer.steps=60", "trainer.resume=auto"), tmp_path / "part")
    a, b = _params(tmp_path / "full/checkpoints/last.pt"), _params(tmp_path / "part/checkpoints/last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist = lambda p: [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader((p / "history.csv").read_text().splitlines())]
    assert hist(tmp_path / "full") == hist(tmp_path / "part")


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PinnError, match="corrupt or unreadable"):
        checkpoint.load(bad)
    cfg = make_cfg("equation=ode_decay", "trainer.steps=5", f"trainer.resume={bad}", *SHORT)
    with pytest.raises(PinnError, match="corrupt"):
        run_training(cfg, tmp_path / "run")


def test_mismatched_checkpoint_is_refused(tmp_path):
    run_training(make_cfg("equation=ode_decay", "trainer.steps=5", *SHORT), tmp_path / "a")
    last = tmp_path / "a/checkpoints/last.pt"
    with pytest.raises(PinnError, match="network.width=32, this run has 16"):
        run_training(make_cfg("equation=ode_decay", "network.width=16", "trainer.steps=5",
                              f"trainer.resume={last}", *SHORT), tmp_path / "b")
    with pytest.raises(PinnError, match="is for equation ode_decay"):
        run_training(make_cfg("equation=ode_bvp", "trainer.steps=5", f"trainer.resume={last}", *SHORT),
                     tmp_path / "c")


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save({"model": {}, "config": {}, "v": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        checkpoint.save({"model": {}, "config": {}, "v": Boom()}, path)
    assert checkpoint.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    other = tmp_path / "other.txt"
    other.write_text("x")
    assert path.stat().st_mode & 0o777 == other.stat().st_mode & 0o777  # as readable as other run files


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from pinn_cli.problem import Problem

    real, calls = Problem.loss, []

    def nan_after_25(self):
        calls.append(1)
        total, parts = real(self)
        return (total * float("nan"), parts) if len(calls) > 25 else (total, parts)

    monkeypatch.setattr(Problem, "loss", nan_after_25)
    cfg = make_cfg("equation=ode_decay", "optimizer=adam", "trainer.steps=50", "sampler.n_interior=32",
                   "trainer.log_every=10", "trainer.eval_every=10", "trainer.checkpoint_every=10", *SHORT[:2])
    with pytest.raises(PinnError, match="diverged at step 30.*the last good checkpoint is .*last.pt"):
        run_training(cfg, tmp_path)
    state = checkpoint.load(tmp_path / "checkpoints/last.pt")
    assert state["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    calls.clear()  # diverging before the first checkpoint: the message says none was saved
    (tmp_path / "b").mkdir()
    with pytest.raises(PinnError, match="diverged at step 30.*no checkpoint was saved before it"):
        run_training(make_cfg("equation=ode_decay", "optimizer=adam", "trainer.steps=50", "sampler.n_interior=32",
                              "trainer.log_every=10", "trainer.checkpoint_every=40", *SHORT[:2]), tmp_path / "b")
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()


def test_an_empty_history_plots_without_a_warning(tmp_path):
    """trainer.steps=0 logs no step: the loss plot says so instead of warning about an empty legend."""
    import warnings

    from pinn_cli import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_loss([], ["pde", "bc"], tmp_path / "loss_curve.png")
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


def test_with_the_bar_the_log_file_keeps_every_line_and_the_console_only_evaluations(monkeypatch):
    """On a terminal the bar shows each step; train.log must still get a line every log_every steps."""
    import io
    import logging

    from pinn_cli import training

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    console, logfile = Tty(), io.StringIO()
    root = logging.getLogger()
    handlers = [logging.StreamHandler(console), logging.StreamHandler(logfile)]
    monkeypatch.setattr(sys, "__stdout__", console)  # what Hydra's console handler writes to
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(root, "handlers", handlers)
    pinn_log = logging.getLogger("pinn")  # other tests may have left it with a level or handlers of its own
    for logger, level in ((root, logging.INFO), (pinn_log, logging.NOTSET)):
        monkeypatch.setattr(logger, "level", logger.level)  # restored after the test
        logger.setLevel(level)  # (setLevel also clears the loggers' cached isEnabledFor answers)
    monkeypatch.setattr(pinn_log, "handlers", [])
    monkeypatch.setattr(pinn_log, "propagate", True)
    monkeypatch.setattr(pinn_log, "disabled", False)
    bar = training._Progress(100, enabled=True)
    assert bar.bar is not None
    for step, rel in ((10, None), (20, 0.5), (30, None)):
        bar.report({"step": step, "loss": 1.0, "rel_l2": rel, "lr": 1e-3})
    bar.close()
    assert [ln.split()[1] for ln in logfile.getvalue().splitlines()] == ["10", "20", "30"]
    shown = re.findall(r"step (\d+) loss \S+ (rel_l2 \S+ )?lr", console.getvalue())
    assert shown == [("20", "rel_l2 5.0000e-01 ")]
    assert handlers[0].stream is console and not handlers[0].filters  # restored after the bar


def test_evaluations_and_checkpoints_off_the_log_grid_happen_when_due(tmp_path, monkeypatch):
    """eval_every=15 and checkpoint_every=15 with log_every=10: rows (and evaluations, checkpoints) at
    10, 15, 20, 30, 40, 45, 50, 60, not only where the grids meet; a fresh run into a used directory
    is refused; a signal during the last step leaves a finished run 'done'."""

    from pinn_cli.errors import PinnConfigError

    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda obj, path: saved.append((obj["step"], path.name))
                        or real_save(obj, path))
    cfg = make_cfg("equation=ode_decay", "optimizer.adam_steps=25", "trainer.steps=60", "sampler.n_interior=32",
                   "trainer.log_every=10", "trainer.eval_every=15", "trainer.checkpoint_every=15",
                   "device=cpu", "precision=float64", "trainer.eval_points=200")
    run_training(cfg, tmp_path / "a")
    rows = list(csv.DictReader((tmp_path / "a" / "history.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [10, 15, 20, 30, 40, 45, 50, 60]
    assert [int(r["step"]) for r in rows if r["rel_l2"]] == [15, 30, 45, 60]
    assert [s for s, name in saved if name == "last.pt"] == [15, 30, 45, 60]
    with pytest.raises(PinnConfigError, match="already holds checkpoints of an earlier run"):
        run_training(cfg, tmp_path / "a")
    signal_at_adam_step(monkeypatch, 25)  # the last step
    short = run_training(make_cfg("equation=ode_decay", "optimizer=adam", "trainer.steps=25", "sampler.n_interior=32",
                                  "device=cpu", "precision=float64", "trainer.eval_points=200"), tmp_path / "b")
    assert short["status"] == "done" and short["steps"] == 25 and "stopped_by" not in short


def test_a_preempted_run_records_its_final_evaluation_as_the_best(tmp_path, monkeypatch):
    """Stopped between evaluations, the run's end-of-run evaluation may be its best: best.pt and
    last.pt (which a resume reads) must both record it, or a resume could overwrite a better best.pt."""
    signal_at_adam_step(monkeypatch, 15)
    part = run_training(make_cfg("equation=ode_decay", "optimizer=adam", "trainer.steps=40", "sampler.n_interior=32",
                                 "trainer.log_every=10", "trainer.eval_every=10", "optimizer.lr=1e-2",
                                 "device=cpu", "precision=float64", "trainer.eval_points=200"), tmp_path)
    rows = list(csv.DictReader((tmp_path / "history.csv").read_text().splitlines()))
    assert part["status"] == "preempted" and part["rel_l2"] < float(rows[0]["rel_l2"])  # better than step 10
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(tmp_path / "checkpoints" / name)["best_rel_l2"] == part["rel_l2"], name


@pytest.mark.parametrize("overrides, warned", [
    (["trainer.steps=6", "optimizer.adam_steps=10"], True),
    (["trainer.steps=6", "optimizer.adam_steps=6"], True),
    (["trainer.steps=6", "optimizer.adam_steps=4"], False),
    (["trainer.steps=6", "optimizer=adam"], False),
])
def test_adam_steps_that_leave_no_lbfgs_step_are_said_at_start_up(tmp_path, caplog, overrides, warned):
    """optimizer=adam_lbfgs with optimizer.adam_steps >= trainer.steps silently never reached L-BFGS: one
    line now says so before training (info: short trial runs meet it often), and the run still runs."""
    import logging

    from pinn_cli.optim import OptimizerSchedule

    phases = []
    real = OptimizerSchedule.lbfgs_steps

    def lbfgs_steps(self, *a, **kw):
        phases.append("lbfgs")
        return real(self, *a, **kw)

    cfg = make_cfg("equation=ode_decay", "sampler.n_interior=16", "trainer.eval_points=50", *SHORT[:2], *overrides)
    with caplog.at_level(logging.INFO, logger="pinn"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(OptimizerSchedule, "lbfgs_steps", lbfgs_steps)
        metrics = run_training(cfg, tmp_path)
    assert metrics["status"] == "done" and metrics["steps"] == 6
    said = [r for r in caplog.records if "this run is Adam only" in r.message]
    started = next(i for i, r in enumerate(caplog.records) if r.message.startswith("equation=ode_decay"))
    if warned:
        assert not phases
        adam = cfg.optimizer.adam_steps
        assert [r.message for r in said] == [
            f"optimizer.adam_steps={adam} is not below trainer.steps=6: this run is Adam only (the L-BFGS phase "
            "of optimizer=adam_lbfgs starts after optimizer.adam_steps)"]
        assert said[0].levelno == logging.INFO and caplog.records.index(said[0]) < started
    else:
        assert said == [] and bool(phases) == ("optimizer=adam" not in overrides)

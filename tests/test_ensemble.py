"""Vectorised ensembles (``trainer.ensemble=N``): torch.func derivatives inside vmap, member i equal
to a single run with seed + i, per-member coefficients, metrics, evaluate and resume."""
from __future__ import annotations

import csv
import json
import signal

import numpy as np
import pytest
import torch
from conftest import make_cfg, signal_at_adam_step

from pinn_cli.derivatives import AutogradFields
from pinn_cli.ensemble import BatchedLBFGS, Ensemble, FuncFields, run_ensemble, settings
from pinn_cli.errors import PinnConfigError, PinnError
from pinn_cli.networks import MLP
from pinn_cli.training import build, run_training


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


SMALL = ["device=cpu", "precision=float64", "network.width=8", "sampler.n_interior=48", "sampler.n_boundary=16",
         "sampler.n_initial=16", "trainer.eval_points=225", "trainer.log_every=5", "trainer.eval_every=10",
         "trainer.checkpoint_every=10"]


@pytest.mark.parametrize("activation", ["tanh", "identity"])
def test_func_fields_equal_autograd_fields(activation):
    torch.manual_seed(0)
    net = MLP(3, 2, 7, 2, activation).double()
    x = torch.rand(20, 3, dtype=torch.float64)
    names = ("x", "y", "t"), ("u", "v")
    needs = {(0, (0,)), (0, (0, 0)), (1, (1, 2)), (1, (2,))}
    ff, af = FuncFields(net, x, *names, needs), AutogradFields(net, x, *names)
    for key in ["u", "v", "u_x", "v_t", "u_xx", "v_yt", "u_yy", "v_ty", "u_xy", "u_xxy", "v_ttt"]:
        a, b = ff[key], af[key]
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), key
    if activation == "identity":
        assert torch.count_nonzero(ff["u_xx"]) == 0


def single_loss(cfg, i):
    """Member i's loss as a single run (seed + i, points drawn with that seed) computes it."""
    from pinn_cli.ensemble import member_config

    s = build(member_config(cfg, i))
    s.problem.sample(np.random.default_rng(int(cfg.seed) + i))
    s.problem.plan()
    total, parts = s.problem.loss()
    grads = torch.autograd.grad(total, list(s.net.parameters()), allow_unused=True, materialize_grads=True)
    return total.detach(), torch.stack(parts).detach(), grads


@pytest.mark.parametrize("equation, extra", [
    ("heat", ["trainer.ensemble_param=equation.alpha", "trainer.ensemble_values=[0.02,0.05,0.1]"]),
    ("poisson2d", ["derivatives=autograd"]),
    ("ode_decay", []),
    ("custom", ["trainer.ensemble_param=equation.params.alpha", "trainer.ensemble_values=[0.05,0.1,0.2]"]),
])
def test_vmapped_losses_and_gradients_equal_single_runs(equation, extra):
    cfg = make_cfg(f"equation={equation}", "trainer.ensemble=3", "seed=4", *SMALL, *extra)
    ens = Ensemble(cfg)
    ens.sample([np.random.default_rng(4 + i) for i in range(3)])
    ens.plan()
    for chunk in (3, 2, 1):
        ens.chunk = chunk
        totals, parts = ens.losses()
        grads = torch.autograd.grad(totals.sum(), list(ens.params.values()))
        for i in range(3):
            t, p, g = single_loss(cfg, i)
            assert torch.allclose(totals[i], t, rtol=1e-10), (chunk, i)
            assert torch.allclose(parts[i], p, rtol=1e-10), (chunk, i)
            for a, b in zip(grads, g):
                assert torch.allclose(a[i], b, rtol=1e-8, atol=1e-12), (chunk, i)
    assert ens.chunk == 1 or ens.use_forward or "autograd" in extra[0]


def test_settings_are_checked():
    with pytest.raises(PinnConfigError, match="trainer.ensemble=0 is invalid"):
        settings(make_cfg("trainer.ensemble=0"))
    with pytest.raises(PinnConfigError, match="must be 2 numbers"):
        settings(make_cfg("trainer.ensemble=2", "trainer.ensemble_param=equation.alpha",
                          "trainer.ensemble_values=[1,2,3]"))
    with pytest.raises(PinnConfigError, match="not a coefficient of equation poisson2d"):
        settings(make_cfg("equation=poisson2d", "trainer.ensemble=2", "trainer.ensemble_param=equation.alpha",
                          "trainer.ensemble_values=[1,2]"))
    with pytest.raises(PinnConfigError, match="ensemble_param is not"):
        settings(make_cfg("trainer.ensemble=2", "trainer.ensemble_values=[1,2]"))
    with pytest.raises(PinnConfigError, match="needs trainer.ensemble_values"):
        settings(make_cfg("trainer.ensemble=2", "trainer.ensemble_param=equation.alpha"))
    assert settings(make_cfg("trainer.ensemble=2", "trainer.ensemble_param=equation.alpha",
                             "trainer.ensemble_values=[1,2.5]")) == (2, "alpha", [1.0, 2.5])
    assert settings(make_cfg("equation=custom", "trainer.ensemble=2", "trainer.ensemble_param=equation.params.alpha",
                             "trainer.ensemble_values=[1,2.5]")) == (2, "params.alpha", [1.0, 2.5])
    with pytest.raises(PinnConfigError, match="its coefficients: equation.params.alpha"):
        settings(make_cfg("equation=custom", "trainer.ensemble=2", "trainer.ensemble_param=equation.params.beta",
                          "trainer.ensemble_values=[1,2]"))


def test_batched_lbfgs_members_are_independent():
    """A member's L-BFGS trajectory does not depend on the other members (nor on their count)."""
    a = torch.tensor([[1.0, 10.0, 100.0], [2.0, 3.0, 50.0], [0.5, 0.5, 9.0]], dtype=torch.float64)

    def make(rows):
        x = torch.ones(len(rows), 3, dtype=torch.float64, requires_grad=True)
        opt = BatchedLBFGS([x], len(rows), history_size=5)

        def loss():
            r = (a[rows] * (x - 0.3) ** 2).sum(1) + 0.1 * (x ** 4).sum(1)
            return r, r[:, None]
        return x, opt, loss

    x3, o3, l3 = make([0, 1, 2])
    x1, o1, l1 = make([1])
    for _ in range(12):
        o3.step(l3)
        o1.step(l1)
        assert torch.allclose(x3[1], x1[0], rtol=1e-12, atol=1e-14)
    assert float(l3()[0].detach().max()) < 0.05


@pytest.mark.parametrize("scale", [1.0, 1e-8])
def test_batched_lbfgs_rescales_a_small_loss_as_a_single_run_does(scale):
    """Without the start_loss rescale, y.s of a loss ~1e-8 falls under 1e-10: no curvature pairs,
    backtracking gradient descent (f/f0 ~ 1 after 60 iterations on this quadratic)."""
    a = torch.logspace(0, 2, 6, dtype=torch.float64)[None].repeat(2, 1)  # condition number 100

    def loss():
        f = scale * (a * x ** 2).sum(1)
        return f, f[:, None]

    x = torch.ones(2, 6, dtype=torch.float64, requires_grad=True)
    opt = BatchedLBFGS([x], 2, history_size=10, start_loss=10.0)
    f0 = loss()[0].detach()
    for _ in range(60):
        f, _ = opt.step(loss)
    assert float((f / f0).max()) < 1e-9
    torch.testing.assert_close(f, loss()[0].detach())  # the unscaled loss of where the members are
    assert opt.state_dict()["scale"] is not None


def test_resume_refuses_another_equations_checkpoint(tmp_path):
    base = ["optimizer=adam", "trainer.steps=10", "trainer.ensemble=2", *SMALL]
    run_ensemble(make_cfg("equation=heat", *base), tmp_path)
    with pytest.raises(PinnError, match="is for equation heat, not burgers"):
        run_ensemble(make_cfg("equation=burgers", *base, "trainer.steps=20", "trainer.resume=auto"), tmp_path)


def test_members_that_cannot_fit_in_memory_are_refused_before_building(monkeypatch):
    import pinn_cli.ensemble as ensemble_mod

    built = []
    real = ensemble_mod.member_setup

    def member_setup(cfg, i):
        built.append(i)
        if i > 1:
            raise AssertionError("members were built before the memory check")
        return real(cfg, i)

    monkeypatch.setattr(ensemble_mod, "member_setup", member_setup)
    with pytest.raises(PinnConfigError, match=r"trainer.ensemble=1000000000: its members need at least .* GiB"):
        Ensemble(make_cfg("trainer.ensemble=1000000000", *SMALL))
    assert built == [0]


@pytest.fixture(scope="module")
def adam_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    base = ["equation=heat", "optimizer=adam", "trainer.steps=20", "optimizer.lr=3e-3", "seed=7", *SMALL]
    ens = run_ensemble(make_cfg(*base, "trainer.ensemble=3", "analysis.hessian_every=10"), root / "ens")
    singles = [run_training(make_cfg(*base, f"seed={7 + i}"), root / f"single{i}") for i in range(3)]
    return root, ens, singles


def test_members_follow_their_single_runs(adam_runs):
    root, ens, singles = adam_runs
    rows = read_csv(root / "ens/history.csv")
    for i in range(3):
        single = read_csv(root / f"single{i}/history.csv")
        np.testing.assert_allclose([float(r[f"loss_m{i}"]) for r in rows], [float(r["loss"]) for r in single],
                                   rtol=1e-9)
        assert ens["members"][i]["rel_l2"] == pytest.approx(singles[i]["rel_l2"], rel=1e-8)
        assert ens["members"][i]["seed"] == 7 + i
    assert ens["rel_l2"] == pytest.approx(np.mean([s["rel_l2"] for s in singles]), rel=1e-8)
    assert ens["ensemble"]["std"]["rel_l2"] == pytest.approx(np.std([s["rel_l2"] for s in singles], ddof=1), rel=1e-6)
    assert "mean_prediction" in ens["ensemble"]
    tops = [float(r["hessian_top_m1"]) for r in rows if r["hessian_top_m1"]]
    assert len(tops) == 2 and all(t > 0 for t in tops)  # analysis.hessian_every=10 with 20 steps


def test_metrics_json_plots_and_evaluate(adam_runs):
    from pinn_cli.commands import evaluate

    root, _, _ = adam_runs
    run = root / "ens"
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("rel_l2", "max_abs_error", "rmse", "steps", "wall_time_s", "n_params", "device", "final_loss",
                "equation", "ensemble", "members"):
        assert key in saved, key
    assert len(saved["members"]) == 3 and saved["ensemble"]["members"] == 3
    for name in ("solution.png", "loss_curve.png", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file()
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:8] == ["step", "time_s", "loss", "loss_pde", "loss_ic", "loss_bc", "lr", "rel_l2"]
    assert "loss_m2" in header and "rel_l2_m2" in header
    evaluate.main([str(run), "--checkpoint", "last.pt"])
    out = json.loads((run / "metrics.json").read_text())
    assert out["evaluate"]["matches_training"] is True
    assert [m["rel_l2"] for m in out["members"]] == [m["rel_l2"] for m in saved["members"]]
    assert [m["final_loss"] for m in out["members"]] == [m["final_loss"] for m in saved["members"]]


def test_hessian_of_one_member(adam_runs):
    from pinn_cli.commands import hessian

    root, _, _ = adam_runs
    hessian.main([str(root / "ens"), "hessian.member=1", "hessian.iters=15", "hessian.trace_samples=0",
                  "hessian.slq_vectors=0", "hessian.terms=[]"])
    out = json.loads((root / "ens/hessian.json").read_text())
    single = root / "single1"
    hessian.main([str(single), "hessian.iters=15", "hessian.trace_samples=0", "hessian.slq_vectors=0",
                  "hessian.terms=[]", "--checkpoint", "last.pt"])
    ref = json.loads((single / "hessian.json").read_text())
    assert out["member"] == 1
    np.testing.assert_allclose(out["results"]["total"]["top_eigenvalues"], ref["results"]["total"]["top_eigenvalues"],
                               rtol=1e-6)
    with pytest.raises(PinnConfigError, match="out of range"):
        hessian.main([str(root / "ens"), "hessian.member=3"])


def test_lbfgs_phase_and_preemption_resume(tmp_path, monkeypatch):
    """adam then batched L-BFGS; SIGUSR1 mid-run saves last.pt and resume=auto ends where one run ends."""
    from pinn_cli.optim import OptimizerSchedule

    base = ["equation=ode_bvp", "trainer.ensemble=2", "trainer.steps=30", "optimizer.adam_steps=10",
            "sampler.resample_every=4", *SMALL]
    full = run_ensemble(make_cfg(*base), tmp_path / "full")
    rows = read_csv(tmp_path / "full/history.csv")
    assert full["status"] == "done" and float(rows[-1]["loss"]) < 0.5 * float(rows[1]["loss"])  # L-BFGS moves
    from pinn_cli import checkpoint
    from pinn_cli.ensemble import Ensemble

    saved = checkpoint.load(tmp_path / "full/checkpoints/last.pt")
    ens = Ensemble(make_cfg(*base))
    ens.sample([np.random.default_rng(i) for i in range(2)])
    ens.plan()
    ens.choose_chunk("auto")
    ens.load(saved["model"])
    ens.load_points(saved["points"])
    with torch.no_grad():
        at_saved = ens.losses()[0].tolist()
    logged = [m["final_loss"] for m in full["members"]]
    assert logged == pytest.approx(at_saved, rel=1e-9)  # the loss of the saved model, not of the step before
    real = OptimizerSchedule.adam_step
    signal_at_adam_step(monkeypatch, 6)
    handed_on = []  # a handler installed before the run (submitit's) gets the signal once last.pt is written
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handed_on.append(signum))
    try:
        part = run_ensemble(make_cfg(*base), tmp_path / "part")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert part["status"] == "preempted" and part["steps"] == 6
    assert handed_on == [signal.SIGUSR1]
    monkeypatch.setattr(OptimizerSchedule, "adam_step", real)
    done = run_ensemble(make_cfg(*base, "trainer.resume=auto"), tmp_path / "part")
    assert done["steps"] == 30
    assert [m["rel_l2"] for m in done["members"]] == pytest.approx([m["rel_l2"] for m in full["members"]], rel=1e-9)
    with pytest.raises(PinnError, match="not of this ensemble"):
        run_ensemble(make_cfg(*base, "trainer.ensemble=3", f"trainer.resume={tmp_path / 'part/checkpoints/last.pt'}"),
                     tmp_path / "other")


def test_rad_members_follow_their_single_runs(tmp_path):
    """sampler.adaptive=rad in an ensemble: each member redraws by its own residual, as its single run does."""
    base = ["equation=heat", "optimizer=adam", "trainer.steps=15", "optimizer.lr=3e-3", "seed=3", *SMALL,
            "sampler.resample_every=5", "sampler.adaptive=rad", "sampler.rad_pool=4"]
    ens = run_ensemble(make_cfg(*base, "trainer.ensemble=2"), tmp_path / "ens")
    rows = read_csv(tmp_path / "ens/history.csv")
    for i in range(2):
        single = run_training(make_cfg(*base, f"seed={3 + i}"), tmp_path / f"single{i}")
        hist = read_csv(tmp_path / f"single{i}/history.csv")
        np.testing.assert_allclose([float(r[f"loss_m{i}"]) for r in rows], [float(r["loss"]) for r in hist], rtol=1e-9)
        assert ens["members"][i]["rel_l2"] == pytest.approx(single["rel_l2"], rel=1e-8)


def test_compile_setting_is_checked_and_true_is_said_to_run_eager(tmp_path, caplog):
    with pytest.raises(PinnConfigError, match="trainer.compile='maybe' is not known"):
        run_ensemble(make_cfg("trainer.ensemble=2", "trainer.compile=maybe", *SMALL), tmp_path / "a")
    with caplog.at_level("WARNING", logger="pinn"):
        run_ensemble(make_cfg("trainer.ensemble=2", "trainer.compile=true", "trainer.steps=2", "optimizer=adam",
                              *SMALL), tmp_path / "b")
    assert sum("an ensemble runs its vmapped torch.func loss eagerly" in r.message for r in caplog.records) == 1


def test_an_ensemble_resume_says_what_a_single_run_resume_says(tmp_path, caplog):
    """resume=auto with no checkpoint says it starts at step 0; a resume names the settings changed
    since its checkpoint (the members' points and optimizer state carry on, so they would not apply)."""
    import logging

    base = ["equation=ode_decay", "trainer.ensemble=2", "optimizer=adam", "trainer.resume=auto", *SMALL]
    with caplog.at_level(logging.INFO, logger="pinn"):
        run_ensemble(make_cfg(*base, "trainer.steps=6"), tmp_path)
        assert any("trainer.resume=auto: no checkpoint in" in r.message for r in caplog.records)
        caplog.clear()
        run_ensemble(make_cfg(*base, "trainer.steps=12", "optimizer.lr=0.01", "trainer.ensemble_chunk=1"), tmp_path)
    assert any("resumed from" in r.message for r in caplog.records)
    (warning,) = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert "changed since the checkpoint: optimizer.lr 0.001 -> 0.01;" in warning


def test_solution_plot_title_names_whose_error_it_quotes(tmp_path, monkeypatch):
    """The title quoted the members' mean rel L2 as "mean rel L2" over panels of the ensemble-mean
    prediction; it now gives the mean prediction's rel L2 and, apart, the members' own. The 2D panels
    have x across (poisson2d: the plane, not transposed)."""
    import matplotlib.pyplot as plt

    from pinn_cli.ensemble import ensemble_title, evaluators, member_metrics, plot_ensemble, summarise

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    ens = Ensemble(make_cfg("equation=poisson2d", "trainer.ensemble=2", *SMALL))
    evs = evaluators(ens)
    per_member, pred = member_metrics(ens, evs)
    out = summarise(ens, per_member, pred, evs)
    plot_ensemble(ens, evs, per_member, tmp_path / "solution.png", out["ensemble"]["mean_prediction"])
    exact = evs[0].exact
    mean_rel = (torch.linalg.vector_norm(pred.mean(0) - exact) / torch.linalg.vector_norm(exact)).item()
    rel = sorted(m["rel_l2"] for m in per_member)
    assert kept[-1]._suptitle.get_text() == (
        f"poisson2d: ensemble of 2 seed(s), rel L2 of the ensemble-mean prediction {mean_rel:.2e}\n"
        f"members' rel L2 {rel[0]:.2e} to {rel[1]:.2e} (their mean {np.mean(rel):.2e})")
    assert [(a.get_xlabel(), a.get_ylabel()) for a in kept[-1].axes[:4]] == [("x", "y")] * 4
    study = ensemble_title("heat", "alpha", [{"rel_l2": 0.5}, {"rel_l2": 0.01}], None)
    assert study == "heat: 2 member(s) over equation.alpha\nmembers' rel L2 1.00e-02 to 5.00e-01 (their mean 2.55e-01)"


@pytest.mark.parametrize("equation, domain, aspect", [("poisson2d", "disk", 1.0), ("heat", "interval_time", "auto")])
def test_ensemble_heat_maps_draw_a_plane_to_scale(tmp_path, monkeypatch, equation, domain, aspect):
    """The ensemble's solution.png stretched a disk into an ellipse (aspect "auto"); a plane is now
    drawn with one unit of x as long as one of y, while an x-t diagram still fills its panel."""
    import matplotlib.pyplot as plt

    from pinn_cli.ensemble import evaluators, member_metrics, plot_ensemble

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    ens = Ensemble(make_cfg(f"equation={equation}", f"domain={domain}", "trainer.ensemble=2", *SMALL))
    evs = evaluators(ens)
    per_member, _ = member_metrics(ens, evs)
    plot_ensemble(ens, evs, per_member, tmp_path / "solution.png")
    fig = kept[-1]
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 4 and all(a.get_aspect() == aspect for a in panels)
    if aspect == 1.0:
        fig_w, fig_h = fig.get_size_inches()
        for a in panels:
            box = a.get_position()
            assert box.height * fig_h == pytest.approx(box.width * fig_w, rel=0.02)  # a round disk

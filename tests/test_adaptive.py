"""RAD adaptive resampling (sampler.adaptive=rad): the keep density, the residual it reads, and a run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_cfg

from pinn_cli.adaptive import Rad
from pinn_cli.derivatives import AutogradFields
from pinn_cli.training import build


def test_keep_density_follows_the_residual():
    """With c = 0 every kept point has a non-zero residual; a large c gives back uniform sampling; in
    between, the mean kept residual is E[eps^(k+1)] / E[eps^k] (the RAD density's mean)."""
    rng = np.random.default_rng(0)
    eps = np.zeros(20000)
    eps[:2000] = rng.uniform(0.5, 1.0, 2000)  # 10% of the candidates carry all the residual
    keep = Rad(k=1.0, c=0.0).choose(eps, 1000, np.random.default_rng(1))
    assert len(set(keep.tolist())) == 1000 and keep.max() < 2000
    keep = Rad(k=1.0, c=1e6).choose(eps, 2000, np.random.default_rng(2))
    assert 0.07 < np.mean(keep < 2000) < 0.13
    eps = rng.exponential(1.0, 50000)
    keep = Rad(k=2.0, c=0.0).choose(eps, 1000, np.random.default_rng(3))
    expected = (eps**3).sum() / (eps**2).sum()  # 3.0 for an exponential law, against a plain mean of 1.0
    assert abs(eps[keep].mean() / expected - 1) < 0.1, (eps[keep].mean(), expected)


def test_all_zero_or_non_finite_residual_falls_back_to_uniform():
    for eps in (np.zeros(100), np.full(100, np.nan)):
        keep = Rad(k=1.0, c=0.0).choose(eps, 60, np.random.default_rng(0))
        assert len(set(keep.tolist())) == 60


@pytest.mark.parametrize("engine", ["forward", "autograd"])
def test_residual_norm_is_the_pde_residual(engine):
    setup = build(make_cfg("equation=burgers", f"derivatives={engine}", "precision=float64", "network.width=8",
                           "sampler.adaptive=rad", "sampler.resample_every=10", "sampler.n_interior=50"))
    p = setup.problem
    p.sample(np.random.default_rng(0))
    p.plan()
    x = p.terms[0].x
    eq = setup.equation
    ref = p.terms[0].residual(AutogradFields(setup.net, x, eq.inputs, eq.outputs)).detach().abs().reshape(-1)
    got = p.residual_norm(p.terms[0], x, chunk=16)
    assert np.allclose(got, ref.cpu().numpy(), rtol=1e-10, atol=0)


def test_rad_redraw_keeps_pool_points_by_their_residual(monkeypatch):
    """A redraw evaluates the residual on a pool of rad_pool * n_interior candidates and keeps the ones
    Rad.choose picks; with k = 2, c = 0 their mean residual is E[eps^3] / E[eps^2] over the pool."""
    from pinn_cli.problem import Problem

    setup = build(make_cfg("equation=poisson2d", "precision=float64", "network.width=8", "sampler.adaptive=rad",
                           "sampler.resample_every=10", "sampler.n_interior=500", "sampler.rad_k=2",
                           "sampler.rad_c=0", "sampler.rad_pool=20"))
    p = setup.problem
    rng = np.random.default_rng(0)
    p.sample(rng)
    p.plan()
    seen = {}
    real_norm, real_choose = Problem.residual_norm, Rad.choose
    monkeypatch.setattr(Problem, "residual_norm", lambda self, t, x: seen.setdefault("eps", (x, real_norm(self, t, x)))[1])
    monkeypatch.setattr(Rad, "choose", lambda self, *a: seen.setdefault("keep", real_choose(self, *a)))
    p.sample(rng, adaptive=True)
    pool, eps = seen["eps"]
    assert pool.shape == (10000, 2) and p.terms[0].x.shape == (500, 2)
    assert torch.equal(p.terms[0].x, pool[seen["keep"]])
    expected = (eps**3).sum() / (eps**2).sum()
    assert expected > 1.2 * eps.mean()  # the residual varies enough for the check below to mean something
    assert abs(eps[seen["keep"]].mean() / expected - 1) < 0.1, (eps[seen["keep"]].mean(), expected, eps.mean())


def test_grid_pool_smaller_than_asked():
    """A grid gives about n points (37 asked: 36); with rad_pool=1 RAD keeps what the pool holds."""
    setup = build(make_cfg("equation=heat", "sampler=grid", "sampler.n_interior=37", "sampler.adaptive=rad",
                           "sampler.resample_every=10", "sampler.rad_pool=1", "network.width=8"))
    p = setup.problem
    rng = np.random.default_rng(0)
    p.sample(rng)
    p.plan()
    p.sample(rng, adaptive=True)
    assert p.terms[0].x.shape == (36, 2)


@pytest.mark.slow
def test_rad_run_trains_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    """A run with RAD redraws reaches a stated error, redraws when asked, and is reproducible across a
    preemption and resume (its points and generator state are in the checkpoint)."""
    from test_resume import lbfgs_preempt_and_resume

    calls = []
    real = Rad.choose
    monkeypatch.setattr(Rad, "choose", lambda self, *a: calls.append(1) or real(self, *a))
    base = ["equation=ode_decay", "optimizer.adam_steps=300", "sampler.n_interior=64", "sampler.resample_every=100",
            "sampler.adaptive=rad", "trainer.log_every=10", "trainer.eval_every=20", "trainer.checkpoint_every=20",
            "device=cpu", "precision=float64", "trainer.eval_points=200", "trainer.steps=400", "network.width=16"]
    full, _, resumed, _ = lbfgs_preempt_and_resume(tmp_path, monkeypatch, base)
    assert len(calls) == 2 * 2  # steps 100 and 200 (300 is L-BFGS) in the full run and in the preempted one
    assert resumed["rel_l2"] == full["rel_l2"] < 5e-3, full  # measured 9.8e-4

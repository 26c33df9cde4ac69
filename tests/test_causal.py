"""Causal weighting of the PDE residual: the loss is the stated formula; training with it works."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg

from pinn_cli.derivatives import AutogradFields
from pinn_cli.errors import PinnConfigError
from pinn_cli.training import build, run_training


def test_causal_loss_matches_formula():
    setup = build(make_cfg("equation=heat", "device=cpu", "sampler.n_interior=300"))
    problem = setup.problem
    problem.sample(np.random.default_rng(0))
    problem.plan()
    problem.set_causal(4, 2.0)
    total, parts = problem.loss()

    eq, pde = setup.equation, problem.terms[0]
    r = eq.residual(AutogradFields(setup.net, pde.x, eq.inputs, eq.outputs)).detach().reshape(-1)
    t = pde.x[:, 1]
    chunk = torch.clamp((t * 4).long(), max=3)
    losses = torch.stack([r[chunk == c].square().mean() for c in range(4)])
    w = torch.exp(-2.0 * (torch.cumsum(losses, 0) - losses))
    expected = pde.weight * (w * losses).mean()
    others = sum(term.weight * p for term, p in zip(problem.terms[1:], parts[1:]))
    assert torch.allclose(total, expected + others, rtol=1e-10)
    assert torch.allclose(parts[0], r.square().mean(), rtol=1e-10)  # history gets the plain MSE
    assert torch.allclose(problem.causal.last, w, rtol=1e-10)
    assert problem.causal.last[0] == 1.0 and bool((problem.causal.last[1:] < 1).all())

    # frozen weights stay fixed while the parameters move
    problem.freeze_causal()
    frozen = problem.causal.frozen.clone()
    with torch.no_grad():
        for p in setup.net.parameters():
            p.mul_(1.1)
    problem.loss()
    assert torch.equal(problem.causal.last, frozen)


def test_frozen_weights_are_the_same_with_either_engine():
    """freeze_causal evaluates the loss under no_grad: the autograd engine must still give real derivatives
    there (it gave zeros, so every L-BFGS block ran with weights of 1)."""
    frozen = {}
    for engine in ("forward", "autograd"):
        setup = build(make_cfg("equation=heat", f"derivatives={engine}", "device=cpu", "precision=float64",
                               "sampler.n_interior=300"))
        setup.problem.sample(np.random.default_rng(0))
        setup.problem.plan()
        setup.problem.set_causal(4, 50.0)
        setup.problem.freeze_causal()
        frozen[engine] = setup.problem.causal.frozen
    torch.testing.assert_close(frozen["autograd"], frozen["forward"], rtol=1e-10, atol=0)
    assert float(frozen["forward"][-1]) < 0.5


def test_causal_needs_a_time_input():
    setup = build(make_cfg("equation=poisson2d", "device=cpu"))
    with pytest.raises(PinnConfigError, match="trainer.causal_chunks=8: equation poisson2d has no time input"):
        setup.problem.set_causal(8, 1.0)


@pytest.mark.slow
def test_causal_heat_training(tmp_path):
    cfg = make_cfg("equation=heat", "device=cpu", "precision=float64", "trainer.steps=700",
                   "optimizer.adam_steps=300", "sampler.n_interior=500", "sampler.n_boundary=100",
                   "sampler.n_initial=100", "network.width=20", "trainer.eval_points=2000",
                   "trainer.log_every=50", "trainer.eval_every=100", "trainer.causal_chunks=8",
                   "trainer.causal_eps=10")
    metrics = run_training(cfg, tmp_path)
    assert metrics["rel_l2"] < 3e-3, metrics
    rows = list(csv.DictReader((tmp_path / "history.csv").read_text().splitlines()))
    w = [float(r["causal_w_min"]) for r in rows]
    assert all(0 <= v <= 1 for v in w) and w[-1] > 0.99 and not math.isclose(w[0], w[-1])


def test_causal_resume_in_lbfgs_matches_uninterrupted_run(tmp_path, monkeypatch):
    """Preempted inside the L-BFGS phase and resumed: the held causal weights are recomputed from the
    checkpoint's parameters, so weights and history equal one uninterrupted run."""
    from test_resume import lbfgs_preempt_and_resume

    base = ["equation=heat", "optimizer.adam_steps=20", "sampler.n_interior=64", "sampler.n_boundary=16",
            "sampler.n_initial=16", "network.width=8", "trainer.log_every=10", "trainer.eval_every=20",
            "trainer.checkpoint_every=10", "device=cpu", "precision=float64", "trainer.eval_points=200",
            "trainer.causal_chunks=4", "trainer.causal_eps=5", "trainer.steps=60"]
    _, part, _, history = lbfgs_preempt_and_resume(tmp_path, monkeypatch, base)
    assert part["status"] == "preempted" and part["steps"] == 30  # the signal undid the block 30-40
    assert all(0 < float(r["causal_w_min"]) <= 1 for r in history)

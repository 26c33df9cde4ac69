"""The derivative API against closed forms, its caching, and zeros where there is no dependence."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pinn_cli.derivatives import (
    AutogradFields,
    DerivativeEngine,
    ForwardFields,
    ForwardPlan,
    constant_linear_part,
    parse_name,
)
from pinn_cli.networks import MLP


def field_fn(p):
    x, t = p[:, 0], p[:, 1]
    u = torch.sin(2 * x) * torch.exp(-t) + x**3 * t**2
    v = x * t
    return torch.stack([u, v], 1)


def test_closed_forms():
    p = torch.rand(64, 2, dtype=torch.float64)
    x, t = p[:, 0], p[:, 1]
    f = AutogradFields(field_fn, p, ("x", "t"), ("u", "v"))
    expected = {
        "u_x": 2 * torch.cos(2 * x) * torch.exp(-t) + 3 * x**2 * t**2,
        "u_t": -torch.sin(2 * x) * torch.exp(-t) + 2 * x**3 * t,
        "u_xx": -4 * torch.sin(2 * x) * torch.exp(-t) + 6 * x * t**2,
        "u_xt": -2 * torch.cos(2 * x) * torch.exp(-t) + 6 * x**2 * t,
        "u_tx": -2 * torch.cos(2 * x) * torch.exp(-t) + 6 * x**2 * t,
        "u_xxt": 4 * torch.sin(2 * x) * torch.exp(-t) + 12 * x * t,
        "u_xxx": -8 * torch.cos(2 * x) * torch.exp(-t) + 6 * t**2,
        "v_x": t, "v_xt": torch.ones_like(x), "v_xx": torch.zeros_like(x), "v_xxt": torch.zeros_like(x),
    }
    for name, want in expected.items():
        torch.testing.assert_close(f[name], want, rtol=1e-12, atol=1e-12, msg=name)
    torch.testing.assert_close(f.x, x)
    assert torch.equal(f.u_tx, f.u_xt)


def test_first_derivatives_are_computed_once(monkeypatch):
    calls = []
    real = torch.autograd.grad

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    p = torch.rand(16, 2, dtype=torch.float64)
    f = AutogradFields(field_fn, p, ("x", "t"), ("u", "v"))
    _ = f.u_t, f.u_x, f.u_xx, f.u_xt, f.u_tt
    assert len(calls) == 3  # one for all first derivatives of u, one for u_x's, one for u_t's


@pytest.mark.parametrize("engine", ["autograd", "forward"])
def test_linear_network_second_derivative_is_zero(engine):
    net = MLP(1, 1, width=8, depth=3, activation="identity").double()
    x = torch.linspace(-2, 2, 11, dtype=torch.float64)[:, None]
    f = DerivativeEngine(engine, net, ("x",), ("y",)).fields(x, {(0, (0,)), (0, (0, 0))})
    assert torch.equal(f.y_xx, torch.zeros(11, dtype=torch.float64))
    assert torch.allclose(f.y_x, f.y_x[0].expand(11))
    assert f.y_x.abs().max() > 0


def test_autograd_fields_under_no_grad_are_the_real_derivatives():
    """Under torch.no_grad (causal weights, trainer.steps=0) the values are still differentiated."""
    p = torch.rand(16, 2, dtype=torch.float64)
    want = {n: AutogradFields(field_fn, p, ("x", "t"), ("u", "v"))[n].detach() for n in ("u_x", "u_xx", "u_xxt", "v_xt")}
    with torch.no_grad():
        f = AutogradFields(field_fn, p, ("x", "t"), ("u", "v"))
        for name, w in want.items():
            torch.testing.assert_close(f[name], w, rtol=1e-14, atol=1e-14, msg=name)
    assert float(want["u_x"].abs().min()) > 0


def test_derivative_names_read_one_way_only():
    assert parse_name("u_abc", ("a", "ab", "bc"), ("u",)) == (0, (0, 2))  # a then bc: not stuck after ab
    assert parse_name("u_xy", ("x", "y", "xy"), ("u",)) is None          # ambiguous: refused, never guessed


def test_the_forward_engine_names_a_derivative_it_cannot_serve():
    from pinn_cli.errors import PinnConfigError

    net = MLP(2, 1, width=4, depth=2)
    with pytest.raises(PinnConfigError, match="derivatives=forward: u_xxt is of order 3"):
        DerivativeEngine("forward", net, ("x", "t"), ("u",)).resolve([(0, (0, 0, 1))])


def test_input_independent_output_gives_zero_first_derivative():
    const = nn.Linear(1, 1)
    f = AutogradFields(lambda p: const(torch.zeros_like(p[:, :1])), torch.rand(5, 1), ("x",), ("u",))
    assert torch.equal(f.u_x, torch.zeros(5)) and torch.equal(f.u_xx, torch.zeros(5))


def test_parse_names():
    ins, outs = ("x1", "x2", "t"), ("u", "p")
    assert parse_name("u", ins, outs) == (0, ())
    assert parse_name("p_x2x1", ins, outs) == (1, (0, 1))
    assert parse_name("x2", ins, outs) == 1
    assert parse_name("u_q", ins, outs) is None


def test_unknown_name_is_a_clear_error():
    f = AutogradFields(field_fn, torch.rand(3, 2), ("x", "t"), ("u", "v"))
    with pytest.raises(AttributeError, match="not an input"):
        _ = f.w_x


def test_forward_matches_autograd_on_mlp():
    torch.manual_seed(0)
    net = MLP(2, 2, width=16, depth=3, activation="tanh").double()
    p = torch.rand(32, 2, dtype=torch.float64)
    needs = {(0, (1,)), (0, (0, 0)), (1, (0, 1))}
    fw = ForwardFields(net, p, ("x", "t"), ("u", "v"), needs)
    ag = AutogradFields(net, p, ("x", "t"), ("u", "v"))
    for name in ("u", "v", "u_t", "u_xx", "v_xt"):
        torch.testing.assert_close(fw[name], ag[name], rtol=1e-10, atol=1e-12)


def test_normal_derivative():
    p = torch.tensor([[0.0, 0.3], [1.0, 0.6]], dtype=torch.float64)
    n = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    f = AutogradFields(field_fn, p, ("x", "t"), ("u", "v"), normals=n)
    torch.testing.assert_close(f.u_n, torch.stack([-f.u_x[0], f.u_x[1]]))
    assert math.isfinite(float(f.u_n.detach().sum()))


def test_constant_linear_part_finds_operators():
    x = torch.rand(8, 2, dtype=torch.float64)
    ins, outs = ("x", "t"), ("u",)
    needs = {(0, (0,)), (0, (1,)), (0, (0, 0))}
    heat = constant_linear_part(lambda f: f.u_t - 0.05 * f.u_xx, x, ins, outs, needs)
    assert heat == {0: {(1,): 1.0, (0, 0): -0.05}}
    burgers = constant_linear_part(lambda f: f.u_t + f.u * f.u_x - 0.01 * f.u_xx, x, ins, outs, needs)
    assert burgers == {0: {(1,): 1.0, (0, 0): -0.01}}  # u_x has the coefficient u: not constant
    assert constant_linear_part(lambda f: f.u_t - f.x * f.u_xx, x, ins, outs, needs) == {}  # varies in x
    assert constant_linear_part(lambda f: f.u_t - f.u_xx ** 2, x, ins, outs, needs) == {}  # nonlinear
    assert constant_linear_part(lambda f: (f.u_t, f.u_xx), x, ins, outs, needs) == {}  # a system


def test_forward_plan_reads_a_fused_operator_through_its_anchor():
    plan = ForwardPlan.build({(0, (1,)), (0, (0,)), (0, (0, 0))}, {0: {(1,): 2.0, (0, 0): -0.1}})
    assert plan.combos == (((-0.05, (0, 0)), (1.0, (1,))),)
    assert ((0, (1,)), "combo", 0) in plan.source and ((0, (0, 0)), "zero", 0) in plan.source
    assert plan.first == (0,)


@pytest.mark.parametrize("equation", ["heat", "burgers", "poisson2d"])
def test_problem_loss_matches_the_autograd_engine(cfg_factory, equation):
    """Fused operator channels and shared passes give the loss and gradients of plain autograd."""
    import numpy as np

    from pinn_cli.training import build

    out = {}
    for engine in ("autograd", "forward"):
        cfg = cfg_factory(f"equation={equation}", f"derivatives={engine}", "precision=float64", "device=cpu",
                          "sampler.n_interior=64", "sampler.n_boundary=16", "sampler.n_initial=16")
        setup = build(cfg)
        setup.problem.sample(np.random.default_rng(0))
        setup.problem.plan()
        total, parts = setup.problem.loss()
        out[engine] = [total, *parts, *torch.autograd.grad(total, list(setup.net.parameters()))]
        if engine == "forward":
            assert len(setup.problem.terms[0].channels.combos) == 1  # the operator is one channel
            assert len(setup.problem._passes) == 1  # conditions ride along with the PDE points
    for a, b in zip(out["autograd"], out["forward"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fusion_is_verified_against_autograd(cfg_factory):
    """A residual that looks linear on free probes but is not pointwise keeps plain channels."""
    import numpy as np

    from pinn_cli.training import build

    cfg = cfg_factory("equation=heat", "precision=float64", "device=cpu", "sampler.n_interior=32",
                      "sampler.n_boundary=8", "sampler.n_initial=8")
    setup = build(cfg)
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.terms[0].residual = lambda f: f.u_t - 0.05 * f.u_xx.mean()
    setup.problem.plan()
    assert setup.problem.terms[0].channels.combos == (((1.0, (0, 0)),),)


def _custom_problem(cfg_factory, engine: str, equation: dict, *extra: str, domain_cfg=None):
    import numpy as np
    from omegaconf import open_dict

    from pinn_cli.training import build

    cfg = cfg_factory("equation=custom", f"derivatives={engine}", "precision=float64", "device=cpu",
                      "network.width=8", "network.depth=2", "equation.check_exact=false", *extra)
    with open_dict(cfg):
        for key, value in equation.items():
            cfg.equation[key] = value
        for key, value in (domain_cfg or {}).items():
            cfg.domain[key] = value
    setup = build(cfg)
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.plan()
    return setup.problem


def _both_engines(make) -> dict[str, list[torch.Tensor]]:
    out = {}
    for engine in ("autograd", "forward"):
        problem = make(engine)
        total, parts = problem.loss()
        out[engine] = [total, *parts]
    return out


def test_a_coefficient_varying_in_space_is_not_fused_on_a_grid(cfg_factory):
    """A grid lists x slowest: the first points share one x, yet k(x) = 1 + x must not be fused."""
    def make(engine):
        eq = {"inputs": ["x", "t"], "outputs": ["u"], "bounds": {"x": [0, 1], "t": [0, 1]}, "time": "t",
              "residual": "u_t - (1 + x)*u_xx",
              "conditions": [{"where": "t == 0", "value": "sin(pi*x)"}, {"where": "boundary", "value": "0"}]}
        return _custom_problem(cfg_factory, engine, eq, "sampler=grid", "sampler.n_interior=1600")

    out = _both_engines(make)
    for a, b in zip(out["autograd"], out["forward"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_a_normal_derivative_on_a_slanted_polygon_is_not_fused(cfg_factory):
    """Boundary points come face by face: u_n = n.grad u must keep each point's own normal."""
    def make(engine):
        eq = {"inputs": ["x", "y"], "outputs": ["u"], "bounds": {"x": [-1, 1], "y": [-1, 1]}, "time": None,
              "residual": "u_xx + u_yy + 1", "conditions": [{"where": "boundary", "expr": "u_n", "value": "0"}]}
        return _custom_problem(cfg_factory, engine, eq, "domain=polygon", "sampler.n_interior=200",
                               "sampler.n_boundary=300", domain_cfg={"vertices": [[0, 1], [-1, -1], [1, -1]]})

    out = _both_engines(make)
    for a, b in zip(out["autograd"], out["forward"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_changing_a_coefficient_after_planning_is_seen(cfg_factory):
    """The fused heat operator holds alpha: changing alpha afterwards plans again instead of going stale."""
    import numpy as np

    from pinn_cli.training import build

    losses = {}
    for engine in ("autograd", "forward"):
        setup = build(cfg_factory("equation=heat", f"derivatives={engine}", "precision=float64", "device=cpu",
                                  "sampler.n_interior=64", "network.width=8", "network.depth=2"))
        setup.problem.sample(np.random.default_rng(0))
        setup.problem.plan()
        before = setup.problem.loss()[1][0]
        setup.equation.alpha = 1.0
        losses[engine] = (before, setup.problem.loss()[1][0], setup.problem.term_losses()[0])
    for a, b in zip(losses["autograd"], losses["forward"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert losses["forward"][1] > 2 * losses["forward"][0]  # the change matters


@pytest.mark.parametrize("engine", ["autograd", "forward"])
def test_a_residual_differentiates_with_respect_to_a_callers_points(engine):
    """x that requires grad stays in the graph: d(u_xx)/dx is u_xxx, in every engine."""
    torch.manual_seed(0)
    net = MLP(2, 1, width=6, depth=2, activation="tanh").double()
    x = torch.rand(7, 2, dtype=torch.float64, requires_grad=True)
    f = DerivativeEngine(engine, net, ("x", "t"), ("u",)).fields(x, {(0, (0,)), (0, (0, 0))})
    (got,) = torch.autograd.grad(f.u_xx.sum(), x)

    def d(y: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(y.sum(), x, create_graph=True)[0]

    u_xxx_and_xxt = d(d(d(net(x))[:, 0])[:, 0])
    torch.testing.assert_close(got, u_xxx_and_xxt, rtol=1e-10, atol=1e-12)

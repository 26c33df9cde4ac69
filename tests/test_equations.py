"""Each equation's exact solution satisfies its PDE and its conditions (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EQUATIONS, make_cfg
from torch import nn

from pinn_cli.derivatives import AutogradFields
from pinn_cli.equations.heat import Heat
from pinn_cli.errors import PinnConfigError
from pinn_cli.problem import mse
from pinn_cli.training import build


class ExactNet(nn.Module):
    """A 'network' that is the exact solution, so residuals through the derivative API should vanish."""

    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, x):
        return self.equation.exact(x)


@pytest.mark.parametrize("equation", EQUATIONS)
def test_exact_solution_has_zero_residuals(equation):
    setup = build(make_cfg(f"equation={equation}", "precision=float64", "device=cpu"))
    eq, problem = setup.equation, setup.problem
    problem.sample(np.random.default_rng(1))
    net = ExactNet(eq)
    for term in problem.terms:
        f = AutogradFields(net, term.x, eq.inputs, eq.outputs, term.normals)
        assert mse(term.residual(f)).item() < 1e-20, term.name


def test_residual_is_not_trivially_zero():
    """The check above can fail: a wrong solution gives a large residual."""
    setup = build(make_cfg("equation=heat", "precision=float64", "device=cpu"))
    eq = setup.equation
    x = torch.rand(50, 2, dtype=torch.float64)
    wrong = AutogradFields(lambda p: eq.exact(p) * 1.1 + p[:, :1] ** 2, x, eq.inputs, eq.outputs)
    assert mse(eq.residual(wrong)).item() > 1e-4


def test_unknown_coefficient_is_a_config_error():
    with pytest.raises(PinnConfigError, match="equation.beta is not a parameter of heat"):
        build(make_cfg("+equation.beta=2", "device=cpu"))


@pytest.mark.parametrize("equation", EQUATIONS)
def test_a_wrong_solution_leaves_a_residual(equation):
    """Every equation's PDE term can fail: the exact solution, perturbed, does not satisfy it."""
    setup = build(make_cfg(f"equation={equation}", "precision=float64", "device=cpu"))
    eq, problem = setup.equation, setup.problem
    problem.sample(np.random.default_rng(2))
    x = problem.terms[0].x[:200]
    wrong = lambda p: eq.exact(p) * 1.1 + 0.3 * torch.sin(p[:, :1] + 3 * p[:, -1:])   # (not a wave with c = 2)
    assert mse(eq.residual(AutogradFields(wrong, x, eq.inputs, eq.outputs))).item() > 1e-6


@pytest.mark.parametrize("equation, outputs, terms", [
    ("kovasznay", ("u", "v", "p"), ["pde", "bc", "bc_p"]),
    ("taylor_green", ("u", "v", "p"), ["pde", "ic", "bc"]),
    ("wave", ("u",), ["pde", "ic", "ic_t", "bc"]),
    ("klein_gordon", ("u",), ["pde", "ic", "ic_t", "bc"]),
])
def test_systems_and_second_order_in_time_use_the_plain_interface(equation, outputs, terms):
    setup = build(make_cfg(f"equation={equation}", "device=cpu"))
    assert setup.equation.outputs == outputs and setup.equation.terms == terms
    assert setup.evaluator.exact.shape[1] == len(outputs)


def test_kovasznay_pressure_is_given_on_the_outflow_side_only():
    setup = build(make_cfg("equation=kovasznay", "device=cpu"))
    setup.problem.sample(np.random.default_rng(0))
    term = {t.name: t for t in setup.problem.terms}["bc_p"]
    assert len(term.x) == setup.cfg.sampler.n_boundary and bool((term.x[:, 0] == 1.0).all())


def test_poisson_nd_dimension_is_a_key():
    setup = build(make_cfg("equation=poisson_nd", "equation.dim=3", "device=cpu"))
    assert setup.equation.inputs == ("x1", "x2", "x3") and setup.domain.dim == 3
    from pinn_cli.errors import PinnConfigError

    with pytest.raises(PinnConfigError, match="equation.dim=0 is invalid"):
        build(make_cfg("equation=poisson_nd", "equation.dim=0", "device=cpu"))


def test_coefficients_are_keys():
    setup = build(make_cfg("equation=helmholtz", "equation.k=6.283185307179586", "device=cpu"))
    x = torch.tensor([[0.25, 0.25]], dtype=torch.float64)
    assert abs(setup.equation.exact(x).item() - 1.0) < 1e-12   # sin(2 pi / 4)^2


def test_tuning_sets_training_defaults_per_equation_and_the_command_line_wins():
    from conftest import CONFIGS

    tuned = sorted(p.stem for p in (CONFIGS / "tuning").glob("*.yaml"))
    assert tuned and set(tuned) <= set(EQUATIONS)
    base = make_cfg("equation=heat")
    cfg = make_cfg("equation=burgers")
    assert cfg.trainer.steps == 7000 and cfg.sampler.n_interior == 6000 and cfg.network.depth == 4
    assert cfg.trainer.log_every == base.trainer.log_every          # untouched keys keep train.yaml's values
    cfg = make_cfg("equation=burgers", "trainer.steps=7", "network.depth=2", "optimizer=adam")
    assert cfg.trainer.steps == 7 and cfg.network.depth == 2 and cfg.optimizer.name == "adam"
    assert make_cfg("equation=helmholtz").network.activation == "sin"


@pytest.mark.parametrize("overrides, misses", [
    (["equation=poisson2d", "domain=disk"], None),  # boundary values from the exact solution: any domain
    (["equation=poisson2d", "domain=polygon"], None),
    (["equation=heat2d", "domain=rectangle_time"], None),
    (["equation=heat", "domain.bounds.t=[0,2]"], None),  # a longer time interval keeps the solution
    (["equation=heat", "equation.bounds.t=[0.5,1]"], "'ic'"),  # sin(pi x) at t = 0.5 is not the solution there
    (["equation=burgers", "domain.bounds.x=[-0.5,0.5]"], "'bc'"),
    (["equation=wave", "domain.bounds.x=[0,0.75]"], "'bc'"),
])
def test_the_exact_solution_must_hold_on_the_chosen_domain(overrides, misses):
    """rel L2 is only meaningful when the exact solution meets every condition on the domain in use."""
    from pinn_cli.errors import PinnConfigError

    setup = build(make_cfg(*overrides, "device=cpu"))
    setup.problem.sample(np.random.default_rng(0))
    if misses is None:
        setup.problem.check_exact_solution()
    else:
        with pytest.raises(PinnConfigError, match=f"exact solution misses its condition {misses} on this domain"):
            setup.problem.check_exact_solution()


@pytest.mark.parametrize("equation", ["heat", "custom"])
def test_a_domain_cannot_move_the_initial_time(equation):
    """domain.bounds.t=[0.5,1] would apply conditions posed at t = 0 at t = 0.5 (also without an exact solution)."""
    from pinn_cli.errors import PinnConfigError

    with pytest.raises(PinnConfigError, match="domain.bounds.t starts at 0.5, but equation .* are posed at t = 0"):
        build(make_cfg(f"equation={equation}", "domain.bounds.t=[0.5,1]", "device=cpu"))
    build(make_cfg(f"equation={equation}", "domain.bounds.t=[0,2]", "device=cpu"))  # a later end is fine


def _heat_problem(monkeypatch, **patch):
    for key, value in patch.items():
        monkeypatch.setattr(Heat, key, value)
    setup = build(make_cfg("equation=heat", "precision=float64", "device=cpu"))
    setup.problem.sample(np.random.default_rng(0))
    return setup.problem


def test_start_up_catches_an_exact_solution_that_misses_the_pde(monkeypatch):
    """u (1 + t) keeps heat's initial and boundary values but not the PDE: every reported error would
    be measured against a wrong reference, so training refuses to start."""
    exact = Heat.exact
    problem = _heat_problem(monkeypatch, exact=lambda self, x: exact(self, x) * (1 + x[:, 1:2]))
    with pytest.raises(PinnConfigError, match=r"equation heat: exact\(\) does not satisfy the PDE residual"):
        problem.check_exact_solution()


def test_an_exact_solution_of_the_wrong_shape_is_named(monkeypatch):
    exact = Heat.exact
    problem = _heat_problem(monkeypatch, exact=lambda self, x: exact(self, x)[:, 0])
    with pytest.raises(PinnConfigError, match=r"exact\(\) returned \(64,\) for 64 points; it must return a tensor "
                                              r"of shape \(N, 1\), one column per output \(u\)"):
        problem.check_exact_solution()


def test_a_built_in_select_that_keeps_no_point_is_named_as_such(monkeypatch):
    from pinn_cli.equations.base import Condition

    conds = lambda self: [Condition("ic", "initial", lambda f: f.u),
                          Condition("bc", "boundary", lambda f: f.u, select=lambda x: x[:, 0] > 5)]
    with pytest.raises(PinnConfigError, match="condition 'bc': its select function selects none of the boundary"):
        _heat_problem(monkeypatch, conditions=conds)


def test_an_initial_condition_without_a_time_input_says_where_to_name_it(monkeypatch):
    with pytest.raises(PinnConfigError, match=r'time = "t" on a built-in equation\'s class'):
        _heat_problem(monkeypatch, time=None)


@pytest.mark.parametrize("c, face", [(1.0, 0.0), (-1.0, 1.0)])
def test_advection_pins_only_its_inflow_face(c, face):
    setup = build(make_cfg("equation=advection", f"equation.c={c}", "precision=float64", "device=cpu"))
    setup.problem.sample(np.random.default_rng(0))
    bc = next(t for t in setup.problem.terms if t.name == "bc")
    assert len(bc.x) == setup.cfg.sampler.n_boundary and bool((bc.x[:, 0] == face).all())


def test_check_exact_false_trains_against_a_reference_that_misses_the_pde(monkeypatch):
    exact = Heat.exact
    monkeypatch.setattr(Heat, "exact", lambda self, x: exact(self, x) * (1 + x[:, 1:2]))
    setup = build(make_cfg("equation=heat", "+equation.check_exact=false", "precision=float64", "device=cpu"))
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.check_exact_solution()  # no error: the user asked for it


def test_an_exact_solution_in_numpy_gets_the_shape_check_only(monkeypatch):
    """numpy code cannot be differentiated: no PDE or condition check, but no crash either."""
    monkeypatch.setattr(Heat, "exact", lambda self, x: torch.as_tensor(np.sin(np.pi * x[:, :1].numpy())))
    _heat_problem(monkeypatch).check_exact_solution()
    monkeypatch.setattr(Heat, "exact", lambda self, x: torch.as_tensor(np.sin(np.pi * x[:, 0].numpy())))
    with pytest.raises(PinnConfigError, match=r"exact\(\) returned \(64,\)"):
        _heat_problem(monkeypatch).check_exact_solution()

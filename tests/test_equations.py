"""Each equation's exact solution satisfies its PDE and its conditions (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import EQUATIONS, make_cfg
from pinn_cli.derivatives import AutogradFields
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
    from pinn_cli.errors import PinnConfigError

    with pytest.raises(PinnConfigError, match="equation.beta is not a parameter of heat"):
        build(make_cfg("+equation.beta=2", "device=cpu"))

"""2D Laplace equation u_xx + u_yy = 0 with Dirichlet data from the exact solution exp(pi x) sin(pi y) / exp(pi)."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Laplace2D(Equation):
    """Laplace u_xx + u_yy = 0, u = exp(pi (x - 1)) sin(pi y) on the boundary (any domain keeps it exact)."""

    inputs = ("x", "y")

    def residual(self, f):
        return f.u_xx + f.u_yy

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.u - _u(f.x, f.y))]

    def exact(self, x):
        xs, ys = x.unbind(-1)
        return _u(xs, ys)[:, None]


def _u(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.exp(math.pi * (x - 1)) * torch.sin(math.pi * y)

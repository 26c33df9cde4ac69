"""Second-order boundary value problem y'' = -2 with y(-2) = -1, y(2) = 1."""
from __future__ import annotations

from .base import Condition, Equation


class OdeBvp(Equation):
    """BVP y'' = -2 on [-2,2], y(-2)=-1, y(2)=1; y = -x^2 + x/2 + 4."""

    inputs = ("x",)
    outputs = ("y",)

    def residual(self, f):
        return f.y_xx + 2

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.y - (-f.x**2 + f.x / 2 + 4))]

    def exact(self, x):
        xs = x[:, :1]
        return -xs**2 + xs / 2 + 4

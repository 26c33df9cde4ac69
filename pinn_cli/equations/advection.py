"""1D linear advection u_t + c u_x = 0 with u(x,0) = sin(2 pi x) and the inflow boundary from the exact solution."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Advection(Equation):
    """Linear advection u_t + c u_x = 0, u(x,0) = sin(2 pi x), u = sin(2 pi (x - c t)) on the inflow
    side only (x at its lower bound for c > 0, at its upper bound for c < 0); exact sin(2 pi (x - c t))."""

    inputs = ("x", "t")
    time = "t"
    params = {"c": 1.0}

    def residual(self, f):
        return f.u_t + self.c * f.u_x

    def conditions(self):
        lo, hi = self.bounds["x"]
        x_in = lo if self.c >= 0 else hi
        return [
            Condition("ic", "initial", lambda f: f.u - _u(f.x, f.t, self.c)),
            Condition("bc", "boundary", lambda f: f.u - _u(f.x, f.t, self.c),
                      select=lambda x: abs(x[:, 0] - x_in) <= 1e-9 * max(1.0, abs(x_in))),
        ]

    def exact(self, x):
        xs, t = x.unbind(-1)
        return _u(xs, t, self.c)[:, None]


def _u(x: torch.Tensor, t: torch.Tensor, c: float) -> torch.Tensor:
    return torch.sin(2 * math.pi * (x - c * t))

"""2D Poisson equation; on [-1,1]^2 its boundary values are zero."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Poisson2D(Equation):
    """Poisson u_xx + u_yy = f, u = sin(pi(x+1)/2) sin(pi(y+1)/2) on the boundary (zero on the default
    [-1,1]^2), so the exact solution holds on any domain (disk, polygon)."""

    inputs = ("x", "y")

    def residual(self, f):
        source = -(math.pi**2 / 2) * torch.sin(math.pi * (f.x + 1) / 2) * torch.sin(math.pi * (f.y + 1) / 2)
        return f.u_xx + f.u_yy - source

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.u - _u(f.x, f.y))]

    def exact(self, x):
        xs, ys = x.unbind(-1)
        return _u(xs, ys)[:, None]


def _u(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sin(math.pi * (x + 1) / 2) * torch.sin(math.pi * (y + 1) / 2)

"""2D Poisson equation on [-1,1]^2 with zero Dirichlet boundary."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Poisson2D(Equation):
    """Poisson u_xx + u_yy = f on [-1,1]^2, u=0 on the boundary; u = sin(pi(x+1)/2) sin(pi(y+1)/2)."""

    inputs = ("x", "y")

    def residual(self, f):
        source = -(math.pi**2 / 2) * torch.sin(math.pi * (f.x + 1) / 2) * torch.sin(math.pi * (f.y + 1) / 2)
        return f.u_xx + f.u_yy - source

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.u)]

    def exact(self, x):
        xs, ys = x.unbind(-1)
        return (torch.sin(math.pi * (xs + 1) / 2) * torch.sin(math.pi * (ys + 1) / 2))[:, None]

"""2D Helmholtz equation -Δu - k²u = k² sin(kx) sin(ky) with zero Dirichlet boundary."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Helmholtz(Equation):
    """Helmholtz -u_xx - u_yy - k^2 u = k^2 sin(kx) sin(ky) on [0,1]^2, u = 0 on the boundary."""

    inputs = ("x", "y")
    params = {"k": 4 * math.pi}

    def residual(self, f):
        k2 = self.k**2
        return -f.u_xx - f.u_yy - k2 * f.u - k2 * torch.sin(self.k * f.x) * torch.sin(self.k * f.y)

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.u - self._u(f.x, f.y))]

    def _u(self, x, y):
        return torch.sin(self.k * x) * torch.sin(self.k * y)

    def exact(self, x):
        return self._u(x[:, 0], x[:, 1])[:, None]

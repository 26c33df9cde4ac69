"""Taylor–Green vortex: unsteady 2D incompressible Navier–Stokes with outputs (u, v, p)."""
from __future__ import annotations

import torch

from .base import Condition, Equation


class TaylorGreen(Equation):
    """Unsteady Navier–Stokes (u, v, p), nu = 0.01, on [0,2pi]^2 x [0,1]; the decaying Taylor–Green vortex.

    u, v and p are given at t = 0 and on the boundary (the exact solution's values).
    """

    inputs = ("x", "y", "t")
    outputs = ("u", "v", "p")
    time = "t"
    params = {"nu": 0.01}

    def residual(self, f):
        u, v, nu = f.u, f.v, self.nu
        return (
            f.u_t + u * f.u_x + v * f.u_y + f.p_x - nu * (f.u_xx + f.u_yy),
            f.v_t + u * f.v_x + v * f.v_y + f.p_y - nu * (f.v_xx + f.v_yy),
            f.u_x + f.v_y,
        )

    def _data(self, f):
        ex = self._uvp(f.x, f.y, f.t)
        return f.u - ex[0], f.v - ex[1], f.p - ex[2]

    def conditions(self):
        return [Condition("ic", "initial", self._data), Condition("bc", "boundary", self._data)]

    def _uvp(self, x, y, t):
        F = torch.exp(-2 * self.nu * t)
        return (-torch.cos(x) * torch.sin(y) * F,
                torch.sin(x) * torch.cos(y) * F,
                -(torch.cos(2 * x) + torch.cos(2 * y)) * F**2 / 4)

    def exact(self, x):
        return torch.stack(self._uvp(x[:, 0], x[:, 1], x[:, 2]), 1)

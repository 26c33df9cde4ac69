"""Kovasznay flow: steady incompressible Navier–Stokes with outputs (u, v, p)."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Kovasznay(Equation):
    """Steady Navier–Stokes (u, v, p), Re = 20, on [-0.5,1] x [-0.5,1.5]; Kovasznay's exact flow.

    Velocity is given on the whole boundary, pressure on the outflow side x = x_max (it is only
    determined up to a constant otherwise).
    """

    inputs = ("x", "y")
    outputs = ("u", "v", "p")
    params = {"Re": 20.0}

    @property
    def lam(self):
        return self.Re / 2 - (self.Re**2 / 4 + 4 * math.pi**2) ** 0.5   # (a tensor Re works too)

    def residual(self, f):
        u, v, nu = f.u, f.v, 1.0 / self.Re
        return (
            u * f.u_x + v * f.u_y + f.p_x - nu * (f.u_xx + f.u_yy),
            u * f.v_x + v * f.v_y + f.p_y - nu * (f.v_xx + f.v_yy),
            f.u_x + f.v_y,
        )

    def conditions(self):
        x_out = self.bounds["x"][1]

        def velocity(f):
            ex = self._uvp(f.x, f.y)
            return f.u - ex[0], f.v - ex[1]

        return [
            Condition("bc", "boundary", velocity),
            Condition("bc_p", "boundary", lambda f: f.p - self._uvp(f.x, f.y)[2],
                      select=lambda x: abs(x[:, 0] - x_out) <= 1e-9 * max(1.0, abs(x_out))),
        ]

    def _uvp(self, x, y):
        lam = self.lam
        e = torch.exp(lam * x)
        return (1 - e * torch.cos(2 * math.pi * y),
                lam / (2 * math.pi) * e * torch.sin(2 * math.pi * y),
                0.5 * (1 - torch.exp(2 * lam * x)))

    def exact(self, x):
        return torch.stack(self._uvp(x[:, 0], x[:, 1]), 1)

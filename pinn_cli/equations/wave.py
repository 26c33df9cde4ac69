"""1D wave equation u_tt = c^2 u_xx with two initial conditions (u and u_t)."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Wave(Equation):
    """Wave u_tt = c^2 u_xx on [0,1] x [0,1], u(x,0) = sin(pi x) + sin(4 pi x)/2, u_t(x,0) = 0, u = 0 at x = 0, 1."""

    inputs = ("x", "t")
    time = "t"
    params = {"c": 2.0}

    def residual(self, f):
        return f.u_tt - self.c**2 * f.u_xx

    def conditions(self):
        return [
            Condition("ic", "initial",
                      lambda f: f.u - torch.sin(math.pi * f.x) - 0.5 * torch.sin(4 * math.pi * f.x)),
            Condition("ic_t", "initial", lambda f: f.u_t),     # second order in time: the velocity too
            Condition("bc", "boundary", lambda f: f.u),
        ]

    def exact(self, x):
        xs, t = x.unbind(-1)
        c = self.c
        return (torch.sin(math.pi * xs) * torch.cos(c * math.pi * t)
                + 0.5 * torch.sin(4 * math.pi * xs) * torch.cos(4 * c * math.pi * t))[:, None]

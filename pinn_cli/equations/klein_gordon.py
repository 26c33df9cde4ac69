"""Nonlinear Klein–Gordon equation u_tt - u_xx + u² = f with exact solution x cos t."""
from __future__ import annotations

import torch

from .base import Condition, Equation


class KleinGordon(Equation):
    """Klein–Gordon u_tt - u_xx + u^2 = -x cos t + x^2 cos^2 t on [-1,1] x [0,10]; u(x,0) = x, u_t(x,0) = 0."""

    inputs = ("x", "t")
    time = "t"

    def residual(self, f):
        x, t = f.x, f.t
        source = -x * torch.cos(t) + x**2 * torch.cos(t) ** 2
        return f.u_tt - f.u_xx + f.u**2 - source

    def conditions(self):
        return [
            Condition("ic", "initial", lambda f: f.u - f.x),
            Condition("ic_t", "initial", lambda f: f.u_t),
            Condition("bc", "boundary", lambda f: f.u - f.x * torch.cos(f.t)),
        ]

    def exact(self, x):
        return (x[:, 0] * torch.cos(x[:, 1]))[:, None]

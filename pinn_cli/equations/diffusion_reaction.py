"""Diffusion with a source: u_t = u_xx + R(x, t), a sum of sine modes decaying in time."""
from __future__ import annotations

import torch

from .base import Condition, Equation

MODES = (1, 2, 3, 4, 8)   # u = e^{-t} sum_k sin(kx)/k


class DiffusionReaction(Equation):
    """u_t = u_xx + e^{-t}(3/2 sin 2x + 8/3 sin 3x + 15/4 sin 4x + 63/8 sin 8x) on [-pi,pi] x [0,1]."""

    inputs = ("x", "t")
    time = "t"

    def residual(self, f):
        x, t = f.x, f.t
        source = torch.exp(-t) * sum((k - 1 / k) * torch.sin(k * x) for k in MODES if k != 1)
        return f.u_t - f.u_xx - source

    def conditions(self):
        return [
            Condition("ic", "initial", lambda f: f.u - self._u(f.x, f.t)),
            Condition("bc", "boundary", lambda f: f.u),
        ]

    def _u(self, x, t):
        return torch.exp(-t) * sum(torch.sin(k * x) / k for k in MODES)

    def exact(self, x):
        return self._u(x[:, 0], x[:, 1])[:, None]



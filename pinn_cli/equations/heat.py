"""1D heat equation u_t = alpha u_xx with u(x,0) = sin(pi x) and zero ends."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation


class Heat(Equation):
    """1D heat equation u_t = alpha u_xx, u(x,0)=sin(pi x), u(0,t)=u(1,t)=0."""

    inputs = ("x", "t")
    time = "t"
    params = {"alpha": 0.05}

    def residual(self, f):
        return f.u_t - self.alpha * f.u_xx

    def conditions(self):
        return [
            Condition("ic", "initial", lambda f: f.u - torch.sin(math.pi * f.x)),
            Condition("bc", "boundary", lambda f: f.u),
        ]

    def exact(self, x):
        xs, t = x.unbind(-1)
        return (torch.exp(-self.alpha * math.pi**2 * t) * torch.sin(math.pi * xs))[:, None]

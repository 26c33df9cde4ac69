"""First-order ODE y' = -2 x y with y(0) = 1."""
from __future__ import annotations

import torch

from .base import Condition, Equation


class OdeDecay(Equation):
    """ODE y' = -2xy on [-2,2], y(0)=1; y = exp(-x^2)."""

    inputs = ("x",)
    outputs = ("y",)

    def residual(self, f):
        return f.y_x + 2 * f.x * f.y

    def conditions(self):
        return [Condition("ic", "points", lambda f: f.y - 1, at={"x": [0.0]})]

    def exact(self, x):
        return torch.exp(-x[:, :1] ** 2)

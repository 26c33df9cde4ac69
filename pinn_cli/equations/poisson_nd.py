"""Poisson equation in d dimensions, -Δu = (pi²/4) Σ sin(pi x_i / 2) on [0,1]^d."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..errors import PinnConfigError
from .base import Condition, Equation


class PoissonND(Equation):
    """-Δu = (pi^2/4) sum_i sin(pi x_i/2) on [0,1]^d (inputs x1..xd, equation.dim), u = exact on the boundary."""

    def __init__(self, name: str, dim: int = 5, bounds: Mapping[str, Sequence[float]] | None = None,
                 weights: Mapping[str, float] | None = None, **coeffs: float) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 100:
            raise PinnConfigError(f"equation.dim={dim!r} is invalid; it must be an integer from 1 to 100")
        self.dim = dim
        self.inputs = tuple(f"x{i}" for i in range(1, dim + 1))
        full = {n: (0.0, 1.0) for n in self.inputs}
        full.update(bounds or {})
        super().__init__(name, full, weights, **coeffs)

    def residual(self, f):
        lap = sum(f[f"u_{n}{n}"] for n in self.inputs)
        source = (math.pi**2 / 4) * sum(torch.sin(math.pi * f[n] / 2) for n in self.inputs)
        return -lap - source

    def conditions(self):
        return [Condition("bc", "boundary", lambda f: f.u - sum(torch.sin(math.pi * f[n] / 2) for n in self.inputs))]

    def exact(self, x):
        return torch.sin(math.pi * x / 2).sum(1, keepdim=True)

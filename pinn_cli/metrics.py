"""Error of a trained network against the exact solution on a fixed evaluation grid."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .domains import Box
from .equations.base import Equation


class Evaluator:
    """A fixed evaluation grid (never the training points) and the exact solution on it."""

    def __init__(self, equation: Equation, domain: Box, n_points: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.equation = equation
        per_dim = max(2, round(n_points ** (1.0 / domain.dim)))
        pts, self.axes = domain.grid(per_dim)
        self.x = torch.as_tensor(pts, device=device, dtype=dtype)
        self.exact = equation.exact(self.x)

    @torch.no_grad()
    def predict(self, net: nn.Module) -> torch.Tensor:
        return net(self.x)

    @torch.no_grad()
    def metrics(self, net: nn.Module) -> dict:
        """rel_l2, max_abs_error, rmse over all outputs, plus per-output figures for systems."""
        pred = self.predict(net)
        err = pred - self.exact
        out = _errors(err, self.exact)
        names = self.equation.outputs
        if len(names) > 1:
            out["per_output"] = {n: _errors(err[:, k], self.exact[:, k]) for k, n in enumerate(names)}
        return out


def _errors(err: torch.Tensor, exact: torch.Tensor) -> dict:
    norm = torch.linalg.vector_norm(exact).item()
    diff = torch.linalg.vector_norm(err).item()
    return {
        "rel_l2": diff / norm if norm > 0 else diff,
        "max_abs_error": err.abs().max().item(),
        "rmse": math.sqrt(err.square().mean().item()),
    }

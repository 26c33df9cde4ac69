"""Error of a trained network against the exact solution on a fixed evaluation set."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .domains import Domain
from .equations.base import Equation

GRID_MAX_DIM = 3        # up to 3 inputs: a regular grid; beyond: fixed quasi-random points
PLOT_POINTS = 4096      # the 2D slice drawn for more than 3 inputs
EVAL_SEED = 12345


class Evaluator:
    """A fixed evaluation set (never the training points) and the exact solution on it.

    Up to three inputs, a regular grid over the domain's bounding box, keeping the points inside
    the domain (all of them for a box; the masked grid for a disk or polygon), about ``n_points``
    of them. Beyond three inputs a grid of ``n_points`` has too few points per axis (and most on
    the boundary), so the set is ``n_points`` scrambled Sobol points inside the domain, drawn with a
    fixed seed (the same set every time). ``x``/``exact`` are what the metrics use; ``plot_data``
    gives the grid to draw, with NaN outside the domain.
    """

    def __init__(self, equation: Equation, domain: Domain, n_points: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.equation, self.domain = equation, domain
        self.device, self.dtype = device, dtype
        if domain.dim <= GRID_MAX_DIM:
            per_dim = max(2, round((n_points / domain.fraction) ** (1.0 / domain.dim)))
            pts, self.axes = domain.grid(per_dim)
            self.mask = None if domain.fraction >= 1.0 else domain.contains(pts)
            self._plot_x = pts
            inside = pts if self.mask is None else pts[self.mask]
        else:
            rng = np.random.default_rng(EVAL_SEED)
            inside = domain.interior(n_points, "sobol", rng).x
            self._plot_x, self.axes = self._slice(domain)
            self.mask = domain.contains(self._plot_x)
        self.x = torch.as_tensor(inside, device=device, dtype=dtype)
        self.exact = equation.exact(self.x)

    @staticmethod
    def _slice(domain: Domain) -> tuple[np.ndarray, list[np.ndarray]]:
        """A grid over the first two inputs with the others at the middle of their range."""
        k = round(math.sqrt(PLOT_POINTS))
        axes = [np.linspace(domain.lo[i], domain.hi[i], k) if i < 2 else np.array([(domain.lo[i] + domain.hi[i]) / 2])
                for i in range(domain.dim)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, domain.dim)
        return pts, axes

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

    @torch.no_grad()
    def plot_data(self, net: nn.Module) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
        """(points, axes, prediction, exact) on the plotting grid, NaN outside the domain.

        The arguments ``plots.plot_solution`` takes before ``inputs``.
        """
        x = torch.as_tensor(self._plot_x, device=self.device, dtype=self.dtype)
        pred = net(x).cpu().numpy().astype(float)
        exact = self.equation.exact(x).cpu().numpy().astype(float)
        if self.mask is not None:
            pred[~self.mask] = np.nan
            exact[~self.mask] = np.nan
        return self._plot_x, self.axes, pred, exact


def _errors(err: torch.Tensor, exact: torch.Tensor) -> dict:
    norm = torch.linalg.vector_norm(exact).item()
    diff = torch.linalg.vector_norm(err).item()
    return {
        "rel_l2": diff / norm if norm > 0 else diff,
        "max_abs_error": err.abs().max().item(),
        "rmse": math.sqrt(err.square().mean().item()),
    }

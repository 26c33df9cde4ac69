"""A PINN problem: an equation's residual and conditions on sampled points, turned into a loss."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .derivatives import DerivativeEngine, Key, RecordingFields
from .domains import Box, PointSet
from .equations.base import Equation
from .errors import PinnConfigError


@dataclass
class Term:
    """One loss term: a residual function on a set of points, with its weight and engine plan."""

    name: str
    residual: Callable
    weight: float
    where: str
    at: dict | None = None
    x: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    needs: set[Key] = field(default_factory=set)
    engine: str = "autograd"


def mse(residual) -> torch.Tensor:
    """Mean square of a residual tensor, or the sum of mean squares of a system's residuals."""
    if isinstance(residual, torch.Tensor):
        return residual.square().mean()
    return sum(r.square().mean() for r in residual)


class Problem:
    """Holds the training points for each loss term and computes the weighted PINN loss."""

    def __init__(self, equation: Equation, domain: Box, net: nn.Module, engine: DerivativeEngine,
                 sampler_cfg, device: torch.device, dtype: torch.dtype) -> None:
        self.equation, self.domain, self.net, self.engine = equation, domain, net, engine
        self.sampler = sampler_cfg
        self.device, self.dtype = device, dtype
        self.terms = [Term("pde", equation.residual, equation.weights["pde"], "interior")]
        for cond in equation.conditions():
            at = None
            if cond.on == "points":
                at = {k: list(map(float, v)) for k, v in (cond.at or {}).items()}
            self.terms.append(Term(cond.name, cond.residual, equation.weights[cond.name], cond.on, at))

    def _draw(self, term: Term, rng: np.random.Generator) -> PointSet:
        s = self.sampler
        if term.where == "interior":
            return self.domain.interior(s.n_interior, s.name, rng)
        if term.where == "boundary":
            return self.domain.boundary(s.n_boundary, s.name, rng)
        if term.where == "initial":
            return self.domain.initial(s.n_initial, s.name, rng)
        if term.where == "points":
            cols = [term.at[n] for n in self.equation.inputs]
            return PointSet(np.array(cols, dtype=float).T)
        raise PinnConfigError(f"condition {term.name}: unknown location {term.where!r}")

    def sample(self, rng: np.random.Generator) -> None:
        """Draw fresh training points for every term."""
        for term in self.terms:
            ps = self._draw(term, rng)
            term.x = torch.as_tensor(ps.x, device=self.device, dtype=self.dtype)
            term.normals = None if ps.normals is None else torch.as_tensor(ps.normals, device=self.device, dtype=self.dtype)

    def plan(self) -> None:
        """Find which derivatives each term uses (one probe on a few points) and pick its engine."""
        eq = self.equation
        for term in self.terms:
            n = min(4, len(term.x))
            normals = None if term.normals is None else term.normals[:n]
            probe = RecordingFields(self.net, term.x[:n], eq.inputs, eq.outputs, normals)
            term.residual(probe)
            term.needs = probe.asked
            term.engine = self.engine.resolve(term.needs)

    def term_losses(self) -> list[torch.Tensor]:
        """Unweighted mean-square residual of each term, in ``self.terms`` order."""
        return [
            mse(t.residual(self.engine.fields(t.x, t.needs, t.normals, t.engine)))
            for t in self.terms
        ]

    def loss(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Weighted total loss and the unweighted terms."""
        parts = self.term_losses()
        total = sum(t.weight * p for t, p in zip(self.terms, parts))
        return total, parts

    def state(self) -> dict:
        return {t.name: (t.x.cpu(), None if t.normals is None else t.normals.cpu()) for t in self.terms}

    def load_state(self, state: dict) -> None:
        for t in self.terms:
            x, n = state[t.name]
            t.x = x.to(self.device, self.dtype)
            t.normals = None if n is None else n.to(self.device, self.dtype)

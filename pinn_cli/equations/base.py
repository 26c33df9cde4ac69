"""What an equation is: inputs, outputs, coefficients, a PDE residual, conditions and an exact solution."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..derivatives import AutogradFields, Fields
from ..errors import PinnConfigError

Residual = Callable[[Fields], "torch.Tensor | Sequence[torch.Tensor]"]


@dataclass(frozen=True)
class Condition:
    """A constraint ``residual(f) = 0`` on a part of the domain.

    ``on`` is ``"boundary"`` (the spatial boundary, for all times; points carry outward normals, so
    ``f.u_n`` works), ``"initial"`` (t at its lower bound) or ``"points"`` (the fixed points ``at``,
    a dict of coordinates per input). ``select`` (points (N, d) -> bool mask) restricts the
    boundary or initial set to part of it, e.g. one face: ``lambda x: x[:, 0] == 1.0``.
    The residual may return one tensor or a tuple of them (a condition on several outputs).
    """

    name: str
    on: str
    residual: Residual
    at: Mapping[str, Sequence[float]] | None = None
    select: Callable[[np.ndarray], np.ndarray] | None = None


class Equation:
    """Base class: subclasses set ``inputs``, ``outputs``, ``time``, ``params`` and implement
    ``residual``, ``conditions`` and ``exact``.

    ``inputs``/``outputs`` may also be set per instance before ``Equation.__init__`` runs (an
    equation whose dimension is a config key). The default domain is not chosen here but in the
    equation's config file (``override /domain@_global_.domain: disk_time`` in its defaults list).
    """

    inputs: ClassVar[tuple[str, ...]] = ("x",)
    outputs: ClassVar[tuple[str, ...]] = ("u",)
    time: ClassVar[str | None] = None
    params: ClassVar[dict[str, float]] = {}
    has_exact: ClassVar[bool] = True     # False: no exact solution; metrics are NaN
    selection_name: ClassVar[str] = "select function"  # what error lines call a condition's ``select``

    def __init__(self, name: str, bounds: Mapping[str, Sequence[float]],
                 weights: Mapping[str, float] | None = None, check_exact: bool = True, **coeffs: float) -> None:
        self.name = name
        self.check_exact = bool(check_exact)  # false: train against exact() even where it misses the problem
        self.bounds = {k: (float(v[0]), float(v[1])) for k, v in bounds.items()}
        missing = [k for k in self.inputs if k not in self.bounds]
        if missing:
            raise PinnConfigError(f"equation.bounds lacks {', '.join(missing)} for equation {name}")
        for key, lo_hi in self.bounds.items():
            if not lo_hi[0] < lo_hi[1]:
                raise PinnConfigError(f"equation.bounds.{key}={list(lo_hi)} is empty; it must be [low, high] with low < high")
        for key, value in coeffs.items():
            if key not in self.params:
                accepted = ", ".join(self.params) or "none"
                raise PinnConfigError(f"equation.{key} is not a parameter of {name}; its parameters: {accepted}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PinnConfigError(f"equation.{key}={value!r} is invalid; it must be a number")
        for key, default in self.params.items():
            setattr(self, key, float(coeffs.get(key, default)))
        terms = ["pde"] + [c.name for c in self.conditions()]
        weights = dict(weights or {})
        unknown = [k for k in weights if k not in terms]
        if unknown:
            raise PinnConfigError(f"equation.weights.{unknown[0]} is not a loss term of {name}; terms: {', '.join(terms)}")
        for key, value in weights.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")
            if not ok:
                raise PinnConfigError(f"equation.weights.{key}={value!r} is invalid; it must be a finite non-negative number")
        self.weights = {t: float(weights.get(t, 1.0)) for t in terms}

    def residual(self, f: Fields) -> torch.Tensor | Sequence[torch.Tensor]:
        """PDE residual at interior points (a tensor, or one per equation of a system)."""
        raise NotImplementedError

    def conditions(self) -> list[Condition]:
        """Initial, boundary and point conditions."""
        raise NotImplementedError

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """Exact solution at points ``x`` (N, len(inputs)) -> (N, len(outputs))."""
        raise NotImplementedError

    def coefficients(self) -> tuple:
        """The coefficients' current values, in ``params`` order (a forward-engine plan fuses them in)."""
        return tuple(getattr(self, k) for k in self.params)

    @property
    def terms(self) -> list[str]:
        return list(self.weights)


def exact_pde_misfit(eq: Equation, x: torch.Tensor) -> list[float]:
    """max |residual| of ``eq.exact`` at points ``x`` (float64), per residual, relative to the scale of
    the derivatives it used and of the coefficients: ~1e-15 for a right exact solution. Non-finite
    values (a solution with a pole) are left out."""
    f = AutogradFields(eq.exact, x, eq.inputs, eq.outputs)
    res = eq.residual(f)
    res = res if isinstance(res, (tuple, list)) else (res,)
    finite = lambda v: torch.nan_to_num(v.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    scale = (1 + max([float(finite(v).abs().max()) for v in f._cache.values()], default=0.0)) \
        * (1 + max([abs(c) for c in eq.coefficients()], default=0.0))
    return [float(finite(r).abs().max()) / scale for r in res]

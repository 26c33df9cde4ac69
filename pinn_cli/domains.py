"""Geometry: where interior, boundary and initial points are drawn, and the evaluation grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PinnConfigError
from .sampling import sample_unit

BOX_DOMAINS = {
    "interval": (1, False), "rectangle": (2, False), "box": (None, False),
    "interval_time": (1, True), "rectangle_time": (2, True), "box_time": (None, True),
}


@dataclass
class PointSet:
    """Points (N, d) and, on boundaries, outward unit normals (N, d)."""

    x: np.ndarray
    normals: np.ndarray | None = None


class Box:
    """Axis-aligned box over named inputs; ``time`` (if any) is excluded from the spatial boundary."""

    def __init__(self, names: tuple[str, ...], bounds: dict[str, tuple[float, float]], time: str | None) -> None:
        self.names = names
        self.lo = np.array([bounds[n][0] for n in names], dtype=float)
        self.hi = np.array([bounds[n][1] for n in names], dtype=float)
        self.time = names.index(time) if time is not None else None
        self.spatial = [i for i in range(len(names)) if i != self.time]

    @property
    def dim(self) -> int:
        return len(self.names)

    def _scale(self, u: np.ndarray) -> np.ndarray:
        return self.lo + u * (self.hi - self.lo)

    def interior(self, n: int, sampler: str, rng: np.random.Generator) -> PointSet:
        return PointSet(self._scale(sample_unit(sampler, n, self.dim, rng)))

    def boundary(self, n: int, sampler: str, rng: np.random.Generator) -> PointSet:
        """Points on the spatial faces, allotted to faces in proportion to their measure."""
        faces = [(i, side) for i in self.spatial for side in (0, 1)]
        extent = self.hi - self.lo
        measure = np.array([np.prod(np.delete(extent, i)) for i, _ in faces])
        counts = np.floor(n * measure / measure.sum()).astype(int)
        counts[: n - counts.sum()] += 1
        xs, ns = [], []
        for (i, side), m in zip(faces, counts):
            if m == 0:
                continue
            other = [j for j in range(self.dim) if j != i]
            u = np.empty((m, self.dim))
            u[:, other] = sample_unit(sampler, m, len(other), rng) if other else 0.0
            if not other:
                u = u[:1]
            u[:, i] = side
            normal = np.zeros_like(u)
            normal[:, i] = 1.0 if side else -1.0
            xs.append(self._scale(u))
            ns.append(normal)
        return PointSet(np.concatenate(xs), np.concatenate(ns))

    def initial(self, n: int, sampler: str, rng: np.random.Generator) -> PointSet:
        if self.time is None:
            raise PinnConfigError("an initial condition needs a time input; this domain has none")
        u = np.empty((n, self.dim))
        u[:, self.spatial] = sample_unit(sampler, n, len(self.spatial), rng)
        u[:, self.time] = 0.0
        return PointSet(self._scale(u))

    def grid(self, n_per_dim: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Regular evaluation grid including the boundary: points (N, d) and the axes."""
        axes = [np.linspace(lo, hi, n_per_dim) for lo, hi in zip(self.lo, self.hi)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.dim)
        return pts, axes


def build_domain(cfg, equation) -> Box:
    """The domain named by ``cfg.name`` over the equation's inputs (``auto``: the equation's own box)."""
    name = cfg.get("name", "auto")
    if name != "auto" and name not in BOX_DOMAINS:
        accepted = ", ".join(["auto", *BOX_DOMAINS])
        raise PinnConfigError(f"domain={name!r} is not known; choose from: {accepted}")
    if name != "auto":
        n_space, timed = BOX_DOMAINS[name]
        space = [i for i in equation.inputs if i != equation.time]
        if timed != (equation.time is not None) or (n_space is not None and n_space != len(space)):
            raise PinnConfigError(
                f"domain={name} does not fit equation {equation.name} (inputs: {', '.join(equation.inputs)})"
            )
    bounds = dict(equation.bounds)
    for key, val in (cfg.get("bounds") or {}).items():
        bounds[key] = (float(val[0]), float(val[1]))
    return Box(tuple(equation.inputs), bounds, equation.time)

"""Geometry: where interior, boundary and initial points are drawn, and the evaluation grid.

A domain is a spatial ``Shape`` (an N-d box, a disk or a polygon) over the equation's spatial
inputs, times the time interval when the equation has a time input. Every sampler draws on the
unit cube and the shape maps those points onto itself:

- interior: box scaling, the area-preserving polar map for the disk, rejection from the bounding
  box for a polygon (oversampled so that exactly ``n`` points are returned, except ``grid``,
  which returns the grid points that fall inside);
- boundary: the boundary is split into pieces (box faces, polygon edges, the circle), each gets
  points in proportion to its measure, sampled on its own parameter cube (times the time axis),
  with the outward unit normal of each point (zero in the time column);
- initial: the interior of the shape at the lower time bound.

A ``select`` mask function (N, d) -> (N,) restricts any of the three to part of it (for example
the face ``x == 0``): points are drawn until ``n`` of them pass.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import PinnConfigError
from .sampling import sample_unit

Select = Callable[[np.ndarray], np.ndarray]

# name -> (shape, number of spatial dimensions or None for any, with time)
DOMAINS = {
    "interval": ("box", 1, False), "rectangle": ("box", 2, False), "box": ("box", None, False),
    "disk": ("disk", 2, False), "polygon": ("polygon", 2, False),
    "interval_time": ("box", 1, True), "rectangle_time": ("box", 2, True), "box_time": ("box", None, True),
    "disk_time": ("disk", 2, True), "polygon_time": ("polygon", 2, True),
}
BOX_DOMAINS = {k: (v[1], v[2]) for k, v in DOMAINS.items() if v[0] == "box"}


class EmptySelection(PinnConfigError):
    """A condition's ``where`` keeps none of the points drawn for it (the caller names the condition)."""


@dataclass
class PointSet:
    """Points (N, d) and, on boundaries, outward unit normals (N, d)."""

    x: np.ndarray
    normals: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx) -> PointSet:
        return PointSet(self.x[idx], None if self.normals is None else self.normals[idx])


def _concat(sets: list[PointSet]) -> PointSet:
    x = np.concatenate([s.x for s in sets])
    if any(s.normals is None for s in sets):
        return PointSet(x)
    return PointSet(x, np.concatenate([s.normals for s in sets]))


def _allot(n: int, measures: np.ndarray) -> np.ndarray:
    """Split ``n`` points over pieces in proportion to their measure (largest remainders first)."""
    share = n * measures / measures.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


# --------------------------------------------------------------------------- spatial shapes


class Shape:
    """A closed region of R^k: maps unit-cube samples inside it and onto its boundary."""

    kind = ""
    rejects = False        # True: from_unit maps onto the bounding box and masks (rejection sampling)
    lo: np.ndarray
    hi: np.ndarray

    @property
    def k(self) -> int:
        return len(self.lo)

    @property
    def fraction(self) -> float:
        """Volume of the shape / volume of its bounding box (the acceptance rate of rejection)."""
        return 1.0

    def from_unit(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Map unit-cube points (n, k) to the shape; returns points and a keep-mask (None: all kept)."""
        raise NotImplementedError

    def pieces(self) -> list[tuple[float, int, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]]:
        """Boundary pieces: (measure, parameter dimension, u -> (points, outward normals))."""
        raise NotImplementedError

    def contains(self, x: np.ndarray, tol: float) -> np.ndarray:
        """Mask of points (n, k) in the closed shape, within ``tol``."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


class BoxShape(Shape):
    kind = "box"

    def __init__(self, lo, hi) -> None:
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)

    def from_unit(self, u):
        return self.lo + u * (self.hi - self.lo), None

    def pieces(self):
        k, ext = self.k, self.hi - self.lo
        out = []
        for i in range(k):
            measure = float(np.prod(np.delete(ext, i))) if k > 1 else 1.0
            for side in (0, 1):
                out.append((measure, k - 1, self._face(i, side)))
        return out

    def _face(self, i: int, side: int):
        def fn(u):
            other = [j for j in range(self.k) if j != i]
            x = np.empty((len(u), self.k))
            x[:, other] = self.lo[other] + u * (self.hi[other] - self.lo[other])
            x[:, i] = self.hi[i] if side else self.lo[i]   # exactly on the face
            normal = np.zeros_like(x)
            normal[:, i] = 1.0 if side else -1.0
            return x, normal
        return fn

    def contains(self, x, tol):
        return np.all((x >= self.lo - tol) & (x <= self.hi + tol), axis=1)

    def describe(self):
        return "box " + " x ".join(f"[{a:g}, {b:g}]" for a, b in zip(self.lo, self.hi))


class DiskShape(Shape):
    kind = "disk"

    def __init__(self, center, radius: float) -> None:
        self.center = np.asarray(center, float)
        self.radius = float(radius)
        self.lo, self.hi = self.center - self.radius, self.center + self.radius

    @property
    def fraction(self):
        return math.pi / 4

    def from_unit(self, u):
        r = self.radius * np.sqrt(u[:, 0])            # area-preserving: uniform in the disk
        th = 2 * math.pi * u[:, 1]
        return self.center + np.stack([r * np.cos(th), r * np.sin(th)], 1), None

    def pieces(self):
        def fn(u):
            th = 2 * math.pi * u[:, 0]
            normal = np.stack([np.cos(th), np.sin(th)], 1)
            return self.center + self.radius * normal, normal
        return [(2 * math.pi * self.radius, 1, fn)]

    def contains(self, x, tol):
        return np.linalg.norm(x - self.center, axis=1) <= self.radius + tol

    def describe(self):
        return f"disk center ({self.center[0]:g}, {self.center[1]:g}) radius {self.radius:g}"


class PolygonShape(Shape):
    kind = "polygon"
    rejects = True

    def __init__(self, vertices) -> None:
        v = np.asarray(vertices, float)
        if v.ndim != 2 or v.shape[1] != 2 or len(v) < 3:
            raise PinnConfigError(
                f"domain.vertices={np.asarray(vertices).tolist()} is invalid; it must be at least 3 [x, y] pairs"
            )
        if np.allclose(v[0], v[-1]):
            v = v[:-1]
        area = 0.5 * float(np.sum(v[:, 0] * np.roll(v[:, 1], -1) - np.roll(v[:, 0], -1) * v[:, 1]))
        if abs(area) < 1e-14:
            raise PinnConfigError("domain.vertices enclose no area; give the polygon's corners in order")
        if area < 0:                     # make it counter-clockwise: outward normal of edge d is (dy, -dx)
            v = v[::-1].copy()
        self.v, self.area = v, abs(area)
        self._check_simple()
        self.lo, self.hi = v.min(0), v.max(0)

    def _check_simple(self) -> None:
        v, m = self.v, len(self.v)
        for i in range(m):
            a, b = v[i], v[(i + 1) % m]
            for j in range(i + 2, m):
                if i == 0 and j == m - 1:
                    continue
                c, d = v[j], v[(j + 1) % m]
                if _segments_cross(a, b, c, d):
                    raise PinnConfigError(
                        f"domain.vertices: edges {i} and {j} cross; the polygon must not intersect itself"
                    )

    @property
    def fraction(self):
        return self.area / float(np.prod(self.hi - self.lo))

    def from_unit(self, u):
        x = self.lo + u * (self.hi - self.lo)
        return x, self._inside(x)

    def _inside(self, x):
        """Even-odd ray casting, vectorised over points."""
        px, py = x[:, :1], x[:, 1:]
        a, b = self.v, np.roll(self.v, -1, axis=0)
        ay, by = a[None, :, 1], b[None, :, 1]
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = a[None, :, 0] + (py - ay) * (b[None, :, 0] - a[None, :, 0]) / (by - ay)
        return (np.sum(crosses & (px < xint), axis=1) % 2) == 1

    def _distance(self, x):
        a, b = self.v, np.roll(self.v, -1, axis=0)
        d = b - a
        t = np.clip(np.einsum("nkj,kj->nk", x[:, None, :] - a[None], d) / np.sum(d * d, 1), 0, 1)
        closest = a[None] + t[..., None] * d[None]
        return np.min(np.linalg.norm(x[:, None, :] - closest, axis=2), axis=1)

    def pieces(self):
        out = []
        for i in range(len(self.v)):
            a, b = self.v[i], self.v[(i + 1) % len(self.v)]
            d = b - a
            length = float(np.hypot(*d))
            normal = np.array([d[1], -d[0]]) / length

            def fn(u, a=a, d=d, normal=normal):
                return a + u[:, :1] * d, np.broadcast_to(normal, (len(u), 2)).copy()
            out.append((length, 1, fn))
        return out

    def contains(self, x, tol):
        return self._inside(x) | (self._distance(x) <= tol)

    def describe(self):
        return f"polygon with {len(self.v)} corners, area {self.area:g}"


def _segments_cross(a, b, c, d) -> bool:
    def orient(p, q, r):
        return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))
    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    return bool(o1 * o2 < 0 and o3 * o4 < 0)


# --------------------------------------------------------------------------- shape x time


class Domain:
    """A shape over the spatial inputs, times the time interval when there is a time input.

    ``names`` are all inputs in the equation's order; ``lo``/``hi`` the bounding box over them.
    """

    def __init__(self, names: tuple[str, ...], shape: Shape, time: str | None = None,
                 t_bounds: tuple[float, float] | None = None, name: str = "") -> None:
        self.names = tuple(names)
        self.shape = shape
        self.time = self.names.index(time) if time is not None else None
        self.spatial = [i for i in range(len(self.names)) if i != self.time]
        if len(self.spatial) != shape.k:
            raise PinnConfigError(f"domain {shape.kind} has {shape.k} spatial dimensions, the equation {len(self.spatial)}")
        self.t_bounds = None if time is None else (float(t_bounds[0]), float(t_bounds[1]))
        self.lo = np.empty(self.dim)
        self.hi = np.empty(self.dim)
        self.lo[self.spatial], self.hi[self.spatial] = shape.lo, shape.hi
        if self.time is not None:
            self.lo[self.time], self.hi[self.time] = self.t_bounds
        self.name = name or shape.kind
        self.tol = 1e-9 * max(1.0, float(np.max(np.abs(np.concatenate([self.lo, self.hi])))))

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def fraction(self) -> float:
        """Volume of the domain / volume of its bounding box."""
        return self.shape.fraction

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """Bounding box per input, in input order (for scaling network inputs)."""
        return [(float(a), float(b)) for a, b in zip(self.lo, self.hi)]

    def describe(self) -> str:
        text = self.shape.describe()
        if self.time is not None:
            text += f" x {self.names[self.time]} in [{self.t_bounds[0]:g}, {self.t_bounds[1]:g}]"
        return text

    # -- assembling full points from spatial points and a time column
    def _join(self, xs: np.ndarray, ut: np.ndarray | None, t_fixed: float | None = None,
              normals: np.ndarray | None = None) -> PointSet:
        x = np.empty((len(xs), self.dim))
        x[:, self.spatial] = xs
        if self.time is not None:
            t0, t1 = self.t_bounds
            x[:, self.time] = t_fixed if t_fixed is not None else t0 + ut * (t1 - t0)
        nrm = None
        if normals is not None:
            nrm = np.zeros_like(x)
            nrm[:, self.spatial] = normals
        return PointSet(x, nrm)

    def _volume(self, n: int, sampler: str, rng, timed: bool, t_fixed: float | None) -> PointSet:
        """``n`` points in the shape (times the time interval when ``timed``)."""
        k = self.shape.k
        extra = 1 if timed else 0
        frac = self.shape.fraction if self.shape.rejects else 1.0
        if frac >= 1.0:
            u = sample_unit(sampler, n, k + extra, rng)
            xs, _ = self.shape.from_unit(u[:, :k])
            return self._join(xs, u[:, k] if timed else None, t_fixed)
        if sampler == "grid":                          # the grid points that fall inside
            u = sample_unit(sampler, max(1, round(n / frac)), k + extra, rng)
            xs, keep = self.shape.from_unit(u[:, :k])
            return self._join(xs[keep], u[keep, k] if timed else None, t_fixed)
        got: list[PointSet] = []
        have, tries = 0, 0
        while have < n:
            m = math.ceil((n - have) / frac * 1.1) + 16
            u = sample_unit(sampler, m, k + extra, rng)
            xs, keep = self.shape.from_unit(u[:, :k])
            got.append(self._join(xs[keep], u[keep, k] if timed else None, t_fixed))
            have += int(keep.sum())
            tries += 1
            if tries > 50:
                raise PinnConfigError(f"could not sample the interior of {self.describe()}")
        return _concat(got).take(slice(0, n))

    def _interior(self, n, sampler, rng):
        return self._volume(n, sampler, rng, self.time is not None, None)

    def _initial(self, n, sampler, rng):
        if self.time is None:
            raise PinnConfigError("an initial condition needs a time input, and this domain has none: the equation "
                                  "names it (time = \"t\" on a built-in equation's class, time: in a YAML one) and the "
                                  "domain must have it (a *_time domain)")
        return self._volume(n, sampler, rng, False, self.t_bounds[0])

    def _boundary(self, n, sampler, rng):
        pieces = self.shape.pieces()
        timed = self.time is not None
        counts = _allot(n, np.array([m for m, _, _ in pieces], float))
        sets = []
        for (_, p, fn), m in zip(pieces, counts):
            d = p + (1 if timed else 0)
            if d == 0:
                m = 1                                   # an end point of an interval: one point, always
            if m == 0:
                continue
            u = sample_unit(sampler, m, d, rng)
            xs, nrm = fn(u[:, :p])
            sets.append(self._join(xs, u[:, p] if timed else None, normals=nrm))
        return _concat(sets)

    # -- public sampling API (``select`` restricts to part of the set)
    def interior(self, n: int, sampler: str, rng: np.random.Generator, select: Select | None = None) -> PointSet:
        return self._selected(self._interior, n, sampler, rng, select, "interior")

    def boundary(self, n: int, sampler: str, rng: np.random.Generator, select: Select | None = None) -> PointSet:
        return self._selected(self._boundary, n, sampler, rng, select, "boundary")

    def initial(self, n: int, sampler: str, rng: np.random.Generator, select: Select | None = None) -> PointSet:
        return self._selected(self._initial, n, sampler, rng, select, "initial")

    def _selected(self, draw, n, sampler, rng, select, where) -> PointSet:
        """Draw until ``n`` points pass ``select`` (grid sampler, finite sets: the passing points of one draw)."""
        if select is None:
            return draw(n, sampler, rng)
        pilot = draw(n, sampler, rng)
        keep = np.asarray(select(pilot.x), bool)
        if not keep.any():
            raise EmptySelection(f"selects none of the {where} points of {self.describe()}")
        frac = keep.mean()
        if sampler == "grid":                    # a denser grid whose selected part holds about n points
            ps = draw(max(1, round(n / frac)), sampler, rng)
            return ps.take(np.asarray(select(ps.x), bool))
        if len(pilot) < n:                       # a finite set (interval end points): it is all there is
            return pilot.take(keep)
        ps = draw(math.ceil(n / frac * 1.2) + 16, sampler, rng)
        got = [ps.take(np.asarray(select(ps.x), bool))]
        have = len(got[0])
        for _ in range(50):
            if have >= n:
                break
            ps = draw(math.ceil((n - have) / frac * 1.5) + 16, sampler, rng)
            got.append(ps.take(np.asarray(select(ps.x), bool)))
            have += len(got[-1])
        return _concat(got).take(slice(0, n))

    # -- evaluation
    def contains(self, x: np.ndarray) -> np.ndarray:
        """Mask of points (n, dim) in the closed domain."""
        ok = self.shape.contains(x[:, self.spatial], self.tol)
        if self.time is not None:
            t = x[:, self.time]
            ok &= (t >= self.t_bounds[0] - self.tol) & (t <= self.t_bounds[1] + self.tol)
        return ok

    def grid(self, n_per_dim: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Regular grid over the bounding box, including its faces: points (N, d) and the axes.

        For a disk or polygon some points lie outside; ``contains`` tells which.
        """
        axes = [np.linspace(lo, hi, n_per_dim) for lo, hi in zip(self.lo, self.hi)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.dim)
        return pts, axes


class Box(Domain):
    """Axis-aligned box over named inputs; ``time`` (if any) is excluded from the spatial boundary."""

    def __init__(self, names: tuple[str, ...], bounds: dict[str, tuple[float, float]], time: str | None,
                 name: str = "") -> None:
        names = tuple(names)
        space = [n for n in names if n != time]
        shape = BoxShape([bounds[n][0] for n in space], [bounds[n][1] for n in space])
        super().__init__(names, shape, time, bounds[time] if time is not None else None, name or "box")


def _pair(value, key: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise PinnConfigError(f"{key}={value!r} is invalid; it must be [low, high]") from None
    if not lo < hi:
        raise PinnConfigError(f"{key}={[lo, hi]} is empty; it must be [low, high] with low < high")
    return lo, hi


def _l_shape(lo: np.ndarray, hi: np.ndarray) -> list[list[float]]:
    """The box [lo, hi] minus its upper-right quarter."""
    (x0, y0), (x1, y1) = lo, hi
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    return [[x0, y0], [x1, y0], [x1, ym], [xm, ym], [xm, y1], [x0, y1]]


def build_domain(cfg, equation) -> Domain:
    """The domain named by ``cfg.name`` over the equation's inputs (``auto``: the equation's own box).

    Spatial bounds come from ``equation.bounds`` unless ``domain.bounds`` overrides them; a disk
    defaults to the circle inscribed in them (``domain.center``, ``domain.radius``), a polygon to an
    L-shape (``domain.vertices``).
    """
    name = cfg.get("name", "auto")
    if name != "auto" and name not in DOMAINS:
        accepted = ", ".join(["auto", *DOMAINS])
        raise PinnConfigError(f"domain={name!r} is not known; choose from: {accepted}")
    space = [i for i in equation.inputs if i != equation.time]
    bounds = dict(equation.bounds)
    for key, val in (cfg.get("bounds") or {}).items():
        if val is None:  # the config lists x, y, z, t as null so that domain.bounds.t=[0,2] needs no '+'
            continue
        if key not in equation.inputs:
            raise PinnConfigError(f"domain.bounds.{key} is not an input of {equation.name}; inputs: {', '.join(equation.inputs)}")
        bounds[key] = _pair(val, f"domain.bounds.{key}")
    if name == "auto":
        return Box(tuple(equation.inputs), bounds, equation.time, "auto")
    kind, n_space, timed = DOMAINS[name]
    if timed != (equation.time is not None) or (n_space is not None and n_space != len(space)):
        fitting = [d for d, (_, ns, tm) in DOMAINS.items()
                   if tm == (equation.time is not None) and ns in (None, len(space))]
        raise PinnConfigError(
            f"domain={name} does not fit equation {equation.name} (inputs: {', '.join(equation.inputs)}); "
            f"domains that fit: {', '.join(['auto', *fitting])}"
        )
    if kind == "box":
        return Box(tuple(equation.inputs), bounds, equation.time, name)
    lo = np.array([bounds[n][0] for n in space])
    hi = np.array([bounds[n][1] for n in space])
    if kind == "disk":
        center = cfg.get("center")
        center = (lo + hi) / 2 if center is None else np.asarray(list(center), float)
        if center.shape != (2,):
            raise PinnConfigError(f"domain.center={list(center)} is invalid; it must be [x, y]")
        radius = cfg.get("radius")
        radius = float(np.min(hi - lo) / 2) if radius is None else radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius <= 0:
            raise PinnConfigError(f"domain.radius={radius!r} is invalid; it must be a positive number")
        shape: Shape = DiskShape(center, float(radius))
    else:
        vertices = cfg.get("vertices")
        shape = PolygonShape(_l_shape(lo, hi) if vertices is None else [list(p) for p in vertices])
    t_bounds = bounds[equation.time] if equation.time is not None else None
    return Domain(tuple(equation.inputs), shape, equation.time, t_bounds, name)

"""Point samplers on the unit hypercube: LHS (pyDOE), Sobol and Halton (scipy.stats.qmc), uniform, grid."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pydoe
from scipy.stats import qmc

from .errors import PinnConfigError


def _lhs(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return pydoe.lhs(d, samples=n, seed=rng)


def _sobol(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    engine = qmc.Sobol(d, scramble=True, seed=rng)
    m = max(0, math.ceil(math.log2(n)))
    return engine.random_base2(m)[:n]


def _halton(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return qmc.Halton(d, scramble=True, seed=rng).random(n)


def _uniform(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((n, d))


def _grid(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Cell-centred regular grid with about ``n`` points (k^d, k = round(n^(1/d)))."""
    k = max(1, round(n ** (1.0 / d)))
    axis = (np.arange(k) + 0.5) / k
    return np.stack(np.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)


SAMPLERS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "lhs": _lhs, "sobol": _sobol, "halton": _halton, "uniform": _uniform, "grid": _grid,
}


def check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise PinnConfigError(f"sampler={name!r} is not known; choose from: {', '.join(SAMPLERS)}")


def sample_unit(name: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points (n, d) in [0, 1]^d from sampler ``name`` (grid returns the nearest k^d)."""
    check_sampler(name)
    if d == 0:
        return np.zeros((n, 0))
    return SAMPLERS[name](n, d, rng)

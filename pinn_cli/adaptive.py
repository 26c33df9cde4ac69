"""Residual-based adaptive distribution (RAD; Wu, Zhu, Tan, Kartha & Lu 2023) of the PDE points.

At each resample, a pool of ``pool * n_interior`` candidates is drawn with the configured sampler and
``n_interior`` of them are kept, without replacement, with probability proportional to
eps(x)^k / mean(eps^k) + c, eps = |PDE residual| of the current network. ``c`` keeps a floor of
uniform coverage (c -> inf is plain resampling); larger ``k`` concentrates harder on the worst regions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import choice, positive_float, positive_int
from .errors import PinnConfigError

MODES = ("none", "rad")


@dataclass(frozen=True)
class Rad:
    """RAD settings: ``k`` (exponent), ``c`` (uniform floor), ``pool`` (candidates per kept point)."""

    k: float = 1.0
    c: float = 1.0
    pool: int = 10

    def choose(self, eps: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices of ``n`` of the candidates, drawn without replacement by the RAD density of ``eps``."""
        w = np.abs(eps) ** self.k
        mean = w.mean() if np.all(np.isfinite(w)) else 0.0  # a non-finite residual: fall back to uniform
        p = (w / mean if mean > 0 else np.zeros_like(w)) + self.c
        if np.count_nonzero(p) < n:  # c = 0 and too few points with a non-zero residual
            p = p + (p.max() if p.max() > 0 else 1.0) * 1e-12
        return rng.choice(len(p), size=n, replace=False, p=p / p.sum())


def from_config(sampler) -> Rad | None:
    """``sampler.adaptive`` (none or rad) with its ``rad_k``, ``rad_c``, ``rad_pool``; None when off.
    Bad values fail with one line naming the key."""
    mode = choice(sampler.get("adaptive", "none") or "none", "sampler.adaptive", MODES)
    if mode == "none":
        return None
    if not sampler.get("resample_every"):
        raise PinnConfigError(
            "sampler.adaptive=rad redraws the PDE points at each resample; set sampler.resample_every > 0"
        )
    return Rad(
        k=positive_float(sampler.get("rad_k", 1.0), "sampler.rad_k", allow_zero=True),
        c=positive_float(sampler.get("rad_c", 1.0), "sampler.rad_c", allow_zero=True),
        pool=positive_int(sampler.get("rad_pool", 10), "sampler.rad_pool"),
    )

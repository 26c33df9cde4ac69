"""2D heat equation on the unit disk: two Bessel modes that vanish on the rim."""
from __future__ import annotations

import math

import torch

from .base import Condition, Equation

J01 = 2.404825557695773    # first zero of J0
J11 = 3.8317059702075125   # first zero of J1
N_WAVES = 32


def _plane_waves(x: torch.Tensor, y: torch.Tensor, k: float, n: int):
    """k(x cos τ + y sin τ) and cos τ at τ_m = 2πm/n: J_n(kr) e^{inθ} is their average (trapezoid rule)."""
    tau = torch.arange(n, dtype=x.dtype, device=x.device) * (2 * math.pi / n)
    return k * (x[:, None] * torch.cos(tau) + y[:, None] * torch.sin(tau)), torch.cos(tau)


def bessel_modes(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J0(j01 r) and J1(j11 r) cos θ, as averages of plane waves (exact to rounding with 32 waves).

    Every plane wave solves Δw = -k² w, so the sum does too, exactly; the averages are the
    Bessel integrals J0(z) = (1/2π)∫cos(z sin τ)dτ and J1(z) cos θ = (1/2π)∫sin(k x·e_τ) cos τ dτ,
    whose trapezoid rule converges geometrically. Elementary functions only: autograd works.
    """
    a, _ = _plane_waves(x, y, J01, N_WAVES)
    b, c = _plane_waves(x, y, J11, N_WAVES)
    return torch.cos(a).mean(1), (torch.sin(b) * c).mean(1)


class Heat2D(Equation):
    """Heat u_t = alpha (u_xx + u_yy) on the unit disk x [0,1], u = 0 on the rim. Initial and
    boundary values come from the exact solution, so it also holds on other domains and times.

    Exact: u = e^{-alpha j01^2 t} J0(j01 r) + (1/2) e^{-alpha j11^2 t} J1(j11 r) cos θ.
    """

    inputs = ("x", "y", "t")
    time = "t"
    params = {"alpha": 0.1}

    def residual(self, f):
        return f.u_t - self.alpha * (f.u_xx + f.u_yy)

    def conditions(self):
        return [
            Condition("ic", "initial", lambda f: f.u - self._u(f.x, f.y, f.t)),
            Condition("bc", "boundary", lambda f: f.u - self._u(f.x, f.y, f.t)),  # 0 on the unit circle
        ]

    def _u(self, x, y, t):
        m0, m1 = bessel_modes(x, y)
        return torch.exp(-self.alpha * J01**2 * t) * m0 + 0.5 * torch.exp(-self.alpha * J11**2 * t) * m1

    def exact(self, x):
        return self._u(x[:, 0], x[:, 1], x[:, 2])[:, None]

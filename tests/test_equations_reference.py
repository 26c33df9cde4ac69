"""Reference solutions: Burgers' Cole–Hopf quadrature against a finite-difference solve and the
known shock; the disk heat equation's Bessel modes against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pinn_cli.equations.burgers import cole_hopf
from pinn_cli.equations.heat2d import J01, J11, bessel_modes

NU = 0.01 / math.pi


def burgers_fd(nx: int, times: list[float]) -> tuple[np.ndarray, dict]:
    """Central differences (conservative flux), SSP-RK3 in time; Dirichlet u(±1) = 0."""
    x = np.linspace(-1, 1, nx)
    dx = x[1] - x[0]
    u = -np.sin(np.pi * x)
    dt = 0.4 * min(dx * dx / (2 * NU), dx)

    def rhs(u):
        r = np.zeros_like(u)
        f = 0.5 * u * u
        r[1:-1] = -(f[2:] - f[:-2]) / (2 * dx) + NU * (u[2:] - 2 * u[1:-1] + u[:-2]) / (dx * dx)
        return r

    t, out = 0.0, {}
    for T in times:
        while t < T - 1e-14:
            h = min(dt, T - t)
            u1 = u + h * rhs(u)
            u2 = 0.75 * u + 0.25 * (u1 + h * rhs(u1))
            u = u / 3 + 2 / 3 * (u2 + h * rhs(u2))
            t += h
        out[T] = u.copy()
    return x, out


def test_burgers_reference_is_the_limit_of_finite_differences():
    times = [0.25, 0.5, 1.0]
    errs = {}
    for nx in (401, 801):
        x, sol = burgers_fd(nx, times)
        xt = torch.tensor(x)
        for T in times:
            ref = cole_hopf(xt, torch.full_like(xt, T), NU).numpy()
            away = np.abs(x) > 0.1
            errs[nx, T] = (np.abs(sol[T] - ref)[away].max(),
                           np.linalg.norm(sol[T] - ref) / np.linalg.norm(ref))
    for T in times:
        away_coarse, _ = errs[401, T]
        away_fine, rel_fine = errs[801, T]
        assert away_fine < 5e-5 and rel_fine < 2e-3, (T, errs[801, T])
        assert away_fine < away_coarse / 3     # second order: the gap closes as the grid is refined


def test_burgers_shock():
    """u(0,t) = 0 by symmetry, a jump across x = 0 from t ~ 1/pi on, and the steepest slope
    |u_x(0,t)| = 152.00516 at t = 1.6037/pi (Basdevant et al., Computers & Fluids 1986)."""
    t = torch.linspace(0.49, 0.53, 801, dtype=torch.float64)
    x = torch.zeros_like(t, requires_grad=True)
    (g,) = torch.autograd.grad(cole_hopf(x, t, NU).sum(), x)
    k = int(g.abs().argmax())
    assert abs(float(g.abs().max()) - 152.00516) < 1e-3
    assert abs(float(t[k]) * math.pi - 1.6037) < 2e-4
    for T in (0.35, 0.5, 0.75, 1.0):
        xs = torch.tensor([-0.02, 0.0, 0.02], dtype=torch.float64)
        u = cole_hopf(xs, torch.full_like(xs, T), NU)
        assert abs(float(u[1])) < 1e-12 and float(u[0]) > 0.4 and float(u[2]) < -0.4
    # before the shock forms the profile is smooth
    xs = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    u = cole_hopf(xs, torch.full_like(xs, 0.15), NU).numpy()
    assert np.abs(np.diff(u)).max() / 1e-3 < 10


def test_burgers_reference_is_finite_odd_and_starts_from_the_initial_condition():
    x = torch.linspace(-1, 1, 401, dtype=torch.float64)
    for T in (0.0, 1e-6, 0.3, 1.0):
        u = cole_hopf(x, torch.full_like(x, T), NU)
        assert torch.isfinite(u).all()
        torch.testing.assert_close(u, -u.flip(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(cole_hopf(x, torch.zeros_like(x), NU), -torch.sin(math.pi * x))
    u32 = cole_hopf(x.float(), torch.full_like(x.float(), 0.5), NU)
    assert u32.dtype == torch.float32 and torch.isfinite(u32).all()


def test_disk_bessel_modes_match_scipy_and_vanish_on_the_rim():
    special = pytest.importorskip("scipy.special")
    g = torch.Generator().manual_seed(0)
    r = torch.rand(500, generator=g, dtype=torch.float64)
    th = 2 * math.pi * torch.rand(500, generator=g, dtype=torch.float64)
    m0, m1 = bessel_modes(r * torch.cos(th), r * torch.sin(th))
    np.testing.assert_allclose(m0.numpy(), special.j0(J01 * r.numpy()), atol=1e-14)
    np.testing.assert_allclose(m1.numpy(), special.j1(J11 * r.numpy()) * np.cos(th.numpy()), atol=1e-14)
    rim0, rim1 = bessel_modes(torch.cos(th), torch.sin(th))
    assert float(rim0.abs().max()) < 1e-14 and float(rim1.abs().max()) < 1e-14

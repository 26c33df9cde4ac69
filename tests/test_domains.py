"""Geometry: interior, boundary (with outward normals) and initial points of every domain with every
sampler; selections; the masked evaluation grid; choosing domains from the config."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_cfg

from pinn_cli.derivatives import AutogradFields
from pinn_cli.domains import Box, DiskShape, Domain, PolygonShape, build_domain
from pinn_cli.errors import PinnConfigError
from pinn_cli.metrics import Evaluator
from pinn_cli.sampling import SAMPLERS
from pinn_cli.training import build

L_SHAPE = [[-1, -1], [1, -1], [1, 0], [0, 0], [0, 1], [-1, 1]]


def domains() -> dict[str, Domain]:
    return {
        "interval": Box(("x",), {"x": (0.0, 2.0)}, None),
        "interval_time": Box(("x", "t"), {"x": (-1.0, 1.0), "t": (0.0, 3.0)}, "t"),
        "rectangle": Box(("x", "y"), {"x": (0.0, 2.0), "y": (-1.0, 1.0)}, None),
        "box5": Box(tuple(f"x{i}" for i in range(5)), {f"x{i}": (0.0, 1.0) for i in range(5)}, None),
        "box_time": Box(("x", "y", "z", "t"), {k: (0.0, 1.0) for k in "xyzt"}, "t"),
        "disk": Domain(("x", "y"), DiskShape([0.5, -0.25], 0.75)),
        "disk_time": Domain(("t", "x", "y"), DiskShape([0.0, 0.0], 1.0), "t", (0.0, 2.0)),
        "polygon": Domain(("x", "y"), PolygonShape(L_SHAPE)),
        "polygon_time": Domain(("x", "y", "t"), PolygonShape(L_SHAPE[::-1]), "t", (1.0, 2.0)),  # clockwise input
    }


CASES = [(d, s) for d in domains() for s in SAMPLERS]


@pytest.mark.parametrize("name, sampler", CASES, ids=[f"{d}-{s}" for d, s in CASES])
def test_points_lie_where_they_should(name, sampler):
    dom = domains()[name]
    rng = np.random.default_rng(0)
    n = 300
    inner = dom.interior(n, sampler, rng)
    if sampler == "grid":
        assert 0.5 * n <= len(inner) <= 1.6 * n
    else:
        assert len(inner) == n
    assert inner.x.shape[1] == dom.dim and dom.contains(inner.x).all()
    assert np.unique(inner.x, axis=0).shape[0] == len(inner)   # no repeated points

    bnd = dom.boundary(n, sampler, rng)
    assert bnd.normals is not None and bnd.normals.shape == bnd.x.shape
    assert np.allclose(np.linalg.norm(bnd.normals, axis=1), 1.0)
    if dom.time is not None:
        assert np.all(bnd.normals[:, dom.time] == 0)
    assert dom.contains(bnd.x).all()
    eps = 1e-6 * float(np.max(dom.hi - dom.lo))
    assert not dom.contains(bnd.x + eps * bnd.normals).any(), "normals must point outward"
    # a step inward stays inside (at corners of the L-shape both neighbours are fine)
    assert dom.contains(bnd.x - eps * bnd.normals).mean() > 0.97

    if dom.time is not None:
        init = dom.initial(n // 2, sampler, rng)
        assert np.all(init.x[:, dom.time] == dom.t_bounds[0]) and dom.contains(init.x).all()
    else:
        with pytest.raises(PinnConfigError, match="time input"):
            dom.initial(10, sampler, rng)


def test_interior_fills_the_domain_evenly():
    """Disk (polar map) and L-shape (rejection): the share of points in a region matches its area."""
    rng = np.random.default_rng(1)
    disk = domains()["disk"].interior(20000, "uniform", rng).x
    r = np.linalg.norm(disk - [0.5, -0.25], axis=1)
    assert abs(np.mean(r < 0.75 / math.sqrt(2)) - 0.5) < 0.02      # the inner half of the area
    ell = domains()["polygon"].interior(20000, "sobol", rng).x
    assert not np.any((ell[:, 0] > 1e-12) & (ell[:, 1] > 1e-12))   # nothing in the cut-out quarter
    assert abs(np.mean(ell[:, 0] < 0) - 2 / 3) < 0.02              # left half holds 2 of the 3 squares


def test_boundary_shares_follow_length():
    rng = np.random.default_rng(2)
    b = domains()["polygon"].boundary(800, "lhs", rng)
    on_outer_left = np.isclose(b.x[:, 0], -1)
    assert abs(on_outer_left.mean() - 2 / 8) < 0.01                # 2 of the perimeter's 8
    nrm = b.normals[on_outer_left]
    assert np.allclose(nrm, [-1, 0])
    inner_corner = np.isclose(b.x[:, 1], 0) & (b.x[:, 0] > 0)      # the re-entrant edge y = 0, x in (0, 1)
    assert np.allclose(b.normals[inner_corner], [0, 1])


def test_interval_end_points():
    b = domains()["interval"].boundary(200, "lhs", np.random.default_rng(0))
    assert sorted(b.x[:, 0]) == [0.0, 2.0] and sorted(b.normals[:, 0]) == [-1.0, 1.0]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_select_restricts_to_a_face(sampler):
    dom = domains()["interval_time"]
    b = dom.boundary(150, sampler, np.random.default_rng(3), select=lambda x: x[:, 0] == 1.0)
    assert np.all(b.x[:, 0] == 1.0) and np.all(b.normals[:, 0] == 1.0)
    if sampler != "grid":
        assert len(b) == 150
    assert b.x[:, 1].min() < 0.2 and b.x[:, 1].max() > 2.8          # spread over the time axis
    init = dom.initial(100, sampler, np.random.default_rng(4), select=lambda x: x[:, 0] < 0)
    assert np.all(init.x[:, 0] < 0)
    with pytest.raises(PinnConfigError, match="selects none"):
        dom.boundary(50, sampler, np.random.default_rng(5), select=lambda x: x[:, 0] == 0.5)


def test_bad_shapes_fail_with_one_line():
    with pytest.raises(PinnConfigError, match="cross"):
        PolygonShape([[0, 0], [3, 0], [0, 1], [1, 2]])
    with pytest.raises(PinnConfigError, match="no area"):
        PolygonShape([[0, 0], [1, 1], [2, 2]])
    with pytest.raises(PinnConfigError, match="at least 3"):
        PolygonShape([[0, 0], [1, 1]])
    with pytest.raises(PinnConfigError, match="domain.radius"):
        build(make_cfg("equation=helmholtz", "domain=disk", "domain.radius=-1", "device=cpu"))


def test_neumann_derivative_on_the_circle():
    """u = x^2 + y^2 has u_n = 2r = 2 on the unit circle, through the derivative API and the domain's normals."""
    dom = domains()["disk_time"]
    b = dom.boundary(64, "sobol", np.random.default_rng(0))
    x = torch.as_tensor(b.x)
    net = lambda p: (p[:, 1:2] ** 2 + p[:, 2:3] ** 2) * torch.exp(-p[:, :1])
    f = AutogradFields(net, x, ("t", "x", "y"), ("u",), torch.as_tensor(b.normals))
    torch.testing.assert_close(f.u_n, 2 * torch.exp(-x[:, 0]))


def test_evaluation_grid_is_masked_to_the_domain():
    for name in ("disk", "polygon_time"):
        dom = domains()[name]
        ev = Evaluator(_Dummy(dom), dom, 4000, torch.device("cpu"), torch.float64)
        assert 3000 <= len(ev.x) <= 5000 and dom.contains(ev.x.numpy()).all()
        pts, axes, pred, exact = ev.plot_data(torch.nn.Identity())
        assert len(pts) == np.prod([len(a) for a in axes])
        inside = dom.contains(pts)
        assert np.isnan(pred[~inside]).all() and np.isfinite(pred[inside]).all()


def test_evaluation_beyond_three_inputs_uses_fixed_points():
    dom = domains()["box5"]
    a = Evaluator(_Dummy(dom), dom, 2000, torch.device("cpu"), torch.float64)
    b = Evaluator(_Dummy(dom), dom, 2000, torch.device("cpu"), torch.float64)
    assert len(a.x) == 2000 and torch.equal(a.x, b.x)
    # interior points spread over the cube, not mostly on its faces as a 5-per-axis grid would be
    assert float(((a.x > 0.05) & (a.x < 0.95)).all(1).double().mean()) > 0.5


class _Dummy:
    outputs = ("u",)

    def __init__(self, dom):
        self.inputs = dom.names

    def exact(self, x):
        return x[:, :1]


# ---------------------------------------------------------------- from the config


def test_equations_pick_their_default_domain_and_the_command_line_wins():
    assert make_cfg("equation=heat2d").domain.name == "disk_time"
    setup = build(make_cfg("equation=heat2d", "device=cpu"))
    assert setup.domain.shape.kind == "disk" and setup.domain.shape.radius == 1.0
    setup = build(make_cfg("equation=heat2d", "domain=rectangle_time", "device=cpu"))
    assert setup.domain.shape.kind == "box"
    assert make_cfg("equation=heat").domain.name == "auto"


@pytest.mark.parametrize("domain, kind", [("disk", "disk"), ("polygon", "polygon"), ("rectangle", "box")])
def test_two_dimensional_equations_run_on_other_domains(domain, kind):
    setup = build(make_cfg("equation=poisson2d", f"domain={domain}", "device=cpu", "trainer.eval_points=500"))
    assert setup.domain.shape.kind == kind
    setup.problem.sample(np.random.default_rng(0))
    for term in setup.problem.terms:
        assert setup.domain.contains(term.x.numpy()).all()
    assert setup.domain.contains(setup.evaluator.x.numpy()).all()
    # network inputs are scaled from the domain's bounding box
    lo = torch.tensor(setup.domain.lo)
    assert torch.allclose(lo * setup.net.in_scale + setup.net.in_shift, -torch.ones(2, dtype=lo.dtype))


def test_domain_options_from_the_command_line():
    setup = build(make_cfg("equation=heat2d", "domain.center=[0.5,0]", "domain.radius=0.5",
                           "domain.bounds.t=[0,2]", "device=cpu"))
    assert setup.domain.describe() == "disk center (0.5, 0) radius 0.5 x t in [0, 2]"
    setup = build(make_cfg("equation=poisson2d", "domain=polygon",
                           "domain.vertices=[[0,0],[1,0],[0,1]]", "device=cpu"))
    assert abs(setup.domain.shape.area - 0.5) < 1e-12
    setup = build(make_cfg("equation=poisson_nd", "equation.dim=2", "+domain.bounds.x1=[0,2]", "device=cpu"))
    assert setup.domain.bounds == [(0.0, 2.0), (0.0, 1.0)]


def test_domain_that_does_not_fit_names_those_that_do():
    with pytest.raises(PinnConfigError, match=r"domain=disk does not fit equation heat .* interval_time"):
        build(make_cfg("equation=heat", "domain=disk", "device=cpu"))
    with pytest.raises(PinnConfigError, match=r"domain.bounds.z is not an input"):
        build(make_cfg("equation=heat", "domain.bounds.z=[0,1]", "device=cpu"))


def test_build_domain_default_l_shape():
    class Eq:
        name, inputs, time = "e", ("x", "y"), None
        bounds = {"x": (0.0, 2.0), "y": (0.0, 2.0)}
    dom = build_domain({"name": "polygon", "vertices": None}, Eq)
    assert abs(dom.shape.area - 3.0) < 1e-12 and abs(dom.fraction - 0.75) < 1e-12


def test_one_boundary_point_on_an_interval_still_pins_both_ends():
    from pinn_cli.domains import build_domain
    from pinn_cli.training import build_equation

    cfg = make_cfg("equation=ode_bvp")
    dom = build_domain(cfg.domain, build_equation(cfg.equation))
    ends = dom.boundary(1, "lhs", np.random.default_rng(0)).x[:, 0]
    assert sorted(ends.tolist()) == [dom.lo[0], dom.hi[0]]


def test_grid_with_a_selected_face_gives_about_the_points_asked():
    """A grid rounds n (200 -> 196); that must not be taken for a finite set (which keeps one draw)."""
    from pinn_cli.domains import build_domain
    from pinn_cli.training import build_equation

    cfg = make_cfg("equation=taylor_green", "domain=rectangle_time")
    dom = build_domain(cfg.domain, build_equation(cfg.equation))
    face = dom.boundary(200, "grid", np.random.default_rng(0), select=lambda x: np.abs(x[:, 0] - dom.hi[0]) < 1e-9)
    assert 150 <= len(face) <= 250

"""Every config file composes and builds into working objects."""
from __future__ import annotations

import pytest
from conftest import CONFIGS, EQUATIONS, make_cfg

from pinn_cli.training import build


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("equation", EQUATIONS)
def test_equation_config_builds(equation):
    setup = build(make_cfg(f"equation={equation}", "device=cpu"))
    assert setup.equation.name == equation
    assert setup.net(setup.evaluator.x[:5]).shape == (5, len(setup.equation.outputs))


@pytest.mark.parametrize("sampler", _names("sampler"))
def test_sampler_config_builds(sampler):
    setup = build(make_cfg(f"sampler={sampler}", "sampler.n_interior=64", "device=cpu"))
    import numpy as np

    setup.problem.sample(np.random.default_rng(0))
    x = setup.problem.terms[0].x
    assert 49 <= len(x) <= 64 and bool(((x >= 0) & (x <= 1)).all())


@pytest.mark.parametrize("optimizer", _names("optimizer"))
def test_optimizer_config_builds(optimizer):
    from pinn_cli.optim import OptimizerSchedule

    cfg = make_cfg(f"optimizer={optimizer}", "device=cpu")
    setup = build(cfg)
    sched = OptimizerSchedule(cfg.optimizer, list(setup.net.parameters()), 10)
    assert sched.phase(0) in ("adam", "lbfgs")


@pytest.mark.parametrize("domain", _names("domain"))
def test_domain_config_builds(domain):
    from pinn_cli.domains import DOMAINS

    fits = {"auto": "heat", "interval": "ode_bvp", "rectangle": "poisson2d", "box": "poisson2d",
            "interval_time": "heat", "rectangle_time": "heat2d", "box_time": "heat",
            "disk": "helmholtz", "disk_time": "heat2d", "polygon": "poisson2d", "polygon_time": "heat2d"}
    equation = fits[domain]
    if equation is None:
        pytest.skip("no built-in equation on this domain yet")
    setup = build(make_cfg(f"equation={equation}", f"domain={domain}", "device=cpu"))
    assert setup.domain.dim == len(setup.equation.inputs)
    assert domain == "auto" or domain in DOMAINS


def test_network_config_builds():
    for act in ("tanh", "sin", "gelu", "silu", "identity"):
        setup = build(make_cfg(f"network.activation={act}", "device=cpu"))
        assert sum(p.numel() for p in setup.net.parameters()) > 0
